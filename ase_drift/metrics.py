"""Sample-quality metrics: pure numpy functions of positions, energies and torsion angles.

Contract
--------
* Inputs are plain arrays in ASE units: positions ``[n_frames, n_atoms, 3]`` in Å, energies
  ``[n_frames]`` in eV, temperatures in K, torsion angles in radians. Nothing here touches
  torch, a calculator or a file, except the ``plot_*`` functions, which write one PNG each.
* Distances are taken over all atom pairs a < b in ``numpy.triu_indices(n_atoms, k=1)`` order,
  M = A(A−1)/2 of them (:func:`pair_indices`); a "pair index" is a column of that ``[N, M]`` array.
* Histograms are normalised to probabilities per bin (sum 1). Samples outside the histogram range
  are clipped into the edge bins, so an exploded molecule counts against the score instead of
  silently vanishing.
* Results in kT are dimensionless; Wasserstein distances of distances are in Å.
* Every comparison is "generated vs reference": :func:`evaluate` gives one
  :class:`DistanceReport`, and :func:`noise_floor` gives the same report between two halves of
  the reference, so every figure can be read against sampling noise (DESIGN.md, "Metrics").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols, covalent_radii
from scipy.special import rel_entr
from scipy.stats import wasserstein_distance

from .units import kT

#: Largest deviation (Å) from the reference mean distance that still counts as stable.
STABILITY_TOLERANCE = 0.5


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


def histogram_mae(x, y, bins: int, range: tuple[float, float]) -> float:
    """Mean over bins of |p_k − q_k|, p and q normalised to sum 1 (so MAE = 2·TVD / bins)."""
    p = normalised_histogram(x, bins, range)
    q = normalised_histogram(y, bins, range)
    return float(np.abs(p - q).mean())


def wasserstein2(x, y, n_quantiles: int = 10_000) -> float:
    """W2 = (∫₀¹ (F⁻¹(u) − G⁻¹(u))² du)^½ of two 1-D samples.

    The integral is the midpoint rule on ``n_quantiles`` levels u_k = (k + ½)/n of the empirical
    quantile functions, which makes samples of different sizes comparable.
    """
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qx = np.quantile(np.ravel(x), levels, method="inverted_cdf")
    qy = np.quantile(np.ravel(y), levels, method="inverted_cdf")
    return float(np.sqrt(np.mean((qx - qy) ** 2)))


def stability(distances, reference_mean, tolerance: float = STABILITY_TOLERANCE) -> float:
    """Fraction of frames whose every distance is within ``tolerance`` Å of the reference mean.

    ``distances`` is ``[N, K]`` (any subset of pairs), ``reference_mean`` is ``[K]``.
    """
    deviation = np.abs(np.asarray(distances) - np.asarray(reference_mean))  # [N, K]
    return float(np.all(deviation <= tolerance, axis=1).mean())


# --------------------------------------------------------------------------- bonds


def covalent_bonds(numbers, reference_positions, scale: float = 1.2) -> np.ndarray:
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
    """Distance-histogram metrics of one sample set against a reference (see :func:`evaluate`).

    mae, tvd: histogram MAE and TVD (dimensionless); w1, w2: Wasserstein distances of the pooled
    distances (Å); stability, bond_stability: fractions of frames; bond_mae: Å; per_type_tvd:
    TVD per pair type ("C-H": …); n_samples: generated frames; energy_w1: W1 of E/kT (kT), or None.
    """

    mae: float
    tvd: float
    w1: float
    w2: float
    stability: float
    bond_mae: float
    bond_stability: float
    per_type_tvd: dict[str, float]
    n_samples: int
    energy_w1: float | None = None

    def as_dict(self) -> dict:
        """Plain dict (a copy), e.g. for JSON."""
        return dataclasses.asdict(self)


def markdown_table(rows: dict[str, DistanceReport]) -> str:
    """Render reports as a markdown table, one row per name, values to 3 decimals.

    Columns: MAE, TVD, W1 (Å), W2 (Å), Stab, Bond MAE (Å), Bond Stab, one "TVD <type>" column per
    pair type found in any row, and E W1 (kT) when any row has energies; "—" marks a missing value.
    """
    reports = list(rows.values())
    types = sorted(set().union(*(r.per_type_tvd for r in reports)))
    with_energy = any(r.energy_w1 is not None for r in reports)
    header = ["", "MAE", "TVD", "W1", "W2", "Stab", "Bond MAE", "Bond Stab"]
    header += [f"TVD {t}" for t in types] + (["E W1"] if with_energy else [])

    def cell(value) -> str:
        return "—" if value is None else f"{value:.3f}"

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        values = [r.mae, r.tvd, r.w1, r.w2, r.stability, r.bond_mae, r.bond_stability]
        values += [r.per_type_tvd.get(t) for t in types]
        values += [r.energy_w1] if with_energy else []
        lines.append("| " + " | ".join([name] + [cell(v) for v in values]) + " |")
    return "\n".join(lines)


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

    Definitions (d = pair distances ``[N, M]``, d̄_ref = reference mean of each pair ``[M]``):

    * Histogram: all pair distances pooled, ``bins`` equal bins on [0, max_distance], default
      max_distance = 1.2 × the largest reference distance; p (generated), q (reference) are
      probabilities per bin (sum 1), outliers clipped into the edge bins.
    * MAE = mean over bins of |p_k − q_k|;  TVD = ½ Σ_k |p_k − q_k|.
    * W1, W2 = Wasserstein-1/2 distances (Å) of the pooled distance samples.
    * Stability = fraction of frames with every |d_ab − d̄_ref,ab| ≤ 0.5 Å.
    * Bonds: ``bonds`` (pair indices) or, by default, :func:`covalent_bonds` of the reference.
      Bond MAE = mean over bonds |mean_gen d − d̄_ref| (Å); bond stability = fraction of frames
      with every bond within 0.5 Å of d̄_ref. With no bonds, bond MAE is NaN and bond
      stability 1.
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
        _bonds_below_cutoff(numbers, reference_mean, scale=1.2)
        if bonds is None
        else np.asarray(bonds, dtype=int)
    )
    bond_mae = (
        float(np.abs(generated[:, bonds].mean(axis=0) - reference_mean[bonds]).mean())
        if bonds.size
        else float("nan")
    )
    types = pair_types(numbers)  # [M]
    per_type_tvd = {
        t: histogram_tvd(generated[:, types == t], reference[:, types == t], bins, hist_range)
        for t in sorted(set(types))
    }
    return DistanceReport(
        mae=histogram_mae(generated, reference, bins, hist_range),
        tvd=histogram_tvd(generated, reference, bins, hist_range),
        w1=float(wasserstein_distance(generated.ravel(), reference.ravel())),
        w2=wasserstein2(generated, reference),
        stability=stability(generated, reference_mean),
        bond_mae=bond_mae,
        bond_stability=stability(generated[:, bonds], reference_mean[bonds]),
        per_type_tvd=per_type_tvd,
        n_samples=len(positions),
        energy_w1=energy_w1,
    )


def noise_floor(
    reference_positions,
    numbers,
    *,
    split: str = "halves",
    groups=None,
    reference_energies=None,
    **kw,
) -> DistanceReport:
    """:func:`evaluate` between two halves of the reference: the score of a perfect sampler
    that had only half the reference's frames.

    ``split="halves"`` (the only split) compares the second half of the frames (as "generated")
    with the first half (as reference); contiguous halves keep time-correlated frames together,
    so the floor is not underestimated. With ``groups`` (one run label per frame) the first half
    of the sorted labels is the reference and the remaining runs are compared with it.
    ``reference_energies`` are split the same way; other keywords go to :func:`evaluate` — pass
    the model evaluation's ``max_distance`` so both use the same bins.
    """
    if split != "halves":
        raise ValueError(f"unknown split {split!r}; only 'halves' is implemented")
    reference_positions = np.asarray(reference_positions, dtype=float)
    n_frames = len(reference_positions)
    if groups is None:
        in_first = np.arange(n_frames) < n_frames // 2  # [R]
    else:
        groups = np.asarray(groups)
        if groups.shape != (n_frames,):
            raise ValueError(f"need one group label per frame, got {groups.shape} for {n_frames}")
        labels = np.unique(groups)
        if len(labels) < 2:
            raise ValueError("a noise floor by groups needs at least two groups")
        in_first = np.isin(groups, labels[: len(labels) // 2])
    energy_kw = {}
    if reference_energies is not None:
        reference_energies = np.asarray(reference_energies, dtype=float)
        energy_kw = {
            "energies": reference_energies[~in_first],
            "reference_energies": reference_energies[in_first],
        }
    return evaluate(
        reference_positions[~in_first], reference_positions[in_first], numbers, **energy_kw, **kw
    )


# --------------------------------------------------------------------------- time series


def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation ρ(t) along axis 0 of ``[T, k]`` via FFT, ρ(0) = 1."""
    n_frames = len(x)
    centred = x - x.mean(axis=0)  # [T, k]
    # Zero-pad to ≥ 2T so the circular FFT correlation equals the linear one.
    n_fft = 1 << (2 * n_frames - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=n_fft, axis=0)
    autocovariance = np.fft.irfft(spectrum * spectrum.conj(), n=n_fft, axis=0)[:n_frames]
    if np.any(autocovariance[0] <= 0):
        raise ValueError("autocorrelation of a constant series is undefined")
    return autocovariance / autocovariance[0]  # [T, k]


