"""The `ase-drift` command is a thin layer: each subcommand round-trips through files."""

import json

import numpy as np
import pytest
from ase.build import molecule

import ase_drift
from ase_drift.checkpoint import CheckpointError, save_checkpoint
from ase_drift.cli import main
from ase_drift.data import Conformations
from ase_drift.io import read_positions


@pytest.fixture
def labelled_file(tmp_path):
    """A small 'MD' file: jittered ethanol with harmonic-restraint forces, 300 K in its info."""
    rng = np.random.default_rng(0)
    base = molecule("CH3CH2OH")
    displacement = 0.05 * rng.standard_normal((64, len(base), 3))
    data = Conformations(base.numbers, base.positions + displacement, forces=-10 * displacement,
                         energies=5 * (displacement**2).sum((1, 2)), temperature_K=300.0)
    path = tmp_path / "train.extxyz"
    data.write(path)
    return path


def test_train_sample_evaluate(labelled_file, tmp_path, capsys):
    model = tmp_path / "model.pt"
    assert main(["train", str(labelled_file), "--field", "fi", "--space", "cartesian",
                 "--steps", "20", "-o", str(model)]) == 0
    for suffix in (".extxyz", ".traj", ".pdb", ".dcd"):
        # samples.pdb is the user's file: the DCD (which writes a topology PDB) gets its own name
        out = tmp_path / ("dcd_samples.dcd" if suffix == ".dcd" else f"samples{suffix}")
        assert main(["sample", str(model), "-n", "5", "-o", str(out)]) == 0
        frames = read_positions(out)
        assert len(frames) == 5
        assert frames.symbols == molecule("CH3CH2OH").get_chemical_symbols()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "samples.extxyz"), str(labelled_file), "--json",
                 "--plot", str(tmp_path / "plots"), "--model", str(model)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"samples", "noise floor (reference half vs half)"}
    assert 0 <= report["samples"]["tvd"] <= 1
    for plot in ("distance_histograms.png", "training_curve.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 0


def test_sample_reads_every_sampler_kind(labelled_file, tmp_path, capsys):
    """A DSM model is sampled from the shell like a drift model (through ase_drift.load)."""
    from ase_drift.diffusion import DiffusionConfig, DiffusionSampler, train_diffusion

    tiny = DiffusionConfig(d_model=16, n_layers=1, n_heads=2, steps=5, batch_size=16,
                           sampler_steps=4)
    model = train_diffusion(Conformations.read(labelled_file), tiny, progress=False).save(
        tmp_path / "dsm.pt")
    out = tmp_path / "dsm_samples.extxyz"
    assert main(["sample", str(model), "-n", "3", "--seed", "1", "-o", str(out)]) == 0
    assert "DiffusionSampler" in capsys.readouterr().out
    frames = read_positions(out)
    assert frames.symbols == molecule("CH3CH2OH").get_chemical_symbols()
    np.testing.assert_allclose(frames.positions,
                               DiffusionSampler.load(model).sample_positions(3, seed=1),
                               atol=1e-5)


def test_sample_names_the_file_and_the_known_kinds_for_an_unknown_kind(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "odd.pt", {}, {}, {"kind": "tea-sampler"})
    with pytest.raises(CheckpointError, match=r"odd\.pt.*'tea-sampler'.*drift-sampler.*dsm-sampler"):
        ase_drift.load(path)
    assert main(["sample", str(path), "-n", "1", "-o", str(tmp_path / "x.xyz")]) == 2
    assert "tea-sampler" in capsys.readouterr().err


def test_temperature_taken_from_file_or_required(labelled_file, tmp_path, capsys):
    data = Conformations.read(labelled_file)
    assert data.temperature_K == 300.0
    data.with_temperature(None).write(tmp_path / "no_t.extxyz")
    code = main(["train", str(tmp_path / "no_t.extxyz"), "--field", "drift", "--steps", "1",
                 "-o", str(tmp_path / "m.pt")])
    assert code == 2
    assert "temperature" in capsys.readouterr().err


def test_missing_forces_for_force_field_is_a_clear_error(tmp_path, capsys):
    base = molecule("CH3CH2OH")
    Conformations(base.numbers, base.positions[None].repeat(4, 0), temperature_K=300.0).write(
        tmp_path / "positions.extxyz")
    code = main(["train", str(tmp_path / "positions.extxyz"), "--field", "fi", "--steps", "1",
                 "-o", str(tmp_path / "m.pt")])
    assert code == 2
    assert "forces" in capsys.readouterr().err


def test_data_lists_the_bundled_sets(capsys):
    assert main(["data"]) == 0
    assert "ethanol-gfn2-500K" in capsys.readouterr().out


def test_train_logs_progress_lines_checkpoints_at_the_interval_and_extends_on_resume(
        labelled_file, tmp_path, capsys):
    """Not on a terminal: a line every --log-every steps; --checkpoint-every sets the interval;
    --resume with a larger --steps continues the run to the new total; --quiet prints none."""
    from ase_drift.checkpoint import load_checkpoint

    model, checkpoint = tmp_path / "model.pt", tmp_path / "run.ckpt"
    common = [str(labelled_file), "--checkpoint", str(checkpoint), "-o", str(model)]
    assert main(["train", *common, "--steps", "4", "--checkpoint-every", "3",
                 "--log-every", "2"]) == 0
    err = capsys.readouterr().err
    assert [line.split(" (")[0] for line in err.splitlines() if ": step " in line] == [
        "training: step 2/4", "training: step 4/4"]
    assert load_checkpoint(checkpoint)["state_dict"]["step"] == 4  # step 3, then the final one
    assert main(["train", *common, "--steps", "6", "--resume", "--quiet"]) == 0
    assert ": step " not in capsys.readouterr().err
    assert ase_drift.load(model).metadata["step"] == 6
    assert main(["train", *common, "--steps", "5", "--resume"]) == 2
    assert "at step 6, beyond the 5 steps" in capsys.readouterr().err


def test_evaluate_prints_a_legend_under_the_table_but_not_into_json(labelled_file, tmp_path,
                                                                     capsys):
    assert main(["evaluate", str(labelled_file), str(labelled_file)]) == 0
    out = capsys.readouterr().out
    assert out.index("| samples |") < out.index("Columns:") and "TVD ↓" in out
    assert main(["evaluate", str(labelled_file), str(labelled_file), "--json"]) == 0
    json.loads(capsys.readouterr().out)


@pytest.fixture
def model_file(labelled_file, tmp_path):
    path = tmp_path / "model.pt"
    assert main(["train", str(labelled_file), "--steps", "3", "--quiet", "-o", str(path)]) == 0
    return path


def test_sample_streams_batches_to_disk_as_the_api_draws_them(model_file, tmp_path,
                                                                monkeypatch):
    from ase_drift.sampler import DriftSampler

    monkeypatch.setattr(DriftSampler, "batch_size", 4)  # 10 samples: batches of 4, 4, 2
    out = tmp_path / "many.extxyz"
    assert main(["sample", str(model_file), "-n", "10", "--seed", "3", "-o", str(out)]) == 0
    np.testing.assert_allclose(read_positions(out).positions,
                               ase_drift.load(model_file).sample_positions(10, seed=3),
                               rtol=0, atol=1e-6)


def test_sample_refines_with_a_calculator_and_writes_its_labels(model_file, tmp_path, capsys):
    from ase.calculators.emt import EMT

    out = tmp_path / "refined.extxyz"
    assert main(["sample", str(model_file), "-n", "4", "--seed", "1", "--refine", "emt",
                 "--refine-steps", "2", "-o", str(out)]) == 0
    assert "2 MALA steps with emt (MALA acceptance" in capsys.readouterr().out
    import ase.io

    frames = ase.io.read(out, ":")
    assert len(frames) == 4 and frames[0].info["refine_steps"] == 2
    for atoms in frames:
        stored = atoms.get_potential_energy()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(stored, abs=1e-6)
    assert main(["sample", str(model_file), "-n", "4", "--seed", "1", "--refine", "emt",
                 "--refine-steps", "2", "--torsion-moves", "-o", str(out)]) == 0
    assert "2 MALA steps and torsion moves with emt" in capsys.readouterr().out
    turned = ase.io.read(out, ":")
    assert not np.allclose(turned[0].positions, frames[0].positions)  # other moves, same seed
    assert turned[0].info["refine_torsion_moves"] and not frames[0].info["refine_torsion_moves"]
    for bad in (["--refine-steps", "2"], ["--torsion-moves"]):
        assert main(["sample", str(model_file), "-n", "4", *bad,
                     "-o", str(tmp_path / "x.extxyz")]) == 2
        assert "--torsion-moves need --refine" in capsys.readouterr().err


def test_sample_in_bf16_is_close_to_fp32(model_file, tmp_path):
    paths = [tmp_path / f"{p}.extxyz" for p in ("fp32", "bf16")]
    for precision, path in zip(("fp32", "bf16"), paths, strict=True):
        assert main(["sample", str(model_file), "-n", "50", "--seed", "2", "--precision",
                     precision, "-o", str(path)]) == 0
    fp32, bf16 = (read_positions(p).positions for p in paths)
    assert 0 < np.abs(fp32 - bf16).max() < 0.05  # Å


def test_every_built_in_kind_is_registered_in_a_fresh_process():
    """ase_drift.load must find every kind without the caller importing its module first."""
    import subprocess
    import sys

    code = ("from ase_drift.sampler import sampler_kinds; "
            "print(' '.join(sorted(sampler_kinds())))")
    kinds = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"drift-sampler", "drift-trainer", "dsm-sampler", "energy-diffusion"} <= set(kinds)


