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