def integrated_autocorrelation_time(x, c: float = 5.0) -> float:
    """Integrated autocorrelation time τ = 1 + 2 Σ_{t=1}^{W} ρ(t), in frames.

    ρ is the FFT autocorrelation (biased estimator, divided by the variance); the window W is
    Sokal's: the smallest W with W ≥ c·τ(W). For ``[T, k]`` input τ is computed per column and
    the largest is returned. An AR(1) series x_t = a x_{t−1} + ε has τ = (1 + a)/(1 − a).
    """
    x = np.asarray(x, dtype=float)
    columns = x.reshape(len(x), -1)  # [T, k]
    tau = 2.0 * np.cumsum(_autocorrelation(columns), axis=0) - 1.0  # [T, k], τ(W) at row W
    window_large_enough = np.arange(len(x))[:, None] >= c * tau  # [T, k]
    # No admissible window (series too short): fall back to the longest one.
    window = np.where(
        window_large_enough.any(axis=0), window_large_enough.argmax(axis=0), len(x) - 1
    )  # [k]
    return float(tau[window, np.arange(columns.shape[1])].max())


def effective_sample_size(x, c: float = 5.0) -> float:
    """Number of frames divided by :func:`integrated_autocorrelation_time`."""
    return len(x) / integrated_autocorrelation_time(x, c)


