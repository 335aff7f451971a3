"""Writing frames: chunked writing equals one-shot writing in every streamed format, PDBs carry
CONECT records for exactly the covalent bonds, and a failed write leaves the output untouched."""

import ase.io
import mdtraj
import numpy as np
import pytest
from ase.build import molecule

from ase_drift.io import FrameWriter, covalent_bond_pairs, read_positions, write_positions

ETHANOL = molecule("CH3CH2OH")
# C1-C2, C1-H (3), C2-O, C2-H (2), O-H: 8 bonds (ASE's atom order: C, C, O, H, H, H, H, H, H)
ETHANOL_BONDS = {(0, 1), (0, 6), (0, 7), (0, 8), (1, 2), (1, 4), (1, 5), (2, 3)}


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return ETHANOL.positions + 0.03 * rng.standard_normal((n, len(ETHANOL), 3))


def test_covalent_bond_pairs_of_ethanol():
    assert set(covalent_bond_pairs(ETHANOL.numbers, frames(20))) == ETHANOL_BONDS


@pytest.mark.parametrize("suffix", [".extxyz", ".xyz", ".traj", ".pdb", ".dcd", ".json"])
def test_writing_in_chunks_equals_writing_at_once(tmp_path, suffix):
    positions = frames(7)
    whole = write_positions(tmp_path / f"whole{suffix}", ETHANOL.numbers, positions,
                            info={"seed": 3})
    with FrameWriter(tmp_path / f"chunks{suffix}", ETHANOL.numbers, {"seed": 3}, 7) as out:
        for chunk in (positions[:3], positions[3:3], positions[3:]):
            out.write(chunk)
    assert out.n_written == 7
    a, b = read_positions(whole), read_positions(out.path)
    assert a.numbers.tolist() == b.numbers.tolist() == ETHANOL.numbers.tolist()
    np.testing.assert_allclose(b.positions, a.positions, atol=0)
    np.testing.assert_allclose(b.positions, positions, atol=1e-3 if suffix == ".pdb" else 1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("suffix", [".pdb", ".dcd"])
def test_pdb_carries_conect_records_of_the_covalent_bonds(tmp_path, suffix):
    path = write_positions(tmp_path / f"samples{suffix}", ETHANOL.numbers, frames(5),
                           info={"model_kind": "drift"})
    pdb = path.with_suffix(".pdb")
    traj = mdtraj.load(str(path), top=str(pdb)) if suffix == ".dcd" else mdtraj.load(str(pdb))
    assert traj.n_frames == 5
    assert {tuple(sorted((a.index, b.index))) for a, b in traj.topology.bonds} == ETHANOL_BONDS
    text = pdb.read_text()
    assert "REMARK 250 model_kind: drift" in text and text.count("CONECT") == 9
    assert len(ase.io.read(str(pdb), ":")) == (1 if suffix == ".dcd" else 5)  # no empty frame


def test_a_failed_write_leaves_the_existing_output_as_it_was(tmp_path):
    path = tmp_path / "samples.extxyz"
    path.write_text("the user's previous samples\n")
    with (pytest.raises(RuntimeError, match="sampler failed"),
          FrameWriter(path, ETHANOL.numbers, n_frames=10) as out):
        out.write(frames(4))
        raise RuntimeError("sampler failed")
    assert path.read_text() == "the user's previous samples\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.extxyz"]


def test_frames_of_another_shape_are_refused(tmp_path):
    with (pytest.raises(ValueError, match=r"shape \[k, 9, 3\], got \(2, 8, 3\)"),
          FrameWriter(tmp_path / "x.extxyz", ETHANOL.numbers) as out):
        out.write(np.zeros((2, 8, 3)))
