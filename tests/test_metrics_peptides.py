"""ase_drift.metrics.peptides: Ramachandran histograms, divergences and basins on known cases."""

import numpy as np
import pytest

from ase_drift import metrics
from ase_drift.units import kT


def test_ramachandran_histogram_is_a_distribution():
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 1000))
    hist = metrics.ramachandran_histogram(phi, psi)
    assert hist.shape == (64, 64) and hist.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="radians"):
        metrics.ramachandran_histogram(np.degrees(phi), psi)


def test_js_divergence_bounds_and_symmetry():
    rng = np.random.default_rng(0)
    p, q = rng.random((2, 8, 8))
    assert metrics.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.js_divergence(p, q) == pytest.approx(metrics.js_divergence(q, p))
    assert 0 < metrics.js_divergence(p, q) < np.log(2)
    assert metrics.js_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))


def test_pmf_rmse_of_a_known_reweighting():
    # Samples at the centres of a 4×4 grid: reference 100 per bin; generated 200 in half the
    # bins and 100 in the other half, so the centred PMFs differ by ±log(2)/2 in every bin.
    centres = -np.pi + (np.arange(4) + 0.5) * np.pi / 2
    grid = np.stack(np.meshgrid(centres, centres, indexing="ij"), axis=-1).reshape(-1, 2)
    reference = np.repeat(grid, 100, axis=0)
    generated = np.concatenate([reference, np.repeat(grid[:8], 100, axis=0)])
    assert metrics.pmf_rmse(reference, reference, bins=4) == pytest.approx(0.0)
    assert metrics.pmf_rmse(generated, reference, bins=4) == pytest.approx(np.log(2) / 2)
    in_eV = metrics.pmf_rmse(generated, reference, temperature_K=300.0, bins=4)
    assert in_eV == pytest.approx(np.log(2) / 2 * kT(300.0))


def test_free_energy_difference_of_a_two_to_one_split():
    rng = np.random.default_rng(0)
    phi = np.concatenate([rng.uniform(-3, -0.1, 2000), rng.uniform(0.1, 2.1, 1000)])
    assert metrics.free_energy_difference(phi) == pytest.approx(np.log(2))
    a, b = metrics.basin_masks_phi(phi)
    assert metrics.free_energy_difference(phi, b, a) == pytest.approx(-np.log(2))


def test_wrapped_beta_frames_are_not_counted_as_alpha_l():
    """β-region frames near φ = −π reappear at φ ≈ +π after wrapping; they stay in basin A."""
    left, right = metrics.basin_masks_phi(np.array([-1.4, 3.1, -3.1, 1.0]))
    assert left.tolist() == [True, True, True, False]
    assert right.tolist() == [False, False, False, True]


def test_psi_basins_split_c7eq_from_c5_across_the_psi_wrap():
    """C7eq (ψ ≈ 1.2) and αR (ψ ≈ −0.7) on one side, C5/β (ψ ≈ 2.7 and ψ ≈ −3.0, the same
    basin across ±π) on the other; αL/C7ax frames (φ ≈ 1.0) belong to neither."""
    phi = np.array([-1.4, -1.2, -2.6, -2.6, 1.0])
    psi = np.array([1.2, -0.7, 2.7, -3.0, -1.0])
    c7eq, c5 = metrics.basin_masks_psi(phi, psi)
    assert c7eq.tolist() == [True, True, False, False, False]
    assert c5.tolist() == [False, False, True, True, False]
