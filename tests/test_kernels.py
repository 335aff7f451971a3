"""Kernel logits ℓ(x, y) = log k(x, y) against the direct formulas:
Gaussian ℓ = −‖x−y‖²/(2τ²), Laplacian ℓ = −‖x−y‖/τ; the median heuristic; self-exclusion."""

import pytest
import torch

from ase_drift.kernels import (
    exclude_self,
    gaussian_logits,
    laplacian_logits,
    median_distance,
    squared_distances,
)


@pytest.fixture
def points():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = 2 * torch.randn(11, 5, generator=gen, dtype=torch.float64) + 1
    return x, y


def direct_sq(x, y):
    """‖x_b − y_n‖² by explicit differences ``[B, N]``."""
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def test_squared_distances_match_direct_and_are_non_negative(points):
    x, y = points
    torch.testing.assert_close(squared_distances(x, y), direct_sq(x, y), rtol=0, atol=1e-12)
    self_sq = squared_distances(x, x)
    assert (self_sq >= 0).all()
    assert self_sq.diagonal().abs().max() < 1e-12


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_gaussian_logits(points, tau):
    """ℓ = −‖x−y‖²/(2τ²); exp(ℓ) is the Gaussian kernel, 1 at x = y."""
    x, y = points
    torch.testing.assert_close(gaussian_logits(x, y, tau), -direct_sq(x, y) / (2 * tau**2),
                               rtol=1e-12, atol=1e-12)
    assert torch.exp(gaussian_logits(x, x, tau)).diagonal().sub(1).abs().max() < 1e-12


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_laplacian_logits(points, tau):
    """ℓ = −‖x−y‖/τ."""
    x, y = points
    torch.testing.assert_close(laplacian_logits(x, y, tau), -direct_sq(x, y).sqrt() / tau,
                               rtol=1e-12, atol=1e-12)


def test_logits_accept_tensor_bandwidth_and_keep_dtype(points):
    x, y = points
    tau = torch.tensor(0.7, dtype=torch.float64)
    assert gaussian_logits(x, y, tau).dtype == torch.float64
    assert gaussian_logits(x.float(), y.float(), 0.7).dtype == torch.float32


def test_median_distance_is_median_of_pairwise_distances(points):
    """median over all B·N pairs of ‖x_b − y_n‖, with no gradient."""
    x, y = points
    x = x.clone().requires_grad_(True)
    med = median_distance(x, y)
    assert not med.requires_grad
    expected = torch.cdist(x.detach(), y).flatten().median()
    assert med.item() == pytest.approx(expected.item(), rel=1e-12)


def test_exclude_self_masks_only_the_diagonal(points):
    """Diagonal → −∞, so softmax gives a sample zero weight on itself; off-diagonal unchanged."""
    x, _ = points
    logits = gaussian_logits(x, x, 1.0)
    masked = exclude_self(logits)
    assert torch.isneginf(masked.diagonal()).all()
    off = ~torch.eye(len(x), dtype=torch.bool)
    torch.testing.assert_close(masked[off], logits[off], rtol=0, atol=0)
    weights = torch.softmax(masked, dim=-1)
    assert weights.diagonal().abs().max() == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(x), dtype=x.dtype))
