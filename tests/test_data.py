"""Conformations: constructors agree, labels convert to eV, splits partition the frames, and
bad data raises with the frame or label named.

Units at the boundary are Å, eV, eV/Å, K; MD17 stores kcal/mol and kcal/mol/Å
(1 kcal/mol = 0.0433641 eV); mdtraj stores nm (1 nm = 10 Å).
"""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ase_drift.data import Conformations

KCAL_MOL_EV = 0.0433641


def water_frames(n=10, seed=0):
    """``n`` noisy water geometries: numbers [8, 1, 1], positions [n, 3, 3] Å, forces, energies."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    positions = base + 0.05 * rng.normal(size=(n, 3, 3))
    forces = rng.normal(size=(n, 3, 3))
    energies = rng.normal(size=n) - 10.0
    return np.array([8, 1, 1]), positions, forces, energies


@pytest.fixture
def water():
    numbers, positions, forces, energies = water_frames()
    return Conformations(numbers, positions, forces, energies, temperature_K=300.0)


# ----------------------------------------------------------------------------- constructors
def test_direct_constructor_stores_float64_and_shapes(water):
    assert len(water) == 10 and water.n_atoms == 3
    assert water.positions.dtype == np.float64 and water.positions.shape == (10, 3, 3)
    assert water.symbols == ["O", "H", "H"]
    assert water.formula == "H2O"
    assert water.temperature_K == 300.0
    single = Conformations([8, 1, 1], water.positions[0])  # one [A, 3] frame -> [1, A, 3]
    assert single.positions.shape == (1, 3, 3) and single.forces is None
    assert "H2O" in repr(water) and "forces" in repr(water)


def test_from_atoms_reads_calculator_labels_in_energy_unit():
    """Labels from a SinglePointCalculator, converted from kcal/mol (per Å) to eV (per Å)."""
    numbers, positions, forces, energies = water_frames(4)
    frames = []
    for k in range(4):
        atoms = Atoms(numbers=numbers, positions=positions[k])
        atoms.calc = SinglePointCalculator(atoms, energy=energies[k], forces=forces[k])
        frames.append(atoms)
    frames[0].info["temperature_K"] = 450.0
    conf = Conformations.from_atoms(frames, energy_unit="kcal/mol")
    np.testing.assert_allclose(conf.positions, positions)
    np.testing.assert_allclose(conf.energies, energies * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(conf.forces, forces * KCAL_MOL_EV, rtol=1e-6)
    assert conf.temperature_K == 450.0


def test_from_atoms_without_labels_gives_none_not_zeros():
    numbers, positions, _, _ = water_frames(3)
    conf = Conformations.from_atoms([Atoms(numbers=numbers, positions=p) for p in positions])
    assert conf.forces is None and conf.energies is None and conf.temperature_K is None


def test_from_atoms_rejects_changed_atom_order():
    numbers, positions, _, _ = water_frames(2)
    frames = [Atoms(numbers=numbers, positions=positions[0]),
              Atoms(numbers=[1, 8, 1], positions=positions[1])]
    with pytest.raises(ValueError, match="frame 1"):
        Conformations.from_atoms(frames)
    with pytest.raises(ValueError, match="no frames"):
        Conformations.from_atoms([])


def test_extxyz_round_trip(tmp_path, water):
    """write → read keeps positions, forces, energies (eV) and the temperature."""
    path = tmp_path / "water.extxyz"
    water.write(path)
    back = Conformations.read(path)
    np.testing.assert_array_equal(back.numbers, water.numbers)
    np.testing.assert_allclose(back.positions, water.positions, atol=1e-8)
    np.testing.assert_allclose(back.forces, water.forces, atol=1e-8)
    np.testing.assert_allclose(back.energies, water.energies, atol=1e-8)
    assert back.temperature_K == 300.0
    assert Conformations.read(path, temperature_K=500.0).temperature_K == 500.0
    with pytest.raises(FileNotFoundError):
        Conformations.read(tmp_path / "missing.extxyz")


def test_from_npz_converts_kcal_per_mol(tmp_path):
    """MD17-style npz (z, R Å, E and F in kcal/mol): energies and forces arrive in eV."""
    numbers, positions, forces, energies = water_frames(5)
    path = tmp_path / "md17.npz"
    np.savez(path, z=numbers, R=positions, F=forces, E=energies[:, None], T=np.array(500.0))
    conf = Conformations.from_npz(path, energy_unit="kcal/mol")
    np.testing.assert_allclose(conf.energies, energies * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(conf.forces, forces * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(conf.positions, positions)
    assert conf.temperature_K == 500.0
    # .read dispatches on the suffix
    np.testing.assert_allclose(Conformations.read(path, energy_unit="kcal/mol").energies,
                               conf.energies)
    np.savez(tmp_path / "bad.npz", R=positions)
    with pytest.raises(KeyError, match="'z'"):
        Conformations.from_npz(tmp_path / "bad.npz")


def test_from_mdtraj_converts_nm_to_angstrom():
    """An in-memory mdtraj trajectory (nm) becomes positions in Å, species from the topology."""
    md = pytest.importorskip("mdtraj")
    top = md.Topology()
    residue = top.add_residue("HOH", top.add_chain())
    for name, element in (("O", md.element.oxygen), ("H1", md.element.hydrogen),
                          ("H2", md.element.hydrogen)):
        top.add_atom(name, element, residue)
    xyz_nm = water_frames(3)[1] / 10
    traj = md.Trajectory(xyz_nm.astype(np.float32), top)
    conf = Conformations.from_mdtraj(traj, temperature_K=300.0)
    np.testing.assert_array_equal(conf.numbers, [8, 1, 1])
    np.testing.assert_allclose(conf.positions, 10 * traj.xyz, rtol=1e-7)
    assert conf.forces is None and conf.temperature_K == 300.0


# ----------------------------------------------------------------------------- splits
def test_head_frames_stride_select_the_right_frames(water):
    np.testing.assert_array_equal(water.head(3).positions, water.positions[:3])
    np.testing.assert_array_equal(water.frames(2, 5).positions, water.positions[2:5])
    np.testing.assert_array_equal(water.frames(2, 5).forces, water.forces[2:5])
    np.testing.assert_array_equal(water.stride(3).energies, water.energies[::3])
    one = water[4]
    assert len(one) == 1 and one.temperature_K == 300.0


def test_split_is_reproducible_disjoint_and_complete(water):
    a, b = water.split(0.7, seed=3)
    a2, b2 = water.split(0.7, seed=3)
    np.testing.assert_array_equal(a.positions, a2.positions)
    np.testing.assert_array_equal(b.positions, b2.positions)
    assert len(a) == 7 and len(b) == 3
    keys = lambda c: {e for e in c.energies}  # energies are distinct per frame
    assert keys(a).isdisjoint(keys(b))
    assert keys(a) | keys(b) == keys(water)
    other, _ = water.split(0.7, seed=4)
    assert keys(other) != keys(a)
    with pytest.raises(ValueError, match="fraction"):
        water.split(1.0)


def test_concatenate_joins_frames_and_rejects_other_molecules(water):
    joined = Conformations.concatenate([water.head(4), water.frames(4, 10)])
    np.testing.assert_array_equal(joined.positions, water.positions)
    np.testing.assert_array_equal(joined.forces, water.forces)
    other = Conformations([8, 1, 8], water.positions)
    with pytest.raises(ValueError, match="different molecules"):
        Conformations.concatenate([water, other])


# ----------------------------------------------------------------------------- bad data
def test_nan_forces_raise_naming_the_frame():
    numbers, positions, forces, energies = water_frames(6)
    forces[4, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"forces.*frame\(s\) \[4\]"):
        Conformations(numbers, positions, forces, energies)


def test_non_finite_positions_and_energies_raise_naming_the_frame():
    numbers, positions, _, energies = water_frames(6)
    bad = positions.copy()
    bad[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"positions.*\[2\]"):
        Conformations(numbers, bad)
    energies[5] = np.nan
    with pytest.raises(ValueError, match=r"energies.*\[5\]"):
        Conformations(numbers, positions, energies=energies)


def test_wrong_shapes_raise():
    numbers, positions, forces, energies = water_frames(6)
    with pytest.raises(ValueError, match=r"positions must have shape \[n_frames, 4, 3\]"):
        Conformations([8, 1, 1, 1], positions)
    with pytest.raises(ValueError):
        Conformations(numbers, positions[..., :2])
    with pytest.raises(ValueError):
        Conformations(numbers, positions, forces=forces[:5])
    with pytest.raises(ValueError, match="5 energies for 6 frames"):
        Conformations(numbers, positions, energies=energies[:5])
    with pytest.raises(ValueError, match="temperature_K must be positive"):
        Conformations(numbers, positions, temperature_K=-1.0)


def test_require_names_the_missing_label():
    numbers, positions, forces, _ = water_frames(3)
    conf = Conformations(numbers, positions, forces=forces)
    assert conf.require("forces") is conf
    with pytest.raises(ValueError, match="has no energies.*FK energy form"):
        conf.require("forces", "energies", why="FK energy form")
    with pytest.raises(ValueError, match="has no forces or energies"):
        Conformations(numbers, positions).require("forces", "energies")


# ----------------------------------------------------------------------------- real data
def write_md17_extxyz(path, data):
    """Write ``data`` (eV, eV/Å) as the MD17 extxyz files are distributed (SchNetPack's
    ``ethanol_sampledata.xyz``): energies in kcal/mol in the comment line, forces in kcal/mol/Å
    as extra columns, written by hand so the reader is tested on the format, not on ASE's
    writer."""
    from ase.data import chemical_symbols

    lines = []
    for positions, forces, energy in zip(data.positions, data.forces, data.energies):
        lines.append(f"{data.n_atoms}")
        lines.append(f"Properties=species:S:1:pos:R:3:forces:R:3 "
                     f"energy={float(energy / KCAL_MOL_EV)!r} pbc=\"F F F\"")
        for z, r, f in zip(data.numbers, positions, forces / KCAL_MOL_EV):
            lines.append(f"{chemical_symbols[z]:2s} " + " ".join(f"{x:16.8f}" for x in (*r, *f)))
    Path(path).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ethanol_md17_style(tmp_path_factory):
    """(bundled GFN2-xTB ethanol frames in eV, the same frames read back from an MD17-style
    extxyz in kcal/mol): real data from the repository, no file outside it."""
    from ase_drift.datasets import load

    frames = load("ethanol-gfn2-500K")[1][::500]  # 20 frames of the equilibrium reference
    path = tmp_path_factory.mktemp("md17") / "ethanol.extxyz"
    write_md17_extxyz(path, frames)
    return frames, Conformations.read(path, energy_unit="kcal/mol")


def test_md17_style_extxyz_in_kcal_per_mol(ethanol_md17_style):
    """An MD17-style extxyz (C C O H H H H H H; energy kcal/mol, forces kcal/mol/Å) reads back
    in eV and eV/Å: GFN2-xTB ethanol E ≈ −309.6 eV ≈ −7139 kcal/mol."""
    frames, read = ethanol_md17_style
    assert len(read) == 20
    assert read.symbols == ["C", "C", "O", "H", "H", "H", "H", "H", "H"]
    assert read.forces is not None and read.energies is not None
    assert read.energies.mean() == pytest.approx(-309.6, abs=0.1)  # eV, not kcal/mol
    # the file holds 8 decimals (1e-8 Å); KCAL_MOL_EV holds 6 significant digits
    np.testing.assert_allclose(read.positions, frames.positions, rtol=0, atol=1e-8)
    np.testing.assert_allclose(read.energies, frames.energies, rtol=1e-6)
    np.testing.assert_allclose(read.forces, frames.forces, rtol=1e-6, atol=1e-7)
    # an isolated molecule: net force ≈ 0 compared with the typical force
    assert np.abs(read.forces.sum(axis=1)).max() < 0.05 * np.abs(read.forces).mean() * 9
