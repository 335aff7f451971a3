"""Energy-parameterised diffusion with Fokker–Planck regularisation and experts over diffusion
time (Plainer et al. 2025, "Consistent Sampling and Simulation", ScoreMD): one model that draws
i.i.d. samples by reverse diffusion *and* drives molecular dynamics with its t → 0 score.

The seed text of the paper carries no equation numbers; the numbers (E1)–(E8) below are those of
``docs/energy-diffusion.md``, which names the paper's section for each ((E8) is beyond it).

- (E1) VP SDE: dx = −½β(t) x dt + √β(t) dw, β(t) = β_min + t (β_max − β_min) (β 0.1–20);
  x_t = m(t) x₀ + σ(t) ε with log m(t) = −¼t²(β_max − β_min) − ½t β_min, σ² = 1 − m².
- (E2) Conservative score: s_θ(x, t) = ∇ₓ log q_θ(x, t) = −∇ₓ U_θ(x, t) with a scalar network U_θ
  (paper §3, "conservative parameterisation"), computed by autograd.
- (E3) Denoising score matching with λ(t) = σ²: L_DSM = ‖σ(t) s_θ(x_t, t) + ε‖².
- (E4) Fokker–Planck equation in log form for f = −½βx, g² = β (paper §3):
  ∂_t log p = ½β [div s + ‖s‖² + x·s + D].
- (E5) Weak residual (paper Theorem 1), first derivatives only, v ~ N(0, σ_v² I), σ_v = 10⁻⁴:
  R̃(x, t; v) = ½β [(v/σ_v)·(s(x+v) − s(x−v))/(2σ_v) + ‖s(x+v)‖² + (x+v)·s(x+v) + D]
  − ∂_t log q(x+v, t), with E_v R̃ = R(x, t) + O(σ_v²); ∂_t log q by central differences.
- (E6) L_FP = D⁻² R̃(x, t; v₁) R̃(x, t; v₂) with independent v₁, v₂: an unbiased estimate of
  D⁻² (E_v R̃)² (a squared single estimate would add its variance); total L_DSM + α L_FP.
- (E7) Experts: ``experts=(0.1, 0.6)`` splits [0, 1] into [0, 0.1), [0.1, 0.6), [0.6, 1]; each
  interval has its own energy network, trained in turn (largest t first, as ScoreMD), and the
  regulariser acts on the smallest-t expert only — the one simulations use.
- (E8) Noise-aware features and a bonded prior (beyond the paper, :class:`BondedPrior`):
  z_p = (d_p − m μ_p)/√(m² s_p² + 2σ²) for every pair distance (the signed volumes standardised
  by their tabulated VP statistics), and each expert's energy adds ½ Σ_{p∈R} k_p z_p² over the
  bonds, 1-3 pairs and stereocentre volumes R, log k_p learned (starting at 0).

Everything up to :func:`train_energy_model` works on tensors ``[B, D]`` (2-D toys need no
atoms). :class:`EnergyDiffusion` puts a molecule on top: centred coordinates / their global
standard deviation, an energy of invariant features (pairwise distances plus signed volumes at
atoms with three or more bonded neighbours, so mirror images differ — see
:class:`MoleculeFeatures`), i.i.d. sampling, a force source, an ASE calculator and batched
Langevin dynamics.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import units
from ..checkpoint import CheckpointError, StoredConfig, save_checkpoint
from ..data import Conformations, check_temperature
from ..features import PairwiseDistances
from ..forces import ForceResult
from ..sampler import TemplateSampler, _formula, caller_stacklevel, register_sampler
from .flow_likelihood import centre_flat
from .samplers import reverse_sde_sample

# What a stored configuration without these keys was trained and sampled with
BEFORE_E8 = {"bonded_prior": False, "dihedrals": False, "sampler_grid": "uniform"}
SAMPLER_GRIDS = ("log-snr", "uniform")


@dataclass(frozen=True)
class EnergyDiffusionConfig(StoredConfig):
    """Energy networks, VP SDE, regulariser, training and sampler settings.

    Defaults follow ScoreMD's Müller–Brown setup where it has one: SiLU MLPs 3 × 92, VP SDE
    β 0.1–20, batch 128, learning rate 3·10⁻⁴ (cosine), σ_v = 10⁻⁴. ``experts`` are the split
    times (E7); ``fokker_planck`` is α (0: plain DSM); ``small_t_share`` the fraction of
    ``steps`` given to the smallest-t expert when there are experts (ScoreMD: 120 of 180
    epochs), the rest shared equally. ``t_min`` is the smallest training time, the end of
    sampling and the time of the force field. ``time_midpoints`` (one per expert, smallest t
    first; empty: uniform) draws half of each batch's times below the midpoint and half above
    (ScoreMD's "equal weight"; its alanine runs put 0.3 for one model, 0.03 on the
    smallest-t expert). ``bonded_prior`` (molecules only) standardises the
    features for the noise level and adds the bonded prior (E8, :class:`BondedPrior`);
    ``dihedrals`` adds the rotatable bonds' dihedral angles to the features
    (:class:`MoleculeFeatures`; off by default: on the 5-bead alanine dipeptide they made
    sampling and simulation worse, see docs/energy-diffusion.md). ``sampler_grid`` spaces the
    sampler's steps uniformly in log-SNR λ = log(m/σ) (as DPM-Solver; fine steps at both ends,
    where a model that holds bonds is stiff) or uniformly in t (ScoreMD's; such steps loosen
    stiff bonds at t_min).
    """

    hidden: int = 92
    layers: int = 3
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-4
    experts: tuple[float, ...] = ()
    time_midpoints: tuple[float, ...] = ()
    fokker_planck: float = 0.0
    fp_sigma: float = 1e-4
    fp_time_step: float = 1e-3
    steps: int = 20000
    small_t_share: float = 2 / 3
    batch_size: int = 128
    learning_rate: float = 3e-4
    ema: float = 0.999
    sampler_steps: int = 1000
    sampler_grid: str = "log-snr"
    probability_flow: bool = False
    chirality: bool = True
    dihedrals: bool = False
    bonded_prior: bool = True
    temperature_K: float | None = None
    seed: int = 0

    def __post_init__(self):
        experts = tuple(float(e) for e in self.experts)
        object.__setattr__(self, "experts", experts)
        midpoints = tuple(float(m) for m in self.time_midpoints)
        object.__setattr__(self, "time_midpoints", midpoints)
        if not 0 < self.t_min < 0.01:
            raise ValueError(f"t_min must lie in (0, 0.01), got {self.t_min}")
        bounds = (self.t_min, *experts, 1.0)
        if any(b <= a for a, b in pairwise(bounds)):
            raise ValueError(f"experts must be increasing split times inside ({self.t_min}, 1), "
                             f"got {self.experts}")
        if midpoints and (len(midpoints) != len(bounds) - 1 or not all(
                low < mid < high for low, mid, high in zip(bounds, midpoints, bounds[1:]))):
            raise ValueError(f"time_midpoints must hold one time inside each expert's interval "
                             f"{list(pairwise(bounds))}, got {self.time_midpoints}")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, "
                             f"{self.beta_max}")
        if not (self.fokker_planck >= 0 and math.isfinite(self.fokker_planck)):
            raise ValueError(f"fokker_planck (α) must be >= 0, got {self.fokker_planck}")
        for name in ("hidden", "layers", "steps", "batch_size", "sampler_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.small_t_share < 1:
            raise ValueError(f"small_t_share must lie in (0, 1), got {self.small_t_share}")
        if self.sampler_grid not in SAMPLER_GRIDS:
            raise ValueError(f"sampler_grid must be one of {SAMPLER_GRIDS}, got "
                             f"{self.sampler_grid!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")
        check_temperature(self.temperature_K)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The experts' time intervals as boundaries 0, splits…, 1."""
        return (0.0, *self.experts, 1.0)


