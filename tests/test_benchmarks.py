"""Helpers of the benchmark scripts whose figures the docs quote."""

from __future__ import annotations

import json

import pytest


def test_adaptive_points_are_compared_with_the_fixed_sampler_at_the_nfe_they_spent():
    from benchmarks.gpff_qm9 import fixed_validity_at, matched_nfe_lines

    def point(label, budget, spent, valid):
        return {f"{label} @ {budget}": {"label": label, "nfe_budget": budget, "nfe_mean": spent,
                                        "validity": valid}}

    points = {**point("GPFF ancestral", 8, 8.0, 0.10), **point("GPFF ancestral", 16, 16.0, 0.30),
              **point("GPFF ancestral AS", 16, 10.0, 0.2), **point("GPFF ancestral AS", 6, 2.0, 0.0)}
    assert fixed_validity_at(points, "GPFF ancestral", 10.0) == pytest.approx(0.15)
    assert fixed_validity_at(points, "GPFF ancestral", 2.0) is None  # below the fixed curve
    rows = [line for line in matched_nfe_lines(points) if line.startswith("| GPFF")]
    assert rows == ["| GPFF ancestral AS | 16 | 10.0 | 0.20 | 0.15 |"]
    assert matched_nfe_lines(point("GPFF DD", 6, 6.0, 0.1)) == []


def test_validation_losses_are_summarised_per_training_noise_distribution():
    from benchmarks.gpff_qm9 import validation_summary

    noise = {"p_mean": 0.0, "p_std": 1.5, "sigma_min": 0.01, "sigma_max": 30.0}
    record = {"steps": 300, "model": {**noise, "p_mean": -1.2},
              "history": {"validation_step": [50, 100, 200, 300],
                          "validation_loss": [5.0, 4.0, 2.5, 2.0]},
              "stages": [{"from_step": 0, "steps": 100, "noise": noise},
                         {"from_step": 100, "steps": 200, "noise": {**noise, "p_mean": -1.2}}]}
    assert validation_summary(record) == (
        "5.00 (step 50) → 4.00 (step 100), ln σ ~ N(0, 1.5²); "
        "2.50 (step 200) → 2.00 (step 300), ln σ ~ N(-1.2, 1.5²)")
    # records from before stages could change the noise store none: the model's applies
    del record["stages"][0]["noise"], record["stages"][1]["noise"]
    assert validation_summary(record) == "5.00 (step 50) → 2.00 (step 300)"
    assert validation_summary({**record, "stages": None}) == "5.00 (step 50) → 2.00 (step 300)"


def test_tuning_keeps_the_default_on_a_tie_and_reports_both_formula_sets():
    from benchmarks.gpff_qm9 import best_setting, tuning_markdown

    assert best_setting([({}, 0.3), ({"rho": 3.0}, 0.3), ({"rho": 5.0}, 0.2)]) == ({}, 0.3)
    assert best_setting([({}, 0.1), ({"rho": 3.0}, 0.3)]) == ({"rho": 3.0}, 0.3)
    results = {"setup": {"molecules_per_point": 96, "formulas": ["C7H10O2", "C7H11NO"]},
               "points": {"GPFF ancestral @ 6": {"validity": 0.12}},
               "tuning": {"formulas": ["C7H9NO", "C6H9NO2"], "search": {}, "chosen": {
                   "GPFF ancestral @ 6": {"label": "GPFF ancestral", "nfe": 6,
                                          "options": {"rho": 3.0, "sigma_max": 2.0},
                                          "tuning_validity": 0.25,
                                          "default_tuning_validity": 0.1, "validity": 0.21},
                   "GPFF DD @ 4": {"label": "GPFF DD", "nfe": 4, "options": {},
                                   "tuning_validity": 0.05, "default_tuning_validity": 0.05,
                                   "validity": 0.04}}}}
    rows = [line for line in tuning_markdown(results).splitlines() if line.startswith("| GPFF")]
    assert rows == ["| GPFF ancestral | 6 | rho 3, sigma_max 2 | 0.25 (0.10) | 0.21 (0.12) |",
                    "| GPFF DD | 4 | default | 0.05 (0.05) | 0.04 (–) |"]


