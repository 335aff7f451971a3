"""Drifting fields: pure functions for the paper's equations, and small field objects.

Notation (paper Sections 2.2–3.4): ``x`` ``[B, D]`` are generated features (they are also the
negatives, with each sample excluded from its own repulsion), ``y`` ``[N, D]`` the positives,
``s`` ``[N, D]`` the positives' Boltzmann scores F/kT in feature units (Eq. 3 and Eq. 31),
``τ`` the kernel bandwidth. Every field returns the drift V ``[B, D]``; the trainer moves the
generator toward stopgrad(x + V) (Eq. 9).

A *field* is any callable ``field(x, positives) -> V`` (see :class:`DriftField`); the objects
here (:class:`GaussianDrift`, :class:`DengDrift`) are the training hooks of DESIGN.md and a
user may pass their own callable with the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .kernels import (
    exclude_self,
    gaussian_logits,
    laplacian_logits,
    median_distance,
    median_from_squared,
    squared_distances,
)


class Positives(NamedTuple):
    """A minibatch of positive (data) samples in feature space."""

    features: Tensor  # [N, D]
    scores: Tensor | None = None  # [N, D]  F/kT in feature units
    reduced_energies: Tensor | None = None  # [N]  E/kT
    log_density: Tensor | None = None  # [N]  log p̂_data(y), for importance reweighting


@runtime_checkable
class DriftField(Protocol):
    """``field(x [B, D], positives) -> V [B, D]``; ``x`` carries no gradient."""

    def __call__(self, x: Tensor, positives: Positives) -> Tensor: ...


# ----------------------------------------------------------------------------- equations
def kernel_mean(logits: Tensor, values: Tensor) -> Tensor:
    """Σ_i softmax_i(ℓ)·v_i ``[B, D]``: the normalised-kernel average (Eqs. 6–7)."""
    return torch.softmax(logits, dim=-1) @ values


def attraction(x: Tensor, y: Tensor, logits: Tensor) -> Tensor:
    """V⁺(x) = Σ_i w_i (y_i − x), w = softmax(ℓ(x, y)) (Eq. 6)."""
    return kernel_mean(logits, y) - x


def repulsion(x: Tensor, logits: Tensor) -> Tensor:
    """V⁻(x) = Σ_j u_j (x_j − x) over the other generated samples (Eq. 7)."""
    return kernel_mean(exclude_self(logits), x) - x


def standard_drift(x: Tensor, y: Tensor, tau: float | Tensor) -> Tensor:
    """V = V⁺ − V⁻ with a Gaussian kernel (Eq. 5); antisymmetric, zero when q = p."""
    return attraction(x, y, gaussian_logits(x, y, tau)) - repulsion(x, gaussian_logits(x, x, tau))


def force_interpolated_attraction(x: Tensor, y: Tensor, scores: Tensor, logits: Tensor,
                                  tau: float | Tensor, omega: float,
                                  force_scale: float | Tensor = 1.0) -> Tensor:
    """V⁺_ω(x) = Σ_i w_i [(1−ω)(y_i − x) + ω τ² s_i / ρ] (Definition 3.1; Eq. 34 with ρ).

    With ω = 1 and ρ = 1 this is the force side of the Drifting Force Identity (Cor. 3.2).
    """
    data_term = attraction(x, y, logits)
    if omega == 0:
        return data_term
    force_term = tau**2 * kernel_mean(logits, scores) / force_scale
    return (1 - omega) * data_term + omega * force_term


def energy_alignment(reduced_energies: Tensor) -> Tensor:
    """a_i = −(E_i − Ē)/kT ``[N]``: exact Boltzmann reweighting of positives (Eq. 21)."""
    return -(reduced_energies - reduced_energies.mean())


def force_alignment(x: Tensor, y: Tensor, scores: Tensor) -> Tensor:
    """a_i(x) = s_i·(y_i − x) ``[B, N]``: first-order Taylor form of Eq. 21 (Eq. 23).

    E(x) ≈ E(y_i) + F_i·(y_i − x), so −E(y_i)/kT = s_i·(y_i − x) − E(x)/kT; the last term is
    the same for every i and cancels in the softmax.
    """
    return (scores * y).sum(-1)[None, :] - x @ scores.T


def standardize(alignment: Tensor) -> Tensor:
    """ã = (a − mean)/std over the positives (last axis) (Eq. 36)."""
    mean = alignment.mean(-1, keepdim=True)
    std = alignment.std(-1, keepdim=True).clamp_min(1e-12)
    return (alignment - mean) / std


def force_scale_ratio(x: Tensor, y: Tensor, scores: Tensor, tau: float | Tensor) -> Tensor:
    """ρ = median‖τ² s_i‖ / median‖y_i − x‖ (Eq. 33), for the scale-normalised FI of Eq. 34."""
    force_norm = (tau**2 * scores).norm(dim=-1).median()
    displacement = median_distance(x, y)
    return force_norm / displacement.clamp_min(1e-12)


def deng_drift(x: Tensor, y: Tensor, temperature: float | Tensor) -> Tensor:
    """Deng et al. (2026) drift: Laplacian logits over negatives and positives jointly, weights
    √(row-softmax × column-softmax), each side weighted by the other side's total mass."""
    n_gen = x.shape[0]
    logits = torch.cat([laplacian_logits(x, y, temperature),
                        exclude_self(laplacian_logits(x, x, temperature))], dim=1)  # [B, N+B]
    weights = (torch.softmax(logits, dim=-1) * torch.softmax(logits, dim=-2)).sqrt()
    w_pos, w_neg = weights[:, :-n_gen], weights[:, -n_gen:]
    return (w_pos * w_neg.sum(-1, keepdim=True)) @ y - (w_neg * w_pos.sum(-1, keepdim=True)) @ x


