"""ase_drift.metrics.distances and .tables: the definitions, checked on constructed answers.

Time series and peptide metrics: test_metrics_timeseries.py, test_metrics_peptides.py.
"""

import numpy as np
import pytest
from ase.build import molecule

from ase_drift import metrics
from ase_drift.units import kT

# Ethanol in ase.build order C C O H H H H H H: the C–C, C–O, O–H and five C–H bonds.
ETHANOL_BONDS = {(0, 1), (0, 6), (0, 7), (0, 8), (1, 2), (1, 4), (1, 5), (2, 3)}
CH2 = [6, 1, 1]  # C, H, H: pairs C–H, C–H, H–H (M = 3)


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


def ch2_frames(hh, n_frames=10, ch=1.1):
    """C at the origin, both C–H bonds ``ch`` Å, the H–H distance ``hh`` Å, in every frame."""
    half_angle = np.arcsin(hh / (2 * ch))
    h = ch * np.array([np.sin(half_angle), np.cos(half_angle), 0.0])
    frame = np.stack([np.zeros(3), h, h * [-1, 1, 1]])
    return np.repeat(frame[None], n_frames, axis=0)


def triangle_frames(ch1, ch2, hh, n_frames=10):
    """C at the origin, H1 at ``ch1`` Å on the x axis, H2 at ``ch2`` Å from C and ``hh`` Å from
    H1, in every frame."""
    cos = (ch1**2 + ch2**2 - hh**2) / (2 * ch1 * ch2)
    frame = np.array([[0, 0, 0], [ch1, 0, 0], [ch2 * cos, ch2 * np.sqrt(1 - cos**2), 0]])
    return np.repeat(frame[None], n_frames, axis=0)


def stretch_bond(positions, a, b, by):
    """Move atom a away from atom b by ``by`` Å along their bond, in every frame (a copy)."""
    out = positions.copy()
    direction = out[:, a] - out[:, b]
    out[:, a] += by * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return out


# --------------------------------------------------------------------------- pair distances


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


# --------------------------------------------------------------------------- histograms, TVD


def test_tvd_of_disjoint_histograms_is_one():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, 1000)
    y = rng.uniform(2.0, 3.0, 1000)
    assert metrics.histogram_tvd(x, y, bins=30, range=(0.0, 3.0)) == pytest.approx(1.0)


def test_tvd_is_half_the_l1_distance_of_the_bin_probabilities():
    # x: 3/4 in bin 0, 1/4 in bin 1; y: 1/4, 3/4 → ½(|3/4 − 1/4| + |1/4 − 3/4|) = 1/2.
    x, y = [0.5, 0.5, 0.5, 1.5], [0.5, 1.5, 1.5, 1.5]
    assert metrics.histogram_tvd(x, y, bins=2, range=(0.0, 2.0)) == pytest.approx(0.5)


def test_outliers_count_in_the_edge_bins():
    p = metrics.normalised_histogram([0.5, 5.0], bins=2, range=(0.0, 2.0))
    np.testing.assert_allclose(p, [0.5, 0.5])


def test_per_type_tvd_of_point_masses_in_different_bins():
    """C–H–H with identical C–H bonds and the H–H distance moved from 1.8 to 2.0 Å (another
    bin): TVD 1 for H–H, 0 for C–H, and 1/3 pooled (one pair in three moved)."""
    report = metrics.evaluate(ch2_frames(2.0), ch2_frames(1.8), CH2, max_distance=3.0)
    assert report.per_type_tvd["H-H"] == pytest.approx(1.0)
    assert report.per_type_tvd["C-H"] == pytest.approx(0.0, abs=1e-12)
    assert report.tvd == pytest.approx(1 / 3)
    assert report.w1 == pytest.approx(0.2 / 3)  # a third of the mass moved by 0.2 Å


def test_identical_sets_score_perfectly():
    numbers, positions = ethanol_frames(200)
    report = metrics.evaluate(positions, positions, numbers)
    assert report.tvd == 0 and report.pair_mae == 0 and report.w1 == 0 and report.w2 == 0
    assert report.pair_stability > 0.99 and report.bond_stability == 1
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
    assert report.pair_mae == pytest.approx(delta)