def test_train_pair_scale_exponent_reaches_the_config(labelled_file, tmp_path):
    from ase_drift.checkpoint import load_checkpoint

    model = tmp_path / "weighted.pt"
    assert main(["train", str(labelled_file), "--pair-scale-exponent", "0.5", "--steps", "3",
                 "-o", str(model)]) == 0
    checkpoint = load_checkpoint(model)
    assert checkpoint["config"]["train"]["pair_scale_exponent"] == 0.5
    assert "std over the data" in checkpoint["metadata"]["normalization"]
    assert main(["train", str(labelled_file), "--pair-scale-exponent", "0", "1", "--steps", "3",
                 "-o", str(model)]) == 0
    assert load_checkpoint(model)["config"]["train"]["pair_scale_exponent"] == (0.0, 1.0)
    assert main(["train", str(labelled_file), "--canonical-rotors", "--steps", "3",
                 "-o", str(model)]) == 0
    checkpoint = load_checkpoint(model)
    assert checkpoint["config"]["train"]["canonical_rotors"] is True
    assert "canonical rotamer" in checkpoint["metadata"]["normalization"]
    assert main(["train", str(labelled_file), "--no-canonical-rotors", "--steps", "3",
                 "-o", str(model)]) == 0
    assert load_checkpoint(model)["config"]["train"]["canonical_rotors"] is False