# ----------------------------------------------------------------------------- field objects
@dataclass(frozen=True)
class GaussianDrift:
    """Gaussian-kernel drift with optional force guidance (the paper's FI, FK and FI+FK).

    Args:
        omega: Force-Interpolated weight ω ∈ [0, 1] (Definition 3.1); 0 disables FI.
        beta: Force-Aligned Kernel strength β ≥ 0 (Definition 3.2); 0 disables FK.
        alignment: 'energy' (exact, Eq. 21), 'force' (Taylor, Eq. 23), or 'auto' (energy when
            the positives carry energies).
        standardize_alignment: standardise a_i over the positive batch (Eq. 36); the paper's
            choice in distance space.
        normalize_force_scale: divide the FI force term by ρ (Eq. 34); distance space needs it.
        density_correction: add −log p̂_data(y_i) to the alignment, so that β = 1 with energies
            targets π itself instead of the tilted p_data·π (DESIGN.md, "What FK targets").
        bandwidths: kernel bandwidths as multiples of the median generated–positive distance;
            the drifts of all bandwidths are summed.
    """

    omega: float = 0.0
    beta: float = 0.0
    alignment: str = "auto"
    standardize_alignment: bool = False
    normalize_force_scale: bool = False
    density_correction: bool = False
    bandwidths: tuple[float, ...] = (0.25,)

    def __post_init__(self):
        if not 0.0 <= self.omega <= 1.0:
            raise ValueError(f"omega must lie in [0, 1], got {self.omega}")
        if self.beta < 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")
        if self.alignment not in ("auto", "energy", "force"):
            raise ValueError(f"alignment must be 'auto', 'energy' or 'force', got {self.alignment!r}")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise ValueError(f"bandwidths must be positive, got {self.bandwidths}")

    @property
    def needs_scores(self) -> bool:
        return self.omega > 0 or (self.beta > 0 and self.alignment == "force")

    @property
    def needs_energies(self) -> bool:
        return self.beta > 0 and self.alignment == "energy"

    def alignment_logits(self, x: Tensor, positives: Positives) -> Tensor:
        """β·a ``[B, N]`` (or ``[N]``) added to the attraction logits."""
        use_energy = self.alignment == "energy" or (
            self.alignment == "auto" and positives.reduced_energies is not None)
        if use_energy:
            _require(positives.reduced_energies, "energies", "the energy form of FK")
            align = energy_alignment(positives.reduced_energies)[None, :]
        else:
            _require(positives.scores, "forces", "the force form of FK")
            align = force_alignment(x, positives.features, positives.scores)
        if self.density_correction:
            _require(positives.log_density, "a data density estimate", "density_correction")
            align = align - positives.log_density[None, :]
        if self.standardize_alignment:
            align = standardize(align)
        return self.beta * align

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        y = positives.features
        if self.omega > 0:
            _require(positives.scores, "forces", "Force-Interpolated drifting (omega > 0)")
        extra = self.alignment_logits(x, positives) if self.beta > 0 else 0.0
        to_positives = squared_distances(x, y)  # [B, N], shared by every bandwidth
        to_negatives = squared_distances(x, x)  # [B, B]
        median = median_from_squared(to_positives)  # median-heuristic bandwidth
        drift = torch.zeros_like(x)
        for factor in self.bandwidths:
            tau = factor * median
            logits = -to_positives / (2 * tau**2) + extra  # Gaussian logits (Thm 3.1)
            scale = 1.0
            if self.omega > 0 and self.normalize_force_scale:
                scale = force_scale_ratio(x, y, positives.scores, tau)
            drift = drift + force_interpolated_attraction(
                x, y, positives.scores, logits, tau, self.omega, scale)
            drift = drift - repulsion(x, -to_negatives / (2 * tau**2))
        return drift


