"""Fault injection: bad inputs and interruptions give clear errors, never silently wrong results
or lost work (issue 12).

Each section is one class of fault. Library functions raise exceptions naming the file or
argument; the command line turns them into one line on stderr and exit status 2 (no
traceback unless ``--debug``).
"""

import re

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


# ----------------------------------------------------------------------------- quietly misread input
def test_forces_shaped_frames_xyz_atoms_are_refused_not_reshaped():
    data = ethanol(4)
    with pytest.raises(ValueError, match=r"forces must have the shape.*transpose"):
        Conformations(data.numbers, data.positions, forces=data.forces.transpose(0, 2, 1))
    one = Conformations(data.numbers, data.positions[0], forces=data.forces[0])  # [A, 3] frame
    np.testing.assert_array_equal(one.forces, data.forces[:1])


def test_npz_with_transposed_forces_names_the_file(tmp_path):
    data = ethanol(4)
    path = tmp_path / "md.npz"
    np.savez(path, z=data.numbers, R=data.positions, F=data.forces.transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"md\.npz: forces must have the shape"):
        Conformations.read(path)


def test_one_frame_without_forces_is_named_unless_labels_may_be_partial(tmp_path):
    frames = ethanol(5).to_atoms()
    frames[3].calc = None  # frame 3 lost its energy and forces
    path = tmp_path / "md.extxyz"
    import ase.io

    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=r"md\.extxyz: frame 3 has no forces but frame 0 has"):
        Conformations.read(path)
    dropped = Conformations.read(path, partial_labels="drop")
    assert dropped.forces is None and dropped.energies is None and len(dropped) == 5
    assert read_positions(path).n_atoms == 9  # positions-only readers do not care


def test_frames_with_different_atom_counts_say_so():
    frames = ethanol(3).to_atoms()
    del frames[2][-1]
    with pytest.raises(ValueError, match=r"frame 2 has 8 atoms .*frame 0 has 9"):
        Conformations.from_atoms(frames)


def test_negative_frame_counts_are_refused(data_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="must not be negative"):
        ethanol(8).head(-5)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(data_file), "--frames", "-5", "-o", str(tmp_path / "m.pt")])
    assert exit_.value.code == 2
    assert "--frames: must be a positive integer, got -5" in capsys.readouterr().err
    assert main(["train", str(data_file), "--frames", "500", "--steps", "1",
                 "-o", str(tmp_path / "m.pt")]) == 2
    assert "--frames 500, but" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", [0, -300.0, float("nan")])
def test_zero_or_negative_temperature_is_refused(temperature):
    from ase_drift import train

    with pytest.raises(ValueError, match="temperature_K must be positive"):
        train(ethanol(8), temperature_K=temperature, steps=1, progress=False)


def test_resume_with_other_labels_is_refused(tmp_path):
    from ase_drift.checkpoint import CheckpointError
    from ase_drift.training import Trainer, label_difference, label_summary

    data = ethanol(16)
    checkpoint = Trainer(data, tiny()).save_checkpoint(tmp_path / "run.ckpt")
    scaled = Conformations(data.numbers, data.positions, data.forces * 23, data.energies, 300.0)
    with pytest.raises(CheckpointError, match=r"other labels.*forces: spread"):
        Trainer(scaled, tiny()).load_checkpoint(checkpoint)
    shuffled = Conformations(data.numbers, data.positions, data.forces[::-1], data.energies,
                             300.0)
    with pytest.raises(CheckpointError, match="forces: same spread and mean but other values"):
        Trainer(shuffled, tiny()).load_checkpoint(checkpoint)
    # Labels recomputed with round-off (multithreaded engines) still resume.
    noisy = Conformations(data.numbers, data.positions, data.forces * (1 + 1e-12),
                          data.energies, 300.0)
    assert Trainer(noisy, tiny()).load_checkpoint(checkpoint).step_count == 0
    assert label_difference(label_summary(data), label_summary(noisy)) == ""
    # Absolute energies are large: a relative shift of the mean is not mistaken for round-off.
    shifted = Conformations(data.numbers, data.positions, data.forces, data.energies + 0.1,
                            300.0)
    assert "energies: mean" in label_difference(label_summary(data), label_summary(shifted))