def block_bootstrap(fn, series, n_blocks: int = 20, n_boot: int = 200, seed: int = 0):
    """Error bar of a scalar statistic ``fn(series)`` of a time series (axis 0 is time).

    The series is cut into ``n_blocks`` contiguous blocks (a remainder of fewer than one block
    at the end is dropped); each replicate redraws ``n_blocks`` blocks with replacement, so
    correlations shorter than a block survive resampling. Returns ``(fn(series), std)``: the
    point estimate on the full series and the standard deviation over ``n_boot`` replicates.
    """
    series = np.asarray(series)
    block_length = len(series) // n_blocks
    if block_length < 1:
        raise ValueError(f"{len(series)} frames cannot form {n_blocks} blocks")
    frame_shape = series.shape[1:]
    blocks = series[: n_blocks * block_length].reshape(n_blocks, block_length, *frame_shape)
    picks = np.random.default_rng(seed).integers(n_blocks, size=(n_boot, n_blocks))
    replicates = [float(fn(blocks[pick].reshape(-1, *frame_shape))) for pick in picks]
    return float(fn(series)), float(np.std(replicates, ddof=1))


# --------------------------------------------------------------------------- peptides


def _wrapped(angles) -> np.ndarray:
    angles = np.asarray(angles, dtype=float)
    # Degrees would be scrambled by the wrap below; |angle| > 2π is the cheap tell.
    if np.any(np.abs(angles) > 2 * np.pi + 1e-6):
        raise ValueError("torsion angles must be in radians")
    return (angles + np.pi) % (2 * np.pi) - np.pi  # [−π, π)


def _ramachandran_counts(phi, psi, bins: int) -> np.ndarray:
    counts, _, _ = np.histogram2d(
        _wrapped(phi), _wrapped(psi), bins=bins, range=[[-np.pi, np.pi], [-np.pi, np.pi]]
    )
    return counts  # [bins, bins], rows φ, columns ψ


def ramachandran_histogram(phi, psi, bins: int = 64) -> np.ndarray:
    """Probabilities (sum 1) of (φ, ψ) on ``bins`` × ``bins`` equal bins of [−π, π)².

    Angles in radians, wrapped into [−π, π). Returns ``[bins, bins]``, rows φ, columns ψ.
    """
    counts = _ramachandran_counts(phi, psi, bins)
    return counts / counts.sum()


