"""Importance weights that turn any sampler's output into Boltzmann estimates with error bars
(equations numbered as in docs/likelihoods.md).

For samples x_i ~ q and the target π(x) ∝ exp(−E(x)/kT), the self-normalised weights

    w_i = exp(−E_i/kT − log q_i) / Σ_j exp(−E_j/kT − log q_j)                        (Eq. 9)

give E_π[f] ≈ Σ_i w_i f(x_i) (Eq. 10), consistent as n → ∞ whenever q > 0 where π > 0. Additive
constants in log q (an NCE density's C) and in E cancel in Eq. 9. The Kish effective sample size
(Σw)²/Σw² divided by n (Eq. 11) is 1 when q = π and falls as the two part. The free-energy
difference of two regions a, b is ΔF_ab = F_b − F_a = −ln(P_b/P_a) kT with P = Σ_{i∈region} w_i
(Eq. 12); the same convention as :func:`ase_drift.metrics.free_energy_difference`.

Error bars are bootstrap standard deviations: frames are redrawn with replacement and the
self-normalised estimate is recomputed (weights renormalised per replicate), through
:func:`ase_drift.metrics.block_bootstrap` with one frame per block by default (independent
one-step samples); pass ``n_blocks`` for correlated frames (MD).

log q is any array of log-densities: an :class:`~ase_drift.likelihood.NCEDensity`, an exact ODE
likelihood, a known proposal. It must be a density over the same space as exp(−E/kT) (for
molecules: centred Cartesian coordinates, as ``NCEDensity.log_prob`` returns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from . import units
from .metrics.tables import Estimate
from .metrics.timeseries import block_bootstrap


def normalised_log_weights(log_target, log_q) -> np.ndarray:
    """log w ``[n]`` of Eq. 9 (logsumexp = 0) from unnormalised log π and log q ``[n]``."""
    log_w = np.asarray(log_target, dtype=np.float64) - np.asarray(log_q, dtype=np.float64)
    return log_w - logsumexp(log_w)


def kish_ess(log_weights) -> float:
    """(Σw)²/Σw² / n of Eq. 11, a fraction in (0, 1], from log-weights (any normalisation)."""
    log_w = np.asarray(log_weights, dtype=np.float64)
    return float(np.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w)) / len(log_w))


def weighted_histogram(values, weights, bins: int, range: tuple[float, float]) -> np.ndarray:
    """Probability per bin ``[bins]`` (sum 1) of ``values`` ``[n, ...]`` pooled, every entry of
    frame i carrying the weight ``weights[i]``; outliers are clipped into the edge bins (as
    :func:`ase_drift.metrics.normalised_histogram`, which this is with equal weights)."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64).reshape(
        (-1,) + (1,) * (values.ndim - 1)), values.shape)
    counts, _ = np.histogram(np.clip(values.ravel(), *range), bins=bins, range=range,
                             weights=weights.ravel())
    return counts / counts.sum()


def _self_normalised_mean(columns: np.ndarray) -> float:
    """Σ softmax(columns[:, 0]) · columns[:, 1]: Eq. 10 on rows of (log w, f)."""
    log_w = columns[:, 0] - logsumexp(columns[:, 0])
    return float(np.exp(log_w) @ columns[:, 1])


def _log_probability_ratio(columns: np.ndarray) -> float:
    """−ln(P_b/P_a) of Eq. 12 on rows of (log w, in a, in b); NaN when a region is empty."""
    log_w, in_a, in_b = columns[:, 0], columns[:, 1] > 0, columns[:, 2] > 0
    if not (in_a.any() and in_b.any()):
        return np.nan
    return float(logsumexp(log_w[in_a]) - logsumexp(log_w[in_b]))


