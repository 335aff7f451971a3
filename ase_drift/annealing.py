"""Annealed importance sampling from one-step samples: exact moves that keep exact weights
(Neal 2001; equations numbered as in docs/likelihoods.md).

Plain reweighting (:mod:`ase_drift.reweighting`, Eq. 9) weights x ~ q by π/q. When q is far
from π in energy (a molecule's stiff bonds, a few kT each), the weights degenerate: the ESS of
one-step alanine dipeptide samples is 10⁻⁴–10⁻³. MALA refinement (:mod:`ase_drift.refine`)
brings the samples to π's energies in tens of steps but loses their density, so nothing can be
weighted. Annealed importance sampling does both: starting from x₀ ~ q, it moves through the
tempered targets

    log γ_k(x) = β_k·(−E(x)/kT) + (1 − β_k)·log q(x),    0 = β₀ < β₁ < … < β_K = 1    (Eq. 15)

with one MALA step T_k that leaves γ_k invariant (:class:`~ase_drift.refine.MALAKernel`,
drifting along ∇log γ_k = β_k F/kT + (1 − β_k) ∇log q when the density's gradient is given,
along F/kT otherwise; Metropolis–Hastings makes either exact), and carries the log-weight

    log w = Σ_{k=1}^{K} (β_k − β_{k−1})·(−E(x_{k−1})/kT − log q(x_{k−1})),                (Eq. 16)

x_k ~ T_k(x_{k−1}, ·). Then E[w·f(x_K)] / E[w] = E_π[f] for every K and every schedule
(the weight is the ratio of the extended target to the extended proposal, Neal's Eq. 3):
the estimators of :class:`~ase_drift.reweighting.WeightedSamples` apply to the final frames
unchanged, and (1/n)·Σ w is an unbiased estimate of Z_π/Z_q (Eq. 17). K = 1 is plain
reweighting (Eq. 9). As K grows the increments shrink and the weights even out; how fast
depends on how well one MALA step equilibrates each γ_k: it cannot move mass across torsional
barriers, so a region q misses stays missed, as with plain reweighting, unless each level adds a
torsion move (:mod:`ase_drift.torsions`), which turns one side of a bond in one proposal.

The chains are independent, so the weighted frames are independent and the bootstrap errors of
:class:`~ase_drift.reweighting.WeightedSamples` hold as for plain reweighting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp
from tqdm.auto import tqdm

from . import units
from .forces import ForceSource, LabelingError
from .refine import MALAKernel
from .reweighting import WeightedSamples, kish_ess, normalised_log_weights, sampler_draws
from .torsions import TorsionMoves

#: Default exponent p of the schedule β_k = (k/K)^p (:func:`power_schedule`): linear. On
#: one-step alanine dipeptide samples (2,000 chains, 300 levels, ε = 0.02 Å) the final ESS was
#: 0.19 with p = 1, 0.11 with 1.5, 0.13 with 2 and 0.05 with 4.
DEFAULT_POWER = 1.0
#: Default MALA step ε in Å, for the exact tempered drift of :func:`anneal_sampler` (alanine
#: dipeptide, three default drift samplers, 300 levels, 2,000–4,000 chains: final ESS 0.27,
#: 0.04, 0.15 at 0.02 Å and 0.32, 0.11, 0.28 at 0.03 Å; 0.19 at 0.04 Å on the first, acceptance
#: 0.2). Drifting along F/kT alone, 0.02 Å was best (ESS 0.26, 0.01, 0.09 on the same chains;
#: p = 2 runs: 0.12 at 0.015 Å, 0.13 at 0.02 Å, 0.09 at 0.025 Å).
DEFAULT_STEP_SIZE = 0.03
#: MALA step ε in Å for proposals drifting along F/kT alone (``exact_drift=False``).
FORCE_DRIFT_STEP_SIZE = 0.02


def power_schedule(steps: int, power: float = DEFAULT_POWER) -> np.ndarray:
    """β_k = (k/K)^p, k = 0 … K ``[K + 1]``. With perfect mixing the variance of Eq. 16 is
    ≈ Σ (Δβ_k)² Var_γk(log π − log q), smallest with Δβ_k ∝ 1/std_k: p > 1 takes small steps
    at small β, which pays when a few strained start frames make std largest there; p = 1
    (linear) when the start samples are already near π in energy."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (np.isfinite(power) and power > 0):
        raise ValueError(f"power must be a positive number, got {power!r}")
    return (np.arange(steps + 1) / steps) ** power


