"""Chemistry metrics: RDKit validity with its reasons, maximum pair distance, histogram JS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

pytest.importorskip("rdkit")

from ase_drift.metrics.chemistry import (
    REASONS,
    cross_ring_contacts,
    histogram_js,
    max_pair_distance,
    validity,
    validity_counts,
    validity_fraction,
)

REAL = ["CH4", "CH3CH2OH", "C6H6", "H2O", "NH3", "CO2", "HCN", "CH3COOH", "C5H5N",
        "CH3CH2OCH3"]


@pytest.mark.parametrize("name", REAL)
def test_real_molecules_are_valid(name):
    atoms = molecule(name)
    result = validity(atoms)
    assert result.valid and result.reason == "valid" and result.n_fragments == 1
    # the same molecule given as (numbers, positions), and moved rigidly, is still valid
    rotated = atoms.copy()
    rotated.rotate(37, (1, 2, 3))
    rotated.translate((5.0, -3.0, 2.0))
    assert validity((rotated.numbers, rotated.positions)).smiles == result.smiles


def test_smiles_identify_the_molecule():
    assert validity(molecule("CH3CH2OH")).smiles == "CCO"
    assert validity(molecule("C6H6")).smiles == "c1ccccc1"


def _ethanol():
    atoms = molecule("CH3CH2OH")
    assert atoms.get_chemical_symbols()[:3] == ["C", "C", "O"]
    return atoms


def test_a_stretched_bond_breaks_the_molecule():
    """Pulling the CH3 group 2.3 Å away along the C–C bond (C–C 1.51 → 3.8 Å) leaves two
    fragments."""
    atoms = _ethanol()
    neighbours = np.linalg.norm(atoms.positions - atoms.positions[0], axis=1) < 1.2  # C0 + its Hs
    axis = atoms.positions[0] - atoms.positions[1]
    atoms.positions[neighbours] += 1.5 * axis
    result = validity(atoms)
    assert not result.valid and result.reason == "fragments" and result.n_fragments == 2


def test_a_moderately_stretched_bond_is_still_valid():
    """+15 % on the C–O bond stays within connect-the-dots' tolerance (r_C + r_O + 0.45 Å)."""
    atoms = _ethanol()
    move = np.linalg.norm(atoms.positions - atoms.positions[2], axis=1) < 1.1  # O + its H
    atoms.positions[move] += 0.15 * (atoms.positions[2] - atoms.positions[1])
    assert validity(atoms).valid


def test_cross_ring_contacts():
    """A square of four carbons (1.5 Å sides) with its diagonal 0–2 given as a bond: the two
    ends share neighbours 1 and 3 and d = 2.12 Å > 1.12 (r_C + r_C) = 1.70 Å, a contact. Folded
    until the diagonal is 1.60 Å (bicyclobutane's central bond) it is a bond; a 1,3 pair with
    one common neighbour is never a ring contact."""
    numbers = np.array([6, 6, 6, 6])
    side = 1.5
    square = np.array([[0, 0, 0], [side, 0, 0], [side, side, 0], [0, side, 0]], float)
    ring = [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert cross_ring_contacts(numbers, square, [*ring, (0, 2)]) == [(0, 2)]
    assert cross_ring_contacts(numbers, square, ring) == []
    # fold the square about the 1–3 diagonal until atoms 0 and 2 are 1.60 Å apart
    centre, half = (square[1] + square[3]) / 2, 0.8
    axis = square[2] - square[0]
    axis /= np.linalg.norm(axis)
    height = np.sqrt(np.linalg.norm(square[0] - centre) ** 2 - half**2)
    folded = square.copy()
    folded[0] = centre - half * axis + [0, 0, height]
    folded[2] = centre + half * axis + [0, 0, height]
    assert np.linalg.norm(folded[0] - folded[2]) == pytest.approx(1.6)
    assert np.linalg.norm(folded[0] - folded[1]) == pytest.approx(side)
    assert cross_ring_contacts(numbers, folded, [*ring, (0, 2)]) == []
    # a chain 0–1–2 with a 2.12 Å contact 0–2: one common neighbour
    assert cross_ring_contacts(numbers[:3], square[:3], [(0, 1), (1, 2), (0, 2)]) == []


@pytest.mark.parametrize("smiles", ["C1C2CC1C2", "OC1C2CC1O2", "C12(CC(C1)C2)O"])
def test_strained_cages_are_valid(smiles):
    """Cages like QM9's (bicyclo[1.1.1]pentane, oxetane cages) whose cross-ring C···C / C···O
    distance (1.9 Å) lies inside connect-the-dots' tolerance: RDKit's plain DetermineBonds
    bonds it and fails, the check reads the right molecule."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem, rdDetermineBonds

    from ase_drift.metrics.chemistry import xyz_block

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions()
    result = validity((numbers, positions))
    assert result.valid
    perceived = Chem.MolFromSmiles(result.smiles)
    Chem.RemoveStereochemistry(perceived)  # the geometry adds the cage's stereocentres
    assert Chem.MolToSmiles(perceived) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    with rdBase.BlockLogs(), pytest.raises((ValueError, RuntimeError)):
        plain = Chem.MolFromXYZBlock(xyz_block(numbers, positions))
        rdDetermineBonds.DetermineBonds(plain, charge=0)
        Chem.SanitizeMol(plain)


def test_a_squeezed_angle_is_invalid():
    """Ethanol with its C–C–O angle closed until C···O is 1.8 Å (inside connect-the-dots'
    1.87 Å, d/(r_C + r_O) = 1.27, but one common neighbour: not a ring contact): a
    five-bonded carbon, invalid, as a too-compact generated molecule should be."""
    from scipy.spatial.transform import Rotation

    atoms = _ethanol()
    c1, c2, o = atoms.positions[:3]
    normal = np.cross(o - c2, c1 - c2)  # turning O about it closes the angle
    move = np.linalg.norm(atoms.positions - o, axis=1) < 1.1  # O + its H
    for degrees in np.arange(1.0, 60.0, 0.5):
        turn = Rotation.from_rotvec(np.radians(degrees) * normal / np.linalg.norm(normal))
        squeezed = atoms.copy()
        squeezed.positions[move] = c2 + turn.apply(atoms.positions[move] - c2)
        if squeezed.get_distance(0, 2) < 1.8:
            break
    assert 1.7 < squeezed.get_distance(0, 2) < 1.8
    assert validity(squeezed).reason == "bond_orders"


def test_a_zwitterion_is_valid():
    """Glycine's zwitterion (H3N+–CH2–COO−) is neutral overall: charged fragments are allowed."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("[NH3+]CC(=O)[O-]"))
    assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    result = validity((numbers, mol.GetConformer().GetPositions()))
    assert result.valid and result.smiles == "[NH3+]CC(=O)[O-]"


def test_noisy_geometries_are_rejected():
    """Gaussian noise of 0.3 Å per coordinate on the real molecules of REAL breaks (nearly) all
    of them; 0.02 Å keeps them all."""
    rng = np.random.default_rng(0)
    atoms = [molecule(name) for name in REAL if len(molecule(name)) > 4]
    for sigma, low, high in ((0.02, 1.0, 1.0), (0.3, 0.0, 0.2)):
        noisy = [(a.numbers, a.positions + sigma * rng.normal(size=a.positions.shape))
                 for a in atoms for _ in range(5)]
        assert low <= validity_fraction(noisy) <= high


def test_a_missing_hydrogen_is_a_radical():
    atoms = _ethanol()
    del atoms[8]
    result = validity(atoms)
    assert not result.valid and result.reason == "radical"
    # with the charge it is a closed-shell (anion or cation) again: the check is the parity
    assert validity(atoms, charge=-1).valid


def test_two_far_apart_molecules_are_two_fragments():
    water = molecule("H2O")
    water.translate((10.0, 0.0, 0.0))
    result = validity(molecule("CH4") + water)
    assert not result.valid and result.reason == "fragments" and result.n_fragments == 2


def test_bond_orders_and_geometry_failures():
    # a carbon with five bonded hydrogens (+ one more H for an even electron count): no
    # neutral valence assignment
    directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], float)
    ch5_plus_h = Atoms("CH5H", positions=np.vstack([[0, 0, 0], 1.09 * directions,
                                                    [0, 0, -1.09]]))
    assert validity(ch5_plus_h).reason == "bond_orders"
    exploded = molecule("CH4")
    exploded.positions[0] = np.nan
    assert validity(exploded).reason == "geometry"


