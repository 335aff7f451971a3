"""Drifting fields: pure functions for the paper's equations, and small field objects.

Notation (paper Sections 2.2–3.4): ``x`` ``[B, D]`` are generated features (they are also the
negatives, with each sample excluded from its own repulsion), ``y`` ``[N, D]`` the positives,
``s`` ``[N, D]`` the positives' Boltzmann scores F/kT in feature units (Eq. 3 and Eq. 31),
``τ`` the kernel bandwidth. Every field returns the drift V ``[B, D]``; the trainer moves the
generator toward stopgrad(x + V) (Eq. 9).

A *field* is any callable ``field(x, positives) -> V`` with a ``requires`` attribute (see
:class:`DriftField`); the objects here (:class:`GaussianDrift` composed of an attraction, logit
tilts :class:`ForceTilt` / :class:`EnergyTilt` and a bandwidth rule, and :class:`DengDrift`) are
the training hooks of DESIGN.md, described by a JSON spec (:func:`field_spec`) that checkpoints
store. A user may pass their own callable with the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .data import ENERGIES, FORCES
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
    """``field(x [B, D], positives) -> V [B, D]``; ``x`` carries no gradient.

    ``requires`` names the labels (:data:`FORCES`, :data:`ENERGIES`, :data:`DENSITY`) the
    positives must carry; the trainer prepares exactly those.
    """

    requires: frozenset[str]

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


#: ω·ρ of FI's automatic ω (:func:`automatic_omega`) per space: the products of the ω that work
#: on ethanol (0.02 Cartesian, 0.1 distance) and ethanol's ρ (4.9, 3.6); on alanine dipeptide
#: (ρ 90, 64) the same products are what rescues FI (docs/benchmarks.md).
FI_OMEGA_RHO = {"cartesian": 0.1, "distance": 0.36}


def data_force_scale_ratio(features: Tensor, scores: Tensor, bandwidth: float = 0.25,
                           n: int = 256, seed: int = 0) -> float:
    """ρ of Eq. 33 measured on a data set: ``n`` random frames of ``features`` ``[N, D]`` (at
    most half of them) as x, up to 2n others (with their ``scores`` ``[N, D]``) as the
    positives, τ = ``bandwidth`` × their median distance. A generator initialised from the data
    starts with the same ρ."""
    if len(features) < 2:
        raise ValueError(f"ρ needs at least 2 frames, got {len(features)}")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    n = min(n, len(features) // 2)
    x, positives = order[:n], order[n:3 * n]
    y = features[positives]
    tau = bandwidth * median_distance(features[x], y)
    return float(force_scale_ratio(features[x], y, scores[positives], tau))


def automatic_omega(rho: float, space: str) -> float:
    """FI's ω = :data:`FI_OMEGA_RHO`[space] / ρ (at most 1): the force term's share of the drift
    then has the size that works on ethanol whatever the molecule's force scale."""
    return min(1.0, FI_OMEGA_RHO[space] / rho)


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
# Label names a field may require of its positives: the data's FORCES (→ scores s_i = F_φ/kT)
# and ENERGIES (→ reduced energies E/kT), and DENSITY, log p̂_data(y_i) estimated by the trainer.
DENSITY = "density"


@dataclass(frozen=True)
class ForceTilt:
    """FK's force form: logits += β·a_i(x) with a_i(x) = s_i·(y_i − x) (Eq. 23), standardised
    over the positive batch per generated sample when ``standardize`` (Eqs. 35–36, the paper's
    FK in distance space)."""

    beta: float = 0.5
    standardize: bool = True

    kind: ClassVar[str] = "force-tilt"

    def __post_init__(self):
        _check_beta(self.beta)

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({FORCES})

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        _require(positives.scores, "forces", "the force form of FK")
        align = force_alignment(x, positives.features, positives.scores)  # [B, N]
        return self.beta * (standardize(align) if self.standardize else align)