class AnnealingResult(NamedTuple):
    """The annealed frames with their weights, and what it cost.

    ``samples.log_q`` holds the effective log-density of the final frames, −E/kT − log w
    (up to a constant), so that Eq. 9 applied to it gives back the weights of Eq. 16.
    """

    samples: WeightedSamples  # final frames x_K with normalised weights (Eq. 16)
    log_mean_weight: float  # log (1/n)Σw, an estimate of log(Z_π/Z_q) (Eq. 17)
    betas: np.ndarray  # [K + 1] the schedule
    ess: np.ndarray  # [K + 1] Kish ESS fraction of the weights accumulated up to β_k
    acceptance: np.ndarray  # [K] fraction of the chains that moved at each level
    force_evaluations: int  # frames sent to the source: n·(K + 1), n·(2K + 1) with torsion moves
    step_size: float  # ε in Å
    torsion_acceptance: np.ndarray  # [K] accepted torsion moves per level (NaN without them)


def anneal(source: ForceSource, numbers, positions,
           log_prob: Callable[[np.ndarray], np.ndarray] | None, temperature_K: float,
           steps: int | None = None, *, betas=None, step_size: float = DEFAULT_STEP_SIZE,
           seed: int | None = None, masses=None, progress: bool = False,
           log_prob_gradient: Callable[[np.ndarray], tuple] | None = None,
           torsion_moves: TorsionMoves | None = None) -> AnnealingResult:
    """Anneal frames ``positions`` ``[n, A, 3]`` (Å) drawn from the density ``log_prob`` into
    the Boltzmann distribution of ``source`` at ``temperature_K``, weighting them by Eq. 16.

    Args:
        source: energies (eV) and forces (eV/Å) of batches of frames.
        numbers: atomic numbers ``[A]``.
        positions: start frames ``[n, A, 3]`` Å, independent draws from q.
        log_prob: log q(frames ``[m, A, 3]``) → ``[m]`` up to a constant: the density the
            frames were drawn from, e.g. :meth:`~ase_drift.likelihood.NCEDensity.log_prob`
            (fold mirror images first, as :func:`anneal_sampler` does); None when
            ``log_prob_gradient`` is given.
        temperature_K: temperature of π in K.
        steps: K of :func:`power_schedule` (exactly one of ``steps`` and ``betas``).
        betas: an explicit increasing schedule ``[K + 1]`` from 0 to 1.
        step_size: MALA ε in Å (:func:`ase_drift.refine.mala`).
        seed: seed of the proposals and acceptances (None: fresh entropy).
        masses: preconditioner masses ``[A]`` in amu (default: ASE's masses).
        progress: show a tqdm bar over the levels.
        log_prob_gradient: frames → (log q ``[m]``, ∇log q ``[m, A, 3]`` per Å), e.g.
            :meth:`~ase_drift.likelihood.NCEDensity.log_prob_gradient`, instead of
            ``log_prob``: the proposals then drift along ∇log γ_k exactly.
        torsion_moves: after each level's MALA step, one torsion move per chain
            (:meth:`~ase_drift.refine.MALAKernel.torsion_step`, also γ_k-invariant, so Eq. 16
            is unchanged): the chains can then cross torsional barriers and carry mass into
            rotamers that q misses as β grows.

    Returns:
        :class:`AnnealingResult`. Costs n·(K + 1) force evaluations and n·(K + 1) log q
        evaluations (with gradients when ``log_prob_gradient`` is given), n·K more of each with
        torsion moves.
    """
    if (steps is None) == (betas is None):
        raise ValueError("pass exactly one of steps= (a power schedule) or betas=")
    betas = power_schedule(steps) if betas is None else np.asarray(betas, dtype=np.float64)
    if (betas.ndim != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1
            or not (np.diff(betas) > 0).all()):
        raise ValueError("betas must increase strictly from 0 to 1, with at least two entries")
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    x = np.array(positions, dtype=np.float64)  # [n, A, 3] Å
    if x.ndim != 3 or x.shape[1:] != (len(numbers), 3) or len(x) == 0:
        raise ValueError(f"positions must have shape [n, {len(numbers)}, 3] with n ≥ 1 for "
                         f"{len(numbers)} atoms, got {x.shape}")
    kT = units.kT(temperature_K)  # eV
    if (log_prob is None) == (log_prob_gradient is None):
        raise ValueError("pass exactly one of log_prob and log_prob_gradient")
    kernel = MALAKernel(source, numbers, kT, step_size, masses, log_prob=log_prob,
                        log_prob_gradient=log_prob_gradient)
    chains = kernel.start(x)
    rng = np.random.default_rng(seed)
    levels = len(betas) - 1
    log_w = np.zeros(len(x))  # [n] Eq. 16, accumulated
    ess, acceptance = np.ones(levels + 1), np.empty(levels)
    torsion_acceptance = np.full(levels, np.nan)
    bar = tqdm(total=levels, desc="annealing", unit="level", disable=not progress)
    for k in range(1, levels + 1):
        log_w += (betas[k] - betas[k - 1]) * (-chains.energies / kT - chains.log_q)
        ess[k] = kish_ess(log_w)
        try:
            chains, move = kernel.step(chains, rng, beta=float(betas[k]))
            if torsion_moves is not None:
                chains, turned = kernel.torsion_step(chains, rng, torsion_moves,
                                                     beta=float(betas[k]))
                torsion_acceptance[k - 1] = turned.mean()
        except LabelingError as err:
            raise LabelingError(f"annealing level {k} of {levels}: the force source failed on "
                                f"a proposal: {err}") from err
        acceptance[k - 1] = move.mean()
        bar.update()
        bar.set_postfix(ess=f"{ess[k]:.3f}", acceptance=f"{acceptance[k - 1]:.2f}",
                        **({} if torsion_moves is None
                           else {"torsions": f"{torsion_acceptance[k - 1]:.2f}"}))
    bar.close()
    reduced = chains.energies / kT  # [n] E/kT of the final frames
    samples = WeightedSamples(chains.positions, normalised_log_weights(log_w, 0.0), reduced,
                              -reduced - log_w)
    evaluations = len(x) * (levels + 1 + (levels if torsion_moves is not None else 0))
    return AnnealingResult(samples, float(logsumexp(log_w) - np.log(len(x))), betas, ess,
                           acceptance, evaluations, float(step_size), torsion_acceptance)