class VPSDE(NamedTuple):
    """The variance-preserving SDE (E1) with the linear schedule β(t)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t: Tensor) -> Tensor:
        """β(t) = g(t)², elementwise."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean(self, t: Tensor) -> Tensor:
        """log m(t) = −½∫₀ᵗ β."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(m(t), σ(t)) of x_t = m x₀ + σ ε."""
        log_mean = self.log_mean(t)
        return log_mean.exp(), (-torch.expm1(2 * log_mean)).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log(m/σ) = log m − ½ log(1 − m²)."""
        log_mean = self.log_mean(t)
        return log_mean - 0.5 * torch.log(-torch.expm1(2 * log_mean))

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """The t of a given λ: log m = −½ log(1 + e^(−2λ)), then the root t ≥ 0 of
        ¼(β_max − β_min) t² + ½β_min t + log m = 0."""
        log_mean = -0.5 * torch.nn.functional.softplus(-2 * log_snr)
        spread = self.beta_max - self.beta_min
        return (-0.5 * self.beta_min
                + torch.sqrt(0.25 * self.beta_min**2 - spread * log_mean)) / (0.5 * spread)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) = −½β(t) x for a scalar ``t``."""
        return -0.5 * self.beta(t) * x


def _column(t: Tensor) -> Tensor:
    return t[:, None]  # [B] -> [B, 1]


# --------------------------------------------------------------------------- losses (pure)