def test_tuning_grids_add_each_step_size_to_each_setting_after_the_default():
    from benchmarks.gpff_qm9 import STEP_SIZES, TUNING, with_step_sizes

    grid = [{}, {"prior_sigma": 2.0}]
    assert with_step_sizes(grid) == [{}, {"prior_sigma": 2.0},
                                     *({"step_size": s, **o} for s in STEP_SIZES for o in grid)]
    for label, _, _, _, few_nfe, large_budget in TUNING:
        assert few_nfe[0] == {} and (large_budget is None or large_budget[0] == {}), label
        keys = [json.dumps(options, sort_keys=True) for options in few_nfe]
        assert len(keys) == len(set(keys)), label


def test_diagnosis_table_shows_the_model_choice_where_it_was_measured():
    from benchmarks.gpff_qm9 import diagnosis_markdown

    def entry(steps, selection=None):
        run = {"counts": {"valid": 30, "bond_orders": 2}, "sigma_hat_median": 0.001,
               "sigma_hat_max": 0.002}
        result = {"steps": steps, "molecules": 64, "formula": "C7H10O2",
                  "force_error": {"0.0": {"rms": 0.01, "relative": None}},
                  "dd_from_qm9": {"30": {"valid": 64, "rmsd": 0.09}},
                  "generated": {"dd": run}}
        if selection is not None:
            result.update(selection=selection, selection_formulas=["C7H9NO", "C6H9NO2"],
                          selection_molecules=96)
        return result

    table = diagnosis_markdown({"old": entry(10), "new": entry(20, {"SDD @ 256": 0.771})})
    assert table.splitlines()[-1] == ("| validity, SDD at 256 NFE, 96 × C7H9NO and C6H9NO2 (the "
                                      "model choice) | – | 0.77 |")
    assert "model choice" not in diagnosis_markdown({"old": entry(10)})
    assert "linear response" not in table  # measured by neither
    new = entry(20)
    new["force_error"]["0.1"] = {"rms": 0.05, "relative": 0.3, "response": 0.614}
    old = entry(10)
    old["force_error"]["0.1"] = {"rms": 0.06, "relative": 0.4}
    rows = [line for line in diagnosis_markdown({"old": old, "new": new}).splitlines()
            if "linear response" in line]
    assert rows == [("| fraction of a displacement of σ = 0.1 Å undone (linear response; "
                     "an exact field: 1 at small σ) | – | 0.61 |")]


def test_one_atom_flown_off_does_not_hide_a_shifted_max_pair_distance_distribution():
    from types import SimpleNamespace

    import numpy as np
    from ase import Atoms

    from benchmarks.gpff_qm9 import distributions

    rng = np.random.default_rng(0)
    # two-atom "molecules": the max pair distance is the bond length
    reference = [Atoms("H2", positions=[[0, 0, 0], [0, 0, d]]) for d in rng.normal(6.3, 0.3, 400)]
    shifted = list(rng.normal(5.6, 0.3, 95))
    results = {"setup": {"nfe": [256], "molecules_per_point": 96},
               "reference_energies": {"formula": ["H2"] * 40, "energy": list(rng.normal(0, 1, 40))},
               "points": {"GPFF DD @ 256": {"mpd": shifted + [9550.0],
                                           "xtb": {"formula": [], "energy": []}},
                          "GPFF SDD @ 256": {"mpd": shifted + [6.0],
                                            "xtb": {"formula": [], "energy": []}}}}
    distributions(results, reference, SimpleNamespace(seed=0, xtb=40))
    stats = results["distributions"]
    assert stats["GPFF DD"]["mpd_js"] > 0.3  # on the pooled range it was ≈ 0.004
    assert stats["GPFF DD"]["mpd_js"] == pytest.approx(stats["GPFF SDD"]["mpd_js"], abs=0.02)