@dataclass(frozen=True)
class DengDrift:
    """The original drifting field (Deng et al. 2026): Laplacian kernel, joint row×column
    normalisation, several temperatures as fractions of the mean generated–positive distance,
    each drift rescaled to unit RMS before summing. Uses no forces."""

    temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)

    needs_scores = False
    needs_energies = False

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        y = positives.features
        with torch.no_grad():
            scale = torch.cdist(x, y).mean()
        drift = torch.zeros_like(x)
        for temperature in self.temperatures:
            v = deng_drift(x, y, temperature * scale)
            drift = drift + v / v.square().sum(-1).mean().sqrt().clamp_min(1e-12)
        return drift


FIELDS = ("drift", "fi", "fk", "fi+fk", "deng")


def make_field(name: str, space: str, omega: float | None = None, beta: float | None = None,
               bandwidths: tuple[float, ...] = (0.25,), alignment: str = "auto",
               density_correction: bool = False,
               standardize_alignment: bool | None = None,
               normalize_force_scale: bool | None = None) -> DriftField:
    """The named field with the paper's defaults for ``space`` ('cartesian' or 'distance').

    'drift' standard drifting; 'fi' Force-Interpolated (ω, default 0.02 Cartesian / 0.1
    distance); 'fk' Force-Aligned Kernel (β, default 0.5); 'fi+fk' both; 'deng' the original
    multi-temperature Laplacian field. In distance space the FK alignment is standardised
    (Eq. 36) unless ``standardize_alignment`` says otherwise. The FI force term is used as the
    Drifting Force Identity gives it, τ²F_φ/kT with the exact feature force; the paper's
    scale normalisation by ρ (Eq. 34) is available as ``normalize_force_scale=True`` but breaks
    the identity's balance (it shrinks a cold harmonic test system instead of widening it, see
    tests/test_debiasing.py and docs/maths.md), so it is off by default.
    """
    if name not in FIELDS:
        raise ValueError(f"unknown field {name!r}; use one of {FIELDS}")
    if name == "deng":
        return DengDrift()
    in_features = space == "distance"
    use_fi = name in ("fi", "fi+fk")
    use_fk = name in ("fk", "fi+fk")
    if omega is not None and not use_fi:
        raise ValueError(f"omega applies to 'fi' and 'fi+fk', not {name!r}")
    if beta is not None and not use_fk:
        raise ValueError(f"beta applies to 'fk' and 'fi+fk', not {name!r}")
    return GaussianDrift(
        omega=(omega if omega is not None else (0.1 if in_features else 0.02)) if use_fi else 0.0,
        beta=(beta if beta is not None else 0.5) if use_fk else 0.0,
        alignment=alignment,
        standardize_alignment=in_features if standardize_alignment is None
        else standardize_alignment,
        normalize_force_scale=bool(normalize_force_scale),
        density_correction=density_correction,
        bandwidths=tuple(bandwidths),
    )


def _require(value, what: str, why: str) -> None:
    if value is None:
        raise ValueError(f"{why} needs {what} of the positive samples, but the data has none")
