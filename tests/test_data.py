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
DATA_DIR = Path(__file__).parents[1] / ".." / "shared" / "data"
MD17_ETHANOL = DATA_DIR / "md17_ethanol_2000.extxyz"


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
@pytest.fixture(scope="module")
def md17():
    if not MD17_ETHANOL.exists():
        pytest.skip(f"{MD17_ETHANOL} not available")
    return Conformations.read(MD17_ETHANOL, energy_unit="kcal/mol")


def test_md17_ethanol_file(md17):
    """MD17 ethanol (DFT): 2000 frames of C C O H H H H H H, E ≈ −97195 kcal/mol ≈ −4214.8 eV."""
    assert len(md17) == 2000
    assert md17.symbols == ["C", "C", "O", "H", "H", "H", "H", "H", "H"]
    assert md17.forces is not None and md17.energies is not None
    # first frame as written in the file, in kcal/mol and kcal/mol/Å
    assert md17.energies[0] == pytest.approx(-97195.01189948035 * KCAL_MOL_EV, rel=1e-6)
    assert md17.energies[0] == pytest.approx(-4214.8, abs=0.1)
    np.testing.assert_allclose(md17.forces[0, 0],
                               np.array([26.23068692, -14.15197537, 33.37017128]) * KCAL_MOL_EV,
                               rtol=1e-6)
    np.testing.assert_allclose(md17.positions[0, 0], [0.32528930, -0.20828107, -0.37292856])
    mean_kcal = md17.energies.mean() / KCAL_MOL_EV
    assert mean_kcal == pytest.approx(-97195, abs=50)
    # an isolated molecule: net force ≈ 0 compared with the typical force
    assert np.abs(md17.forces.sum(axis=1)).max() < 0.05 * np.abs(md17.forces).mean() * 9