def test_noise_floor_splits_a_reference_smaller_than_a_point():
    # 10,000 molecules per point against 1,151 test molecules: the floor compares half of them
    # with the other half instead of failing on an empty other side
    from types import SimpleNamespace

    import numpy as np
    from ase import Atoms

    from benchmarks.gpff_qm9 import distributions

    rng = np.random.default_rng(1)
    reference = [Atoms("H2", positions=[[0, 0, 0], [0, 0, d]]) for d in rng.normal(6.3, 0.3, 101)]
    results = {"setup": {"nfe": [6], "molecules_per_point": 10_000}, "points": {},
               "reference_energies": {"formula": ["H2"] * 40, "energy": list(rng.normal(0, 1, 40))}}
    distributions(results, reference, SimpleNamespace(seed=0, xtb=40))
    floor, = (v for k, v in results["distributions"].items() if k.startswith("QM9 noise floor"))
    assert "QM9 noise floor (50 vs the other test molecules)" in results["distributions"]
    assert 0 <= floor["mpd_js"] < 0.2


def test_tuning_table_states_both_sample_sizes_and_the_default_measured_beside_the_choice():
    from benchmarks.gpff_qm9 import LARGE_BUDGET, tuning_markdown

    results = {"setup": {"molecules_per_point": 96, "formulas": ["C7H10O2", "C7H11NO"]},
               "points": {"GPFF DD @ 6": {"validity": 0.12}},
               "tuning": {"formulas": ["C7H9NO", "C6H9NO2"], "search": {},
                          "molecules": {"few_nfe": 960, "large_budget": 96}, "chosen": {
                              "GPFF DD @ 6": {"label": "GPFF DD", "nfe": 6,
                                              "options": {"step_size": 1.3},
                                              "tuning_validity": 0.25,
                                              "default_tuning_validity": 0.18,
                                              "validity": 0.21, "default_validity": 0.16}}}}
    table = tuning_markdown(results)
    assert (f"(960 molecules per setting below {LARGE_BUDGET} NFE, 96 from {LARGE_BUDGET} on)"
            in table)
    assert "| GPFF DD | 6 | step_size 1.3 | 0.25 (0.18) | 0.21 (0.16) |" in table


def test_tuning_refuses_results_tuned_with_other_sample_sizes(tmp_path):
    from types import SimpleNamespace

    from benchmarks.gpff_qm9 import tune

    results = {"tuning": {"formulas": [], "search": {}, "chosen": {},
                          "molecules": {"few_nfe": 96, "large_budget": 96}}}
    args = SimpleNamespace(results=str(tmp_path / "r.json"), tune=[6], configs=None, seed=0)
    with pytest.raises(SystemExit, match="tuned with .*96.* not .*960.*another --results"):
        tune(args, results, {}, [], [], {"few_nfe": 960, "large_budget": 96}, lambda: None)


