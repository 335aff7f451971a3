"""The command line a chemist expects: labels from the shell, extxyz label keys, seeds,
provenance, bundled data export, evaluate's checks (issue 12)."""

import numpy as np
import pytest
from ase.calculators.emt import EMT

from ase_drift.cli import main
from ase_drift.data import Conformations
from ase_drift.datasets import load
from ase_drift.forces import CalculatorForces, source_from_spec
from ase_drift.io import read_positions


@pytest.fixture
def positions_only(tmp_path):
    """Six bundled ethanol frames without labels (EMT knows H, C and O)."""
    train = load("ethanol-gfn2-500K")[0]
    path = tmp_path / "frames.extxyz"
    Conformations(train.numbers, train.positions[:6], temperature_K=500.0).write(path)
    return path


def _emt_labels(path):
    data = Conformations.read(path)
    return CalculatorForces(EMT()).compute(data.numbers, data.positions)


def test_label_writes_emt_energies_and_forces_and_resumes_from_its_cache(positions_only,
                                                                         tmp_path, capsys):
    out = tmp_path / "labelled.extxyz"
    assert main(["label", str(positions_only), "--calculator", "emt", "-o", str(out)]) == 0
    labelled = Conformations.read(out)
    expected = _emt_labels(positions_only)
    np.testing.assert_allclose(labelled.energies, expected.energies, atol=1e-6)
    np.testing.assert_allclose(labelled.forces, expected.forces, atol=1e-6)  # extxyz digits
    assert labelled.temperature_K == 500.0
    cache = tmp_path / "labelled.labels.h5"  # the default cache, beside the output
    assert cache.is_file()
    assert not list(tmp_path.glob("*.tmp"))
    # The cache belongs to EMT: another calculator is refused; EMT reruns from it.
    assert main(["label", str(positions_only), "--calculator", "lj", "--cache", str(cache),
                 "-o", str(tmp_path / "again.extxyz")]) == 2  # another source: refused
    assert "another source" in capsys.readouterr().err
    assert main(["label", str(positions_only), "--calculator", "emt", "-o", str(out)]) == 0
    np.testing.assert_allclose(Conformations.read(out).energies, expected.energies,
                               atol=1e-6)


