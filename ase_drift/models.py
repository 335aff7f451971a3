"""Generator networks: noise z ``[B, noise_dim]`` → normalised coordinates ``[B, A, 3]``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GeneratorConfig:
    """MLP generator; the paper's ethanol default is 6 layers of 512 SiLU units (~1.36M
    parameters for ethanol)."""

    n_atoms: int
    noise_dim: int = 64
    hidden: int = 512
    depth: int = 6

    def as_dict(self) -> dict:
        return asdict(self)


class MLPGenerator(nn.Module):
    """One network evaluation per conformation: an MLP with SiLU activations."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.noise_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, 3 * config.n_atoms))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise).view(len(noise), self.config.n_atoms, 3)  # [B, A, 3]

    def noise(self, n: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
        """Standard normal noise ``[n, noise_dim]`` drawn from ``generator``."""
        return torch.randn(n, self.config.noise_dim, generator=generator, dtype=dtype)