@dataclass(frozen=True)
class WeightedSamples:
    """Frames with normalised importance weights (Eq. 9) and the estimators built on them.

    Attributes:
        positions: ``[n, A, 3]`` Å (or any ``[n, ...]`` array the observables take).
        log_weights: ``[n]``, logsumexp = 0.
        reduced_energies: E/kT ``[n]`` (dimensionless).
        log_q: the log-density the weights used ``[n]``.
    """

    positions: np.ndarray
    log_weights: np.ndarray
    reduced_energies: np.ndarray
    log_q: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights ``[n]`` (sum 1)."""
        return np.exp(self.log_weights)

    @property
    def ess(self) -> float:
        """Kish effective sample size as a fraction of n (Eq. 11)."""
        return kish_ess(self.log_weights)

    def _bootstrap(self, statistic, columns: np.ndarray, n_boot: int, seed: int,
                   n_blocks: int | None) -> Estimate:
        blocks = len(columns) if n_blocks is None else n_blocks
        return Estimate(*block_bootstrap(statistic, columns, n_blocks=blocks, n_boot=n_boot,
                                         seed=seed))

    def _per_frame(self, fn: Callable, what: str) -> np.ndarray:
        values = np.asarray(fn(self.positions), dtype=np.float64)
        if values.shape != self.log_weights.shape:
            raise ValueError(f"{what} must return one value per frame, shape "
                             f"{self.log_weights.shape}, got {values.shape}")
        return values

    def expectation(self, fn: Callable, n_boot: int = 200, seed: int = 0,
                    n_blocks: int | None = None) -> Estimate:
        """E_π[f] ≈ Σ w_i f(x_i) (Eq. 10) with its bootstrap error; ``fn(positions) -> [n]``."""
        values = self._per_frame(fn, "fn")
        if not np.isfinite(values).all():
            raise ValueError("fn returned non-finite values")
        return self._bootstrap(_self_normalised_mean, np.stack([self.log_weights, values], 1),
                               n_boot, seed, n_blocks)

    def free_energy_difference(self, in_a: Callable, in_b: Callable, n_boot: int = 200,
                               seed: int = 0, n_blocks: int | None = None) -> Estimate:
        """ΔF_ab = F_b − F_a = −ln(P_b/P_a) in kT (Eq. 12) with its bootstrap error;
        ``in_x(positions) -> bool [n]``. ValueError if a region holds no frame; the error is
        NaN when a region is so rare that bootstrap replicates miss it (a handful of frames),
        where ΔF itself cannot be trusted."""
        mask_a, mask_b = (self._per_frame(f, name).astype(bool)
                          for f, name in ((in_a, "in_a"), (in_b, "in_b")))
        if not mask_a.any() or not mask_b.any():
            raise ValueError("a region holds no frame, so its free energy is infinite")
        return self._bootstrap(_log_probability_ratio,
                               np.stack([self.log_weights, mask_a, mask_b], 1), n_boot, seed,
                               n_blocks)


def reweight(positions, numbers, log_q, *, forces=None, energies=None,
             temperature_K: float, progress: bool = False) -> WeightedSamples:
    """Importance weights of Eq. 9 for ``positions`` ``[n, A, 3]`` Å of atoms ``numbers``
    ``[A]`` drawn from a density ``log_q`` ``[n]`` (up to a constant), towards the Boltzmann
    distribution at ``temperature_K``. The energies (eV) come from ``energies`` ``[n]`` or are
    computed by ``forces`` (a :class:`~ase_drift.forces.ForceSource`), exactly one of the two.
    """
    positions = np.asarray(positions)
    numbers = np.asarray(numbers)
    if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
        raise ValueError(f"positions must have shape [n, {len(numbers)}, 3] for "
                         f"{len(numbers)} atoms, got {positions.shape}")
    n = len(positions)
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_q.shape != (n,):
        raise ValueError(f"log_q must have shape [{n}] (one value per frame), got {log_q.shape}")
    if not np.isfinite(log_q).all():
        bad = np.flatnonzero(~np.isfinite(log_q))
        raise ValueError(f"log_q is not finite at {len(bad)} frames (first: {bad[0]}); a "
                         f"sample the density gives no probability cannot be reweighted")
    if (forces is None) == (energies is None):
        raise ValueError("pass exactly one of forces= (a ForceSource) or energies= (eV)")
    if energies is None:
        from .forces import label_positions

        energies = label_positions(forces, numbers, positions, progress=progress).energies
    energies = np.asarray(energies, dtype=np.float64)
    if energies.shape != (n,):
        raise ValueError(f"energies must have shape [{n}], got {energies.shape}")
    if not np.isfinite(energies).all():
        raise ValueError("energies are not finite")
    reduced = energies / units.kT(temperature_K)  # [n] E/kT
    return WeightedSamples(positions, normalised_log_weights(-reduced, log_q), reduced, log_q)


def reweight_sampler(sampler, density, n: int, *, forces, seed: int | None = None,
                     temperature_K: float | None = None, progress: bool = True
                     ) -> WeightedSamples:
    """``n`` fresh samples of ``sampler`` (any kind: drift, DSM, energy diffusion) weighted by
    ``density`` towards the Boltzmann distribution of ``forces`` at ``temperature_K`` (default:
    the one the sampler records). ``density`` is an :class:`~ase_drift.likelihood.NCEDensity`
    of this sampler, whose :meth:`~ase_drift.likelihood.NCEDensity.fold` first reflects mirror
    images, or any object with ``numbers`` and ``log_prob(positions)`` in the same convention,
    e.g. a diffusion sampler itself (its probability-flow ODE likelihood)."""
    positions, temperature_K = sampler_draws(sampler, density, n, seed, temperature_K)
    return reweight(positions, sampler.numbers, density.log_prob(positions), forces=forces,
                    temperature_K=temperature_K, progress=progress)


def sampler_draws(sampler, density, n: int, seed: int | None, temperature_K: float | None
                  ) -> tuple[np.ndarray, float]:
    """``n`` fresh frames ``[n, A, 3]`` Å of ``sampler`` in ``density``'s handedness and the
    temperature to weight them at (``temperature_K`` or the sampler's); ValueError when the
    density belongs to another molecule or no temperature is known."""
    if density.numbers is None or not np.array_equal(density.numbers, sampler.numbers):
        raise ValueError("the density was not fitted to this sampler's molecule")
    if temperature_K is None:
        temperature_K = getattr(sampler, "metadata", {}).get("temperature_K")
        if temperature_K is None:
            raise ValueError("the sampler records no temperature: pass temperature_K")
    positions = sampler.sample_positions(n, seed=seed)  # [n, A, 3] Å
    if hasattr(density, "fold"):
        positions = density.fold(positions)
    return positions, float(temperature_K)
