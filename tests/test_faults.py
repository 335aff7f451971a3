"""Fault injection: bad inputs and interruptions give clear errors, never silently wrong results
or lost work (issue 12).

Each section is one class of fault. Library functions raise exceptions naming the file or
argument; the command line turns them into one line on stderr and exit status 2 (no
traceback unless ``--debug``).
"""

import numpy as np
import pytest
from ase.build import molecule

from ase_drift.cli import main
from ase_drift.data import Conformations
from ase_drift.io import read_positions, topology_path, write_positions


def ethanol(n=32, seed=0, temperature_K=300.0):
    """Jittered ethanol with harmonic-restraint forces and energies."""
    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    displacement = 0.05 * rng.standard_normal((n, len(base), 3))
    return Conformations(base.numbers, base.positions + displacement, forces=-10 * displacement,
                         energies=5 * (displacement**2).sum((1, 2)),
                         temperature_K=temperature_K)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.extxyz"
    ethanol().write(path)
    return path


# ----------------------------------------------------------------------------- files not named
def test_dcd_never_overwrites_a_pdb_the_user_did_not_name(tmp_path):
    data = ethanol(4)
    users_pdb = tmp_path / "x.pdb"
    data.write(users_pdb)  # the user's 4-frame PDB
    before = users_pdb.read_bytes()
    with pytest.raises(ValueError, match=r"x\.pdb.*not written by ase_drift.*refusing"):
        write_positions(tmp_path / "x.dcd", data.numbers, data.positions)
    assert users_pdb.read_bytes() == before
    assert not (tmp_path / "x.dcd").exists()


def test_dcd_rewrites_its_own_topology(tmp_path):
    data = ethanol(4)
    path = tmp_path / "y.dcd"
    write_positions(path, data.numbers, data.positions)
    write_positions(path, data.numbers, data.positions[:2])  # a rerun replaces both files
    assert topology_path(path).read_text().startswith("REMARK   1 ase_drift topology of y.dcd")
    np.testing.assert_allclose(read_positions(path).positions, data.positions[:2], atol=1e-3)


def test_cli_sample_refuses_before_sampling(tmp_path, capsys):
    users_pdb = tmp_path / "x.pdb"
    ethanol(4).write(users_pdb)
    before = users_pdb.read_bytes()
    code = main(["sample", str(tmp_path / "no-model.pt"), "-n", "3", "-o",
                 str(tmp_path / "x.dcd")])
    assert code == 2
    assert "x.pdb" in capsys.readouterr().err  # the output is checked before the model is read
    assert users_pdb.read_bytes() == before


# ----------------------------------------------------------------------------- label cache
def lj(sigma=3.4):
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=sigma, epsilon=0.01, rc=100.0)


def argon(n=4, seed=0):
    lattice = 3.8 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = lattice + np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 8, 3))
    return Conformations(np.full(8, 18), positions, temperature_K=100.0)


@pytest.mark.parametrize("other", ["parameters", "calculator", "model file"])
def test_label_cache_refuses_another_source(tmp_path, other):
    from ase.calculators.emt import EMT

    from ase_drift.forces import CalculatorForces, label

    data, cache = argon(), tmp_path / "labels.h5"
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights v1")
    label(data, CalculatorForces(lj(), model_file=model), cache=cache, progress=False)
    if other == "parameters":
        source, expected = CalculatorForces(lj(sigma=3.0), model_file=model), r"sigma: 3\.4.*3\.0"
    elif other == "calculator":
        source, expected = CalculatorForces(EMT(), model_file=model), "calculator.*EMT"
    else:
        model.write_bytes(b"weights v2")  # the model was refitted in place
        source, expected = CalculatorForces(lj(), model_file=model), "model_file_sha256"
    with pytest.raises(ValueError, match=rf"labels\.h5.*another source.*{expected}"):
        label(data, source, cache=cache, progress=False)


def test_label_cache_fingerprints_torch_models_held_by_the_calculator(tmp_path):
    """SchNetPack's and MACE's calculators hold their model as calc.model / calc.models."""
    import torch

    from ase_drift.forces import CalculatorForces, source_fingerprint

    calc = lj()
    calc.model = torch.nn.Linear(2, 1)
    before = source_fingerprint(CalculatorForces(calc))
    with torch.no_grad():
        calc.model.weight += 1
    assert source_fingerprint(CalculatorForces(calc)) != before
    assert source_fingerprint(CalculatorForces(lj())) == source_fingerprint(CalculatorForces(lj()))


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "missing dataset",
                                    "no source recorded"])