@dataclass(frozen=True)
class EnergyTilt:
    """FK's energy form: logits += β·a_i with a_i = −(E_i − Ē)/kT (Eq. 21), optionally minus a
    density estimate log p̂_data(y_i).

    Unstandardised, the attraction targets p_data·π^β, and with ``density_correction`` and
    β = 1 it targets π itself (weights ∝ k·π/p̂_data: importance reweighting). Standardised
    (``standardize``), a_i/std(a) no longer depends on x: a fixed tilt p_data·π^(β/std(E/kT)),
    not the paper's FK; so standardisation and the density correction exclude each other.
    """

    beta: float = 1.0
    standardize: bool = False
    density_correction: bool = False

    kind: ClassVar[str] = "energy-tilt"

    def __post_init__(self):
        _check_beta(self.beta)
        if self.standardize and self.density_correction:
            raise ValueError("the density correction targets π only without standardisation "
                             "(standardize=False)")

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({ENERGIES, DENSITY} if self.density_correction else {ENERGIES})

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        _require(positives.reduced_energies, "energies", "the energy form of FK")
        align = energy_alignment(positives.reduced_energies)  # [N]
        if self.density_correction:
            _require(positives.log_density, "a data density estimate", "density_correction")
            align = align - positives.log_density
        if self.standardize:
            align = standardize(align)
        return self.beta * align[None, :]  # [1, N]


def blockwise_drift(field, x: Tensor, positives: Positives, sizes: tuple[int, ...]) -> Tensor:
    """The field applied to each block of features on its own ``[B, D]``, D = Σ sizes.

    For representations that stack several feature maps (e.g. raw and whitened distances): each
    block gets its own kernel, bandwidth and drift, so the loss is the sum of the blocks' drift
    losses (Eq. 9 per block). Energies and densities are per sample and shared by every block.
    """
    # [B, D] and [M, D] split along the features (dim 1) into blocks [B, d] and [M, d]
    scores = (positives.scores.split(sizes, 1) if positives.scores is not None
              else (None,) * len(sizes))
    return torch.cat([field(block, positives._replace(features=features, scores=score))
                      for block, features, score in zip(x.split(sizes, 1),
                                                        positives.features.split(sizes, 1),
                                                        scores, strict=True)], 1)


@dataclass(frozen=True)
class GaussianDrift:
    """Gaussian-kernel drift with optional force guidance: the paper's drifting, FI, FK, FI+FK.

    A field is composed of an attraction term (data, or Force-Interpolated with weight ω), logit
    tilts added to the attraction's kernel logits (:class:`ForceTilt`, :class:`EnergyTilt`) and a
    bandwidth rule (multiples of the median generated–positive distance; drifts of all
    bandwidths are summed). :attr:`requires` names the labels the positives must carry.

    Args:
        omega: Force-Interpolated weight ω ∈ [0, 1] (Definition 3.1); 0 disables FI.
        tilts: logit terms (Definition 3.2 and its variants).
        bandwidths: kernel bandwidths as multiples of the median generated–positive distance.
        normalize_force_scale: divide the FI force term by ρ (Eq. 34).
    """

    omega: float = 0.0
    tilts: tuple = ()
    bandwidths: tuple[float, ...] = (0.25,)
    normalize_force_scale: bool = False

    kind: ClassVar[str] = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "tilts", tuple(self.tilts))
        object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))
        if not 0.0 <= self.omega <= 1.0:
            raise ValueError(f"omega must lie in [0, 1], got {self.omega}")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise ValueError(f"bandwidths must be positive, got {self.bandwidths}")

    @property
    def requires(self) -> frozenset[str]:
        needed = {FORCES} if self.omega > 0 else set()
        return frozenset(needed.union(*(tilt.requires for tilt in self.tilts)))

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        y = positives.features
        if self.omega > 0:
            _require(positives.scores, "forces", "Force-Interpolated drifting (omega > 0)")
        extra = sum((tilt(x, positives) for tilt in self.tilts), start=0.0)  # [B|1, N]
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

    kind: ClassVar[str] = "deng"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    def __call__(self, x: Tensor, positives: Positives) -> Tensor:
        y = positives.features
        with torch.no_grad():
            scale = torch.cdist(x, y).mean()
        drift = torch.zeros_like(x)
        for temperature in self.temperatures:
            v = deng_drift(x, y, temperature * scale)
            drift = drift + v / v.square().sum(-1).mean().sqrt().clamp_min(1e-12)
        return drift


# ----------------------------------------------------------------------------- specs
_KINDS = {cls.kind: cls for cls in (GaussianDrift, DengDrift, ForceTilt, EnergyTilt)}


