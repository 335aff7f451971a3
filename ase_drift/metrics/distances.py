"""Pair-distance metrics of generated conformers against a reference, and the reference's noise
floor at the same sample size.

Definitions (d = pair distances ``[N, M]`` of the generated frames, d̄_ab and σ_ab the mean and
standard deviation of pair a–b over the reference frames):

* TVD = ½ Σ_k |p_k − q_k| of the pooled pair-distance histograms (all M pairs of all frames),
  100 equal bins on [0, 1.2 × the largest reference distance] by default; per-pair-type TVD is
  the same restricted to the pairs of one type ("C-H"), same bins.
* W1, W2: Wasserstein distances (Å) of the pooled distance samples.
* Pair MAE = (1/M) Σ_k |mean_gen s_k − mean_ref s_k| (Å), s = each frame's distances sorted
  within each pair type: the per-pair mean distances against the reference's, blind to
  relabelling identical atoms. Pooled histograms forget which pair a distance belongs to, and
  TVD how far apart two distributions are; this keeps both.
* Pair stability = fraction of frames with every |d_ab − d̄_ab| ≤ 4 σ_ab
  (:data:`STABILITY_SIGMAS`): a tolerance that follows each pair's own thermal spread, so the
  reference scores ≈ 1 against itself.
* Bonds = pairs with d̄_ab < 1.2 × (r_cov(a) + r_cov(b)) (ASE covalent radii); bond MAE is the
  mean over bonds of |mean_gen d_ab − d̄_ab| (Å), bond stability the fraction of frames with every bond within 0.5 Å
  (:data:`BOND_TOLERANCE`) of d̄_ab.
* Energy W1 = W1 of E/kT (kT) against the reference's.
* Noise floor (:func:`noise_floor`): the same report for n reference frames of one part of the
  reference (other runs) scored against the other part, at the sample size n of the samples it is read
  against, mean ± std over disjoint random subsets.

docs/maths.md, "Metrics", gives the reasons and how these relate to the paper's columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ase.data import chemical_symbols, covalent_radii
from scipy.stats import wasserstein_distance

from ..units import kT

#: Pair stability tolerance: a pair is stable within this many reference standard deviations of
#: its reference mean distance.
STABILITY_SIGMAS = 4.0
#: Largest deviation (Å) of a bond from its reference mean distance that still counts as stable.
BOND_TOLERANCE = 0.5
#: Bond cutoff: a pair is bonded when its reference mean distance is below this factor times the
#: sum of the two covalent radii.
BOND_SCALE = 1.2


# --------------------------------------------------------------------------- pair distances


def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices ``(i, j)`` of every pair i < j, row-major (``numpy.triu_indices(n, k=1)``)."""
    return np.triu_indices(n_atoms, k=1)


def pair_distances(positions) -> np.ndarray:
    """All interatomic distances d_ab = ‖r_a − r_b‖ (Å), a < b, for positions ``[N, A, 3]``.

    Returns ``[N, M]`` with M = A(A−1)/2, columns in :func:`pair_indices` order.
    """
    positions = np.asarray(positions, dtype=float)  # [N, A, 3]
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"positions must have shape [n_frames, n_atoms, 3], got {positions.shape}")
    i, j = pair_indices(positions.shape[1])
    squared = np.zeros((positions.shape[0], i.size))  # [N, M]
    # One Cartesian component at a time keeps the peak memory at [N, M] rather than [N, M, 3].
    for axis in range(3):
        delta = positions[:, i, axis] - positions[:, j, axis]  # [N, M]
        squared += delta * delta
    return np.sqrt(squared)


def pair_types(numbers) -> np.ndarray:
    """Label of every pair, element symbols sorted alphabetically: "C-H", "H-O", … ``[M]``."""
    symbols = [chemical_symbols[z] for z in np.asarray(numbers)]
    i, j = pair_indices(len(symbols))
    return np.array(
        ["-".join(sorted((symbols[a], symbols[b]))) for a, b in zip(i, j)], dtype=object
    )


# --------------------------------------------------------------------------- 1-D distributions


