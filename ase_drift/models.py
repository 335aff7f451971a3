"""Generator networks: noise z ``[B, noise_dim]`` → normalised coordinates ``[B, A, 3]``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checkpoint import StoredConfig


@dataclass(frozen=True)
class GeneratorConfig(StoredConfig):
    """MLP generator; the paper's ethanol default is 6 layers of 512 SiLU units (~1.36M
    parameters for ethanol)."""

    n_atoms: int
    noise_dim: int = 64
    hidden: int = 512
    depth: int = 6
    affine_skip: bool = True
    residual: bool = False


class ResidualBlock(nn.Module):
    """h + W SiLU(LayerNorm(h)): a pre-norm residual block of width ``hidden``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.linear(nn.functional.silu(self.norm(h)))


#: Arithmetic of :meth:`MLPGenerator.forward`: float32, or bfloat16 hidden layers.
PRECISIONS = ("fp32", "bf16")


class MLPGenerator(nn.Module):
    """One network evaluation per conformation: an MLP with SiLU activations plus (with
    ``affine_skip``) an affine skip path, G(z) = b + W z + MLP(z).

    :meth:`initialize_from_data` sets b and W to the data's mean and principal axes, so training
    starts from the Gaussian fit of the data instead of a point; the MLP then learns the
    non-Gaussian part. Both paths are trained.

    With ``residual`` the hidden layers after the first are pre-norm residual blocks
    (:class:`ResidualBlock`, same number of weight matrices) instead of a plain SiLU stack.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        if config.residual:
            layers.append(nn.Linear(config.noise_dim, config.hidden))
            layers += [ResidualBlock(config.hidden) for _ in range(config.depth - 1)]
            layers.append(nn.SiLU())
        else:
            width = config.noise_dim
            for _ in range(config.depth):
                layers += [nn.Linear(width, config.hidden), nn.SiLU()]
                width = config.hidden
        layers.append(nn.Linear(config.hidden, 3 * config.n_atoms))
        self.net = nn.Sequential(*layers)
        self.skip = nn.Linear(config.noise_dim, 3 * config.n_atoms) if config.affine_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    def forward(self, noise: Tensor, precision: str = "fp32") -> Tensor:
        """Coordinates ``[B, A, 3]`` of noise ``[B, noise_dim]``. ``precision="bf16"`` runs the
        hidden layers (almost all of the cost) in bfloat16 and the output layer and the affine
        path in float32, so that the coordinates keep float32's resolution."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16":
            with torch.autocast(noise.device.type, dtype=torch.bfloat16):
                hidden = self.net[:-1](noise)  # [B, hidden]
            mlp = self.net[-1](hidden.to(noise.dtype))
        else:
            mlp = self.net(noise)
        out = mlp if self.skip is None else self.skip(noise) + mlp
        return out.view(len(noise), self.config.n_atoms, 3)  # [B, A, 3]

    @torch.no_grad()
    def initialize_from_data(self, coords: Tensor, mlp_scale: float = 0.1) -> None:
        """Affine path ← mean and principal axes of aligned ``coords`` ``[N, A, 3]`` (the first
        min(noise_dim, 3A) components, scaled by their standard deviations); the MLP's last layer
        is shrunk by ``mlp_scale`` so it starts as a small correction."""
        if self.skip is None:
            raise ValueError("initialize_from_data needs the affine skip path (affine_skip=True)")
        flat = coords.flatten(1)  # [N, 3A]
        mean = flat.mean(0)
        _, singular, axes = torch.linalg.svd((flat - mean) / math.sqrt(len(flat)),
                                             full_matrices=False)
        k = min(self.config.noise_dim, len(singular))
        self.skip.bias.copy_(mean)
        self.skip.weight.zero_()
        self.skip.weight[:, :k] = (axes[:k].T * singular[:k]).to(self.skip.weight)
        last = self.net[-1]
        last.weight.mul_(mlp_scale)
        last.bias.mul_(mlp_scale)

    def noise(self, n: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
        """Standard normal noise ``[n, noise_dim]`` drawn from ``generator``."""
        return torch.randn(n, self.config.noise_dim, generator=generator, dtype=dtype)