def test_tuning_searches_few_nfe_budgets_with_their_own_sample_size(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import ase_drift.metrics.chemistry
    from benchmarks import gpff_qm9

    calls = []

    def fake_run_point(model, formulas, per_formula, sampler, nfe, adaptive, shape, seed,
                       options=None):
        calls.append((formulas[0][0], per_formula, nfe, options.get("step_size", 1.0)))
        return [options.get("step_size", 1.0)], 1.0, nfe

    monkeypatch.setattr(gpff_qm9, "run_point", fake_run_point)
    monkeypatch.setattr(ase_drift.metrics.chemistry, "validity_fraction", lambda f: f[0] / 2)
    monkeypatch.setattr(gpff_qm9, "TUNING", [("GPFF DD", "qm9", "dd", None,
                                              [{}, {"step_size": 1.3}], [{}, {"step_size": 0.5}])])
    results = {}
    args = SimpleNamespace(results=str(tmp_path / "r.json"), tune=[6, gpff_qm9.LARGE_BUDGET],
                           configs=None, seed=0)
    formulas, tuning_formulas = ([(f, [], []) for f in pair] for pair in (("A", "B"), ("C", "D")))
    gpff_qm9.tune(args, results, {"qm9": None}, formulas, tuning_formulas,
                  {"few_nfe": 960, "large_budget": 96}, lambda: None)
    large = gpff_qm9.LARGE_BUDGET
    assert calls == [("C", 480, 6, 1.0), ("C", 480, 6, 1.3),  # search, then chosen and default
                     ("A", 480, 6, 1.3), ("A", 480, 6, 1.0),
                     ("C", 48, large, 1.0), ("C", 48, large, 0.5), ("A", 48, large, 1.0)]
    chosen = results["tuning"]["chosen"]
    assert chosen["GPFF DD @ 6"]["options"] == {"step_size": 1.3}
    assert (chosen["GPFF DD @ 6"]["validity"], chosen["GPFF DD @ 6"]["default_validity"]) == \
        (0.65, 0.5)
    assert chosen[f"GPFF DD @ {large}"]["default_validity"] == 0.5


def _chunk(seed, formula, valid, n=100, **settings):
    base = {"sampler": "sdd", "shape": None, "nfe": 256, "options": {}, "per_formula": n}
    return {**base, **settings, "seed": seed, "formula": formula, "n": n, "seconds": 2.0,
            "counts": {"valid": valid, "bond_orders": n - valid - 1, "fragments": 1}}


def test_confirmation_counts_whole_seeds_with_the_wilson_interval_at_its_level():
    import numpy as np
    from scipy.stats import norm

    from benchmarks.gpff_confirm import summarise

    rows = [_chunk(100, "A", 95), _chunk(100, "B", 90), _chunk(101, "B", 80),
            _chunk(102, "A", 97), _chunk(102, "B", 93), _chunk(103, "A", 10)]
    result = summarise(rows, ["A", "B"], level=0.975, target=0.90)
    assert result["seeds"] == [100, 102] and result["incomplete_seeds"] == [101, 103]
    assert (result["n"], result["valid"]) == (400, 375)
    assert result["per_formula"]["A"] == {"n": 200, "valid": 192, "validity": 0.96}
    assert result["counts"]["fragments"] == 4
    assert result["molecules_per_s_one_thread"] == pytest.approx(400 / 8.0)
    p, n, z = 375 / 400, 400, norm.ppf(1 - 0.025 / 2)
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    np.testing.assert_allclose(result["wilson"], [centre - half, centre + half], rtol=1e-9)
    assert result["met_beyond_chance"] == (centre - half >= 0.90)
    assert summarise(rows, ["A", "B"], 0.975, target=round(centre - half, 6) - 1e-6)[
        "met_beyond_chance"]
    assert not summarise(rows, ["A", "B"], 0.975, target=round(centre - half, 6) + 1e-6)[
        "met_beyond_chance"]


def test_confirmation_refuses_mixed_settings_repeated_chunks_and_no_whole_seed(tmp_path):
    from benchmarks.gpff_confirm import main, read_chunks, summarise

    with pytest.raises(ValueError, match="seed 101 has two chunks of A"):
        summarise([_chunk(101, "A", 90), _chunk(101, "A", 91)], ["A", "B"], 0.95, 0.9)
    with pytest.raises(ValueError, match="no seed has a chunk of every formula"):
        summarise([_chunk(101, "A", 90)], ["A", "B"], 0.95, 0.9)
    (tmp_path / "X_w0.jsonl").write_text(json.dumps(_chunk(100, "A", 90)) + "\n")
    (tmp_path / "X_w1.jsonl").write_text(json.dumps(_chunk(101, "A", 90, nfe=64)) + "\n")
    (tmp_path / "Y_w0.jsonl").write_text(json.dumps(_chunk(100, "B", 90)) + "\n")
    with pytest.raises(ValueError, match=r"chunks of 'X' differ in nfe \(seed 101\)"):
        read_chunks("X", tmp_path)
    assert [row["formula"] for row in read_chunks("Y", tmp_path)] == ["B"]
    with pytest.raises(ValueError, match=r"'Y' already holds chunks of another nfe \(256\): "
                                         r"resume it with the same settings"):
        main(["run", "--tag", "Y", "--nfe", "64", "--first-seed", "0", "--chunks",
              str(tmp_path)])
