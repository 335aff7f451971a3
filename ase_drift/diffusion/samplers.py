"""Samplers for score-based diffusion models, as free functions (k-diffusion style).

Two families live here. The score samplers (:func:`pc_sample`, :func:`reverse_sde_sample`) take
a score function. The denoising samplers of the GPFF paper (Generative Pseudo-Force Fields,
Sect. 3.3 and App. A.2–A.3: :func:`dd_sample`, :func:`sdd_sample`, :func:`ancestral_sample`,
:func:`heun_sample`, :func:`stochastic_heun_sample`, their adaptive variants, and
:func:`shape_constraint`) take a :data:`Denoiser` and a *budget* of network evaluations, and
return a :class:`DenoiseRun`; see "Denoising samplers" below.

Every score sampler takes a score callable ``score_fn(x, sigma)`` returning ∇ₓ log p_σ(x) for
a batch ``x`` ``[B, D]`` (any trailing shape works) at noise levels ``sigma`` ``[B]``, the
starting batch ``x`` (noise at ``sigmas[0]``), a decreasing sequence of noise levels ``sigmas``
ending with 0 (see :mod:`ase_drift.diffusion.schedules`), a ``torch.Generator`` and an optional
``callback`` called after every level. Nothing here knows about molecules: a model acting on
``[B, A, 3]`` passes a score function of that shape, and a ``noise_sampler`` when its
diffusion lives in a subspace (e.g. centred coordinates).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .schedules import edm_sigmas

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x [B, ...], sigma [B]) -> ∇ₓ log p_σ(x) [B, ...]``."""

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise_sampler(sigma, sigma_next) -> standard normal noise shaped like x``."""


def default_noise_sampler(x: Tensor, rng: torch.Generator) -> NoiseSampler:
    """Independent N(0, I) noise shaped like ``x``, drawn from ``rng``."""

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)

    return noise


def check_sigmas(sigmas, like: Tensor) -> Tensor:
    """``sigmas`` as a 1-D tensor on ``like``'s dtype and device; raise ValueError unless it
    is strictly decreasing, positive, and ends with 0 (the noise-free level)."""
    sigmas = torch.as_tensor(sigmas, dtype=like.dtype, device=like.device)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 levels, "
                         f"got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or not bool((sigmas[:-1] > 0).all()):
        raise ValueError("sigmas must be positive and end with 0 (the noise-free level; "
                         "see schedules.append_zero)")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    return sigmas


def langevin_step(score_fn: ScoreFn, x: Tensor, sigma: Tensor, noise: Tensor,
                  snr: float) -> Tensor:
    """One Langevin corrector step at level ``sigma`` ``[B]`` (Song et al. 2021, Algorithm 4):
    x + ε s(x, σ) + √(2ε) z with ε = 2 (snr ‖z‖ / ‖s‖)², norms per sample, averaged over the
    batch.

    On a Gaussian of variance v with the exact score, ε = 2 snr² v and this unadjusted Langevin
    step leaves N(0, v / (1 − snr²)) invariant: repeated corrector steps bias the variance by
    a relative snr² (2.6 % at the usual snr = 0.16).
    """
    score = score_fn(x, sigma)
    noise_norm = noise.flatten(1).norm(dim=-1).mean()
    score_norm = score.flatten(1).norm(dim=-1).mean()
    step = 2 * (snr * noise_norm / score_norm) ** 2
    return x + step * score + (2 * step).sqrt() * noise


def pc_sample(score_fn: ScoreFn, x: Tensor, sigmas, rng: torch.Generator,
              callback: Callable[[dict], None] | None = None, snr: float = 0.16,
              n_corrector: int = 1, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Predictor–corrector sampling of the variance-exploding SDE (Song et al. 2021,
    Algorithm 2, with the noise-free last step of their Appendix G).

    For each pair of consecutive positive levels σ > σ' in ``sigmas``:

    1. predictor (reverse diffusion): x ← x + (σ² − σ'²) s(x, σ) + √(σ² − σ'²) z;
    2. corrector: ``n_corrector`` Langevin steps at σ' (:func:`langevin_step`, ``snr``).

    The last step, from σ_min to 0, adds no noise: x ← x + σ_min² s(x, σ_min), Tweedie's
    posterior mean E[x₀ | x_σmin]. Network evaluations: n + (n − 1)·``n_corrector`` for
    n positive levels.

    Args:
        score_fn: ``score_fn(x, sigma)`` with ``x`` ``[B, ...]`` and ``sigma`` ``[B]``.
        x: the starting batch, distributed as p at ``sigmas[0]`` (for the VE SDE:
            σ_max · N(0, I)); not modified.
        sigmas: strictly decreasing positive levels followed by 0 (``[n + 1]``).
        rng: the generator of all noise draws (unless ``noise_sampler`` is given).
        callback: called after each level with ``{"x", "i", "sigma", "sigma_next",
            "denoised"}`` (``denoised``: the Tweedie estimate x + σ² s(x, σ) before the step).
        snr: signal-to-noise ratio setting the corrector's step size.
        n_corrector: Langevin steps per level (0: the plain reverse-diffusion sampler).
        noise_sampler: ``noise_sampler(sigma, sigma_next)`` → standard normal noise shaped
            like ``x``; default independent N(0, I) from ``rng``.

    Returns:
        The samples, shaped like ``x``.
    """
    if n_corrector < 0:
        raise ValueError(f"n_corrector must be >= 0, got {n_corrector}")
    sigmas = check_sigmas(sigmas, x)
    noise = noise_sampler or default_noise_sampler(x, rng)
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        score = score_fn(x, sigma * ones)
        denoised = x + sigma**2 * score
        if sigma_next == 0:
            x = denoised  # noise-free last step: Tweedie's E[x₀ | x_σ]
        else:
            variance = sigma**2 - sigma_next**2
            x = x + variance * score + variance.sqrt() * noise(sigma, sigma_next)  # predictor
            for _ in range(n_corrector):  # corrector at the new level
                x = langevin_step(score_fn, x, sigma_next * ones, noise(sigma_next, sigma_next),
                                  snr)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_next": sigma_next,
                      "denoised": denoised})
    return x


