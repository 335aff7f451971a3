"""ase_drift.metrics.timeseries on series with known autocorrelation times."""

import numpy as np
import pytest
from scipy.signal import lfilter

from ase_drift import metrics


def ar1_series(a, n, seed):
    """x_t = a x_{t−1} + ε_t with unit Gaussian ε: integrated autocorrelation time (1+a)/(1−a)."""
    noise = np.random.default_rng(seed).standard_normal(n)
    return lfilter([1.0], [1.0, -a], noise)


@pytest.mark.parametrize("a", [0.5, 0.8])
def test_autocorrelation_time_of_ar1(a):
    x = ar1_series(a, 200_000, seed=0)
    assert metrics.integrated_autocorrelation_time(x) == pytest.approx((1 + a) / (1 - a), rel=0.1)


def test_autocorrelation_time_of_columns_is_the_largest():
    x = np.stack([ar1_series(0.2, 50_000, seed=1), ar1_series(0.8, 50_000, seed=2)], axis=1)
    assert metrics.integrated_autocorrelation_time(x) == pytest.approx(9.0, rel=0.1)
    assert metrics.effective_sample_size(x) == pytest.approx(50_000 / 9.0, rel=0.1)


def test_block_bootstrap_error_of_a_correlated_mean():
    a, n = 0.8, 20_000
    x = ar1_series(a, n, seed=3)
    estimate, std = metrics.block_bootstrap(np.mean, x, n_blocks=50)
    # Var(mean) = σ²τ/n with σ² = 1/(1−a²) and τ = (1+a)/(1−a).
    expected = np.sqrt((1 + a) / (1 - a) / (1 - a**2) / n)
    assert estimate == pytest.approx(x.mean())
    assert std == pytest.approx(expected, rel=0.3)
