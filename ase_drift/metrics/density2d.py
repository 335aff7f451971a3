"""Two-dimensional densities of sample sets (2-D toys, Ramachandran planes): histograms with an
out-of-range bin, Jensen–Shannon divergence and the PMF error of the energy-diffusion paper
(ScoreMD's ``fe_sq_error`` with "mix" weights).
"""

from __future__ import annotations

import numpy as np

from .peptides import js_divergence

Limits = tuple[tuple[float, float], tuple[float, float]]


def _points(points) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty [N, 2] array, got shape {points.shape}")
    return points


def histogram_2d(points, limits: Limits, bins: int = 100) -> np.ndarray:
    """Probabilities of ``points`` ``[N, 2]`` on ``bins`` × ``bins`` equal bins of ``limits``
    followed by one bin for every point outside them (``[bins² + 1]``, sum 1), so that samples
    escaping the region count against a sampler instead of vanishing from the histogram."""
    points = _points(points)
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=bins, range=limits)
    outside = len(points) - counts.sum()
    return np.append(counts.ravel(), outside) / len(points)


def js_2d(samples, reference, limits: Limits, bins: int = 100) -> float:
    """Jensen–Shannon divergence (nats) of the :func:`histogram_2d` of two sample sets."""
    return js_divergence(histogram_2d(samples, limits, bins), histogram_2d(reference, limits,
                                                                            bins))


def pmf_error(samples, reference, limits: Limits, bins: int = 64,
              baseline: float = 1e-6) -> float:
    """Σ_b w_b (log p_b − log q_b)², w = (p + q)/2: the squared free-energy difference (kT²)
    weighted by the mixture, over a ``bins`` × ``bins`` grid whose outermost rows and columns
    collect everything beyond ``limits`` (``bins`` − 2 inner bins per axis), bins empty in one
    set taking probability ``baseline`` — the "PMF" column of the energy-diffusion paper
    (ScoreMD's ``helper_metrics_2d``)."""
    def grid(points) -> np.ndarray:
        points = _points(points)
        index = []
        for axis, (low, high) in enumerate(limits):
            edges = np.linspace(low, high, bins - 1)
            index.append(np.digitize(points[:, axis], edges))  # 0 … bins − 1
        counts = np.zeros((bins, bins))
        np.add.at(counts, tuple(index), 1)
        return counts / len(points)

    p, q = grid(samples), grid(reference)
    occupied = (p > 0) | (q > 0)
    p, q = np.where(p > 0, p, baseline)[occupied], np.where(q > 0, q, baseline)[occupied]
    weights = (p + q) / 2
    return float(np.sum(weights / weights.sum() * (np.log(p) - np.log(q)) ** 2))
