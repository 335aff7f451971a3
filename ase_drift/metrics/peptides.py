"""Ramachandran metrics of peptides: (φ, ψ) histograms, Jensen–Shannon divergence, PMF RMSE,
basin masks and basin free-energy differences. Torsion angles in radians; results in nats or kT.

The torsions themselves come from :mod:`ase_drift.peptides` (mdtraj).
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from ..units import kT


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