def normalised_histogram(values, bins: int, range: tuple[float, float]) -> np.ndarray:
    """Probability per bin (sums to 1) of ``bins`` equal bins on ``range``; outliers are clipped
    into the edge bins. Returns ``[bins]``."""
    values = np.clip(np.ravel(values), *range)
    counts, _ = np.histogram(values, bins=bins, range=range)
    return counts / counts.sum()


def histogram_tvd(x, y, bins: int, range: tuple[float, float]) -> float:
    """Total variation distance ½Σ_k |p_k − q_k| of the normalised histograms of x and y.

    0 for identical histograms, 1 for histograms with disjoint support.
    """
    p = normalised_histogram(x, bins, range)
    q = normalised_histogram(y, bins, range)
    return 0.5 * float(np.abs(p - q).sum())


def wasserstein2(x, y, n_quantiles: int = 10_000) -> float:
    """W2 = (∫₀¹ (F⁻¹(u) − G⁻¹(u))² du)^½ of two 1-D samples.

    The integral is the midpoint rule on ``n_quantiles`` levels u_k = (k + ½)/n of the empirical
    quantile functions, which makes samples of different sizes comparable.
    """
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qx = np.quantile(np.ravel(x), levels, method="inverted_cdf")
    qy = np.quantile(np.ravel(y), levels, method="inverted_cdf")
    return float(np.sqrt(np.mean((qx - qy) ** 2)))


# --------------------------------------------------------------------------- per-pair metrics


def sorted_within_types(distances, types) -> np.ndarray:
    """Each frame's distances ``[N, M]`` sorted in ascending order within each pair type.

    Columns are grouped by type (types sorted alphabetically), so column k holds the same rank
    of the same type in every frame. The result does not change when atoms of one element are
    relabelled (a methyl rotation swaps which H is which; the Boltzmann distribution is symmetric
    under it).
    """
    distances = np.asarray(distances, dtype=float)
    types = np.asarray(types)
    return np.concatenate([np.sort(distances[:, types == t], axis=1) for t in sorted(set(types))],
                          axis=1)


def pair_mae(distances, reference_distances, types=None) -> float:
    """Mean over pairs of |mean_gen d_ab − mean_ref d_ab| (Å).

    ``distances`` ``[N, K]`` and ``reference_distances`` ``[R, K]`` hold the same K pairs
    (all M pairs, or a subset such as the bonds). With ``types`` (one pair type per column,
    :func:`pair_types`) each frame's distances are first sorted within each type
    (:func:`sorted_within_types`), so the comparison is blind to relabelling identical atoms.
    NaN for K = 0.
    """
    distances = np.asarray(distances, dtype=float)
    reference_distances = np.asarray(reference_distances, dtype=float)
    if distances.shape[1] == 0:
        return float("nan")
    if types is not None:
        distances = sorted_within_types(distances, types)
        reference_distances = sorted_within_types(reference_distances, types)
    return float(np.abs(distances.mean(axis=0) - reference_distances.mean(axis=0)).mean())


def stability(distances, reference_mean, tolerance) -> float:
    """Fraction of frames whose every distance is within ``tolerance`` of the reference mean.

    ``distances`` is ``[N, K]`` (any subset of pairs), ``reference_mean`` is ``[K]``,
    ``tolerance`` (Å) a scalar or one value per pair ``[K]``. 1 for K = 0.
    """
    deviation = np.abs(np.asarray(distances) - np.asarray(reference_mean))  # [N, K]
    return float(np.all(deviation <= np.asarray(tolerance), axis=1).mean())


def pair_stability(distances, reference_distances, sigmas: float = STABILITY_SIGMAS) -> float:
    """Fraction of frames with every |d_ab − d̄_ab| ≤ ``sigmas`` × σ_ab, d̄ and σ the mean and
    standard deviation of each pair over ``reference_distances`` ``[R, K]``."""
    reference_distances = np.asarray(reference_distances, dtype=float)
    return stability(distances, reference_distances.mean(axis=0),
                     sigmas * reference_distances.std(axis=0))


# --------------------------------------------------------------------------- bonds


