"""Labelling on a Dask cluster: same labels as serial, resumable, and a failing frame or a
crashing worker loses nothing else (two local worker processes, one thread each)."""

import re
import threading

import h5py
import numpy as np
import pytest
from ase.calculators.lj import LennardJones

from ase_drift.data import Conformations
from ase_drift.forces import (
    CalculatorForces,
    LabelForces,
    LabelingError,
    connect_scheduler,
    label,
    label_positions,
)
from ase_drift.testing import FaultyForces, SpringForces

distributed = pytest.importorskip("distributed", reason="needs the cluster extra")


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread. A task may lose its worker once and is rerun; the
    second loss fails it (Dask's default allows 3 losses: a lower figure keeps the test of an
    always-crashing frame short)."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def lj_source():
    return CalculatorForces(LennardJones(sigma=3.4, epsilon=0.01, rc=100.0))


def argon(n, seed=0):
    """``n`` frames of 8 argon atoms: a 3.8 Å cube jittered by up to 0.3 Å (Å)."""
    lattice = 3.8 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = lattice + np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 8, 3))
    return Conformations(np.full(8, 18), positions, temperature_K=100.0)


def named_frames(message, n_frames):
    """The frame indices a LabelingError names, e.g. "frame 9 (of 24)", "frames 4-7 (of 12)"."""
    named = set()
    for words in re.findall(rf"frames? ([\d, -]+) \(of {n_frames}\)", message):
        for run in words.split(", "):
            first, _, last = run.partition("-")
            named.update(range(int(first), int(last or first) + 1))
    return named


def stored_done(cache):
    with h5py.File(cache, "r") as stored:
        return stored["done"][:]


def test_cluster_labels_equal_serial_labels_one_task_per_batch(client, tmp_path):
    data = argon(23)
    serial = label(data, lj_source(), progress=False)
    cache = tmp_path / "labels.h5"
    with distributed.get_task_stream(client) as tasks:
        clustered = label(data, lj_source(), cache=cache, batch_size=4, progress=False,
                          client=client)
    assert len(tasks.data) == 6  # ⌈23 / 4⌉ batches
    np.testing.assert_array_equal(clustered.energies, serial.energies)
    np.testing.assert_array_equal(clustered.forces, serial.forces)
    assert np.ptp(serial.energies) > 0  # the frames differ: a misplaced batch would show
    assert clustered.temperature_K == 100.0
    with h5py.File(cache, "r") as stored:
        assert stored["done"][:].all()
        np.testing.assert_array_equal(stored["forces"][:], serial.forces)


def test_resume_submits_only_the_missing_frames(client, tmp_path):
    data = argon(20, seed=1)
    expected = lj_source().compute(data.numbers, data.positions)
    cache = tmp_path / "labels.h5"
    with pytest.raises(LabelingError, match=r"frame 7 \(of 20\)"):  # serially: stops there
        label(data, FaultyForces(lj_source(), failing=[data.positions[7]]), cache=cache,
              batch_size=4, progress=False)
    np.testing.assert_array_equal(stored_done(cache), np.arange(20) < 7)

    refuses_done_frames = FaultyForces(lj_source(), failing=data.positions[:7])
    with distributed.get_task_stream(client) as tasks:
        result = label_positions(refuses_done_frames, data.numbers, data.positions, cache=cache,
                                 batch_size=4, progress=False, client=client)
    assert len(tasks.data) == 4  # ⌈13 / 4⌉ batches of frames 7..19
    np.testing.assert_array_equal(result.energies, expected.energies)
    np.testing.assert_array_equal(result.forces, expected.forces)
    assert stored_done(cache).all()


def test_failing_frames_are_named_and_every_other_batch_is_kept(client, tmp_path):
    data = argon(24, seed=2)
    expected = lj_source().compute(data.numbers, data.positions)
    cache = tmp_path / "labels.h5"
    failing = FaultyForces(lj_source(), failing=data.positions[[9, 17]])
    with pytest.raises(LabelingError, match=r"computed alone: .*injected failure.*resumes") as err:
        label(data, failing, cache=cache, batch_size=4, progress=False, client=client)
    assert named_frames(str(err.value), 24) == {9, 17}
    assert "injected failure" in str(err.value.__cause__)  # the frame's own error, for --debug
    # batch 8-11 keeps frame 8 (before the failing frame); 10, 11 and 18, 19 come on rerun
    done = stored_done(cache)
    np.testing.assert_array_equal(np.flatnonzero(~done), [9, 10, 11, 17, 18, 19])
    with h5py.File(cache, "r") as stored:
        np.testing.assert_array_equal(stored["forces"][done], expected.forces[done])

    fixed = label(data, lj_source(), cache=cache, batch_size=4, progress=False, client=client)
    np.testing.assert_array_equal(fixed.energies, expected.energies)
    np.testing.assert_array_equal(fixed.forces, expected.forces)