def reverse_sde_sample(score_fn: ScoreFn, x: Tensor, times,
                       drift_fn: Callable[[Tensor, Tensor], Tensor],
                       g2_fn: Callable[[Tensor], Tensor], rng: torch.Generator,
                       probability_flow: bool = False,
                       callback: Callable[[dict], None] | None = None,
                       noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler–Maruyama integration of a forward SDE dx = f(x, t) dt + g(t) dw backwards in
    time (Song et al. 2021): the reverse-time SDE dx = [f − g² s] dt + g dw̄ (their Eq. 6) or,
    with ``probability_flow``, the deterministic probability-flow ODE dx = [f − ½ g² s] dt
    (their Eq. 13). Here ``score_fn(x, t)`` takes the diffusion *time* ``t`` ``[B]`` where the
    VE samplers above take a noise level.

    Args:
        score_fn: ∇ₓ log p_t(x) for ``x`` ``[B, ...]`` at times ``t`` ``[B]``.
        x: the starting batch, distributed as p at ``times[0]`` (for the VP SDE: N(0, I)).
        times: strictly decreasing, non-negative times ``[n + 1]`` (n steps).
        drift_fn: f(x, t) for a scalar (0-dim) ``t``, shaped like ``x``.
        g2_fn: g(t)² for a scalar ``t``.
        rng: the generator of the noise draws (unless ``noise_sampler`` is given).
        probability_flow: integrate the ODE instead of the SDE (no noise is drawn).
        callback: called after each step with ``{"x", "i", "t", "t_next"}``.
        noise_sampler: ``noise_sampler(t, t_next)`` → standard normal noise shaped like ``x``.

    Returns:
        The batch at ``times[-1]``, shaped like ``x``.
    """
    times = torch.as_tensor(times, dtype=x.dtype, device=x.device)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D sequence of at least 2 entries, got shape "
                         f"{tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()) or times[-1] < 0:
        raise ValueError("times must be strictly decreasing and non-negative")
    noise = noise_sampler or default_noise_sampler(x, rng)
    ones = x.new_ones(x.shape[0])
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        dt = t - t_next  # > 0: a step backwards in time
        g2 = g2_fn(t)
        weight = 0.5 * g2 if probability_flow else g2
        x = x - (drift_fn(x, t) - weight * score_fn(x, t * ones)) * dt
        if not probability_flow:
            x = x + (g2 * dt).sqrt() * noise(t, t_next)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": t_next})
    return x


# --------------------------------------------------------------------------- denoising samplers
#
# Conventions shared by the samplers below (GPFF paper, Sect. 3.2–3.3):
#
# * A denoiser D(x, σ) estimates the clean sample x̂₀. For a GPFF the pseudo-force is
#   F(x) = x̂₀ − x (Å, the paper's Eq. 8 with the pseudo-energy ½‖x − x₀‖² of Eq. 7), the
#   score is ∇ log p_σ(x) = F/σ² (Eq. 11), and a time-agnostic model ignores σ.
# * Noise level estimate (Eq. 18): σ̂ = ‖x̂₀ − x‖ / √d over the d coordinates of a sample that
#   may move (the free atoms' coordinates when ``fixed`` is given). Exact for a point-mass
#   data set (‖F‖² = σ² χ²_d); for data with spread s it reads σ²/√(s² + σ²) (the posterior
#   mean absorbs part of the noise), so σ̂ falls below σ once σ ≲ s.
# * ``nfe`` is a budget: no sample is ever evaluated more than ``nfe`` times. Samples that
#   finish early (DD's tolerance, adaptive schedules) are masked out of the batch: the denoiser
#   is called on the still-active rows only, with ``sigma`` ``[b]`` for those rows.
# * ``fixed`` (bool ``[A]`` or ``[B, A]``, True = never moves; ASE's FixAtoms, the paper's
#   DD+scaffold): the denoiser's output is replaced by the input on fixed atoms (zero
#   pseudo-force), no noise is injected there, and their positions come back bit-identical.
# * The samplers never centre: translations are the caller's business (its prior and its
#   denoiser, e.g. a centred prior and a translation-equivariant model).
# * All noise comes from the ``rng`` argument; dtype and device follow ``x``.

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``denoiser(x [B, ...], sigma [B]) -> x̂₀ [B, ...]``: the estimate of the clean sample. A
time-agnostic GPFF ignores ``sigma`` and returns x + F(x), F the predicted pseudo-force."""

Constraint = Callable[[Tensor, int], Tensor]
"""``constrain(x [B, ...], step) -> x [B, ...]``, applied to the whole batch before each
denoising step (e.g. a closure over :func:`shape_constraint` for DD+shape)."""

DenoiseCallback = Callable[[dict], None]
"""Called after every step with a dict of full-batch tensors: ``x`` ``[B, ...]`` (after the
step), ``i`` (step index), ``active`` ``[B]`` (rows evaluated in this step), ``nfe`` ``[B]``,
``sigma_hat`` ``[B]`` (σ̂ of the step's first evaluation) and, for the EDM-type samplers,
``sigma`` ``[B]`` (the level the step started from: scheduled or, adaptively, planned) and
``sigma_next`` ``[B]`` (the level it stepped to). Entries of inactive rows keep their last
values. Treat the tensors as read-only."""


class DenoiseRun(NamedTuple):
    """The result of a denoising sampler."""

    x: Tensor
    """Final samples, shaped like the input ``[B, ...]``."""
    nfe: Tensor
    """``[B]`` int64: denoiser evaluations spent on each sample (≤ the budget)."""
    sigma_hat: Tensor
    """``[B]``: the last noise level estimate σ̂ = ‖x̂₀ − x‖/√d of each sample."""


def _cap_lengths(vectors: Tensor, limit) -> Tensor:
    """``vectors`` ``[..., 3]`` with each vector shortened to at most ``limit`` (a number or a
    tensor broadcasting to ``[..., 1]``), its direction kept."""
    length = vectors.norm(dim=-1, keepdim=True)  # [..., 1]
    return vectors * (limit / length.clamp_min(torch.finfo(length.dtype).tiny)).clamp(max=1)


def size_trust_region(denoiser: Denoiser, max_step_ratio: float) -> Denoiser:
    """The ``denoiser`` with a trust region scaled by the sample's size: each atom's step
    x̂₀ − x is shortened (its direction kept) to at most ``max_step_ratio`` × R, where
    R = (mean over atoms of ‖x_i − x̄‖²)^½ is the sample's radius of gyration (unweighted,
    about its centroid x̄).

    Denoising moves an atom by a few times the sample's size at most: inwards from a wide prior,
    outwards from a compact start. Far outside the training data (atoms nearly on top of each
    other after an over-relaxed step) a network can return steps of 10⁹ Å that throw a sample
    out of its range for good; a trust region in units of R stops that and leaves every
    plausible step alone. Samplers then see the capped x̂₀ everywhere, σ̂ included.

    Args:
        denoiser: ``denoiser(x [B, A, 3], sigma [B]) -> x̂₀``, atoms on the second axis.
        max_step_ratio: > 0, the longest step of an atom in units of R.

    Returns:
        A :data:`Denoiser` of the same signature.
    """
    if not _is_positive(max_step_ratio):
        raise ValueError(f"max_step_ratio must be a positive number, got {max_step_ratio!r}")

    def capped(x: Tensor, sigma: Tensor) -> Tensor:
        step = denoiser(x, sigma) - x  # [B, A, 3]
        radius = (x - x.mean(dim=1, keepdim=True)).pow(2).sum(dim=-1).mean(dim=-1).sqrt()  # [B]
        return x + _cap_lengths(step, max_step_ratio * radius[:, None, None])

    return capped


def noise_level(x: Tensor, denoised: Tensor, n_coords: Tensor | float | None = None) -> Tensor:
    """The GPFF noise-level estimate (paper's Eq. 18) σ̂ = ‖x̂₀ − x‖ / √d per sample ``[B]``.

    ``d`` = ``n_coords`` (a number or ``[B]``; default: all coordinates of a sample). On a
    point-mass data set with x = x₀ + σε, d·σ̂²/σ² ~ χ²_d.
    """
    if n_coords is None:
        n_coords = x[0].numel()
    squared = (denoised - x).flatten(1).pow(2).sum(dim=1)  # [B]
    return (squared / n_coords).sqrt()


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating-point torch.Tensor")
    if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must be a non-empty batch [B, ...] of samples, got shape "
                         f"{tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or inf)")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) \
        and value >= 1