def test_wasserstein_distances_are_of_the_pooled_distances():
    """One C–H bond 0.1 Å shorter and one 0.1 Å longer: each frame's mean distance is unchanged,
    but a third of the pooled mass moves by 0.1 Å each way: W1 = 0.2/3, W2 = (0.02/3)^½."""
    report = metrics.evaluate(triangle_frames(1.0, 1.2, 1.8), triangle_frames(1.1, 1.1, 1.8), CH2)
    assert report.w1 == pytest.approx(0.2 / 3)
    assert report.w2 == pytest.approx(np.sqrt(0.02 / 3), rel=1e-3)
    assert report.pair_mae == pytest.approx(0.2 / 3)  # sorted C–H: (1.0, 1.2) vs (1.1, 1.1)
    assert report.bond_mae == pytest.approx(0.1)


# --------------------------------------------------------------------------- pair MAE


def test_pair_mae_of_one_pair_shifted_by_delta_is_delta_over_m():
    rng = np.random.default_rng(0)
    reference = rng.uniform(1.0, 3.0, (500, 6))  # [R, M], M = 6 pairs
    generated = reference[::-1].copy()
    delta = 0.3
    generated[:, 4] += delta
    assert metrics.pair_mae(generated, reference) == pytest.approx(delta / 6)
    # Through evaluate: C–H–H with the H–H distance 1.8 → 2.0 Å, the C–H bonds unchanged.
    report = metrics.evaluate(ch2_frames(2.0), ch2_frames(1.8), CH2)
    assert report.pair_mae == pytest.approx(0.2 / 3)
    assert report.bond_mae == pytest.approx(0.0, abs=1e-12)


def test_pair_mae_measures_how_far_where_tvd_saturates():
    """Point masses moved to another bin: TVD is 1 whether the H–H distance moved 0.2 or 1 Å;
    pair MAE is 0.2/3 and 1/3 Å."""
    near = metrics.evaluate(ch2_frames(2.0), ch2_frames(1.8), CH2, max_distance=4.0)
    far = metrics.evaluate(ch2_frames(2.0), ch2_frames(1.0), CH2, max_distance=4.0)
    assert near.per_type_tvd["H-H"] == far.per_type_tvd["H-H"] == pytest.approx(1.0)
    assert far.pair_mae == pytest.approx(5 * near.pair_mae)


def test_pair_mae_sees_swapped_pairs_that_pooled_histograms_do_not():
    """Exchanging the distance distributions of two pairs of different types leaves every pooled
    statistic unchanged; pair MAE is 2|Δ|/M with Δ the difference of their means."""
    rng = np.random.default_rng(0)
    reference = np.stack([rng.normal(1.5, 0.05, 1000), rng.normal(2.5, 0.05, 1000)], axis=1)
    swapped = reference[:, ::-1]
    assert metrics.histogram_tvd(swapped, reference, bins=50, range=(0, 4)) == 0
    difference = abs(np.diff(reference.mean(axis=0))[0])
    types = np.array(["C-C", "C-O"], dtype=object)
    assert metrics.pair_mae(swapped, reference, types) == pytest.approx(2 * difference / 2)


def test_pair_mae_is_blind_to_relabelling_identical_atoms():
    """Swapping two methyl H (a rotation of the methyl group) changes the labelled per-pair
    means but not the distribution: pair MAE stays 0 (each frame sorted within its types)."""
    numbers, positions = ethanol_frames(300, jitter=0.05)
    relabelled = positions[:, [0, 1, 2, 3, 4, 5, 7, 6, 8]]  # H6 ↔ H7 (both on C0)
    report = metrics.evaluate(relabelled, positions, numbers)
    assert report.pair_mae == pytest.approx(0.0, abs=1e-12)
    labelled = metrics.pair_distances(relabelled), metrics.pair_distances(positions)
    assert metrics.pair_mae(*labelled) > 0.1  # without the sort the swap would count


# --------------------------------------------------------------------------- stability


def test_stability_of_an_independent_half_of_the_reference_is_near_one():
    numbers, positions = ethanol_frames(4000, jitter=0.05)
    report = metrics.evaluate(positions[2000:], positions[:2000], numbers)
    assert report.pair_stability >= 0.95 and report.bond_stability == 1