def anneal_sampler(sampler, density, n: int, *, forces: ForceSource, steps: int,
                   seed: int | None = None, temperature_K: float | None = None,
                   step_size: float = DEFAULT_STEP_SIZE, exact_drift: bool = True,
                   torsion_moves: bool = False, progress: bool = True) -> AnnealingResult:
    """:func:`anneal` on ``n`` fresh samples of ``sampler`` with ``density`` as q: the
    annealed counterpart of :func:`~ase_drift.reweighting.reweight_sampler` (same arguments,
    same checks; ``steps`` = K of :func:`power_schedule`). ``exact_drift``: propose along
    ∇log γ_k with the density's gradient
    (:meth:`~ase_drift.likelihood.NCEDensity.log_prob_gradient`; ≈ 20 % more time per level
    on alanine dipeptide with amber); False drifts along F/kT only (best with
    :data:`FORCE_DRIFT_STEP_SIZE`); ``torsion_moves``: a torsion move per level as in
    :func:`anneal`, about the rotatable bonds of the draws
    (:meth:`~ase_drift.torsions.TorsionMoves.from_frames`)."""
    positions, temperature_K = sampler_draws(sampler, density, n, seed, temperature_K)
    density_terms = ({"log_prob": None, "log_prob_gradient": density.log_prob_gradient}
                     if exact_drift else {"log_prob": density.log_prob})
    return anneal(forces, sampler.numbers, positions, temperature_K=temperature_K, steps=steps,
                  step_size=step_size, seed=seed, progress=progress,
                  torsion_moves=(TorsionMoves.from_frames(sampler.numbers, positions)
                                 if torsion_moves else None), **density_terms)