def _check_budget(nfe) -> int:
    if not _is_count(nfe):
        raise ValueError(f"nfe (the budget of denoiser evaluations per sample) must be an "
                         f"integer >= 1, got {nfe!r}")
    return int(nfe)


def _check_rng(rng) -> None:
    if not isinstance(rng, torch.Generator):
        raise TypeError(f"rng must be a torch.Generator, got {type(rng).__name__}")


def _is_positive(value) -> bool:
    return isinstance(value, numbers.Real) and value > 0


def _check_optional_positive(name: str, value, what: str) -> None:
    if value is not None and not _is_positive(value):
        raise ValueError(f"{name} must be None or a positive {what}, got {value!r}")


def _free_mask(fixed, x: Tensor) -> Tensor | None:
    """``fixed`` (``[A]`` or ``[B, A]``, True = fixed) as a mask of movable entries
    broadcastable to ``x`` (``[B, A, 1, ...]``), or None."""
    if fixed is None:
        return None
    fixed = torch.as_tensor(fixed, device=x.device)
    if fixed.dtype != torch.bool:
        raise ValueError(f"fixed must be a boolean mask, got dtype {fixed.dtype}")
    batch, n_atoms = x.shape[:2]
    if fixed.shape == (n_atoms,):
        fixed = fixed.expand(batch, n_atoms)
    elif fixed.shape != (batch, n_atoms):
        raise ValueError(f"fixed must have shape [A] = ({n_atoms},) or [B, A] = ({batch}, "
                         f"{n_atoms}) for x of shape {tuple(x.shape)}, got {tuple(fixed.shape)}")
    return (~fixed).reshape(batch, n_atoms, *([1] * (x.ndim - 2)))