def test_validity_fraction_and_counts():
    atoms = _ethanol()
    radical = atoms.copy()
    del radical[8]
    molecules = [atoms, molecule("C6H6"), radical, (atoms.numbers, atoms.positions)]
    assert validity_fraction(molecules) == 0.75
    counts = validity_counts(molecules)
    assert set(counts) == set(REASONS)
    assert counts["valid"] == 3 and counts["radical"] == 1 and sum(counts.values()) == 4


def test_bad_molecules_raise():
    with pytest.raises(ValueError, match="positions"):
        validity(([6, 1], np.zeros((3, 3))))
    with pytest.raises(ValueError, match="atomic numbers"):
        validity(([0, 1], np.zeros((2, 3))))
    with pytest.raises(ValueError, match="at least one"):
        validity_fraction([])


def test_max_pair_distance():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(5, 7, 3))
    brute = [max(np.linalg.norm(p[a] - p[b]) for a in range(7) for b in range(7))
             for p in batch]
    assert np.allclose(max_pair_distance(batch), brute)
    assert max_pair_distance(batch[0]) == pytest.approx(brute[0])
    methane = molecule("CH4")
    ragged = [batch[0], batch[1][:3], methane, np.zeros((1, 3))]
    values = max_pair_distance(ragged)
    assert values.shape == (4,)
    assert np.allclose(values, [brute[0], max_pair_distance(batch[1][:3]),
                                methane.get_all_distances().max(), 0.0])
    co2 = molecule("CO2")
    # CO2 is linear: MPD = the O–O distance = 2 × C–O
    assert max_pair_distance(co2.positions) == pytest.approx(2 * co2.get_distance(0, 1))
    with pytest.raises(ValueError, match="positions"):
        max_pair_distance(np.zeros((2, 3, 2)))


def test_histogram_js_limits():
    """JS in nats: 0 for identical samples, ln 2 for samples on disjoint bins."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=5_000)
    assert histogram_js(x, x.copy()) == pytest.approx(0.0, abs=1e-12)
    assert histogram_js(x, x + 100.0) == pytest.approx(math.log(2))
    assert histogram_js(x, x[::-1], bins=10, range=(-3.0, 3.0)) == pytest.approx(0.0, abs=1e-12)
    # two independent samples of one distribution: small, well below a shifted one
    y = rng.normal(size=5_000)
    assert histogram_js(x, y) < 0.02 < histogram_js(x, y + 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        histogram_js([], x)


def test_the_default_bin_range_spans_the_samples_and_widens_a_single_value():
    from ase_drift.metrics.chemistry import sample_range

    assert sample_range([3.0, -1.0, 2.0]) == (-1.0, 3.0)
    assert sample_range([2.0, 2.0]) == (1.5, 2.5)
    assert histogram_js([2.0, 2.0], [2.0]) == pytest.approx(0.0, abs=1e-12)