LogQAndScore = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``fn(x [B, D], t [B]) -> (log q(x, t) [B], ∇ₓ log q [B, D])``, differentiable in θ."""


def dsm_loss(score_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, t: Tensor, eps: Tensor,
             sde: VPSDE) -> Tensor:
    """σ²-weighted denoising score matching (E3), per sample ``[B]``: ‖σ s(x_t, t) + ε‖²
    with x_t = m x₀ + σ ε (E1)."""
    mean, std = sde.marginal(t)
    xt = _column(mean) * x0 + _column(std) * eps  # [B, D]
    return (_column(std) * score_fn(xt, t) + eps).square().sum(-1)


def fp_weak_residual(log_q_and_score: LogQAndScore, log_q: Callable[[Tensor, Tensor], Tensor],
                     x: Tensor, t: Tensor, v: Tensor, sde: VPSDE, sigma: float,
                     time_step: float, dim: int) -> Tensor:
    """The weak Fokker–Planck residual R̃(x, t; v) of (E5) (paper Theorem 1), per sample ``[B]``.

    ``v`` ``[B, D]`` is the perturbation (N(0, σ² I), ``sigma`` = σ); its divergence term
    (v/σ)·(s(x+v) − s(x−v))/(2σ) estimates div s without second derivatives. ∂_t log q(x+v, t)
    is the central difference over ±``time_step``. ``dim`` is D of the −div f = ½βD term (the
    dimension of the space the diffusion lives in: 3A − 3 for centred molecules). With the
    exact, normalised log-density of the VP SDE the residual vanishes up to O(σ²) noise.
    """
    batch = len(x)
    _, score = log_q_and_score(torch.cat([x + v, x - v]), torch.cat([t, t]))  # [2B, D]
    score_plus, score_minus = score[:batch], score[batch:]
    shifted = x + v
    log_q_t = log_q(torch.cat([shifted, shifted]), torch.cat([t + time_step, t - time_step]))
    dlogq_dt = (log_q_t[:batch] - log_q_t[batch:]) / (2 * time_step)  # [B]
    divergence = ((v / sigma) * (score_plus - score_minus)).sum(-1) / (2 * sigma)  # [B]
    rhs = 0.5 * sde.beta(t) * (divergence + score_plus.square().sum(-1)
                               + (shifted * score_plus).sum(-1) + dim)
    return rhs - dlogq_dt


def fp_loss(log_q_and_score: LogQAndScore, log_q: Callable[[Tensor, Tensor], Tensor],
            x: Tensor, t: Tensor, sde: VPSDE, sigma: float, time_step: float, dim: int,
            noise: Callable[[tuple], Tensor]) -> Tensor:
    """(E6): D⁻² R̃(x, t; v₁) R̃(x, t; v₂) per sample ``[B]``, with v₁, v₂ = σ·``noise(shape)``
    drawn independently, both estimates computed in one batched call."""
    batch = len(x)
    v = sigma * noise((2 * batch, *x.shape[1:]))  # [2B, D]
    residual = fp_weak_residual(log_q_and_score, log_q, torch.cat([x, x]), torch.cat([t, t]),
                                v, sde, sigma, time_step, dim)
    return residual[:batch] * residual[batch:] / dim**2


# --------------------------------------------------------------------------- networks


def time_features(t: Tensor, low: float, high: float) -> Tensor:
    """Fourier features of the absolute time and of the time relative to an expert's
    interval [low, high] (as ScoreMD's) ``[B, 7]``."""
    u = (t - low) / (high - low)
    return torch.stack([t - 0.5, torch.cos(2 * math.pi * t), torch.sin(2 * math.pi * t),
                        -torch.cos(4 * math.pi * t), torch.cos(2 * math.pi * u),
                        torch.sin(2 * math.pi * u), -torch.cos(4 * math.pi * u)], -1)


VOLUME_TABLE_TIMES = 48  # times at which the signed volumes' VP statistics are tabulated
VOLUME_TABLE_FRAMES = 4096  # noised training frames per tabulated time


class BondedPrior(nn.Module):
    """Noise-aware features and the Gaussian bonded prior (E8, beyond the paper).

    A stiff bond spreads by ~0.02 Å where a torsion-coupled pair spreads by ~1 Å: on raw
    distances the energy network must hold every bond with a curvature thousands of times its
    others, which an MLP does not learn (bonds break in sampling and simulation). With the data
    mean μ_p and standard deviation s_p of pair distance p (normalised units), the VP marginal
    (E1) of that distance at time t is ≈ N(m μ_p, m² s_p² + 2σ²) while σ ≪ d_p (the noise of a
    difference of two atoms has variance 2σ² per component), so

        z_p = (d_p − m μ_p) / √(m² s_p² + 2σ²)

    is of order one for every pair at every t: the experts read z instead of d. The signed
    volumes (chirality, :class:`MoleculeFeatures`) are cubic in the noise, so their marginal
    mean and standard deviation are tabulated instead: measured on noised training frames at
    ``times`` (log-spaced), interpolated in log t, the first row's below it.

    On the ``restrained`` feature columns R (bonds, 1-3 pairs and the volumes at branched atoms:
    stiff, one-mode, nearly Gaussian) each expert adds the energy ½ Σ_{p∈R} k_p z_p²
    (:class:`ExpertEnergy`), exact at t → 0 for independent Gaussian features; the network
    learns the rest, and log k_p (starting at 0) corrects the redundancy of overlapping ones.
    The volume term is what keeps a stereocentre's handedness: without it the network is left
    to learn a sign from a feature it barely sees, and half the samples come out mirrored.

    ``mean``, ``std`` ``[M]`` (distances); ``times`` ``[T]``; ``volume_mean``, ``volume_std``
    ``[T, Q]``; ``restrained`` ``[R]`` indices into the M + Q feature columns. Columns past them
    (the dihedrals' cosines and sines, already of order one) pass through.
    """

    def __init__(self, mean: Tensor, std: Tensor, times: Tensor, volume_mean: Tensor,
                 volume_std: Tensor, restrained: Tensor, sde: VPSDE):
        super().__init__()
        for name, value in (("mean", mean), ("std", std), ("times", times),
                            ("volume_mean", volume_mean), ("volume_std", volume_std)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))
        self.register_buffer("restrained", torch.as_tensor(np.asarray(restrained, np.int64)))
        self.sde = sde

    @classmethod
    def fit(cls, features: MoleculeFeatures, x0: Tensor, restrained, sde: VPSDE, t_min: float,
            generator: torch.Generator) -> BondedPrior:
        """Statistics of the training frames ``x0`` ``[N, 3A]`` (centred, normalised): the
        distances' at t = 0, the volumes' at every tabulated time (VP noise, centred)."""
        with torch.no_grad():
            phi = features(x0)  # [N, F]
            n_pairs = features.n_pairs
            end = n_pairs + len(features.quadruples)
            times = torch.logspace(math.log10(t_min / 2), 0, VOLUME_TABLE_TIMES)
            index = torch.randint(len(x0), (VOLUME_TABLE_FRAMES,), generator=generator)
            frames = x0[index]  # [n, 3A]
            volumes = []
            for t in times:
                mean, std = sde.marginal(t)
                noise = centre_flat(torch.randn(frames.shape, generator=generator),
                                    features.n_atoms)
                volumes.append(features(mean * frames + std * noise)[:, n_pairs:end])
            volumes = torch.stack(volumes)  # [T, n, Q]
        volume_std = (volumes.std(1) if volumes.shape[-1] else volumes.sum(1)).clamp_min(1e-6)
        return cls(phi[:, :n_pairs].mean(0), phi[:, :n_pairs].std(0).clamp_min(1e-6), times,
                   volumes.mean(1), volume_std, restrained, sde)

    @classmethod
    def unfitted(cls, n_pairs: int, n_volumes: int, restrained, sde: VPSDE) -> BondedPrior:
        """Placeholder statistics of the right shapes, for loading a state dict."""
        return cls(torch.zeros(n_pairs), torch.ones(n_pairs),
                   torch.ones(VOLUME_TABLE_TIMES), torch.zeros(VOLUME_TABLE_TIMES, n_volumes),
                   torch.ones(VOLUME_TABLE_TIMES, n_volumes), restrained, sde)

    def volume_statistics(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Tabulated (mean, std) of the volumes at times ``t`` ``[B]``: ``[B, Q]`` each."""
        log_t = t.clamp_min(self.times[0]).log()
        log_times = self.times.log()
        upper = torch.searchsorted(log_times, log_t).clamp(1, len(log_times) - 1)  # [B]
        low, high = log_times[upper - 1], log_times[upper]
        weight = _column(((log_t - low) / (high - low)).clamp(0, 1))  # [B, 1]
        mean = torch.lerp(self.volume_mean[upper - 1], self.volume_mean[upper], weight)
        log_std = torch.lerp(self.volume_std[upper - 1].log(), self.volume_std[upper].log(),
                             weight)
        return mean, log_std.exp()

    def forward(self, phi: Tensor, t: Tensor) -> Tensor:
        """Standardised features z ``[B, F]`` of features ``phi`` ``[B, F]`` at times ``t``."""
        log_mean = _column(self.sde.log_mean(t))  # [B, 1]
        # σ² from log m, not σ: stays smooth for the slightly negative t of the Fokker–Planck
        # term's time differences (E5) near t_min
        variance = (2 * log_mean).exp() * self.std.square() - 2 * torch.expm1(2 * log_mean)
        n_pairs = len(self.mean)
        z = (phi[:, :n_pairs] - log_mean.exp() * self.mean) / variance.sqrt()  # [B, M]
        volume_mean, volume_std = self.volume_statistics(t)  # [B, Q] each
        end = n_pairs + volume_mean.shape[1]
        return torch.cat([z, (phi[:, n_pairs:end] - volume_mean) / volume_std, phi[:, end:]],
                         -1)


class ExpertEnergy(nn.Module):
    """U_k(φ, t) ``[B]``: a SiLU MLP on features φ ``[B, F]`` and time features, plus
    ½ Σ_p k_p φ_p² over the ``restrained`` feature columns (the bonded prior of (E8),
    log k_p learned) when there are any."""

    def __init__(self, n_features: int, hidden: int, layers: int, low: float, high: float,
                 restrained: Tensor | None = None):
        super().__init__()
        self.low, self.high = low, high
        widths = [n_features + 7] + [hidden] * layers
        blocks = []
        for width_in, width_out in pairwise(widths):
            blocks += [nn.Linear(width_in, width_out), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(widths[-1], 1))
        restrained = None if restrained is None or not len(restrained) else restrained.clone()
        self.register_buffer("restrained", restrained, persistent=False)
        if restrained is not None:
            self.log_stiffness = nn.Parameter(torch.zeros(len(restrained)))

    def forward(self, phi: Tensor, t: Tensor) -> Tensor:
        energy = self.net(torch.cat([phi, time_features(t, self.low, self.high)], -1))[:, 0]
        if self.restrained is not None:
            z = phi[:, self.restrained]  # [B, R]
            energy = energy + 0.5 * (self.log_stiffness.exp() * z.square()).sum(-1)
        return energy


class EnergyModel(nn.Module):
    """U_θ(x, t) on ``[B, D]``: features φ(x) (identity for toys), made noise-aware by
    ``prior`` (E8) when given, then the expert whose time interval holds t (E7).
    log q = −U, score = −∇ₓU (E2)."""

    def __init__(self, n_features: int, config: EnergyDiffusionConfig,
                 features: nn.Module | None = None, prior: BondedPrior | None = None):
        super().__init__()
        self.features = features or nn.Identity()
        self.prior = prior
        restrained = None if prior is None else prior.restrained
        bounds = config.bounds
        self.experts = nn.ModuleList(
            ExpertEnergy(n_features, config.hidden, config.layers, low, high, restrained)
            for low, high in pairwise(bounds))
        self.splits = config.experts

    def expert_index(self, t: Tensor) -> Tensor:
        """Index of the expert of each time ``[B]`` (t = 0.1 belongs to [0.1, 0.6))."""
        return torch.bucketize(t, torch.tensor(self.splits, dtype=t.dtype), right=True)

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        """U_θ(x, t) ``[B]`` in kT."""
        phi = self.features(x)  # [B, F]
        if self.prior is not None:
            phi = self.prior(phi, t)
        if len(self.experts) == 1:
            return self.experts[0](phi, t)
        index = self.expert_index(t)
        out = phi.new_zeros(len(x))
        for k, expert in enumerate(self.experts):
            mask = index == k
            if mask.any():
                out = out.index_put((mask,), expert(phi[mask], t[mask]))
        return out

    def log_q(self, x: Tensor, t: Tensor) -> Tensor:
        """log q_θ(x, t) = −U_θ ``[B]`` (unnormalised)."""
        return -self.energy(x, t)

    def log_q_and_score(self, x: Tensor, t: Tensor,
                        create_graph: bool = True) -> tuple[Tensor, Tensor]:
        """(log q ``[B]``, score ``[B, D]``) by autograd (E2); ``create_graph`` keeps the graph
        for training through the score."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_q = self.log_q(x, t)
            (score,) = torch.autograd.grad(log_q.sum(), x, create_graph=create_graph)
        if not create_graph:
            log_q, score = log_q.detach(), score.detach()
        return log_q, score

    def score(self, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
        """∇ₓ log q_θ(x, t) ``[B, D]`` (E2)."""
        return self.log_q_and_score(x, t, create_graph)[1]


# --------------------------------------------------------------------------- training


class TrainedEnergyModel(NamedTuple):
    """The EMA weights of a trained model and the training wall time per expert (s)."""

    model: EnergyModel
    seconds: tuple[float, ...]


def expert_steps(config: EnergyDiffusionConfig) -> list[int]:
    """Training steps per expert, smallest t first (E7)."""
    n = len(config.experts) + 1
    if n == 1:
        return [config.steps]
    small = round(config.small_t_share * config.steps)
    rest = config.steps - small
    return [small] + [rest // (n - 1) + (k < rest % (n - 1)) for k in range(n - 1)]


def training_times(low: float, high: float, midpoint: float | None, n: int,
                   rng: torch.Generator, dtype: torch.dtype) -> Tensor:
    """``n`` training times ``[n]`` on [low, high): uniform, or with a ``midpoint`` half of
    them uniform below it and half above (ScoreMD's "equal weight" time weighting, drawn
    rather than weighted)."""
    u = torch.rand(n, generator=rng, dtype=dtype)
    if midpoint is None:
        return low + (high - low) * u
    below = torch.arange(n) < n // 2
    return torch.where(below, low + (midpoint - low) * u, midpoint + (high - midpoint) * u)


def train_energy_model(x0: Tensor, config: EnergyDiffusionConfig,
                       features: nn.Module | None = None, n_features: int | None = None,
                       project: Callable[[Tensor], Tensor] | None = None,
                       dim: int | None = None, progress: bool = True,
                       prior: BondedPrior | None = None) -> TrainedEnergyModel:
    """Train U_θ on data ``x0`` ``[N, D]`` by DSM (E3), plus α·L_FP (E6) on the smallest-t
    expert, each expert on its own time interval (E7), largest t first; Adam, cosine learning
    rate per expert, gradient norm clipped at 10³, EMA of the weights (decay
    min(``ema``, (1 + step)/(10 + step))).

    ``features`` maps x to the energy network's input (``n_features`` wide; default: x itself);
    ``project`` maps noise into the subspace the diffusion lives in (default: none) and ``dim``
    is that subspace's dimension (default D); ``prior`` makes the features noise-aware and
    adds the bonded prior (E8).
    """
    from tqdm.auto import trange

    x0 = x0.detach()
    n_features = x0.shape[1] if n_features is None else n_features
    dim = x0.shape[1] if dim is None else dim
    project = project or (lambda z: z)
    sde = VPSDE(config.beta_min, config.beta_max)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG untouched
        torch.manual_seed(config.seed)
        model = EnergyModel(n_features, config, features, prior).to(x0.dtype)
    ema = copy.deepcopy(model).requires_grad_(False)
    rng = torch.Generator().manual_seed(config.seed)

    def noise(shape) -> Tensor:
        return project(torch.randn(shape, generator=rng, dtype=x0.dtype))

    def log_q_and_score(x, t):
        return model.log_q_and_score(x, t, create_graph=True)

    bounds = (config.t_min, *config.experts, 1.0)
    midpoints = config.time_midpoints or (None,) * len(model.experts)
    seconds = [0.0] * len(model.experts)
    for k in reversed(range(len(model.experts))):
        steps = expert_steps(config)[k]
        low, high = bounds[k], bounds[k + 1]
        regularised = k == 0 and config.fokker_planck > 0
        params = list(model.experts[k].parameters())
        optimizer = torch.optim.Adam(params, lr=config.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step, n=steps: 0.5 * (1 + math.cos(math.pi * min(1.0, step / n))))
        start = time.perf_counter()
        bar = trange(steps, desc=f"expert {k} t∈[{low:g}, {high:g})"
                     + (" +FP" if regularised else ""), disable=not progress, mininterval=0.5)
        for step in bar:
            index = torch.randint(len(x0), (config.batch_size,), generator=rng)
            x = x0[index]  # [b, D]
            t = training_times(low, high, midpoints[k], config.batch_size, rng, x0.dtype)
            loss = dsm_loss(lambda xt, tt: log_q_and_score(xt, tt)[1], x, t,
                            noise(x.shape), sde).mean()
            if regularised:
                mean, std = sde.marginal(t)
                xt = _column(mean) * x + _column(std) * noise(x.shape)
                loss = loss + config.fokker_planck * fp_loss(
                    log_q_and_score, model.log_q, xt, t, sde, config.fp_sigma,
                    config.fp_time_step, dim, noise).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1e3)
            optimizer.step()
            schedule.step()
            decay = min(config.ema, (1 + step) / (10 + step))  # EMA warm-up
            with torch.no_grad():
                for p_ema, p in zip(ema.experts[k].parameters(), params):
                    p_ema.lerp_(p, 1 - decay)
        seconds[k] = time.perf_counter() - start
    return TrainedEnergyModel(ema.eval(), tuple(seconds))


# --------------------------------------------------------------------------- sampling


def sampler_times(sde: VPSDE, t_min: float, steps: int, grid: str,
                  t_start: float = 1.0) -> Tensor:
    """Decreasing times ``[steps + 1]`` from ``t_start`` to ``t_min`` (float64): uniform in t,
    or uniform in the log signal-to-noise ratio λ = log(m/σ) (:meth:`VPSDE.time_of_log_snr`)."""
    if grid == "uniform":
        return torch.linspace(t_start, t_min, steps + 1, dtype=torch.float64)
    ends = sde.log_snr(torch.tensor([t_start, t_min], dtype=torch.float64))
    times = sde.time_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), steps + 1,
                                               dtype=torch.float64))
    times[0], times[-1] = t_start, t_min  # exact, not round trips through λ
    return times