def js_divergence(p, q) -> float:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2, natural log (nats).

    p and q are histograms of any shape, normalised here; 0 ≤ JS ≤ log 2, 0 iff p = q.
    """
    p = np.ravel(p) / np.sum(p)
    q = np.ravel(q) / np.sum(q)
    m = 0.5 * (p + q)
    return float(0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum())


def pmf_rmse(
    phi_psi_gen, phi_psi_ref, temperature_K: float | None = None, bins: int = 64, min_count: int = 1
) -> float:
    """RMSE between the Ramachandran potentials of mean force of two sample sets.

    ``phi_psi_*`` are ``[N, 2]`` (φ, ψ) in radians. On a ``bins`` × ``bins`` histogram,
    PMF = −log p (in kT) over the bins holding at least ``min_count`` samples in both sets; each
    PMF is shifted to zero mean over those common bins (the PMF's additive constant is
    arbitrary), then RMSE = √mean(ΔPMF²). Returned in kT, or in eV when ``temperature_K`` is
    given. Raise ``min_count`` to keep sparsely sampled bins from dominating.
    """
    phi_psi_gen = np.asarray(phi_psi_gen)
    phi_psi_ref = np.asarray(phi_psi_ref)
    counts_gen = _ramachandran_counts(phi_psi_gen[:, 0], phi_psi_gen[:, 1], bins)
    counts_ref = _ramachandran_counts(phi_psi_ref[:, 0], phi_psi_ref[:, 1], bins)
    common = (counts_gen >= min_count) & (counts_ref >= min_count)  # [bins, bins]
    if not common.any():
        raise ValueError(f"no bin holds {min_count} samples in both sets")
    pmf_gen = -np.log(counts_gen[common] / counts_gen.sum())
    pmf_ref = -np.log(counts_ref[common] / counts_ref.sum())
    difference = (pmf_gen - pmf_gen.mean()) - (pmf_ref - pmf_ref.mean())
    rmse = float(np.sqrt(np.mean(difference**2)))
    return rmse if temperature_K is None else rmse * kT(temperature_K)


#: Upper φ edge (rad) of the αL/C7ax basin; beyond it lies the β region wrapped across ±π.
ALPHA_L_MAX_PHI = 2.2


def basin_masks_phi(phi) -> tuple[np.ndarray, np.ndarray]:
    """The two φ basins of a peptide: (C7eq/β/αR, αL/C7ax) = (not B, B) with
    B = 0 < φ < 2.2 rad. The β basin extends past φ = −π and reappears at φ ≈ +π, so a plain
    φ > 0 split would count wrapped β frames as αL."""
    phi = _wrapped(phi)
    right = (phi > 0) & (phi < ALPHA_L_MAX_PHI)
    return ~right, right


#: ψ (rad) of the barrier between C7eq/αR (below) and C5/β (above) on the φ < 0 side, with ψ
#: below −1.5 rad counted as above π (the β basin wraps across ψ = ±π).
C5_MIN_PSI = 1.8
_PSI_WRAP = -1.5


def basin_masks_psi(phi, psi) -> tuple[np.ndarray, np.ndarray]:
    """The two ψ basins of the φ < 0 region: (C7eq/αR, C5/β) masks ``[n]``.

    C5/β is ψ ≥ 1.8 rad, ψ read in [−1.5, 2π − 1.5) so that β frames across ψ = ±π stay
    together; frames of the αL/C7ax basin (:func:`basin_masks_phi`) belong to neither.
    """
    _, alpha_l = basin_masks_phi(phi)
    psi = _wrapped(psi)
    psi = np.where(psi < _PSI_WRAP, psi + 2 * np.pi, psi)
    c5 = (psi >= C5_MIN_PSI) & ~alpha_l
    return ~c5 & ~alpha_l, c5


def free_energy_difference(phi, mask_a=None, mask_b=None) -> float:
    """ΔF = F(b) − F(a) = −log(P(b)/P(a)) in kT, P = fraction of the samples in each basin.

    ``mask_a``, ``mask_b`` are boolean arrays over the samples ``phi`` (radians); by default the
    basins of :func:`basin_masks_phi`. Raises ValueError when a basin is empty (ΔF infinite).
    """
    default_a, default_b = basin_masks_phi(phi)
    mask_a = default_a if mask_a is None else np.asarray(mask_a, dtype=bool)
    mask_b = default_b if mask_b is None else np.asarray(mask_b, dtype=bool)
    if mask_a.shape != default_a.shape or mask_b.shape != default_a.shape:
        raise ValueError("masks must have one entry per sample of phi")
    p_a, p_b = mask_a.mean(), mask_b.mean()
    if p_a == 0 or p_b == 0:
        raise ValueError("a basin holds no samples, so its free energy is infinite")
    return float(-np.log(p_b / p_a))


# --------------------------------------------------------------------------- plots


def plot_distance_histograms(path, numbers, reference_positions, samples: dict, bins: int = 100):
    """Distance distributions: the pooled pairs, then one panel per pair type.

    The reference is a filled step, each named sample set ``[N, A, 3]`` a line; densities in
    Å⁻¹ on the bins of :func:`evaluate` (``bins`` on [0, 1.2 × max reference distance]).
    Writes a PNG and returns its path.
    """
    from matplotlib.figure import Figure

    numbers = np.asarray(numbers)
    reference = pair_distances(_checked_positions(reference_positions, len(numbers), "reference"))
    generated = {
        name: pair_distances(_checked_positions(pos, len(numbers), name))
        for name, pos in samples.items()
    }
    hist_range = (0.0, 1.2 * float(reference.max()))
    edges = np.linspace(*hist_range, bins + 1)
    types = pair_types(numbers)
    panels = [("all pairs", np.ones_like(types, dtype=bool))]
    panels += [(t, types == t) for t in sorted(set(types))]

    def density(distances):
        return normalised_histogram(distances, bins, hist_range) / np.diff(edges)

    n_cols = min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig = Figure(figsize=(4 * n_cols, 3 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (title, columns) in zip(axes, panels):
        ax.stairs(density(reference[:, columns]), edges, fill=True, color="0.8", label="reference")
        for name, distances in generated.items():
            ax.stairs(density(distances[:, columns]), edges, label=name)
        ax.set(title=title, xlabel="distance (Å)", ylabel="density (Å⁻¹)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_training_curve(path, history: dict[str, list[float]]):
    """One panel per logged quantity of a training history (as :class:`~ase_drift.Trainer`
    records it): quantities as long as ``history["step"]`` are drawn against it, those as long as
    ``history["eval_step"]`` (periodic evaluations) against that. NaN entries are skipped;
    quantities whose name contains "loss" get a log-scale y axis. Writes a PNG, returns its path.
    """
    from matplotlib.figure import Figure

    axes_keys = [key for key in ("step", "eval_step") if key in history]
    if not axes_keys:
        raise ValueError("history needs a 'step' (or 'eval_step') list")
    xs = {key: np.asarray(history[key], dtype=float) for key in axes_keys}
    series = {}
    for key, values in history.items():
        if key in xs:
            continue
        values = np.asarray(values, dtype=float)
        x_key = next((k for k in axes_keys if len(xs[k]) == len(values)), None)
        if x_key is None:
            raise ValueError(f"history[{key!r}] has {len(values)} entries, matching no step list")
        series[key] = (xs[x_key], values)
    fig = Figure(figsize=(6, 2.2 * len(series)), layout="constrained")
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, (steps, values)) in zip(axes, series.items()):
        logged = np.isfinite(values)
        ax.plot(steps[logged], values[logged], marker="." if logged.sum() < 50 else None)
        ax.set_ylabel(key)
        if "loss" in key:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_ramachandran(path, panels: dict[str, tuple], bins: int = 64, columns: int = 4):
    """Free energy −log p(φ, ψ) (kT, minimum shifted to 0) per named (φ, ψ) set in radians.

    All panels share one colour scale, ``columns`` to a row; empty bins are blank. Writes a PNG
    and returns its path.
    """
    from matplotlib.figure import Figure

    free_energies = {}
    for name, (phi, psi) in panels.items():
        with np.errstate(divide="ignore"):
            f = -np.log(ramachandran_histogram(phi, psi, bins))  # [bins, bins]
        free_energies[name] = np.where(np.isfinite(f), f - f.min(), np.nan)
    vmax = max(np.nanmax(f) for f in free_energies.values())
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.6 * columns + 1, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    ticks = [-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi]
    labels = ["−π", "−π/2", "0", "π/2", "π"]
    for ax, (name, f) in zip(axes, free_energies.items()):
        image = ax.imshow(
            f.T, origin="lower", extent=(-np.pi, np.pi, -np.pi, np.pi), vmin=0, vmax=vmax
        )
        ax.set(title=name, xlabel="φ", ylabel="ψ", xticks=ticks, yticks=ticks)
        ax.set_xticklabels(labels)
        ax.set_yticklabels(labels)
    fig.colorbar(image, ax=list(axes[:len(panels)]), label="free energy (kT)")
    fig.savefig(path, dpi=110)
    return Path(path)