def test_stability_of_the_bundled_ethanol_reference_runs_is_near_one():
    """Run 1 against run 0 of the bundled GFN2-xTB reference at 500 K; a fixed 0.5 Å tolerance
    scored 0 here (thermal H–H spreads are ~0.5 Å)."""
    from ase_drift.datasets import load, reference_runs

    _, reference = load("ethanol-gfn2-500K")
    runs = reference_runs("ethanol-gfn2-500K")
    report = metrics.evaluate(reference.positions[runs == 1], reference.positions[runs == 0],
                              reference.numbers)
    assert report.pair_stability >= 0.95 and report.bond_stability == 1


def test_stability_of_a_set_with_one_bond_stretched_by_one_angstrom_is_zero():
    numbers, reference = ethanol_frames(2000, seed=0, jitter=0.05)
    _, generated = ethanol_frames(2000, seed=1, jitter=0.05)
    broken = stretch_bond(generated, 0, 6, 1.0)  # one C–H bond 1 Å longer, every frame
    report = metrics.evaluate(broken, reference, numbers)
    assert report.pair_stability == 0 and report.bond_stability == 0
    # Every second frame broken: half of the frames are unstable.
    generated[::2] = broken[::2]
    report = metrics.evaluate(generated, reference, numbers)
    assert report.pair_stability == pytest.approx(0.5, abs=0.02)
    assert report.bond_stability == pytest.approx(0.5)


def test_stability_tolerance_is_four_reference_standard_deviations():
    rng = np.random.default_rng(0)
    reference = rng.normal(2.0, 0.1, (100_000, 1))  # one pair, σ = 0.1 Å
    inside, outside = np.full((10, 1), 2.0 + 0.39), np.full((10, 1), 2.0 - 0.41)
    assert metrics.pair_stability(inside, reference) == 1
    assert metrics.pair_stability(outside, reference) == 0
    assert metrics.STABILITY_SIGMAS == 4


# --------------------------------------------------------------------------- energies, input


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


# --------------------------------------------------------------------------- noise floor


def test_noise_floor_of_two_identical_runs_is_zero():
    numbers, run = ethanol_frames(500, jitter=0.05)
    positions = np.concatenate([run, run[::-1]])  # run 1 holds run 0's frames
    groups = np.repeat([0, 1], 500)
    floor = metrics.noise_floor(positions, numbers, 500, groups=groups)
    assert len(floor.reports) == 1 and floor.n_samples == 500 and floor.n_reference == 500
    mean = floor.mean
    assert mean.tvd == 0 and mean.w1 == 0 and mean.pair_mae == pytest.approx(0, abs=1e-12)
    assert all(v == 0 for v in mean.per_type_tvd.values())


def test_noise_floor_grows_as_the_sample_size_shrinks():
    numbers, positions = ethanol_frames(20_000, jitter=0.05)
    small = metrics.noise_floor(positions, numbers, 100)
    large = metrics.noise_floor(positions, numbers, 5000)
    assert len(small.reports) == 5 and len(large.reports) == 2  # ⌊10,000 / 5,000⌋ subsets
    assert small.n_samples == 100 and all(r.n_samples == 100 for r in small.reports)
    # i.i.d. frames: histogram noise ∝ n^−½, so 50× fewer samples give a floor several × higher.
    assert small.mean.tvd > 3 * large.mean.tvd
    assert small.mean.pair_mae > 3 * large.mean.pair_mae
    assert small.std.tvd > 0


def test_noise_floor_scores_disjoint_subsets_of_one_part_against_the_other():
    numbers, positions = ethanol_frames(600, jitter=0.05)
    positions[250] *= 1.2  # the largest distance lies in run 1, outside the scored-against part
    groups = np.repeat([0, 1, 2], 200)
    reference, subsets = metrics.noise_floor_subsets(600, 50, groups=groups, n_repeats=3)
    np.testing.assert_array_equal(reference, np.flatnonzero(groups != 1))  # runs 0 and 2
    assert len(subsets) == 3 and all(len(s) == 50 for s in subsets)
    assert all(np.all(groups[s] == 1) for s in subsets)
    assert len(np.unique(np.concatenate(subsets))) == 150  # disjoint
    floor = metrics.noise_floor(positions, numbers, 50, groups=groups, n_repeats=3)
    max_distance = 1.2 * metrics.pair_distances(positions).max()
    for report, subset in zip(floor.reports, subsets):
        assert report == metrics.evaluate(positions[subset], positions[reference], numbers,
                                          max_distance=max_distance)
    assert floor.mean.tvd == pytest.approx(np.mean([r.tvd for r in floor.reports]))
    assert floor.std.tvd == pytest.approx(np.std([r.tvd for r in floor.reports], ddof=1))
    with pytest.raises(ValueError, match="n = 201"):
        metrics.noise_floor(positions, numbers, 201, groups=groups)