def sample_energy_model(model: EnergyModel, n: int, dim_shape: tuple[int, ...],
                        config: EnergyDiffusionConfig, rng: torch.Generator,
                        project: Callable[[Tensor], Tensor] | None = None,
                        dtype: torch.dtype = torch.float32, start: Tensor | None = None,
                        t_start: float = 1.0) -> Tensor:
    """``n`` samples ``[n, *dim_shape]`` at t_min: reverse SDE (or the probability-flow ODE,
    ``config.probability_flow``) from N(0, I) at t = 1, ``config.sampler_steps`` Euler–Maruyama
    steps (:func:`~ase_drift.diffusion.samplers.reverse_sde_sample`) on the grid
    ``config.sampler_grid`` (:func:`sampler_times`): i.i.d. samples of the model.

    With ``start`` ``[n, *dim_shape]`` and ``t_start`` < 1, the reverse process starts instead
    from ``start`` noised to ``t_start`` by the forward SDE (E1), x = m x₀ + σ ε (SDEdit, Meng
    et al. 2022), with the share of the steps that the grid puts below ``t_start``: the model
    redraws the structure finer than σ(t_start) and keeps what is coarser."""
    project = project or (lambda z: z)
    sde = VPSDE(config.beta_min, config.beta_max)
    shape = (n, *dim_shape)

    def noise(t=None, t_next=None) -> Tensor:
        return project(torch.randn(shape, generator=rng, dtype=dtype))

    full = sampler_times(sde, config.t_min, config.sampler_steps, config.sampler_grid)
    if start is None:
        x, times = noise(), full
    else:
        if not config.t_min < t_start <= 1:
            raise ValueError(f"t_start must lie in (t_min, 1], got {t_start}")
        steps = max(1, int((full < t_start).sum()))
        times = sampler_times(sde, config.t_min, steps, config.sampler_grid, t_start)
        mean, std = sde.marginal(torch.tensor(t_start, dtype=torch.float64))
        x = float(mean) * start.to(dtype) + float(std) * noise()
    return reverse_sde_sample(model.score, x, times.to(dtype), sde.drift, sde.beta, rng,
                              probability_flow=config.probability_flow, noise_sampler=noise)