def covalent_bonds(numbers, reference_positions, scale: float = BOND_SCALE) -> np.ndarray:
    """Pair indices (into the M pairs) of covalent bonds.

    A pair a–b is a bond when its mean distance over the reference frames ``[N, A, 3]`` is below
    ``scale`` × (r_cov(a) + r_cov(b)), with radii from :data:`ase.data.covalent_radii`.
    """
    mean_distances = pair_distances(reference_positions).mean(axis=0)  # [M]
    return _bonds_below_cutoff(numbers, mean_distances, scale)


def _bonds_below_cutoff(numbers, mean_distances, scale: float) -> np.ndarray:
    radii = covalent_radii[np.asarray(numbers)]  # [A]
    i, j = pair_indices(len(radii))
    return np.flatnonzero(mean_distances < scale * (radii[i] + radii[j]))


# --------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class DistanceReport:
    """Distance metrics of one sample set against a reference (definitions: :func:`evaluate`).

    Attributes:
        tvd: TVD of the pooled pair-distance histograms (dimensionless, 0–1).
        w1: Wasserstein-1 distance of the pooled distances (Å).
        w2: Wasserstein-2 distance of the pooled distances (Å).
        pair_mae: mean over all pairs of |generated − reference| mean distance (Å), each
            frame's distances sorted within each pair type first.
        pair_stability: fraction of frames with every pair within 4 reference standard
            deviations of its reference mean.
        bond_mae: mean over the covalent bonds of |generated − reference| mean length (Å);
            NaN without bonds.
        bond_stability: fraction of frames with every bond within 0.5 Å of its reference mean.
        per_type_tvd: TVD per pair type ("C-H": …), same bins as ``tvd``.
        n_samples: generated frames scored.
        energy_w1: W1 of E/kT (kT), or None without energies.
    """

    tvd: float
    w1: float
    w2: float
    pair_mae: float
    pair_stability: float
    bond_mae: float
    bond_stability: float
    per_type_tvd: dict[str, float]
    n_samples: int
    energy_w1: float | None = None

    def as_dict(self) -> dict:
        """Plain dict (a copy), e.g. for JSON."""
        return dataclasses.asdict(self)


def _checked_positions(positions, n_atoms: int, name: str) -> np.ndarray:
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
        raise ValueError(
            f"{name} must have shape [n_frames, {n_atoms}, 3] to match numbers, "
            f"got {positions.shape}"
        )
    if len(positions) == 0:
        raise ValueError(f"{name} holds no frames")
    if not np.isfinite(positions).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return positions


def _energy_w1(energies, reference_energies, temperature_K, n_frames, n_reference) -> float | None:
    if energies is None and reference_energies is None:
        return None
    if energies is None or reference_energies is None:
        raise ValueError("energy W1 needs both energies and reference_energies")
    if temperature_K is None:
        raise ValueError("energy W1 compares E/kT: pass temperature_K")
    energies = np.asarray(energies, dtype=float)  # [N]
    reference_energies = np.asarray(reference_energies, dtype=float)  # [R]
    if energies.shape != (n_frames,) or reference_energies.shape != (n_reference,):
        raise ValueError(
            f"need one energy per frame: got {energies.shape} for {n_frames} frames and "
            f"{reference_energies.shape} for {n_reference} reference frames"
        )
    beta = 1.0 / kT(temperature_K)
    return float(wasserstein_distance(beta * energies, beta * reference_energies))