# ----------------------------------------------------------------------------- lost work
def test_outputs_and_reference_are_checked_before_the_first_step(data_file, tmp_path, capsys,
                                                                  monkeypatch):
    import ase_drift.training

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(ase_drift.training.Trainer, "step", no_training)
    folder = tmp_path / "folder"
    folder.mkdir()
    other = tmp_path / "water.extxyz"
    Conformations(molecule("H2O").numbers, molecule("H2O").positions).write(other)
    for argv, expected in [
        (["-o", str(folder)], "is a directory"),
        (["-o", str(tmp_path / "m.pt"), "--checkpoint", str(folder)], "is a directory"),
        (["-o", str(tmp_path / "m.pt"), "--reference", str(other)],
         r"--reference .*water\.extxyz is another molecule.*3 atoms \(H2O\) against 9"),
        (["-o", str(tmp_path / "m.pt"), "--reference", str(tmp_path / "missing.xyz")],
         "no such data file"),
        (["-o", str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "none.ckpt"), "--resume"],
         "--resume: there is no checkpoint"),
        (["-o", str(tmp_path / "m.pt"), "--resume"], "--resume needs --checkpoint"),
        (["-o", str(data_file / "m.pt")], r"train\.extxyz is a file, not a folder"),
    ]:
        assert main(["train", str(data_file), "--steps", "2", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert re.search(expected, err), (argv, err)


def test_unwritable_folder_is_refused_before_training(tmp_path):
    import os

    from ase_drift import train

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        with pytest.raises(ValueError, match="checkpoint .*locked.*not writable"):
            train(ethanol(8), steps=1, checkpoint=locked / "run.ckpt", progress=False)
    finally:
        locked.chmod(0o700)


def test_api_resume_without_a_checkpoint_file_is_an_error(tmp_path):
    from ase_drift import train

    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train(ethanol(8), steps=1, checkpoint=tmp_path / "none.ckpt", resume=True,
              progress=False)


def test_ctrl_c_saves_a_checkpoint_that_resumes_bit_for_bit(tmp_path):
    import torch

    from ase_drift.training import Checkpointer, Trainer, TrainingInterrupted

    data, config = ethanol(32), tiny(steps=6)
    straight = Trainer(data, config).run()

    def ctrl_c(trainer):
        if trainer.step_count == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "run.ckpt"
    trainer = Trainer(data, config)
    trainer.attach(ctrl_c, 1).attach(Checkpointer(checkpoint), 1000)  # no periodic save yet
    with pytest.raises(TrainingInterrupted, match=r"after step 3 of 6.*saved in .*run\.ckpt"):
        trainer.run()
    resumed = Trainer(data, config).load_checkpoint(checkpoint)
    assert resumed.step_count == 3
    finished = resumed.run()
    for a, b in zip(straight.generator.state_dict().values(),
                    finished.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sigterm_is_deferred_to_the_end_of_the_step_and_saves(tmp_path):
    import os
    import signal

    from ase_drift.checkpoint import load_checkpoint
    from ase_drift.training import Checkpointer, Trainer, TrainingInterrupted

    def terminate(trainer):
        if trainer.step_count == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    checkpoint = tmp_path / "run.ckpt"
    trainer = Trainer(ethanol(16), tiny(steps=6))
    trainer.attach(terminate, 1).attach(Checkpointer(checkpoint), 1000)
    with pytest.raises(TrainingInterrupted, match="SIGTERM after step 2") as stopped:
        trainer.run()
    assert stopped.value.signum == signal.SIGTERM
    assert load_checkpoint(checkpoint)["state_dict"]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_an_ignored_sigint_stays_ignored():
    """A background job started by a script inherits SIGINT ignored: training must not start
    reacting to it."""
    import os
    import signal

    from ase_drift.training import Trainer

    def ctrl_c(trainer):
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = Trainer(ethanol(16), tiny(steps=3)).attach(ctrl_c, 1)
        trainer.run()
        assert trainer.step_count == 3
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_cli_ctrl_c_during_train_saves_and_says_how_to_resume(data_file, tmp_path, capsys,
                                                             monkeypatch):
    import ase_drift.training

    original = ase_drift.training.Trainer.step

    def step_then_ctrl_c(self):
        result = original(self)
        if self.step_count == 2:
            self.attach(lambda trainer: (_ for _ in ()).throw(KeyboardInterrupt), 1)
        return result

    monkeypatch.setattr(ase_drift.training.Trainer, "step", step_then_ctrl_c)
    checkpoint, model = tmp_path / "run.ckpt", tmp_path / "m.pt"
    code = main(["train", str(data_file), "--steps", "50", "--checkpoint", str(checkpoint),
                 "-o", str(model)])
    assert code == 130
    err = capsys.readouterr().err
    assert "after step 2 of 50" in err and "--resume" in err and "Traceback" not in err
    assert checkpoint.exists() and not model.exists()


# ----------------------------------------------------------------------------- one-line errors
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from ase_drift.training import Trainer

    path = tmp_path_factory.mktemp("model") / "model.pt"
    Trainer(ethanol(16), tiny(steps=1)).run().save(path)
    return path


def damaged_data(tmp_path, kind, data_file, model_file):
    """A data file damaged in one way; returns its path."""
    text = data_file.read_bytes()
    npz = tmp_path / "good.npz"
    data = ethanol(8)
    np.savez(npz, z=data.numbers, R=data.positions, F=data.forces, E=data.energies)
    path = tmp_path / {"npz": "md.npz", "truncated npz": "md.npz", "model": "model.pt",
                       "binary": "md.extxyz"}.get(kind, "md.extxyz")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(text[:len(text) // 3])
    elif kind == "binary":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated npz":
        path.write_bytes(npz.read_bytes()[:2000])
    elif kind == "model":
        path.write_bytes(model_file.read_bytes())
    elif kind == "npz":
        path.write_bytes(npz.read_bytes())
    return path


@pytest.mark.parametrize("kind, expected", [
    ("empty", r"md\.extxyz is empty"),
    ("truncated", r"md\.extxyz cannot be read with ase\.io .*truncated"),
    ("binary", r"md\.extxyz cannot be read with ase\.io \(it holds binary data"),
    ("truncated npz", r"md\.npz cannot be read as an npz file: it is truncated"),
    ("model", r"model\.pt is a PyTorch file .*not a data file"),
])
def test_damaged_data_files_are_one_line_errors(tmp_path, capsys, data_file, model_file, kind,
                                                expected):
    path = damaged_data(tmp_path, kind, data_file, model_file)
    assert main(["train", str(path), "--steps", "1", "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("kind, expected", [
    ("data", r"train\.extxyz is a text file \(a data file of conformations\?\)"),
    ("npz", r"md\.npz is a zip file but not a PyTorch one"),
    ("truncated", r"model\.pt is truncated or corrupt"),
    ("empty", r"model\.pt is empty"),
    ("pickle", r"evil\.pt holds Python objects other than tensors .*never unpickles"),
])
def test_what_is_not_a_model_is_named_without_torch_advice(tmp_path, capsys, data_file,
                                                           model_file, kind, expected):
    import torch

    if kind == "data":
        path = data_file
    elif kind == "npz":
        path = damaged_data(tmp_path, "npz", data_file, model_file)
    elif kind == "truncated":
        path = tmp_path / "model.pt"
        path.write_bytes(model_file.read_bytes()[:5000])
    elif kind == "empty":
        path = tmp_path / "model.pt"
        path.write_bytes(b"")
    else:
        path = tmp_path / "evil.pt"
        torch.save({"payload": Conformations}, path)  # a class: unpickling it would import code
    assert main(["sample", str(path), "-n", "2", "-o", str(tmp_path / "s.xyz")]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "weights_only" not in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("output, expected", [
    ("s.foo", r"unknown output format '\.foo'"),
    ("s", r"unknown output format '\(no suffix\)'"),
    ("s.png", "holds one frame, not 3"),
])
def test_unknown_output_formats_are_refused_before_sampling(tmp_path, capsys, model_file,
                                                            output, expected):
    assert main(["sample", str(model_file), "-n", "3", "-o", str(tmp_path / output)]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(10**30), "1.5"])
def test_seeds_out_of_range_are_argument_errors(tmp_path, capsys, model_file, seed):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(model_file), "-n", "2", "--seed", seed, "-o",
              str(tmp_path / "s.xyz")])
    assert exit_.value.code == 2
    assert "--seed" in capsys.readouterr().err


def test_seeds_out_of_range_in_the_api(model_file):
    from ase_drift.sampler import load

    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\), got -1"):
        load(model_file).sample_positions(2, seed=-1)
    with pytest.raises(ValueError, match="seed must lie in"):
        tiny(seed=2**64)


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    """`ase-drift data | head -c 1`: stdout is a pipe whose reader has gone. The output is
    buffered, so the error surfaces when it is flushed; it must not reach the user."""
    import io
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (head) has exited
    stdout = io.TextIOWrapper(io.FileIO(write_end, "w"))
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["data"]) == 141
    stdout.write("more")
    stdout.flush()  # stdout now goes to /dev/null: no second error at exit
    monkeypatch.undo()
    stdout.close()
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", str(tmp_path / "missing.extxyz"), "-o", str(tmp_path / "m")])
    with pytest.raises(FileNotFoundError):
        main(["train", str(tmp_path / "missing.extxyz"), "-o", str(tmp_path / "m"), "--debug"])


@pytest.mark.parametrize("damage, expected", [
    ("no numbers", r"metadata or configuration lacks the entry 'numbers'"),
    ("bad generator config", "metadata or configuration is malformed"),
    ("other weights", "weights do not fit the stored configuration"),
])
def test_checkpoints_with_wrong_metadata_or_weights_are_named(tmp_path, capsys, model_file,
                                                             damage, expected):
    import torch

    from ase_drift.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(model_file)
    config, state, metadata = payload["config"], payload["state_dict"], payload["metadata"]
    if damage == "no numbers":
        del metadata["numbers"]
    elif damage == "bad generator config":
        config["generator"]["hidden"] = "blue"  # unknown keys are ignored (newer files)
    else:
        state = {k: torch.zeros(2, 2) for k in state}
    path = save_checkpoint(tmp_path / "altered.pt", config, state, metadata)
    assert main(["sample", str(path), "-n", "2", "-o", str(tmp_path / "s.xyz")]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"altered\.pt.*{expected}", err), err
    assert err.count("\n") == 1