# --------------------------------------------------------------------------- molecules


class MoleculeFeatures(nn.Module):
    """Invariant features of flattened coordinates ``[B, 3A]``: the M pairwise distances; for
    chirality, the signed volumes (r_b − r_a)·((r_c − r_a) × (r_d − r_a)) ``[B, Q]`` of given
    quadruples (a centre and three of its bonded neighbours); and (cos ω, sin ω) ``[B, 2T]`` of
    the dihedral ω of each of the ``torsions`` quadruples (one per rotatable bond).

    Distances alone are invariant under reflections too, so an energy of distances gives a
    conformation and its mirror image the same probability: right for achiral molecules (their
    mirror conformations are equally likely), wrong at stereocentres, where i.i.d. sampling from
    noise would produce both enantiomers. The signed volumes change sign under reflection, so
    the energy can tell them apart. The dihedrals (beyond the paper) give the network the
    torsion angles that set a flexible molecule's conformational free energy directly, where
    distances hold them only through 1-4 pairs mixed with everything else; sin ω also flips
    under reflection. The normals' lengths are softened by 10⁻³ (normalised units) so that a
    nearly collinear triple, which noise at large t makes, keeps finite gradients.
    """

    def __init__(self, n_atoms: int, quadruples, torsions=()):
        super().__init__()
        self.n_atoms = n_atoms
        self.distances = PairwiseDistances(n_atoms)
        for name, value in (("quadruples", quadruples), ("torsions", torsions)):
            index = torch.as_tensor(np.asarray(value, dtype=np.int64).reshape(-1, 4))
            self.register_buffer(name, index, persistent=False)

    @property
    def n_pairs(self) -> int:
        return len(self.distances.pair_i)

    @property
    def n_features(self) -> int:
        return self.n_pairs + len(self.quadruples) + 2 * len(self.torsions)

    def forward(self, x: Tensor) -> Tensor:
        coords = x.view(len(x), self.n_atoms, 3)
        a, b, c, d = (coords[:, self.quadruples[:, k]] for k in range(4))  # [B, Q, 3] each
        volumes = ((b - a) * torch.linalg.cross(c - a, d - a)).sum(-1)  # [B, Q]
        a, b, c, d = (coords[:, self.torsions[:, k]] for k in range(4))  # [B, T, 3] each
        axis = c - b
        normal_1 = torch.linalg.cross(b - a, axis)
        normal_2 = torch.linalg.cross(axis, d - c)
        in_plane = torch.linalg.cross(axis / _soft_norm(axis), normal_1)  # IUPAC sign
        lengths = _soft_norm(normal_1) * _soft_norm(normal_2)  # [B, T, 1]
        cos = (normal_1 * normal_2).sum(-1) / lengths[..., 0]  # [B, T]
        sin = (in_plane * normal_2).sum(-1) / lengths[..., 0]
        return torch.cat([self.distances.features(coords), volumes, cos, sin], -1)


