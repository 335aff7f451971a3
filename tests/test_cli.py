"""The `ase-drift` command is a thin layer: each subcommand round-trips through files."""

import json

import numpy as np
import pytest
from ase.build import molecule

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
        out = tmp_path / f"samples{suffix}"
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