def test_noise_floor_of_the_bundled_ethanol_at_the_sample_size():
    """Reference run 1 against run 0: 1,000 frames give a higher floor than 5,000, and the
    biased training set (3,000 frames) scores far above the floor at its own size."""
    from ase_drift.datasets import load, reference_runs

    train, reference = load("ethanol-gfn2-500K")
    runs = reference_runs("ethanol-gfn2-500K")
    args = reference.positions, reference.numbers
    at_1000 = metrics.noise_floor(*args, 1000, groups=runs)
    at_5000 = metrics.noise_floor(*args, 5000, groups=runs)
    assert 0.012 < at_1000.mean.tvd < 0.022 and at_5000.mean.tvd < at_1000.mean.tvd
    bias = metrics.evaluate(train.positions, *args)
    floor = metrics.noise_floor(*args, len(train), groups=runs).mean
    assert bias.tvd > 5 * floor.tvd and bias.pair_mae > 5 * floor.pair_mae


# --------------------------------------------------------------------------- tables


def test_markdown_table_lists_rows_and_columns():
    numbers, positions = ethanol_frames(100)
    report = metrics.evaluate(positions, positions, numbers)
    floor = metrics.noise_floor(positions, numbers, 10)
    table = metrics.markdown_table({"drift": report, "noise floor": floor}, count="n")
    assert "| drift | 1 |" in table and "| noise floor | 5 |" in table
    assert "Pair MAE (Å)" in table and "Pair Stab" in table and "TVD C-H" in table
    assert "E W1" not in table and " ± " in table.splitlines()[-1]
    assert report.as_dict()["per_type_tvd"] == report.per_type_tvd