def _soft_norm(v: Tensor) -> Tensor:
    """√(‖v‖² + 10⁻⁶) over the last axis, kept ``[..., 1]``."""
    return (v.square().sum(-1, keepdim=True) + 1e-6).sqrt()


def torsion_quadruples(numbers, positions: np.ndarray) -> list[list[int]]:
    """[a, b, c, d] for each rotatable bond b–c (:func:`ase_drift.torsions.rotatable_bonds` of
    ``positions`` ``[N, A, 3]``): a and d are the heaviest other neighbours of b and c (on a
    tie, the lowest index), so a backbone dihedral is read through its heavy atoms."""
    from ..torsions import bond_graph, rotatable_bonds

    numbers = np.asarray(numbers)
    bonded = bond_graph(numbers, positions)

    def heaviest(atom: int, other: int) -> int:
        return min((n for n in bonded[atom] if n != other), key=lambda n: (-numbers[n], n))

    out = []
    for bond in rotatable_bonds(numbers, positions):
        b, c = sorted((bond.fixed, bond.pivot))
        out.append([heaviest(b, c), b, c, heaviest(c, b)])
    return out


def chiral_quadruples(numbers, positions: np.ndarray) -> list[list[int]]:
    """[a, b, c, d] for each atom a with at least three bonded neighbours b < c < d (the first
    three; bonds from the mean distances over ``positions`` ``[N, A, 3]``, as
    :func:`ase_drift.torsions.bond_graph`)."""
    from ..torsions import bond_graph

    return [[a, *near[:3]] for a, near in enumerate(bond_graph(numbers, positions))
            if len(near) >= 3]


def restrained_features(numbers, positions: np.ndarray, quadruples) -> list[int]:
    """The restrained feature columns R of (E8) among the M pair distances
    (``numpy.triu_indices`` order) and then the signed volumes of ``quadruples`` ``[Q, 4]``:
    bonds, 1-3 pairs (two atoms bonded to a common one) and the volumes of quadruples made of
    a centre and three of its bonded neighbours, in the frames ``positions`` ``[N, A, 3]``
    (:func:`ase_drift.torsions.bond_graph`). Volumes of other quadruples (a chain's dihedral
    signs) flip with the conformation and stay unrestrained."""
    from ..torsions import bond_graph

    bonded = bond_graph(numbers, positions)
    n_atoms = len(bonded)
    close = {(min(a, b), max(a, b)) for a, near in enumerate(bonded) for b in near}
    close |= {(b, c) for near in bonded for b in near for c in near if b < c}
    i, j = np.triu_indices(n_atoms, k=1)
    pairs = [k for k, pair in enumerate(zip(i.tolist(), j.tolist())) if pair in close]
    centres = [len(i) + k for k, (a, *others) in enumerate(np.asarray(quadruples).reshape(-1, 4))
               if set(others) <= set(bonded[a])]
    return pairs + centres


