"""Kernel logits and bandwidth heuristics: pure tensor functions.

A kernel enters the drifting field only through its *logits* ℓ(x, y) = log k(x, y): the
normalised weights are softmaxes of logits (paper Eqs. 6–7), so working in log space is exact
and never underflows. Shapes: queries ``x`` ``[B, D]``, keys ``y`` ``[N, D]``, logits ``[B, N]``.
"""

from __future__ import annotations

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