def evaluate(
    positions,
    reference_positions,
    numbers,
    *,
    bins: int = 100,
    max_distance: float | None = None,
    energies=None,
    reference_energies=None,
    temperature_K: float | None = None,
    bonds=None,
) -> DistanceReport:
    """Compare generated frames ``[N, A, 3]`` with reference frames ``[R, A, 3]`` (Å).

    Definitions (d = pair distances ``[N, M]``; d̄_ab, σ_ab = reference mean and standard
    deviation of each pair ``[M]``):

    * Histogram: all pair distances pooled, ``bins`` equal bins on [0, max_distance], default
      max_distance = 1.2 × the largest reference distance; p (generated), q (reference) are
      probabilities per bin (sum 1), outliers clipped into the edge bins. TVD = ½ Σ_k |p_k − q_k|.
    * W1, W2 = Wasserstein-1/2 distances (Å) of the pooled distance samples.
    * Pair MAE = mean over the M pairs of |mean_gen s_k − mean_ref s_k| (Å), where s is each
      frame's distances sorted within each pair type (:func:`sorted_within_types`), so that
      relabelling identical atoms (a methyl rotation) changes nothing.
    * Pair stability = fraction of frames with every |d_ab − d̄_ab| ≤ 4 σ_ab.
    * Bonds: ``bonds`` (pair indices) or, by default, pairs with
      d̄_ab < 1.2 × (r_cov(a) + r_cov(b)). Bond MAE = mean over bonds |mean_gen d − d̄| (Å); bond
      stability = fraction of frames with every bond within 0.5 Å of d̄_ab. With no bonds, bond
      MAE is NaN and bond stability 1.
    * Per-type TVD: the TVD above restricted to the pairs of one type ("C-H"), same bins.
    * Energy W1 = W1 of E/kT against the reference's E/kT, when ``energies`` (eV, one per frame)
      and ``reference_energies`` are given; needs ``temperature_K``.

    Raises ValueError on mismatched atom counts, NaN coordinates or incomplete energy input.
    """
    numbers = np.asarray(numbers)
    positions = _checked_positions(positions, len(numbers), "positions")
    reference_positions = _checked_positions(
        reference_positions, len(numbers), "reference_positions"
    )
    energy_w1 = _energy_w1(
        energies, reference_energies, temperature_K, len(positions), len(reference_positions)
    )
    generated = pair_distances(positions)  # [N, M]
    reference = pair_distances(reference_positions)  # [R, M]
    reference_mean = reference.mean(axis=0)  # [M]
    if max_distance is None:
        max_distance = 1.2 * float(reference.max())
    hist_range = (0.0, max_distance)
    bonds = (
        _bonds_below_cutoff(numbers, reference_mean, BOND_SCALE)
        if bonds is None
        else np.asarray(bonds, dtype=int)
    )
    types = pair_types(numbers)  # [M]
    per_type_tvd = {
        t: histogram_tvd(generated[:, types == t], reference[:, types == t], bins, hist_range)
        for t in sorted(set(types))
    }
    return DistanceReport(
        tvd=histogram_tvd(generated, reference, bins, hist_range),
        w1=float(wasserstein_distance(generated.ravel(), reference.ravel())),
        w2=wasserstein2(generated, reference),
        pair_mae=pair_mae(generated, reference, types),
        pair_stability=pair_stability(generated, reference),
        bond_mae=pair_mae(generated[:, bonds], reference[:, bonds]),
        bond_stability=stability(generated[:, bonds], reference_mean[bonds], BOND_TOLERANCE),
        per_type_tvd=per_type_tvd,
        n_samples=len(positions),
        energy_w1=energy_w1,
    )


# --------------------------------------------------------------------------- noise floor


@dataclasses.dataclass(frozen=True)
class NoiseFloor:
    """Reports of :func:`noise_floor`, one per disjoint subset, and their mean and spread.

    Attributes:
        reports: one :class:`DistanceReport` per subset of ``n_samples`` reference frames.
        n_samples: frames per subset, the sample size the floor belongs to.
        n_reference: frames of the reference part the subsets are scored against.
    """

    reports: tuple[DistanceReport, ...]
    n_samples: int
    n_reference: int

    @property
    def mean(self) -> DistanceReport:
        """Every metric averaged over the subsets."""
        return self._reduce(np.mean)

    @property
    def std(self) -> DistanceReport:
        """Standard deviation (ddof 1) of every metric over the subsets; NaN for one subset."""
        return self._reduce(lambda v: np.std(v, ddof=1) if len(v) > 1 else np.nan)

    def _reduce(self, fn) -> DistanceReport:
        rows = [r.as_dict() for r in self.reports]
        values = {}
        for key, first in rows[0].items():
            if key == "n_samples":
                values[key] = self.n_samples
            elif key == "per_type_tvd":
                values[key] = {t: float(fn([r[key][t] for r in rows])) for t in first}
            elif first is None:
                values[key] = None
            else:
                values[key] = float(fn([r[key] for r in rows]))
        return DistanceReport(**values)

    def as_dict(self) -> dict:
        """Plain dict: ``mean``, ``std``, ``reports`` (each a report's dict), ``n_samples``,
        ``n_reference``."""
        return {"mean": self.mean.as_dict(), "std": self.std.as_dict(),
                "reports": [r.as_dict() for r in self.reports], "n_samples": self.n_samples,
                "n_reference": self.n_reference}