@register_sampler("energy-diffusion")
class EnergyDiffusion(TemplateSampler):
    """A trained energy-based diffusion model of one molecule: i.i.d. sampler
    (:meth:`sample_positions`), force field at t_min (:meth:`compute`, :meth:`calculator`) and
    batched Langevin dynamics (:meth:`simulate`).

    Coordinates are centred and divided by ``scale`` (Å), the global standard deviation of the
    centred training frames; the diffusion lives in the centred subspace (D = 3A − 3).
    """

    batch_size = 1000

    def __init__(self, model: EnergyModel, numbers, scale: float, config: EnergyDiffusionConfig,
                 metadata: dict):
        super().__init__(numbers, scale, config, metadata)
        self.model = model.eval()

    def __repr__(self) -> str:
        return (f"EnergyDiffusion({_formula(self.numbers)}, {len(self.model.experts)} "
                f"expert(s), α={self.config.fokker_planck:g}, "
                f"T={self.metadata.get('temperature_K')} K)")

    @property
    def temperature_K(self) -> float:
        """The temperature the model's energies and forces are read at."""
        temperature = self.metadata.get("temperature_K")
        if temperature is None:
            raise ValueError("this model was trained without a temperature: its score is known "
                             "but not in eV; train with temperature_K=")
        return float(temperature)

    @classmethod
    def train(cls, data: Conformations, temperature_K: float | None = None,
              fokker_planck: float | None = None, experts: tuple[float, ...] | None = None,
              steps: int | None = None, seed: int | None = None,
              config: EnergyDiffusionConfig | None = None, quadruples=None,
              progress: bool = True) -> EnergyDiffusion:
        """Train on the positions of ``data`` (forces are not used). ``temperature_K`` (else
        ``config.temperature_K``, else ``data.temperature_K``) fixes the energy scale kT of
        forces and energies; the other keyword arguments, when given, override ``config``.

        ``quadruples`` ``[Q, 4]`` replaces the signed volumes' atom quadruples found by
        :func:`chiral_quadruples` (with ``config.chirality``): a chain without branched atoms,
        such as a coarse-grained backbone, has none, yet the sign of each of its dihedrals
        is a mirror-image property — the volume of four consecutive atoms carries it."""
        if not isinstance(data, Conformations):
            raise TypeError(f"data must be Conformations, got {type(data).__name__}")
        if data.n_atoms < 2:
            raise ValueError("an energy of pairwise distances needs at least 2 atoms")
        overrides = {"temperature_K": check_temperature(temperature_K),
                     "fokker_planck": fokker_planck, "steps": steps, "seed": seed,
                     "experts": None if experts is None else tuple(experts)}
        config = replace(config or EnergyDiffusionConfig(),
                         **{k: v for k, v in overrides.items() if v is not None})
        temperature = config.temperature_K or data.temperature_K
        positions = data.positions - data.positions.mean(axis=1, keepdims=True)  # [N, A, 3]
        scale = float(positions.std())
        if quadruples is None:
            quadruples = (chiral_quadruples(data.numbers, data.positions) if config.chirality
                          else [])
        quadruples = np.asarray(quadruples, dtype=np.int64).reshape(-1, 4).tolist()
        n_atoms = data.n_atoms
        torsions = torsion_quadruples(data.numbers, data.positions) if config.dihedrals else []
        features = MoleculeFeatures(n_atoms, quadruples, torsions)
        x0 = torch.as_tensor(positions / scale, dtype=torch.float32).flatten(1)  # [N, 3A]
        restrained = (restrained_features(data.numbers, data.positions, quadruples)
                      if config.bonded_prior else [])
        prior = (BondedPrior.fit(features, x0, restrained, VPSDE(config.beta_min, config.beta_max),
                                 config.t_min, torch.Generator().manual_seed(config.seed))
                 if config.bonded_prior else None)
        trained = train_energy_model(x0, config, features, features.n_features,
                                     lambda z: centre_flat(z, n_atoms), 3 * n_atoms - 3, progress,
                                     prior)
        metadata = {"numbers": data.numbers.tolist(), "scale_angstrom": scale,
                    "temperature_K": temperature, "chiral_quadruples": quadruples,
                    "restrained_features": restrained, "torsions": torsions,
                    "training_seconds": list(trained.seconds), "training_frames": len(data),
                    "units": {"positions": "Å", "energies": "eV", "forces": "eV/Å"}}
        return cls(trained.model, data.numbers, scale, config, metadata)

    def _project(self, z: Tensor) -> Tensor:
        return centre_flat(z, len(self.numbers))

    def _sample_batch(self, n: int, rng: torch.Generator) -> np.ndarray:
        """``n`` i.i.d. conformations ``[n, A, 3]`` in Å, centred (reverse diffusion to
        t_min)."""
        flat = sample_energy_model(self.model, n, (3 * len(self.numbers),), self.config, rng,
                                   self._project)
        diverged = int((~flat.isfinite().all(-1)).sum())
        if diverged:
            warnings.warn(f"the reverse diffusion diverged for {diverged} of {n} samples (their "
                          f"positions are not finite): the model is stiffer than "
                          f"sampler_steps={self.config.sampler_steps} Euler steps resolve; "
                          f"raise sampler_steps", RuntimeWarning, stacklevel=caller_stacklevel())
        return (flat.view(n, len(self.numbers), 3) * self.scale).numpy().astype(np.float32)

    def denoise(self, positions, t_start: float, seed: int | None = None) -> np.ndarray:
        """Conformations ``positions`` ``[n, A, 3]`` (Å) noised to time ``t_start`` and brought
        back to t_min by the reverse diffusion (SDEdit, :func:`sample_energy_model` with
        ``start``), centred, in Å: the model redraws what is finer than σ(t_start) (bonds,
        angles) and keeps what is coarser (at small ``t_start``, the torsions). ``t_start`` = 1
        forgets the start: an i.i.d. sample."""
        from ..sampler import torch_generator

        n_atoms = len(self.numbers)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
            raise ValueError(f"positions must have shape [n, {n_atoms}, 3], got "
                             f"{positions.shape}")
        if not np.isfinite(positions).all():
            raise ValueError("positions are not finite")
        centred = positions - positions.mean(axis=1, keepdims=True)
        x = torch.as_tensor(centred / self.scale, dtype=torch.float32).flatten(1)  # [n, 3A]
        out = sample_energy_model(self.model, len(x), (3 * n_atoms,), self.config,
                                  torch_generator(seed), self._project, start=x,
                                  t_start=t_start)
        return (out.view(-1, n_atoms, 3) * self.scale).numpy()

    def log_prob(self, positions, divergence: str = "exact", seed: int | None = None,
                 batch_size: int = 64, rtol: float = 1e-5, atol: float = 1e-5) -> np.ndarray:
        """log q ``[n]`` of conformations ``positions`` ``[n, A, 3]`` (Å) under this model's
        probability-flow ODE (F1, F2, F4, F5 of docs/likelihoods.md: from t_min to 1, prior
        N(0, I) on the 3A − 3 centred dimensions; ``divergence`` "exact" or "hutchinson", its
        probes seeded by ``seed``), per Å^(3A − 3) of centred coordinates up to a constant, as
        :meth:`~ase_drift.likelihood.NCEDensity.log_prob`. The energy is a function of
        invariant features, so q is already rotation invariant: no alignment. −U_θ(x, t_min)
        (:meth:`compute`) is the same density up to a constant when the model is consistent
        (what the Fokker–Planck term asks for), at one network evaluation."""
        from ..sampler import torch_generator
        from .flow_likelihood import vp_log_prob

        n_atoms = len(self.numbers)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
            raise ValueError(f"positions must have shape [n, {n_atoms}, 3], got "
                             f"{positions.shape}")
        centred = positions - positions.mean(axis=1, keepdims=True)
        x = torch.as_tensor(centred / self.scale, dtype=torch.float32).flatten(1)  # [n, 3A]
        sde = VPSDE(self.config.beta_min, self.config.beta_max)
        rng = torch_generator(seed)

        def score(z: Tensor, t: Tensor) -> Tensor:  # ∇ log q with its graph, for the divergence
            (grad,) = torch.autograd.grad(self.model.log_q(z, t).sum(), z, create_graph=True)
            return grad

        out = [vp_log_prob(score, chunk, sde.beta, self.config.t_min, dim=3 * n_atoms - 3,
                           project=self._project, divergence=divergence, rng=rng, rtol=rtol,
                           atol=atol).log_prob
               for chunk in x.split(batch_size) if len(chunk)]  # no frames: one empty chunk
        log_p = torch.cat(out).double().numpy() if out else np.zeros(0)
        return log_p - (3 * n_atoms - 3) * math.log(self.scale)

    def compute(self, numbers, positions) -> ForceResult:
        """The model as a :class:`~ase_drift.forces.ForceSource` at t_min: energies
        −kT log q (eV, up to one constant) ``[B]`` and forces kT ∇ log q (eV/Å) ``[B, A, 3]``
        for positions ``[B, A, 3]`` (or ``[A, 3]``) in Å."""
        numbers = np.asarray(numbers).reshape(-1)
        if not np.array_equal(numbers, self.numbers):
            raise ValueError(f"atomic numbers {numbers.tolist()} differ from the model's "
                             f"{self.numbers.tolist()}")
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim == 2:
            positions = positions[None]
        if positions.shape[1:] != (len(self.numbers), 3):
            raise ValueError(f"positions must be [B, {len(self.numbers)}, 3], got "
                             f"{positions.shape}")
        x = torch.as_tensor(positions / self.scale, dtype=torch.float32).flatten(1)
        energy, force, _ = self.force_field(x)
        return ForceResult(energy.double().numpy(),
                           force.double().numpy().reshape(positions.shape))

    def force_field(self, x: Tensor) -> tuple[Tensor, Tensor, float]:
        """(energy eV ``[B]``, force eV/Å ``[B, 3A]``, kT eV) at t_min for normalised, flattened
        coordinates ``x`` ``[B, 3A]`` (Å / scale): E = kT U_θ, F = kT s_θ / scale."""
        kt = units.kT(self.temperature_K)
        t = x.new_full((len(x),), self.config.t_min)
        log_q, score = self.model.log_q_and_score(x, t, create_graph=False)
        return -kt * log_q, kt * score / self.scale, kt

    def calculator(self):
        """An ASE calculator with this model's energies and forces
        (:class:`~ase_drift.calculators.LearnedPotential`)."""
        from ..calculators import LearnedPotential

        return LearnedPotential(self)

    def simulate(self, atoms, n_replicas: int, steps: int, timestep_fs: float = 1.0,
                 friction_per_fs: float = 0.01, record_every: int = 100,
                 seed: int | None = None, progress: bool = True) -> np.ndarray:
        """Batched BAOAB Langevin dynamics of ``n_replicas`` copies of ``atoms`` on the learned
        potential at the model's temperature (:func:`ase_drift.simulate.simulate`); frames
        ``[steps // record_every, n_replicas, A, 3]`` in Å."""
        from ..simulate import simulate

        self.check_template(atoms)
        start = np.repeat(atoms.positions[None], n_replicas, axis=0)
        return simulate(self, self.numbers, start, self.temperature_K, steps,
                        timestep_fs=timestep_fs, friction_per_fs=friction_per_fs,
                        record_every=record_every, seed=seed, progress=progress)

    def save(self, path: str | Path) -> Path:
        metadata = dict(self.metadata, kind=self.kind)
        return save_checkpoint(path, {"energy_diffusion": self.config.as_dict()},
                               self.model.state_dict(), metadata)

    @classmethod
    def from_checkpoint(cls, payload: dict, path: str | Path) -> EnergyDiffusion:
        stored = payload["config"]["energy_diffusion"]
        config = EnergyDiffusionConfig.from_dict({**BEFORE_E8, **stored})
        metadata = {k: v for k, v in payload["metadata"].items() if k != "kind"}
        n_atoms = len(metadata["numbers"])
        features = MoleculeFeatures(n_atoms, metadata["chiral_quadruples"],
                                    metadata.get("torsions", []))
        prior = (BondedPrior.unfitted(features.n_pairs, len(features.quadruples),
                                      metadata["restrained_features"],
                                      VPSDE(config.beta_min, config.beta_max))
                 if config.bonded_prior else None)
        model = EnergyModel(features.n_features, config, features, prior)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the stored configuration") from exc
        return cls(model, metadata["numbers"], metadata["scale_angstrom"], config, metadata)
