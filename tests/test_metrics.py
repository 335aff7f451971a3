"""The metrics' definitions, checked on cases with known answers."""

import numpy as np
import pytest
from ase.build import molecule
from scipy.signal import lfilter

from ase_drift import metrics
from ase_drift.units import kT

# Ethanol in ase.build order C C O H H H H H H: the C–C, C–O, O–H and five C–H bonds.
ETHANOL_BONDS = {(0, 1), (0, 6), (0, 7), (0, 8), (1, 2), (1, 4), (1, 5), (2, 3)}


def ethanol_frames(n_frames, seed=0, jitter=0.02):
    """Ethanol's ASE geometry with i.i.d. Gaussian displacements of ``jitter`` Å. [N, 9, 3]"""
    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(seed)
    noise = jitter * rng.standard_normal((n_frames, len(atoms), 3))
    return atoms.numbers, atoms.positions[None] + noise


def diatomic_frames(bond_lengths):
    """Two atoms on the x axis, one frame per bond length. [N, 2, 3]"""
    positions = np.zeros((len(bond_lengths), 2, 3))
    positions[:, 1, 0] = bond_lengths
    return positions


def ar1_series(a, n, seed):
    """x_t = a x_{t−1} + ε_t with unit Gaussian ε: integrated autocorrelation time (1+a)/(1−a)."""
    noise = np.random.default_rng(seed).standard_normal(n)
    return lfilter([1.0], [1.0, -a], noise)


# --------------------------------------------------------------------------- distances


def test_pair_order_matches_triu():
    i, j = metrics.pair_indices(5)
    ti, tj = np.triu_indices(5, k=1)
    np.testing.assert_array_equal(i, ti)
    np.testing.assert_array_equal(j, tj)

    positions = np.random.default_rng(0).normal(size=(3, 5, 3))
    full = np.linalg.norm(positions[:, :, None] - positions[:, None, :], axis=-1)  # [N, A, A]
    np.testing.assert_allclose(metrics.pair_distances(positions), full[:, ti, tj])


def test_distances_invariant_under_rotation_and_translation():
    _, positions = ethanol_frames(4)
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))  # proper rotation
    moved = positions @ rotation.T + rng.normal(size=3)
    np.testing.assert_allclose(
        metrics.pair_distances(moved), metrics.pair_distances(positions), atol=1e-12
    )


def test_covalent_bonds_of_ethanol():
    numbers, positions = ethanol_frames(50)
    bonds = metrics.covalent_bonds(numbers, positions)
    i, j = metrics.pair_indices(len(numbers))
    assert set(zip(i[bonds].tolist(), j[bonds].tolist())) == ETHANOL_BONDS


def test_pair_types_are_sorted_symbols():
    numbers, _ = ethanol_frames(1)
    types = metrics.pair_types(numbers)
    assert set(types) == {"C-C", "C-O", "C-H", "H-O", "H-H"}
    assert types[0] == "C-C" and types[1] == "C-O"  # pairs (0, 1), (0, 2)


# --------------------------------------------------------------------------- 1-D distances


def test_tvd_of_disjoint_histograms_is_one():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, 1000)
    y = rng.uniform(2.0, 3.0, 1000)
    assert metrics.histogram_tvd(x, y, bins=30, range=(0.0, 3.0)) == pytest.approx(1.0)


def test_outliers_count_in_the_edge_bins():
    p = metrics.normalised_histogram([0.5, 5.0], bins=2, range=(0.0, 2.0))
    np.testing.assert_allclose(p, [0.5, 0.5])


def test_identical_sets_score_perfectly():
    numbers, positions = ethanol_frames(200)
    report = metrics.evaluate(positions, positions, numbers)
    assert report.tvd == 0 and report.mae == 0 and report.w1 == 0 and report.w2 == 0
    assert report.stability == 1 and report.bond_stability == 1
    assert report.bond_mae == pytest.approx(0.0, abs=1e-12)
    assert all(v == 0 for v in report.per_type_tvd.values())
    assert report.n_samples == 200 and report.energy_w1 is None


