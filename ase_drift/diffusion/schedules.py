"""Noise schedules: the noise level σ as a function of diffusion time, and the decreasing
sequences of levels the samplers walk down (k-diffusion convention: the last entry is 0, the
noise-free end).

Variance-exploding (VE) SDE (Song et al. 2021): x_σ = x₀ + σ ε, ε ~ N(0, I), with the
geometric schedule σ(t) = σ_min (σ_max/σ_min)^t, t ∈ [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ve_sigma(t: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
    """σ(t) = σ_min (σ_max/σ_min)^t of the VE SDE, elementwise in ``t`` ∈ [0, 1]."""
    return sigma_min * (sigma_max / sigma_min) ** t


def append_zero(sigmas: Tensor) -> Tensor:
    """``sigmas`` followed by 0: the final, noise-free level."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ve_sigmas(n: int, sigma_min: float, sigma_max: float, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
    """``n`` geometrically spaced levels from σ_max down to σ_min, then 0 (``[n + 1]``).

    A sampler given these levels takes ``n − 1`` noisy steps between them and one noise-free
    denoising step from σ_min to 0.
    """
    if n < 1:
        raise ValueError(f"need at least one noise level, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return append_zero(logs.exp()).to(dtype=dtype, device=device)


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
               dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
    """The EDM schedule (Karras et al. 2022, Eq. 5; the GPFF paper's Eq. 17): ``n`` levels

        σ_i = (σ_max^(1/ρ) + i/(n − 1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,  i = 0, …, n − 1,

    then 0 (``[n + 1]``). The levels are equally spaced in "ρ-space" u = σ^(1/ρ), with step
    Δ = (σ_max^(1/ρ) − σ_min^(1/ρ)) / (n − 1); larger ρ crowds the levels towards σ_min (EDM's
    default ρ = 7; the GPFF paper uses ρ = 5 on QM9). ``n = 1`` gives ``[σ_max, 0]``.
    """
    if n < 1:
        raise ValueError(f"need at least one noise level, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    u = torch.linspace(sigma_max ** (1 / rho), sigma_min ** (1 / rho), n, dtype=torch.float64)
    return append_zero(u**rho).to(dtype=dtype, device=device)