def test_unknown_calculator_lists_the_known_kinds(positions_only, tmp_path, capsys):
    with pytest.raises(ValueError, match="known kinds: tblite.*emt.*lj.*openmm.*mace.*schnetpack"):
        source_from_spec("vasp")
    out = tmp_path / "x.extxyz"
    assert main(["label", str(positions_only), "--calculator", "vasp", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown calculator 'vasp'" in err and "openmm:SYSTEM.xml" in err
    assert "Traceback" not in err and not out.exists()
    for spec, message in (("mace", "needs a file"), ("mace:nowhere.pt", "no such file"),
                          ("emt:x", "takes no argument")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            source_from_spec(spec)


def test_label_refuses_formats_without_labels(positions_only, tmp_path, capsys):
    assert main(["label", str(positions_only), "--calculator", "emt",
                 "-o", str(tmp_path / "x.pdb")]) == 2
    assert ".extxyz" in capsys.readouterr().err


def test_openmm_spec_reads_a_serialized_system(tmp_path):
    openmm = pytest.importorskip("openmm")
    system = openmm.System()
    for _ in range(2):
        system.addParticle(1.008)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.1, 1000.0)
    system.addForce(bond)
    path = tmp_path / "system.xml"
    path.write_text(openmm.XmlSerializer.serialize(system))
    result = source_from_spec(f"openmm:{path}").compute([1, 1], [[0, 0, 0], [0, 0, 1.1]])
    assert result.energies[0] == pytest.approx(0.5 * 1000 * 0.01**2 / 96.485, rel=1e-3)
    path.write_text("<not a system/>")
    with pytest.raises(ValueError, match="not a serialized openmm.System"):
        source_from_spec(f"openmm:{path}")


def test_train_labels_positions_only_data_first(positions_only, tmp_path, capsys):
    model = tmp_path / "model.pt"
    assert main(["train", str(positions_only), "--calculator", "emt", "--field", "fi",
                 "--space", "cartesian", "--steps", "2", "-o", str(model)]) == 0
    assert model.is_file() and (tmp_path / "model.labels.h5").is_file()
    # Without a calculator the same data names what is missing.
    assert main(["train", str(positions_only), "--field", "fi", "--steps", "2",
                 "-o", str(tmp_path / "m2.pt")]) == 2
    assert "forces" in capsys.readouterr().err


def test_energy_and_forces_keys_read_mace_style_extxyz(tmp_path, capsys):
    import ase.io
    from ase.build import molecule

    frames = []
    rng = np.random.default_rng(0)
    for k in range(8):
        atoms = molecule("CH3CH2OH")
        atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
        atoms.info["REF_energy"] = float(k)
        atoms.arrays["REF_forces"] = np.full((len(atoms), 3), float(k))
        atoms.info["temperature_K"] = 300.0
        frames.append(atoms)
    path = tmp_path / "mace.extxyz"
    ase.io.write(path, frames)
    data = Conformations.read(path, energy_key="REF_energy", forces_key="REF_forces")
    np.testing.assert_array_equal(data.energies, np.arange(8.0))
    assert data.forces[3, 2, 1] == 3.0
    assert Conformations.read(path).forces is None  # the keys are not guessed
    with pytest.raises(ValueError, match="'DFT_energy'.*'REF_forces'.*'REF_energy'"):
        Conformations.read(path, energy_key="DFT_energy")
    assert main(["train", str(path), "--energy-key", "REF_energy", "--forces-key", "REF_forces",
                 "--field", "fi", "--space", "cartesian", "--steps", "2",
                 "-o", str(tmp_path / "m.pt")]) == 0
    assert main(["train", str(path), "--forces-key", "forces", "--steps", "2",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "'forces'" in capsys.readouterr().err


@pytest.fixture
def tiny_model(positions_only, tmp_path):
    model = tmp_path / "model.pt"
    assert main(["train", str(positions_only), "--calculator", "emt", "--field", "fi",
                 "--space", "cartesian", "--steps", "2", "-o", str(model)]) == 0
    return model


def test_sample_without_seed_draws_fresh_samples_and_records_the_seed(tiny_model, tmp_path,
                                                                     capsys):
    import re

    import ase.io

    outs = [tmp_path / f"s{k}.extxyz" for k in range(2)]
    capsys.readouterr()
    for out in outs:
        assert main(["sample", str(tiny_model), "-n", "3", "-o", str(out)]) == 0
    seeds = [int(s) for s in re.findall(r"seed (\d+)", capsys.readouterr().out)]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    first, second = (ase.io.read(out, ":") for out in outs)
    assert not np.allclose(first[0].positions, second[0].positions)
    assert [atoms.info["seed"] for atoms in first] == [seeds[0]] * 3
    # The recorded seed repeats the run.
    again = tmp_path / "again.extxyz"
    assert main(["sample", str(tiny_model), "-n", "3", "--seed", str(seeds[0]),
                 "-o", str(again)]) == 0
    np.testing.assert_allclose(ase.io.read(again, ":")[2].positions, first[2].positions)


def test_sampled_outputs_carry_provenance(tiny_model, tmp_path):
    import ase.io
    import mdtraj

    from ase_drift import __version__
    from ase_drift.forces import file_sha256

    out = tmp_path / "s.extxyz"
    assert main(["sample", str(tiny_model), "-n", "2", "--seed", "7", "-o", str(out)]) == 0
    info = ase.io.read(out, "-1").info
    assert info["model_sha256"] == file_sha256(tiny_model)
    assert (info["model_kind"], info["field"], info["space"]) == ("drift-sampler", "fi",
                                                                 "cartesian")
    assert (info["temperature_K"], info["seed"]) == (500.0, 7)
    assert info["ase_drift_version"] == __version__ and "Angstrom" in info["units"]
    assert Conformations.read(out).temperature_K == 500.0
    for name in ("p.pdb", "d.dcd"):  # the DCD's provenance is in its topology d.pdb
        out = tmp_path / name
        assert main(["sample", str(tiny_model), "-n", "2", "--seed", "7", "-o", str(out)]) == 0
        pdb = out.with_suffix(".pdb").read_text()
        assert f"REMARK 250 model_sha256: {file_sha256(tiny_model)}" in pdb
        assert "REMARK 250 seed: 7" in pdb
        frames = read_positions(out)
        assert (len(frames), frames.n_atoms) == (2, 9)
    assert mdtraj.load(str(tmp_path / "p.pdb")).n_atoms == 9


def test_data_exports_a_bundled_set(tmp_path, monkeypatch, capsys):
    from ase_drift import datasets

    train, reference = load("ethanol-gfn2-500K")
    tiny = tmp_path / "tiny.npz"  # a bundled set's format, few frames (extxyz writing is slow)
    np.savez(tiny, z=train.numbers, train_R=train.positions[:5], train_F=train.forces[:5],
             train_E=train.energies[:5], reference_R=reference.positions[:3],
             temperature_K=500.0)
    monkeypatch.setitem(datasets.DATASETS, "tiny",
                        datasets.Dataset("tiny", "five ethanol frames", lambda: tiny))
    out = tmp_path / "train.extxyz"
    assert main(["data", "tiny", "-o", str(out)]) == 0
    exported = Conformations.read(out)
    assert len(exported) == 5 and exported.temperature_K == 500.0
    np.testing.assert_allclose(exported.positions, train.positions[:5], atol=1e-6)
    np.testing.assert_allclose(exported.forces, train.forces[:5], atol=1e-6)
    out = tmp_path / "reference.extxyz"
    assert main(["data", "tiny", "--part", "reference", "-o", str(out)]) == 0
    np.testing.assert_allclose(Conformations.read(out).positions, reference.positions[:3],
                               atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))


def test_data_names_the_known_sets_and_asks_before_hours_of_md(tmp_path, monkeypatch, capsys):
    assert main(["data", "water", "-o", str(tmp_path / "x.extxyz")]) == 2
    assert "ethanol-gfn2-500K" in capsys.readouterr().err
    monkeypatch.setenv("ASE_DRIFT_CACHE", str(tmp_path / "empty-cache"))
    from ase_drift import datasets

    monkeypatch.setattr(datasets, "_alanine", lambda output: pytest.fail("generated unasked"))
    out = tmp_path / "alanine.extxyz"
    assert main(["data", "alanine-dipeptide-amber99sbildn-300K", "-o", str(out)]) == 2  # no tty
    err = capsys.readouterr().err
    assert "core-days" in err and "--yes" in err and not out.exists()


def test_evaluate_refuses_model_without_plot_and_warns_on_few_samples(positions_only, tmp_path,
                                                                      capsys):
    code = main(["evaluate", str(positions_only), str(positions_only), "--model", "m.pt"])
    assert code == 2
    assert "--plot" in capsys.readouterr().err
    assert main(["evaluate", str(positions_only), str(positions_only), "--json"]) == 0
    captured = capsys.readouterr()
    assert "only 6 samples" in captured.err and "100" in captured.err
    assert "warning" not in captured.out  # --json output stays parseable


def test_label_resumes_after_a_failing_frame_without_recomputing(positions_only, tmp_path,
                                                                 monkeypatch, capsys):
    """A calculator that fails on frame 3 leaves frames 0-2 in the cache; the rerun computes
    only frames 3-5."""
    from ase_drift import forces
    from ase_drift.forces import LabelingError, source_fingerprint

    calls = []

    class Counting:
        def __init__(self, fail_at=None):
            self.inner, self.fail_at = CalculatorForces(EMT()), fail_at

        def fingerprint(self):
            return source_fingerprint(self.inner)  # the same labels as EMT's

        def compute(self, numbers, positions):
            positions = np.asarray(positions).reshape(-1, len(numbers), 3)
            for frame in positions:
                index = int(np.flatnonzero(np.all(np.isclose(frames, frame), axis=(1, 2)))[0])
                if index == self.fail_at:
                    raise LabelingError("SCF did not converge")
                calls.append(index)
            return self.inner.compute(numbers, positions)

    frames = Conformations.read(positions_only).positions
    out = tmp_path / "labelled.extxyz"
    monkeypatch.setattr(forces, "source_from_spec", lambda spec: Counting(fail_at=3))
    assert main(["label", str(positions_only), "--calculator", "emt", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "frame 3" in err and "labelled.labels.h5" in err and not out.exists()
    calls.clear()
    monkeypatch.setattr(forces, "source_from_spec", lambda spec: Counting())
    assert main(["label", str(positions_only), "--calculator", "emt", "-o", str(out)]) == 0
    assert calls == [3, 4, 5]
    np.testing.assert_allclose(Conformations.read(out).energies,
                               _emt_labels(positions_only).energies, atol=1e-6)


@pytest.mark.parametrize("kind", ["schnetpack", "mace"])
def test_neural_specs_load_the_model_file(kind, tmp_path, monkeypatch):
    # importing mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: monkeypatch restores the
    # environment this test found
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    pytest.importorskip(kind)
    import torch

    from ase_drift.potentials import fit_potential

    data = load("ethanol-gfn2-500K")[0][:8]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path / "model.pt"
        calc = fit_potential(kind, data, path, hidden=8, interactions=1, epochs=1,
                             batch_size=8, learning_rate=1e-3, progress=False)
        source = source_from_spec(f"{kind}:{path}")
        got = source.compute(data.numbers, data.positions[:2])
        want = CalculatorForces(calc).compute(data.numbers, data.positions[:2])
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got.energies, want.energies, atol=1e-8)
    np.testing.assert_allclose(got.forces, want.forces, atol=1e-8)
    from ase_drift.forces import file_sha256

    assert source.fingerprint()["model_file_sha256"] == file_sha256(path)


def test_tblite_spec_labels_in_ev(tmp_path):
    pytest.importorskip("tblite")
    data = load("ethanol-gfn2-500K")[0][:1]
    got = source_from_spec("tblite:GFN2-xTB").compute(data.numbers, data.positions)
    # the bundled labels are GFN2-xTB's, in eV and eV/Å
    np.testing.assert_allclose(got.energies, data.energies, atol=1e-4)
    np.testing.assert_allclose(got.forces, data.forces, atol=1e-4)
    assert source_from_spec("tblite").fingerprint() == source_from_spec(
        "tblite:GFN2-xTB").fingerprint()


def test_train_cache_needs_a_calculator(positions_only, tmp_path, capsys):
    assert main(["train", str(positions_only), "--cache", str(tmp_path / "c.h5"), "--steps", "1",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "--calculator" in capsys.readouterr().err