def test_shift_of_every_distance_by_delta_gives_w1_delta():
    rng = np.random.default_rng(0)
    lengths = 1.5 + 0.05 * rng.standard_normal(5000)
    delta = 0.1
    report = metrics.evaluate(
        diatomic_frames(lengths + delta), diatomic_frames(lengths), [1, 1], bonds=[0]
    )
    assert report.w1 == pytest.approx(delta, rel=1e-6)
    assert report.w2 == pytest.approx(delta, rel=1e-3)
    assert report.bond_mae == pytest.approx(delta)


def test_mae_is_mean_absolute_bin_difference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 0.1, 5000), rng.normal(1.1, 0.1, 5000)
    tvd = metrics.histogram_tvd(x, y, bins=50, range=(0.0, 2.0))
    assert metrics.histogram_mae(x, y, bins=50, range=(0.0, 2.0)) == pytest.approx(2 * tvd / 50)


def test_stability_counts_frames_with_a_displaced_atom():
    numbers, reference = ethanol_frames(400, seed=0)
    _, generated = ethanol_frames(400, seed=1)
    # Move atom 0 (C) 1 Å straight away from its bonded H 6 in every second frame:
    # that C–H distance grows by 1 Å > 0.5 Å.
    away = reference[0, 0] - reference[0, 6]
    generated[::2, 0] += away / np.linalg.norm(away)
    report = metrics.evaluate(generated, reference, numbers)
    assert report.stability == pytest.approx(0.5)
    assert report.bond_stability == pytest.approx(0.5)


def test_energy_w1_is_in_kT():
    numbers, positions = ethanol_frames(100)
    energies = np.random.default_rng(0).normal(size=100)
    shifted = energies + 2.0 * kT(300.0)
    report = metrics.evaluate(
        positions,
        positions,
        numbers,
        energies=shifted,
        reference_energies=energies,
        temperature_K=300.0,
    )
    assert report.energy_w1 == pytest.approx(2.0)
    with pytest.raises(ValueError, match="temperature_K"):
        metrics.evaluate(
            positions, positions, numbers, energies=shifted, reference_energies=energies
        )


def test_bad_input_raises():
    numbers, positions = ethanol_frames(10)
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate(positions[:, :-1], positions, numbers)
    broken = positions.copy()
    broken[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate(broken, positions, numbers)


def test_noise_floor_of_iid_samples_is_small():
    numbers, positions = ethanol_frames(20_000, jitter=0.05)
    report = metrics.noise_floor(positions, numbers)
    assert report.tvd < 0.03 and report.stability == 1
    assert report.n_samples == 10_000


def test_noise_floor_by_groups_compares_runs():
    numbers, positions = ethanol_frames(300)
    groups = np.repeat([0, 1, 2], 100)
    report = metrics.noise_floor(positions, numbers, groups=groups)
    assert report.n_samples == 200  # runs 1 and 2 against run 0


def test_markdown_table_lists_rows_and_columns():
    numbers, positions = ethanol_frames(100)
    report = metrics.evaluate(positions, positions, numbers)
    table = metrics.markdown_table({"drift": report, "noise floor": report})
    assert "| drift |" in table and "| noise floor |" in table
    assert "TVD C-H" in table and "E W1" not in table
    assert report.as_dict()["per_type_tvd"] == report.per_type_tvd


# --------------------------------------------------------------------------- time series


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


# --------------------------------------------------------------------------- peptides


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


# --------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path):
    from matplotlib.image import imread

    numbers, reference = ethanol_frames(100, seed=0)
    _, generated = ethanol_frames(100, seed=1, jitter=0.05)
    rng = np.random.default_rng(0)
    angles = rng.uniform(-np.pi, np.pi, (2, 500))
    paths = [
        metrics.plot_distance_histograms(
            tmp_path / "d.png", numbers, reference, {"drift": generated}
        ),
        metrics.plot_training_curve(
            tmp_path / "t.png",
            {"step": [0, 1, 2], "loss": [1.0, 0.5, 0.2], "drift_norm": [np.nan, 0.3, 0.1],
             "eval_step": [1, 2], "tvd": [0.3, 0.1]},
        ),
        metrics.plot_ramachandran(tmp_path / "r.png", {"ref": tuple(angles), "gen": tuple(angles)}),
    ]
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    # Five panels two to a row: a grid of three rows, taller than wide.
    grid = metrics.plot_ramachandran(tmp_path / "g.png", {str(k): tuple(angles) for k in range(5)},
                                     columns=2)
    height, width = imread(grid).shape[:2]
    assert height > width