def reference_part(n_frames: int, groups=None) -> np.ndarray:
    """Which frames of a reference ``[R]`` form the part a noise floor scores against (True);
    the others (False) stand in for a perfect sampler's samples.

    Without ``groups`` the first half of the frames (contiguous, so that time-correlated frames
    stay together); with ``groups`` (one run label per frame) the runs of every other sorted
    label (the 1st, 3rd, …), so that runs from different sources are spread over both parts.
    """
    if groups is None:
        return np.arange(n_frames) < n_frames // 2
    groups = np.asarray(groups)
    if groups.shape != (n_frames,):
        raise ValueError(f"need one group label per frame, got {groups.shape} for {n_frames}")
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ValueError("a noise floor by groups needs at least two groups")
    return np.isin(groups, labels[::2])


def noise_floor_subsets(n_frames: int, n: int, *, groups=None, n_repeats: int = 5,
                        seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame indices of a noise floor: ``(reference, subsets)``.

    ``reference`` indexes the part of :func:`reference_part`; ``subsets`` are
    min(``n_repeats``, ⌊size of the other part / n⌋) disjoint sets of ``n`` frames drawn at
    random (without replacement) from the other part, each sorted. Raises ValueError when the
    other part holds fewer than ``n`` frames.
    """
    in_reference = reference_part(n_frames, groups)
    reference = np.flatnonzero(in_reference)
    others = np.flatnonzero(~in_reference)
    if n < 1 or n > len(others):
        raise ValueError(f"a noise floor at n = {n} needs 1 ≤ n ≤ {len(others)}, the frames of "
                         "the reference's second part")
    n_subsets = min(n_repeats, len(others) // n)
    order = np.random.default_rng(seed).permutation(others)
    return reference, [np.sort(order[k * n:(k + 1) * n]) for k in range(n_subsets)]


def noise_floor(
    reference_positions,
    numbers,
    n: int,
    *,
    groups=None,
    n_repeats: int = 5,
    seed: int = 0,
    reference_energies=None,
    max_distance: float | None = None,
    **kw,
) -> NoiseFloor:
    """:func:`evaluate` of ``n`` reference frames against an independent part of the
    reference: the score of a perfect sampler that drew ``n`` samples.

    The reference is split by :func:`reference_part` (halves, or alternate runs with
    ``groups``); up to ``n_repeats`` disjoint random subsets of ``n`` frames of the second part
    (:func:`noise_floor_subsets`) are each scored against the whole first part. Pass the ``n``
    of the samples the floor is read against: the floor grows as n shrinks (TVD roughly as
    n^−½). The first part has about half the reference's frames, so its own noise is slightly
    larger than the full reference's. ``max_distance`` defaults to 1.2 × the largest distance of
    the whole reference, the bins :func:`evaluate` uses for samples scored against it.
    ``reference_energies`` are split the same way; other keywords go to :func:`evaluate`.
    """
    numbers = np.asarray(numbers)
    reference_positions = _checked_positions(reference_positions, len(numbers),
                                             "reference_positions")
    reference, subsets = noise_floor_subsets(len(reference_positions), n, groups=groups,
                                             n_repeats=n_repeats, seed=seed)
    if max_distance is None:
        max_distance = 1.2 * float(pair_distances(reference_positions).max())
    energies = None if reference_energies is None else np.asarray(reference_energies, float)
    reports = []
    for subset in subsets:
        energy_kw = {} if energies is None else {
            "energies": energies[subset], "reference_energies": energies[reference]}
        reports.append(evaluate(reference_positions[subset], reference_positions[reference],
                                numbers, max_distance=max_distance, **energy_kw, **kw))
    return NoiseFloor(tuple(reports), n_samples=n, n_reference=len(reference))