def field_spec(field) -> dict:
    """A JSON-serialisable description of a field built from this module's parts (what
    checkpoints store); :func:`field_from_spec` rebuilds it."""
    kind = getattr(field, "kind", None)
    if _KINDS.get(kind) is not type(field):
        raise TypeError(f"{type(field).__name__} is not a field of ase_drift.drift: it has no spec")
    spec = {"kind": kind}
    for item in fields(field):
        value = getattr(field, item.name)
        spec[item.name] = ([field_spec(v) for v in value] if item.name == "tilts"
                           else list(value) if isinstance(value, tuple) else value)
    return spec


def field_from_spec(spec: dict):
    """Inverse of :func:`field_spec`."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown field kind {kind!r}; known: {sorted(_KINDS)}")
    if "tilts" in spec:
        spec["tilts"] = tuple(field_from_spec(t) for t in spec["tilts"])
    return _KINDS[kind](**spec)


FIELDS = ("drift", "fi", "fk", "fk-energy", "fi+fk", "deng")
# The default of train(), TrainConfig, the CLI and the demo, chosen by the FK study
# (benchmarks/fk_study.py, docs/benchmarks.md): see docs/maths.md, "What FK targets".
DEFAULT_FIELD = "drift"


def make_field(name: str, space: str, omega: float | None = None, beta: float | None = None,
               bandwidths: tuple[float, ...] = (0.25,), density_correction: bool = False,
               standardize: bool | None = None,
               normalize_force_scale: bool = False) -> GaussianDrift | DengDrift:
    """The named field with the paper's defaults for ``space`` ('cartesian' or 'distance').

    - 'drift': standard drifting (Eq. 5).
    - 'fi': Force-Interpolated attraction (ω, default 0.02 Cartesian / 0.1 distance, ethanol's
      values; the trainer chooses ω from the data's ρ instead, :func:`automatic_omega`), with the
      force term τ²F_φ/kT as the Drifting Force Identity gives it; the paper's normalisation by
      ρ (Eq. 34) is ``normalize_force_scale=True`` (it breaks the identity's balance, see
      docs/maths.md).
    - 'fk': the paper's Force-Aligned Kernel, force form a_i(x) = s_i·(y_i − x) (Eq. 23) with β
      (default 0.5), standardised over the positive batch in distance space (Eqs. 35–36).
    - 'fk-energy': the energy form a_i = −(E_i − Ē)/kT (Eq. 21), β default 0.5; standardised in
      distance space unless ``density_correction`` (which needs it unstandardised: then β = 1
      aims at π itself).
    - 'fi+fk': FI and the force-form FK together.
    - 'deng': the original multi-temperature Laplacian field (Deng et al. 2026).

    ``standardize`` overrides the space's default standardisation of the tilt.
    """
    if name not in FIELDS:
        raise ValueError(f"unknown field {name!r}; use one of {FIELDS}")
    if name == "deng":
        return DengDrift()
    use_fi = name in ("fi", "fi+fk")
    use_fk = name in ("fk", "fk-energy", "fi+fk")
    if omega is not None and not use_fi:
        raise ValueError(f"omega applies to 'fi' and 'fi+fk', not {name!r}")
    if beta is not None and not use_fk:
        raise ValueError(f"beta applies to 'fk', 'fk-energy' and 'fi+fk', not {name!r}")
    if density_correction and name != "fk-energy":
        raise ValueError(f"density_correction applies to 'fk-energy', not {name!r}")
    in_features = space == "distance"
    if standardize is None:
        standardize = in_features and not density_correction
    beta = 0.5 if beta is None else beta
    tilts = ()
    if name == "fk-energy":
        tilts = (EnergyTilt(beta, standardize, density_correction),)
    elif use_fk:
        tilts = (ForceTilt(beta, standardize),)
    if omega is None:
        omega = 0.1 if in_features else 0.02
    return GaussianDrift(omega=omega if use_fi else 0.0, tilts=tilts,
                         bandwidths=tuple(bandwidths),
                         normalize_force_scale=normalize_force_scale)


def _check_beta(beta: float) -> None:
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")


def _require(value, what: str, why: str) -> None:
    if value is None:
        raise ValueError(f"{why} needs {what} of the positive samples, but the data has none")