def test_damaged_label_cache_names_the_file_to_delete(tmp_path, damage):
    import h5py

    from ase_drift.forces import CalculatorForces, label

    data, cache = argon(), tmp_path / "labels.h5"
    label(data, CalculatorForces(lj()), cache=cache, progress=False)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1500])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "text":
        cache.write_text("not a cache\n")
    else:
        with h5py.File(cache, "r+") as stored:
            if damage == "missing dataset":
                del stored["forces"]
            else:
                del stored.attrs["source"]
    with pytest.raises(ValueError, match=r"label cache .*labels\.h5.*delete .*labels\.h5"):
        label(data, CalculatorForces(lj()), cache=cache, progress=False)


# ----------------------------------------------------------------------------- periodic input
def test_periodic_frames_are_refused_naming_the_frame(tmp_path):
    from ase.build import bulk

    cell = bulk("Cu", cubic=True).repeat(2)  # the periodic Cu cell whose forces were 2 eV/Å off
    frames = [cell.copy() for _ in range(3)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=k)
    frames[0].pbc = False  # frame 0 isolated: the error names frame 1
    path = tmp_path / "cu.extxyz"
    import ase.io

    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=r"cu\.extxyz: frame 1 is periodic.*pbc=\[True"):
        Conformations.read(path)
    with pytest.raises(ValueError, match="frame 1 is periodic"):
        Conformations.from_atoms(frames)
    for atoms in frames:
        atoms.pbc = False
    assert len(Conformations.from_atoms(frames)) == 3  # the documented way out


def test_mdtraj_trajectory_with_a_box_is_refused():
    mdtraj = pytest.importorskip("mdtraj")

    from ase_drift.io import mdtraj_topology

    water = molecule("H2O")
    traj = mdtraj.Trajectory(water.positions[None] / 10, mdtraj_topology(water.numbers),
                             unitcell_lengths=[[2.0, 2.0, 2.0]], unitcell_angles=[[90.0] * 3])
    with pytest.raises(ValueError, match="periodic box"):
        Conformations.from_mdtraj(traj)
    traj.unitcell_vectors = None
    assert Conformations.from_mdtraj(traj).n_atoms == 3


# ----------------------------------------------------------------------------- diverged training
def tiny(**changes):
    from ase_drift.training import TrainConfig

    values = {"field": "fi", "space": "cartesian", "hidden": 32, "depth": 2, "noise_dim": 8,
              "steps": 5, "batch_size": 16, "n_positives": 32, "warmup_steps": 1}
    return TrainConfig(**{**values, **changes})


def test_exploding_learning_rate_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from ase_drift.checkpoint import load_checkpoint
    from ase_drift.training import Checkpointer, Trainer, TrainingDiverged

    trainer = Trainer(ethanol(64), tiny(learning_rate=1e-3, steps=8))
    checkpoint = tmp_path / "run.ckpt"
    trainer.attach(Checkpointer(checkpoint), 1)
    trainer.run(2)  # two good steps, checkpointed
    good = checkpoint.read_bytes()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 50.0  # the run that reached coordinates of 1e11 Å
    with pytest.raises(TrainingDiverged, match=r"diverged (at|after) step \d.*lower learning rate"):
        trainer.run()
    assert checkpoint.read_bytes() == good
    assert load_checkpoint(checkpoint)["state_dict"]["step"] == 2
    with pytest.raises(TrainingDiverged):
        trainer.sampler()  # no model from a diverged state


def test_non_finite_weights_are_never_saved(tmp_path):
    import torch

    from ase_drift.training import Trainer, TrainingDiverged

    trainer = Trainer(ethanol(16), tiny())
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    good = (tmp_path / "good.ckpt").read_bytes()
    sampler = trainer.sampler()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
        next(sampler.generator.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="not finite"):
        trainer.save_checkpoint(tmp_path / "good.ckpt")
    assert (tmp_path / "good.ckpt").read_bytes() == good
    with pytest.raises(TrainingDiverged, match="step 1: the loss is nan"):
        trainer.step()  # NaN weights give a NaN loss: stopped before the update
    with pytest.raises(ValueError, match="not finite"):
        sampler.save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_coincident_atoms_in_the_data_are_named_before_training():
    from ase_drift.training import Trainer

    data = ethanol(16)
    positions = data.positions.copy()
    positions[3, 1] = positions[3, 0]  # the FI run that went NaN
    data = Conformations(data.numbers, positions, data.forces, data.energies, 300.0)
    with pytest.raises(ValueError, match=r"frame\(s\) \[3\].*atoms 0 and 1 are 0 Å apart"):
        Trainer(data, tiny(space="distance"))


def test_cli_reports_divergence_in_one_line_and_writes_no_model(data_file, tmp_path, capsys,
                                                                 monkeypatch):
    import ase_drift.training

    monkeypatch.setattr(ase_drift.training, "DIVERGENCE_FACTOR", 0.0)  # diverges at step 1
    model = tmp_path / "model.pt"
    assert main(["train", str(data_file), "--steps", "3", "-o", str(model)]) == 2
    err = capsys.readouterr().err
    assert "diverged at step 1" in err and "Traceback" not in err
    assert not model.exists()
