"""Kernel logits and bandwidth heuristics: pure tensor functions.

A kernel enters the drifting field only through its *logits* ℓ(x, y) = log k(x, y): the
normalised weights are softmaxes of logits (paper Eqs. 6–7), so working in log space is exact
and never underflows. Shapes: queries ``x`` ``[B, D]``, keys ``y`` ``[N, D]``, logits ``[B, N]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """‖x_b − y_n‖² ``[B, N]`` (clamped at 0 against round-off)."""
    cross = x @ y.T  # [B, N]
    return ((x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * cross).clamp_min(0)


def gaussian_logits(x: Tensor, y: Tensor, tau: float | Tensor) -> Tensor:
    """Gaussian kernel logits ℓ(x, y) = −‖x − y‖² / (2τ²) ``[B, N]`` (paper Thm 3.1)."""
    return -squared_distances(x, y) / (2 * tau**2)


def laplacian_logits(x: Tensor, y: Tensor, tau: float | Tensor) -> Tensor:
    """Laplacian kernel logits ℓ(x, y) = −‖x − y‖ / τ ``[B, N]`` (paper Eq. 8)."""
    return -squared_distances(x, y).sqrt() / tau


def median_distance(x: Tensor, y: Tensor) -> Tensor:
    """Median of ‖x_b − y_n‖ over all pairs: the median-heuristic bandwidth (no gradient)."""
    with torch.no_grad():
        return median_from_squared(squared_distances(x, y), max_pairs=None)


def median_from_squared(squared: Tensor, max_pairs: int | None = 16384) -> Tensor:
    """√median of squared distances; with ``max_pairs``, over an evenly strided subset of at
    most that many entries (a heuristic bandwidth needs no exact median; sorting 10⁵ entries
    every step costs ~10 % of a training step)."""
    flat = squared.detach().flatten()
    if max_pairs is not None and flat.numel() > max_pairs:
        flat = flat[:: -(-flat.numel() // max_pairs)]
    return flat.median().sqrt()


def exclude_self(logits: Tensor) -> Tensor:
    """Set the diagonal of square ``[B, B]`` logits to −∞, so a sample never repels itself."""
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return logits.masked_fill(eye, float("-inf"))


def kde_log_density(features: Tensor, n_blocks: int = 10, n_bandwidths: int = 24,
                    max_elements: int = 2**24) -> Tensor:
    """Normalised Gaussian kernel density estimate log p̂(y_i) ``[N]`` of ``features`` ``[N, D]``
    taken in their given order, e.g. the frames of a trajectory.

    Consecutive MD frames are near copies of each other, so a leave-one-out estimate (or a
    nearest-neighbour bandwidth) measures the time step, not the density. Here the frames are
    cut into ``n_blocks`` contiguous blocks; the bandwidth h maximises the held-out likelihood
    of every block under the KDE of the other blocks (block cross-validation over a log grid of
    ``n_bandwidths`` values), and log p̂(y_i) uses the frames outside y_i's own block:

        log p̂(y) = logsumexp_j −‖y − y_j‖²/(2h²) − log n_j − (D/2)·log(2πh²).

    Every grid bandwidth is scored in one pass over row chunks of at most ``max_elements``
    logits.
    """
    n, dim = features.shape
    if n_blocks < 2 or n < n_blocks:
        raise ValueError(f"need at least 2 blocks and {n_blocks} frames, got {n} frames")
    features = features.detach()
    block = torch.arange(n, device=features.device) * n_blocks // n  # [N] block of each frame
    others = (n - torch.bincount(block, minlength=n_blocks).to(features))[block]  # [N]
    sample = features[:: max(1, n // 1024)]
    grid = median_distance(sample, sample) * torch.logspace(
        -2.0, 0.5, n_bandwidths, dtype=features.dtype, device=features.device)  # [H]
    log_sums = features.new_empty(n_bandwidths, n)  # [H, N]
    chunk = max(1, max_elements // (n_bandwidths * n))
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        squared = squared_distances(features[rows], features)  # [C, N]
        squared = squared.masked_fill(block[rows, None] == block[None, :], float("inf"))
        log_sums[:, rows] = torch.logsumexp(-squared / (2 * grid[:, None, None] ** 2), -1)
    log_p = (log_sums - others.log() - 0.5 * dim * math.log(2 * math.pi)
             - dim * grid.log()[:, None])  # [H, N]
    return log_p[int(log_p.mean(-1).argmax())]