def test_any_exception_on_a_worker_names_its_batch(client):
    data = argon(12, seed=3)
    expected = lj_source().compute(data.numbers, data.positions)
    first_eight = Conformations(data.numbers, data.positions[:8], expected.forces[:8],
                                expected.energies[:8])
    with pytest.raises(LabelingError, match=r"frames 8-11 \(of 12\): KeyError on the worker: "
                                            r".*no stored label.*Pass cache=") as err:
        label(data, LabelForces(first_eight), batch_size=4, progress=False, client=client)
    assert isinstance(err.value.__cause__, KeyError)


def test_unpicklable_source_is_refused_before_any_work(client, tmp_path):
    source = lj_source()
    source.lock = threading.Lock()
    cache = tmp_path / "labels.h5"
    with pytest.raises(TypeError, match=r"CalculatorForces cannot be pickled.*lock"):
        label(argon(4), source, cache=cache, progress=False, client=client)
    assert not cache.exists()


def test_connect_scheduler_reaches_a_scheduler_or_names_the_address(client):
    with connect_scheduler(client.scheduler.address) as other:
        assert other.scheduler_info()["address"] == client.scheduler.address
    with pytest.raises(ValueError, match=r"no Dask scheduler answered at tcp://127\.0\.0\.1:1 "
                                         r"within 0\.5 s"):
        connect_scheduler("tcp://127.0.0.1:1", timeout_s=0.5)
    with pytest.raises(ValueError, match=r"no Dask scheduler answered at nowhere"):
        connect_scheduler("nowhere")


def test_a_worker_killed_once_is_replaced_and_the_labels_complete(client, tmp_path):
    data = argon(12, seed=4)
    expected = SpringForces().compute(data.numbers, data.positions)
    marker = tmp_path / "crashed"
    crashes_once = FaultyForces(SpringForces(), crashing=[data.positions[5]], crash_marker=marker)
    result = label_positions(crashes_once, data.numbers, data.positions,
                             cache=tmp_path / "labels.h5", batch_size=4, progress=False,
                             client=client)
    assert marker.exists()  # the worker did die
    np.testing.assert_array_equal(result.energies, expected.energies)
    np.testing.assert_array_equal(result.forces, expected.forces)


def test_a_frame_that_always_kills_its_worker_is_named_and_the_rest_kept(client, tmp_path):
    data = argon(12, seed=5)
    expected = SpringForces().compute(data.numbers, data.positions)
    cache = tmp_path / "labels.h5"
    crashes = FaultyForces(SpringForces(), crashing=[data.positions[5]])
    with pytest.raises(LabelingError, match=r"frames 4-7 \(of 12\): every worker running their "
                                            r"task died.*KilledWorker.*resumes") as err:
        label(data, crashes, cache=cache, batch_size=4, progress=False, client=client)
    # a batch that shared a dying worker may have failed too: it is then named as well
    done = stored_done(cache)
    assert named_frames(str(err.value), 12) == set(np.flatnonzero(~done).tolist())
    with h5py.File(cache, "r") as stored:
        np.testing.assert_array_equal(stored["forces"][done], expected.forces[done])

    fixed = label(data, SpringForces(), cache=cache, batch_size=4, progress=False, client=client)
    np.testing.assert_array_equal(fixed.forces, expected.forces)


def test_cli_labels_on_the_scheduler_it_is_given(client, tmp_path, capsys):
    from ase_drift.cli import main

    data, path, out = argon(9), tmp_path / "argon.extxyz", tmp_path / "labelled.extxyz"
    data.write(path)
    assert main(["label", str(path), "--calculator", "lj", "--scheduler",
                 client.scheduler.address, "--label-batch", "4", "-o", str(out)]) == 0
    assert f"on {client.scheduler.address}" in capsys.readouterr().err
    labelled = Conformations.read(out)
    serial = label(data, CalculatorForces(LennardJones()), progress=False)
    np.testing.assert_allclose(labelled.energies, serial.energies, rtol=1e-12)
    np.testing.assert_allclose(labelled.forces, serial.forces, rtol=1e-12, atol=1e-15)


def test_cli_unreachable_scheduler_is_a_one_line_error(tmp_path, capsys):
    from ase_drift.cli import main

    path = tmp_path / "argon.extxyz"
    argon(2).write(path)
    code = main(["label", str(path), "--calculator", "lj", "--scheduler", "tcp://127.0.0.1:9",
                 "-o", str(tmp_path / "out.extxyz")])
    err = capsys.readouterr().err
    assert code == 2 and "tcp://127.0.0.1:9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.extxyz").exists()