class _Evaluations:
    """Denoiser calls on the active rows of a batch: fixed-atom masking, σ̂ and NFE counts."""

    def __init__(self, denoiser: Denoiser, x: Tensor, fixed):
        self.denoiser = denoiser
        self.free = _free_mask(fixed, x)  # [B, A, 1, ...] or None
        per_sample = x[0].numel()
        if self.free is None:
            self.n_coords = x.new_full((x.shape[0],), float(per_sample))  # [B]
        else:
            free_atoms = self.free.flatten(1).sum(dim=1)  # [B]
            self.n_coords = (free_atoms * (per_sample // x.shape[1])).to(x.dtype).clamp_min(1)
        self.nfe = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)  # [B]

    def __call__(self, x: Tensor, sigma: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """x̂₀ ``[b, ...]`` and σ̂ ``[b]`` for ``x`` = the batch's ``rows`` at levels ``sigma``."""
        denoised = self.denoiser(x, sigma)
        if not isinstance(denoised, Tensor) or denoised.shape != x.shape:
            raise ValueError(f"the denoiser must return a tensor shaped like its input "
                             f"{tuple(x.shape)}, got {getattr(denoised, 'shape', type(denoised))}")
        denoised = denoised.to(x.dtype)
        if self.free is not None:
            denoised = torch.where(self.free[rows], denoised, x)  # zero pseudo-force on fixed
        self.nfe[rows] += 1
        return denoised, noise_level(x, denoised, self.n_coords[rows])

    def noise(self, like: Tensor, rows: Tensor, rng: torch.Generator) -> Tensor:
        """N(0, I) noise shaped like ``like`` (the batch's ``rows``), zero on fixed atoms."""
        z = torch.randn(like.shape, generator=rng, dtype=like.dtype, device=like.device)
        return z if self.free is None else z * self.free[rows]

    def restore_fixed(self, x: Tensor, reference: Tensor) -> Tensor:
        """``x`` with the fixed atoms put back at their positions in ``reference``."""
        return x if self.free is None else torch.where(self.free, x, reference)


def _rows_view(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``[b]`` reshaped to broadcast against ``like`` ``[b, ...]``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


# ---- direct denoising (GPFF paper, Eqs. 13–16)


def _direct_denoising(denoiser: Denoiser, x: Tensor, nfe: int, *, tolerance: float | None,
                      step_size: float, step_size_below: float | None,
                      max_overshoot: float | None, noise_scale: float,
                      rng: torch.Generator | None,
                      constrain: Constraint | None, fixed,
                      callback: DenoiseCallback | None) -> DenoiseRun:
    """The loop shared by :func:`dd_sample` and :func:`sdd_sample`."""
    _check_batch(x)
    nfe = _check_budget(nfe)
    if not (isinstance(step_size, numbers.Real) and 0 < step_size < 2):
        raise ValueError(f"step_size must be in (0, 2) (an exact pseudo-force contracts the "
                         f"error by |1 - step_size| per step), got {step_size!r}")
    _check_optional_positive("step_size_below", step_size_below, "noise level")
    _check_optional_positive("max_overshoot", max_overshoot, "length")
    evaluate = _Evaluations(denoiser, x, fixed)
    x = x.clone()  # [B, ...]
    start = x.clone()  # positions the fixed atoms keep
    # The level passed to the denoiser: the previous σ̂; at first the RMS coordinate, which is
    # σ for a centred isotropic prior N(0, σ² I). A time-agnostic GPFF ignores it.
    sigma_hat = x.flatten(1).pow(2).mean(dim=1).sqrt()  # [B]
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # [B]
    for step in range(nfe):
        if constrain is not None:
            constrained = evaluate.restore_fixed(constrain(x, step), start)
            x = torch.where(_rows_view(active, x), constrained, x)
        rows = active.nonzero().squeeze(1)  # [b]
        denoised, estimate = evaluate(x[rows], sigma_hat[rows], rows)
        # Eq. 14, x ← x + λ F(x), written x̂₀ + (λ − 1) F so that λ = 1 gives x̂₀ exactly
        steps = torch.full_like(estimate, step_size)  # [b] λ per sample
        if step_size_below is not None:  # far from equilibrium x̂₀ is the posterior mean: λ = 1
            steps = torch.where(estimate < step_size_below, steps, torch.ones_like(steps))
        overshoot = _rows_view(steps - 1, denoised) * (denoised - x[rows])  # [b, ...]
        if max_overshoot is not None:  # a trust radius per atom on the extrapolation
            overshoot = _cap_lengths(overshoot, max_overshoot)
        moved = denoised + overshoot
        if noise_scale > 0 and nfe > 1:  # SDD, Eq. 15: η_k = η (K − 1 − k)/(K − 1)
            eta = noise_scale * (nfe - 1 - step) / (nfe - 1)
            moved = moved + eta * evaluate.noise(moved, rows, rng)
        x[rows] = moved
        sigma_hat[rows] = estimate
        stepped = active.clone()
        if tolerance is not None:
            active[rows] = estimate >= tolerance
        if callback is not None:
            callback({"x": x, "i": step, "active": stepped, "nfe": evaluate.nfe,
                      "sigma_hat": sigma_hat})
        if not bool(active.any()):
            break
    return DenoiseRun(x, evaluate.nfe, sigma_hat)


def dd_sample(denoiser: Denoiser, x: Tensor, nfe: int, *, tolerance: float | None = None,
              step_size: float = 1.0, step_size_below: float | None = None,
              max_overshoot: float | None = None, constrain: Constraint | None = None, fixed=None,
              callback: DenoiseCallback | None = None) -> DenoiseRun:
    """Direct denoising (DD; GPFF paper Eqs. 13–14): x ← x + λ F(x), repeated; λ = 1 (the
    paper's) moves to x̂₀ = x + F(x).

    Near a minimum of the quadratic pseudo-PES one step of λ = 1 lands on it (Eq. 13); from far
    away the prediction is a blurred average, so DD iterates. λ is the step of steepest descent
    on the pseudo-PES: an exact pseudo-force contracts the error by |1 − λ| per step, and a
    learned one that corrects only a fraction a of a small displacement (its linear response;
    regression to the mean makes a < 1) contracts it fastest near λ = 1/a. That holds near
    equilibrium only: far from it x̂₀ is the posterior mean, where λ = 1 is right and λ > 1
    overshoots, so ``step_size_below`` can restrict λ to steps whose σ̂ is below it, and
    ``max_overshoot`` caps, per atom, how far a step goes past x̂₀: an atom whose F is large is
    far from its place even when the molecule's σ̂ is small, and extrapolating it throws it
    out of the molecule.

    A sample stops when the noise level estimate of its last evaluation σ̂ = ‖F‖/√d is below
    ``tolerance`` (the paper's force threshold, per coordinate: Eq. 14 on ‖F‖ reads
    σ̂ < ε/√d) — that evaluation's update is still applied — or when the budget ``nfe`` is
    spent. Detecting convergence costs an evaluation at the converged point: on a point-mass
    data set DD reaches x₀ after one evaluation and stops after the second (nfe 2).

    Args:
        denoiser: ``denoiser(x [b, ...], sigma [b]) -> x̂₀``; it receives the previous σ̂ (at
            first the RMS coordinate of each sample).
        x: prior samples ``[B, ...]`` (e.g. ``[B, A, 3]`` in Å); not modified.
        nfe: budget of denoiser evaluations per sample (≥ 1).
        tolerance: stop a sample once σ̂ < ``tolerance`` (same unit as x); None runs the budget.
        step_size: λ in (0, 2); σ̂ is measured on F, whatever λ.
        step_size_below: apply λ only to a sample whose σ̂ of this evaluation is below it (same
            unit as x), and step with λ = 1 above; None applies λ at every step.
        max_overshoot: the largest length of an atom's (λ − 1) F, the part of its step
            beyond x̂₀ (same unit as x; a longer one is shortened, its direction kept): a trust
            radius per atom (a row of the last axis) on the extrapolation. None: no cap.
        constrain: ``constrain(x [B, ...], step)``, applied before every step to the whole
            batch; only rows still running take the result (DD+shape: a closure over
            :func:`shape_constraint`).
        fixed: bool ``[A]`` or ``[B, A]`` of atoms that never move (DD+scaffold).
        callback: see :data:`DenoiseCallback`.

    Returns:
        :class:`DenoiseRun`.
    """
    if tolerance is not None and not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    return _direct_denoising(denoiser, x, nfe, tolerance=tolerance, step_size=step_size,
                             step_size_below=step_size_below, max_overshoot=max_overshoot,
                             noise_scale=0.0, rng=None,
                             constrain=constrain, fixed=fixed, callback=callback)


def sdd_sample(denoiser: Denoiser, x: Tensor, nfe: int, rng: torch.Generator, *,
               noise_scale: float = 0.1, step_size: float = 1.0,
               step_size_below: float | None = None, max_overshoot: float | None = None,
               constrain: Constraint | None = None, fixed=None,
               callback: DenoiseCallback | None = None) -> DenoiseRun:
    """Stochastic direct denoising (SDD; GPFF paper Eq. 15): exactly ``nfe`` steps

        x_{k+1} = x_k + λ F(x_k) + η_k z_k,  z_k ~ N(0, I),  η_k = η (K − 1 − k)/(K − 1),

    K = ``nfe``, a linearly decaying noise scale from η = ``noise_scale`` (same unit as x) at
    the first step to 0 at the last; with the paper's λ = 1, x_k + F(x_k) = x̂₀(x_k) and the
    returned samples are denoised outputs. (The paper's exact schedule
    was lost in extraction; this is the linear decay its prose describes, ending noise-free.
    η = 0.1 Å is a guess to tune per model.) No tolerance: the noise schedule fixes the steps.

    Args:
        denoiser, x, nfe, constrain, fixed, callback: as in :func:`dd_sample`.
        rng: generator of the injected noise.
        noise_scale: η ≥ 0, the first step's noise standard deviation per coordinate.
        step_size, step_size_below, max_overshoot: λ in (0, 2), where it applies and the cap
            per atom on its extrapolation, as in :func:`dd_sample`.

    Returns:
        :class:`DenoiseRun` (``nfe`` equals the budget for every sample).
    """
    _check_rng(rng)
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    return _direct_denoising(denoiser, x, nfe, tolerance=None, step_size=step_size,
                             step_size_below=step_size_below, max_overshoot=max_overshoot,
                             noise_scale=float(noise_scale),
                             rng=rng, constrain=constrain, fixed=fixed, callback=callback)


def shape_constraint(x: Tensor, target_variances, strictness: float) -> Tensor:
    """DD+shape's correction (GPFF paper Eq. 16, App. A.5): pull each sample's principal
    variances towards a target.

    Per sample ``[A, 3]``: centre it (unweighted mean over atoms, c), take its covariance
    C = Yᵀ Y / A of the centred coordinates Y with eigen-decomposition C = V diag(λ) Vᵀ
    (principal frame V, principal variances λ, both sorted large to small), rescale the
    principal coordinates by √(τ/λ) so that they have the target variances τ (also sorted large
    to small), rotate back and re-centre, and interpolate with the strictness s:

        x' = (1 − s) x + s (c + Y V diag(√(τ/λ)) Vᵀ).

    Rotating back (the paper leaves samples in their principal frame) makes the map
    rotation-equivariant and the identity at s = 0; for an equivariant model the orientation is
    immaterial. At s = 1 the principal variances are exactly τ. Directions of (numerically)
    zero variance cannot be rescaled: λ is floored at machine epsilon × trace C.

    Args:
        x: samples ``[B, A, 3]``.
        target_variances: τ ``[B, 3]`` or ``[3]``, positive (unit² of x).
        strictness: s in [0, 1].

    Returns:
        ``[B, A, 3]``.
    """
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != 3 or x.shape[1] < 2:
        raise ValueError(f"x must be [B, A, 3] with at least 2 atoms, got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if not 0 <= strictness <= 1:
        raise ValueError(f"strictness must be in [0, 1], got {strictness}")
    target = torch.as_tensor(target_variances, dtype=x.dtype, device=x.device)
    if target.shape not in ((3,), (x.shape[0], 3)):
        raise ValueError(f"target_variances must be [3] or [B, 3] = [{x.shape[0]}, 3], got "
                         f"{tuple(target.shape)}")
    if not bool((target > 0).all()):
        raise ValueError("target_variances must be positive")
    centre = x.mean(dim=1, keepdim=True)  # [B, 1, 3]
    centred = x - centre  # [B, A, 3]
    covariance = centred.transpose(1, 2) @ centred / x.shape[1]  # [B, 3, 3]
    variances, frame = torch.linalg.eigh(covariance)  # ascending: [B, 3], [B, 3, 3]
    variances, frame = variances.flip(-1), frame.flip(-1)  # large to small
    floor = torch.finfo(x.dtype).eps * variances.sum(dim=-1, keepdim=True)  # [B, 1]
    target = target.expand(x.shape[0], 3).sort(dim=-1, descending=True).values  # [B, 3]
    scale = (target / variances.clamp_min(floor)).sqrt()  # [B, 3]
    corrected = centre + ((centred @ frame) * scale[:, None, :]) @ frame.transpose(1, 2)
    return (1 - strictness) * x + strictness * corrected


# ---- EDM-type samplers and their adaptive variants (GPFF paper Sect. 3.3, Eqs. 17–19)


class _Levels:
    """The noise levels an EDM-type run steps through.

    Fixed: the EDM schedule of ``n_levels`` levels then 0 (:func:`edm_sigmas`, Eq. 17).

    Adaptive (the paper's AS; its update formulas were lost in extraction, this is our
    reconstruction of the prose): in ρ-space u = σ^(1/ρ) the schedule takes equal steps Δ.
    Each step starts from the level estimated by the denoiser, σ̂_i (Eq. 18), instead of the
    planned one σ_i, and plans the next level as σ_{i+1} = (û_i − Δ_i)^ρ with

    * Δ_0 = Δ_target = (u_max − u_min)/(N_target − 1), an ambitious schedule of N_target levels
      (N_target = 1: straight to 0);
    * Δ_i = max(Δ_target + (u_i − û_i), Δ_slow) for i ≥ 1: the target step adjusted by the
      observed excess progress of the previous step, Δ̂_i − Δ_{i−1} = u_i − û_i (Eq. 19: the
      observed step Δ̂_i = û_{i−1} − û_i against the planned Δ_{i−1} = û_{i−1} − u_i). A model
      that denoises faster than planned takes longer steps and ends early; a slower one takes
      shorter steps. Adopting Δ̂_i itself as the next step would also do that, but it turns the
      χ² noise of σ̂ into a random walk of the step size (measured: with an exact model a few
      samples then crawl at the floor until the budget ends), so the excess is re-applied to
      Δ_target at every step instead;
    * Δ_i is floored at the upper-bound schedule's step Δ_slow = (u_max − u_min)/(N_max − 1),
      so that a step without progress (or going backwards) does not stall the run;
    * a planned level below σ_min becomes 0 (the final, noise-free step);
    * σ_{i+1} ≤ σ^max_{i+1}, the (i+1)-th level of the non-adaptive schedule of N_max levels
      (= the budget), which ends the run within the budget.
    """

    def __init__(self, n_levels: int, sigma_min: float, sigma_max: float, rho: float,
                 adaptive: bool, target_steps: int | None, x: Tensor):
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        self.upper = edm_sigmas(n_levels, sigma_min, sigma_max, rho, dtype=x.dtype,
                                device=x.device)  # [N_max + 1]
        self.adaptive, self.rho, self.n_levels = adaptive, rho, n_levels
        if target_steps is None:
            target_steps = (n_levels + 1) // 2
        if not _is_count(target_steps):
            raise ValueError(f"target_steps must be an integer >= 1, got {target_steps!r}")
        self.target_steps = int(target_steps)
        span = sigma_max ** (1 / rho) - sigma_min ** (1 / rho)
        self.u_min = sigma_min ** (1 / rho)
        self.delta_target = span / (target_steps - 1) if target_steps > 1 else math.inf
        self.delta_slow = span / max(n_levels - 1, 1)
        self.u_planned = x.new_zeros(x.shape[0])  # [B] u of each sample's planned level

    def start(self, batch: int) -> Tensor:
        return self.upper[0].expand(batch).clone()  # [B]

    def next(self, step: int, reference: Tensor, rows: Tensor) -> Tensor:
        """The level ``[b]`` to step to from ``reference`` ``[b]`` (the current level: scheduled,
        or σ̂ in adaptive runs) at step ``step``, for the batch's ``rows``."""
        bound = self.upper[step + 1]
        if not self.adaptive:
            return bound.expand(len(rows)).clone()
        u = reference ** (1 / self.rho)  # [b] û_i
        if step == 0:
            delta = torch.full_like(u, self.delta_target)
        else:  # Δ_target + (Δ̂_i − Δ_{i−1}), Eq. 19
            delta = (self.delta_target + self.u_planned[rows] - u).clamp_min(self.delta_slow)
        planned = u - delta
        planned = torch.where(planned >= self.u_min, planned.clamp_min(0) ** self.rho,
                              torch.zeros_like(planned))
        planned = torch.minimum(planned, bound)
        self.u_planned[rows] = planned ** (1 / self.rho)
        return planned


def _denoising_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """Euler step of the probability-flow ODE dx/dσ = (x − D)/σ from σ to σ' (EDM Alg. 1, line
    5): x' = x + (σ' − σ)(x − D)/σ = D + (σ'/σ)(x − D), which is D at σ' = 0."""
    ratio = torch.where(sigma_next > 0, sigma_next / sigma.clamp_min(torch.finfo(x.dtype).tiny),
                        torch.zeros_like(sigma))  # [b]
    return denoised + _rows_view(ratio, x) * (x - denoised)


def _edm_run(evaluate: _Evaluations, x: Tensor, levels: _Levels, step_fn,
             callback: DenoiseCallback | None) -> DenoiseRun:
    """Step every sample from its planned level to the next until it reaches 0.

    ``step_fn(x [b, ...], sigma [b], step, rows) -> (x' [b, ...], σ̂ [b], σ' [b])`` does the
    sampler-specific work for the batch's ``rows`` at their planned levels ``sigma``: it calls
    ``evaluate``, asks ``levels.next`` for σ' and returns the updated samples, the σ̂ of its
    first evaluation and σ' (0: the sample is done).
    """
    batch = x.shape[0]
    x = x.clone()  # [B, ...]
    planned = levels.start(batch)  # [B] the level each sample's next step starts from
    sigma_hat = torch.zeros_like(planned)  # [B]
    active = torch.ones(batch, dtype=torch.bool, device=x.device)  # [B]
    for step in range(levels.n_levels):
        rows = active.nonzero().squeeze(1)  # [b]
        started = planned.clone()
        if len(rows) == batch:  # no masking yet: skip the gathers
            x, sigma_hat, planned = step_fn(x, planned, step, rows)
        else:
            x[rows], sigma_hat[rows], planned[rows] = step_fn(x[rows], planned[rows], step, rows)
        stepped = active.clone()
        active[rows] = planned[rows] > 0
        if callback is not None:
            callback({"x": x, "i": step, "active": stepped, "nfe": evaluate.nfe,
                      "sigma_hat": sigma_hat, "sigma": started, "sigma_next": planned})
        if not bool(active.any()):
            break
    return DenoiseRun(x, evaluate.nfe, sigma_hat)


def _heun_update(evaluate: _Evaluations, x: Tensor, denoised: Tensor, sigma: Tensor,
                 sigma_next: Tensor, rows: Tensor, adaptive: bool) -> Tensor:
    """EDM Algorithm 1, lines 5–8: the Euler step from σ to σ', then, where σ' > 0, the
    trapezoidal correction x' = x + (σ' − σ)(d + d')/2 with d = (x − D(x, σ))/σ and
    d' = (x_E − D(x_E, σ'))/σ_E at the Euler point x_E (a second evaluation).

    σ_E is the level of x_E: the planned σ', or in adaptive runs, as for every other level
    there, its estimate σ̂_E (Eq. 18). A step that falls short of its plan (σ̂_E ≫ σ', common
    after AS's long steps) would otherwise divide a force of size σ̂_E by σ' and throw atoms
    out of the molecule; for an exact model σ̂_E = σ' and the two agree."""
    x_next = _denoising_step(x, denoised, sigma, sigma_next)  # [b, ...]
    second = (sigma_next > 0).nonzero().squeeze(1)  # [b']
    if len(second) > 0:
        x_euler, level = x_next[second], sigma_next[second]
        denoised_euler, estimate_euler = evaluate(x_euler, level, rows[second])
        slope = (x[second] - denoised[second]) / _rows_view(sigma[second], x_euler)
        level_euler = estimate_euler.clamp_min(torch.finfo(x.dtype).tiny) if adaptive else level
        slope_euler = (x_euler - denoised_euler) / _rows_view(level_euler, x_euler)
        x_next[second] = x[second] + _rows_view(level - sigma[second], x_euler) * 0.5 * (
            slope + slope_euler)
    return x_next


def _edm_setup(denoiser: Denoiser, x: Tensor, nfe: int, evaluations_per_level: int, fixed,
               sigma_min: float, sigma_max: float, rho: float, adaptive: bool,
               target_steps: int | None) -> tuple[_Evaluations, _Levels]:
    _check_batch(x)
    nfe = _check_budget(nfe)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    n_levels = (nfe + evaluations_per_level - 1) // evaluations_per_level
    evaluate = _Evaluations(denoiser, x, fixed)
    levels = _Levels(n_levels, sigma_min, sigma_max, rho, adaptive, target_steps, x)
    return evaluate, levels


def ancestral_sample(denoiser: Denoiser, x: Tensor, nfe: int, rng: torch.Generator, *,
                     sigma_min: float, sigma_max: float, rho: float = 7.0,
                     adaptive: bool = False, target_steps: int | None = None, fixed=None,
                     callback: DenoiseCallback | None = None) -> DenoiseRun:
    """Ancestral sampling of the variance-exploding diffusion (Song et al. 2021, App. F; the
    GPFF paper's baseline) on the EDM levels (Eq. 17): ``nfe`` levels, one evaluation each.

    From level σ to σ' < σ, with D = D(x, σ), draw x' from the Gaussian posterior of the
    point-mass model x₀ = D:

        x' = D + (σ'²/σ²)(x − D) + σ' √(1 − σ'²/σ²) z,  z ~ N(0, I),

    i.e. the reverse-diffusion mean x + (σ² − σ'²)·score with score = (D − x)/σ² (Eq. 11) and
    variance σ'²(σ² − σ'²)/σ² (k-diffusion's Euler-ancestral with η = 1). The last step, from
    σ_min to 0, returns D.

    Adaptive (AS, Eqs. 18–19): σ is replaced by the estimate σ̂ of the step's evaluation and σ'
    is planned by the adaptive schedule (:class:`_Levels`), at most ``nfe`` evaluations.

    Args:
        denoiser: ``denoiser(x [b, ...], sigma [b]) -> x̂₀``, called with the scheduled (or
            planned) level.
        x: samples of the prior ``[B, ...]``, e.g. σ_max·N(0, I); not modified.
        nfe: budget of evaluations per sample (= the number of levels when not adaptive).
        rng: generator of the injected noise.
        sigma_min, sigma_max, rho: the EDM schedule (GPFF on QM9: 0.01 Å, 30 Å, ρ = 5).
        adaptive: the paper's adaptive sampling (AS): each step starts from the denoiser's
            estimate σ̂ instead of the scheduled level, the step size follows the observed
            progress (:class:`_Levels`), finished samples leave the batch, and no sample
            exceeds the budget.
        target_steps: AS's ambitious target schedule, in levels (default: half the budget's
            levels, rounded up; the paper's value was lost in extraction).
        fixed: bool ``[A]`` or ``[B, A]`` of atoms that never move.
        callback: see :data:`DenoiseCallback`.

    Returns:
        :class:`DenoiseRun`.
    """
    _check_rng(rng)
    evaluate, levels = _edm_setup(denoiser, x, nfe, 1, fixed, sigma_min, sigma_max, rho,
                                  adaptive, target_steps)

    def step(x: Tensor, sigma: Tensor, i: int, rows: Tensor):
        denoised, estimate = evaluate(x, sigma, rows)
        current = estimate if adaptive else sigma
        sigma_next = levels.next(i, current, rows)
        ratio = (sigma_next / current.clamp_min(torch.finfo(x.dtype).tiny)).clamp(max=1)
        ratio = _rows_view(torch.where(sigma_next > 0, ratio, torch.zeros_like(ratio)), x)
        up = _rows_view(sigma_next, x) * (1 - ratio**2).sqrt()  # σ_up
        x_next = denoised + ratio**2 * (x - denoised) + up * evaluate.noise(x, rows, rng)
        return x_next, estimate, sigma_next

    return _edm_run(evaluate, x, levels, step, callback)


def heun_sample(denoiser: Denoiser, x: Tensor, nfe: int, *, sigma_min: float,
                sigma_max: float, rho: float = 7.0, adaptive: bool = False,
                target_steps: int | None = None, fixed=None,
                callback: DenoiseCallback | None = None) -> DenoiseRun:
    """Heun's second-order integration of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ
    (Karras et al. 2022, Algorithm 1) on N = ⌈``nfe``/2⌉ EDM levels: two evaluations per step
    except the last, an Euler step from σ_min to 0 (x = D), so 2N − 1 ≤ ``nfe`` evaluations
    (an even budget leaves one unused).

    Adaptive (AS): each step starts from the estimate σ̂ (Eq. 18) of its first evaluation and
    steps to the level the adaptive schedule plans (:class:`_Levels`); the corrector's second
    evaluation is called with the planned level, and its slope divides by that evaluation's
    estimate σ̂_E (see ``_heun_update``).

    Args:
        denoiser, x, nfe, sigma_min, sigma_max, rho, adaptive, target_steps, fixed, callback:
            as in :func:`ancestral_sample`.

    Returns:
        :class:`DenoiseRun`.
    """
    evaluate, levels = _edm_setup(denoiser, x, nfe, 2, fixed, sigma_min, sigma_max, rho,
                                  adaptive, target_steps)

    def step(x: Tensor, sigma: Tensor, i: int, rows: Tensor):
        denoised, estimate = evaluate(x, sigma, rows)
        current = estimate if adaptive else sigma
        sigma_next = levels.next(i, current, rows)
        return (_heun_update(evaluate, x, denoised, current, sigma_next, rows, adaptive),
                estimate, sigma_next)

    return _edm_run(evaluate, x, levels, step, callback)


def stochastic_heun_sample(denoiser: Denoiser, x: Tensor, nfe: int, rng: torch.Generator, *,
                           sigma_min: float, sigma_max: float, rho: float = 7.0,
                           s_churn: float = 60.0, s_tmin: float = 0.01, s_tmax: float = 15.0,
                           s_noise: float = 1.0, adaptive: bool = False,
                           target_steps: int | None = None, churn_correction: float = 0.5,
                           fixed=None, callback: DenoiseCallback | None = None) -> DenoiseRun:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on N = ⌈``nfe``/2⌉ levels.

    Each step first raises the level σ to σ̂⁺ = σ(1 + γ) by adding noise,
    x̂ = x + √(σ̂⁺² − σ²) S_noise z, with γ = min(S_churn/N, √2 − 1) for σ in [S_tmin, S_tmax]
    (else 0), then takes a Heun step (:func:`heun_sample`) from σ̂⁺ to the next level. The
    defaults are the paper's QM9 values (App. A.2: S_churn 60, S_tmin 0.01 Å, S_tmax 15 Å,
    S_noise 1); S_churn = 0 is :func:`heun_sample`.

    Adaptive (AS, App. A.3): the Heun step starts from the estimate σ̂ at x̂, and the schedule
    adapts to the pre-injection level, estimated without another evaluation by rescaling,
    σ̂_pre = σ̂ / (1 + γ)^λ with λ = ``churn_correction`` (λ = 1 removes all the injected
    noise, exact for an exact model; the paper found a conservative λ best as its model
    underestimates the injected noise, and its value was lost in extraction: 0.5 is our
    choice). N in γ is then ``target_steps``.

    Args:
        denoiser, x, nfe, rng, sigma_min, sigma_max, rho, adaptive, target_steps, fixed,
            callback: as in :func:`ancestral_sample`.
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn parameters (levels in x's unit).
        churn_correction: λ ≥ 0 above (adaptive runs only).

    Returns:
        :class:`DenoiseRun`.
    """
    _check_rng(rng)
    if s_churn < 0 or s_noise < 0 or churn_correction < 0:
        raise ValueError(f"s_churn, s_noise and churn_correction must be >= 0, got {s_churn}, "
                         f"{s_noise}, {churn_correction}")
    evaluate, levels = _edm_setup(denoiser, x, nfe, 2, fixed, sigma_min, sigma_max, rho,
                                  adaptive, target_steps)
    n_steps = levels.target_steps if adaptive else levels.n_levels
    churn = min(s_churn / n_steps, math.sqrt(2) - 1)

    def step(x: Tensor, sigma: Tensor, i: int, rows: Tensor):
        gamma = churn * ((sigma >= s_tmin) & (sigma <= s_tmax)).to(x.dtype)  # [b], in x's precision
        raised = sigma * (1 + gamma)  # [b] σ̂⁺
        added = _rows_view((raised**2 - sigma**2).sqrt() * s_noise, x)
        x_hat = x + added * evaluate.noise(x, rows, rng)
        denoised, estimate = evaluate(x_hat, raised, rows)
        current = estimate if adaptive else raised
        before = estimate / (1 + gamma) ** churn_correction if adaptive else sigma
        sigma_next = levels.next(i, before, rows)
        return (_heun_update(evaluate, x_hat, denoised, current, sigma_next, rows, adaptive),
                estimate, sigma_next)

    return _edm_run(evaluate, x, levels, step, callback)