def test_table_cells_are_mean_and_std_over_seeds():
    runs = [{"tvd": 0.1, "per_type_tvd": {}, "energy_w1": None, "train_s": 3.0},
            {"tvd": 0.3, "per_type_tvd": {}, "energy_w1": None, "train_s": None}]
    table = metrics.markdown_table({"FK": runs}, first="method", count="seeds",
                                   extra=[("train (s)", "train_s")])
    header, _, row = table.splitlines()
    assert header.startswith("| method | seeds | Pair MAE (Å) | TVD |")
    assert header.endswith("| train (s) |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["FK", "2", "—", "0.200 ± 0.141"]  # std with ddof 1
    assert cells[-1] == "3.000"  # a single value: no error bar


def test_render_table_formats_estimates_missing_values_and_digits():
    table = metrics.render_table(["name", "ΔF", "P", "note"],
                                 [["ref", metrics.Estimate(1.234, 0.056), float("nan"), "x"],
                                  ["gen", [1.0, 3.0], 0.12345, None]], digits=[0, 2, 4, 0])
    assert table.splitlines()[2] == "| ref | 1.23 ± 0.06 | — | x |"
    assert table.splitlines()[3] == "| gen | 2.00 ± 1.41 | 0.1235 | — |"


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


# --------------------------------------------------------------------------- definitions at their edges
# (each pins a detail of a definition above that no test on realistic data can see)


def test_histogram_has_100_bins_on_zero_to_1_2_times_the_largest_reference_distance():
    """Default bins: 100 on [0, 1.2 × 1.0 Å], 0.012 Å wide, a bin edge at 1.008 Å: 1.0 and
    1.009 Å fall in different bins (TVD 1), 1.0 and 1.007 Å in the same one (TVD 0). Distances
    of 0.5 and 0.9 Å fall in separate bins below 1 Å, so the range starts at 0."""
    reference = diatomic_frames([1.0, 1.0])
    assert metrics.evaluate(diatomic_frames([1.009] * 2), reference, [1, 1]).tvd == 1
    assert metrics.evaluate(diatomic_frames([1.007] * 2), reference, [1, 1]).tvd == 0
    low = metrics.evaluate(diatomic_frames([0.9, 1.0]), diatomic_frames([0.5, 1.0]), [1, 1])
    assert low.tvd == pytest.approx(0.5)


def test_wasserstein2_is_the_midpoint_rule_on_the_quantile_functions():
    """{0, 1} against {0, 0}: F⁻¹(u) − G⁻¹(u) = 1 for u ≥ ½, so W2 = √½ exactly when the levels
    (k + ½)/n split evenly at ½ (n even, the default 10,000)."""
    assert metrics.wasserstein2([0.0, 1.0], [0.0, 0.0]) == pytest.approx(np.sqrt(0.5), rel=1e-9)


def test_stability_counts_a_deviation_equal_to_the_tolerance_as_stable():
    """|d − d̄| ≤ tolerance, equality included (0.5 and 0.25 are exact in binary)."""
    assert metrics.stability([[1.5, 1.25]], [1.0, 1.0], [0.5, 0.25]) == 1
    assert metrics.stability([[1.5, 1.25]], [1.0, 1.0], [0.5, 0.2]) == 0


def test_a_pair_at_exactly_the_bond_cutoff_is_not_a_bond():
    """Bonds are pairs strictly below scale × (r_cov(a) + r_cov(b))."""
    from ase.data import covalent_radii

    cutoff = 1.25 * 2 * covalent_radii[1]
    at, below = diatomic_frames([cutoff]), diatomic_frames([np.nextafter(cutoff, 0)])
    assert metrics.pair_distances(at)[0, 0] == cutoff  # the test's premise
    assert metrics.covalent_bonds([1, 1], at, scale=1.25).size == 0
    np.testing.assert_array_equal(metrics.covalent_bonds([1, 1], below, scale=1.25), [0])


def test_without_bonds_bond_mae_is_nan_and_bond_stability_one():
    positions = diatomic_frames([3.0, 3.1])  # H–H at 3 Å: no bond
    for bonds in (None, []):
        report = metrics.evaluate(positions, positions, [1, 1], bonds=bonds)
        assert np.isnan(report.bond_mae) and report.bond_stability == 1
    assert np.isnan(metrics.pair_mae(np.zeros((3, 0)), np.zeros((4, 0))))


def test_energy_input_errors_name_the_problem():
    numbers, positions = ethanol_frames(10)
    e = np.zeros(10)
    for given in ({"energies": e}, {"reference_energies": e}):
        with pytest.raises(ValueError, match="^energy W1 needs both energies and reference_energies$"):
            metrics.evaluate(positions, positions, numbers, temperature_K=300.0, **given)
    with pytest.raises(ValueError, match="^energy W1 compares E/kT: pass temperature_K$"):
        metrics.evaluate(positions, positions, numbers, energies=e, reference_energies=e)
    for wrong in ({"energies": e[:9], "reference_energies": e},
                  {"energies": e, "reference_energies": e[:9]}):
        with pytest.raises(ValueError, match="need one energy per frame"):
            metrics.evaluate(positions, positions, numbers, temperature_K=300.0, **wrong)


def test_position_errors_name_the_argument():
    numbers, positions = ethanol_frames(10)
    with pytest.raises(ValueError, match="^positions must have shape"):
        metrics.evaluate(positions[:, :-1], positions, numbers)
    with pytest.raises(ValueError, match="^reference_positions must have shape"):
        metrics.evaluate(positions, positions[:, :-1], numbers)
    with pytest.raises(ValueError, match="^reference_positions must have shape"):
        metrics.noise_floor(positions[:, :-1], numbers, 2)


def test_reference_part_is_the_first_half_rounded_down_without_groups():
    np.testing.assert_array_equal(metrics.reference_part(7), [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(metrics.reference_part(4), [1, 1, 0, 0])
    with pytest.raises(ValueError, match="one group label per frame"):
        metrics.reference_part(4, groups=[0, 1, 0])
    with pytest.raises(ValueError, match="^a noise floor by groups needs at least two groups$"):
        metrics.reference_part(4, groups=[3, 3, 3, 3])


def test_noise_floor_subsets_default_to_five_and_allow_one_frame():
    reference, subsets = metrics.noise_floor_subsets(1000, 10)
    assert len(subsets) == 5 and len(reference) == 500
    _, single = metrics.noise_floor_subsets(10, 1, n_repeats=3)
    assert [len(s) for s in single] == [1, 1, 1]
    with pytest.raises(ValueError, match="the frames of the reference's second part"):
        metrics.noise_floor_subsets(10, 0)


def test_noise_floor_passes_repeats_seed_and_energies_to_its_subsets():
    """Each report is evaluate() of the subsets noise_floor_subsets draws with the same
    n_repeats and seed, energies split the same way; the mean and spread keep n_samples."""
    numbers, positions = ethanol_frames(400, jitter=0.05)
    energies = np.random.default_rng(3).normal(size=400)
    floor = metrics.noise_floor(positions, numbers, 40, n_repeats=3, seed=7,
                                reference_energies=energies, temperature_K=300.0)
    reference, subsets = metrics.noise_floor_subsets(400, 40, n_repeats=3, seed=7)
    assert len(floor.reports) == 3
    max_distance = 1.2 * metrics.pair_distances(positions).max()
    for report, subset in zip(floor.reports, subsets, strict=True):
        assert report == metrics.evaluate(
            positions[subset], positions[reference], numbers, max_distance=max_distance,
            energies=energies[subset], reference_energies=energies[reference],
            temperature_K=300.0)
        assert report.energy_w1 > 0
    assert floor.mean.n_samples == floor.std.n_samples == 40
    assert floor.mean.energy_w1 == pytest.approx(np.mean([r.energy_w1 for r in floor.reports]))
    plain = metrics.noise_floor(positions, numbers, 40, n_repeats=2)
    assert plain.mean.energy_w1 is None and plain.std.energy_w1 is None


def test_noise_floor_as_dict_holds_mean_std_reports_and_sizes():
    import json

    numbers, positions = ethanol_frames(100, jitter=0.05)
    floor = metrics.noise_floor(positions, numbers, 10, n_repeats=2)
    d = json.loads(json.dumps(floor.as_dict()))
    assert set(d) == {"mean", "std", "reports", "n_samples", "n_reference"}
    assert d["mean"] == floor.mean.as_dict() and d["std"]["tvd"] == floor.std.tvd
    assert [r["tvd"] for r in d["reports"]] == [r.tvd for r in floor.reports]
    assert d["n_samples"] == 10 and d["n_reference"] == 50


def test_frames_must_be_three_dimensional_and_at_least_one():
    """[N, A, 3] only; one frame is enough, none is an error."""
    for bad in (np.zeros((2, 3, 2)), np.zeros((2, 3))):
        with pytest.raises(ValueError, match=r"^positions must have shape \[n_frames, n_atoms, 3\]"):
            metrics.pair_distances(bad)
    one = diatomic_frames([1.0])
    assert metrics.evaluate(one, one, [1, 1]).n_samples == 1
    with pytest.raises(ValueError, match="^positions holds no frames$"):
        metrics.evaluate(one[:0], one, [1, 1])


def test_float32_input_is_computed_in_float64():
    """Generated samples often arrive in float32: distances, pair MAE and energy W1 are
    computed in float64 from them, equal to the float64 copies' to 1e-12 (float32 arithmetic
    would differ by ~1e-7)."""
    numbers, positions = ethanol_frames(50, jitter=0.05)
    _, other = ethanol_frames(50, seed=1, jitter=0.05)
    p32, o32 = positions.astype(np.float32), other.astype(np.float32)
    d32 = metrics.pair_distances(p32)
    np.testing.assert_allclose(d32, metrics.pair_distances(p32.astype(float)), rtol=1e-12)
    r32 = metrics.pair_distances(o32).astype(np.float32)
    d32 = d32.astype(np.float32)
    assert metrics.pair_mae(d32, r32) == pytest.approx(
        metrics.pair_mae(d32.astype(float), r32.astype(float)), rel=1e-12)
    e = np.random.default_rng(0).normal(size=50).astype(np.float32)
    f = np.random.default_rng(1).normal(size=50).astype(np.float32)
    w32 = metrics.evaluate(p32, o32, numbers, energies=e, reference_energies=f,
                           temperature_K=300.0).energy_w1
    w64 = metrics.evaluate(p32, o32, numbers, energies=e.astype(float),
                           reference_energies=f.astype(float), temperature_K=300.0).energy_w1
    assert w32 == pytest.approx(w64, rel=1e-12)


def test_the_legend_explains_every_column_of_the_distance_table():
    from ase_drift.metrics.tables import DISTANCE_COLUMNS, DISTANCE_LEGEND

    explained = " ".join(column for column, _ in DISTANCE_LEGEND)
    for head, _ in DISTANCE_COLUMNS + (("E W1 (kT)", None), ("TVD X-Y", None)):
        assert head.split(" (")[0] in explained, head
        if "(" in head:  # the unit too
            assert head[head.index("("):] in explained, head
