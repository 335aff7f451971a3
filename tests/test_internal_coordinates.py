"""Internal coordinates (ase_drift.internal_coordinates): the Z-matrix tree, the coordinates
themselves, the volume element of Eq. 13 and the torsion cuts."""

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from ase_drift.datasets import load
from ase_drift.internal_coordinates import (
    InternalCoordinates,
    bond_tree,
    build_zmatrix,
    internal_coordinates,
    log_jacobian,
    torsion_cuts,
    unwrap_torsions,
)
from ase_drift.metrics import covalent_bonds, pair_indices
from ase_drift.peptides import dihedral


@pytest.fixture(scope="module")
def ethanol():
    return load("ethanol-gfn2-500K")[0]


def place(rows: np.ndarray, bonds, angles, torsions, n_atoms: int) -> np.ndarray:
    """Cartesian frame [A, 3] of one set of internal coordinates (the inverse map, built here
    independently: each atom from its three reference atoms, natural extension reference frame)."""
    out = np.zeros((n_atoms, 3))
    for row, (atom, j, k, l) in enumerate(rows):
        if row == 0:
            out[atom] = out[j] + [bonds[0], 0.0, 0.0]
            continue
        if row == 1:
            axis = (out[k] - out[j]) / np.linalg.norm(out[k] - out[j])
            normal = np.cross(axis, [0.0, 0.0, 1.0])
            normal /= np.linalg.norm(normal)
            out[atom] = out[j] + bonds[1] * (np.cos(angles[0]) * axis
                                             + np.sin(angles[0]) * np.cross(normal, axis))
            continue
        theta, phi = angles[row - 1], torsions[row - 2]
        bc = (out[j] - out[k]) / np.linalg.norm(out[j] - out[k])
        n = np.cross(out[k] - out[l], bc)
        n /= np.linalg.norm(n)
        local = bonds[row] * np.array([-np.cos(theta), np.sin(theta) * np.cos(phi),
                                       np.sin(theta) * np.sin(phi)])
        out[atom] = out[j] + np.stack([bc, np.cross(n, bc), n], axis=1) @ local
    return out


def test_zmatrix_of_ethanol_follows_the_bonds(ethanol):
    rows = build_zmatrix(ethanol.numbers, ethanol.positions)
    i, j = pair_indices(9)
    bonds = {frozenset(p) for p in zip(i[covalent_bonds(ethanol.numbers, ethanol.positions)],
                                       j[covalent_bonds(ethanol.numbers, ethanol.positions)])}
    assert {frozenset(p) for p in rows[:, :2].tolist()} == bonds  # the tree is the bond graph
    neighbours = bond_tree(ethanol.numbers, ethanol.positions)
    assert rows.shape == (8, 4)
    placed = [int(rows[0, 1])] + rows[:, 0].tolist()
    assert sorted(placed) == list(range(9))  # every atom once
    assert ethanol.numbers[placed[0]] > 1  # the tree starts at a heavy atom
    for n, (atom, j, k, l) in enumerate(rows):
        assert placed.index(j) < placed.index(atom)  # references are placed before
        if n >= 1:
            assert k in neighbours[j] and placed.index(k) < placed.index(atom)
        if n >= 2:
            assert l not in (atom, j, k) and placed.index(l) < placed.index(atom)
            assert ethanol.numbers[k] > 1  # torsions hinge on heavy atoms
    assert (rows[0, 2:] == -1).all() and rows[1, 3] == -1


def _check_tree_rules(numbers, positions, rows):
    """The documented choices: j the parent, k j's first placed neighbour, l k's (else j's),
    "first" meaning heavy atoms before hydrogens, then lower indices."""
    neighbours = bond_tree(numbers, positions)
    placed = [int(rows[0, 1])]
    parent = {placed[0]: -1}

    def first(candidates, exclude):
        options = [c for c in candidates if c in placed and c not in exclude]
        return min(options, key=lambda c: (numbers[c] == 1, c)) if options else -1

    for n, (atom, j, k, l) in enumerate(rows):
        assert j in neighbours[atom] and j in placed
        parent[atom] = j
        if n >= 1:
            assert k == first(neighbours[j], {atom, j})
        if n >= 2:
            expected = first(neighbours[k], {atom, j, k})
            assert l == (expected if expected >= 0 else first(neighbours[j], {atom, j, k}))
        placed.append(int(atom))


def test_zmatrix_rules_do_not_depend_on_the_atom_order(ethanol):
    """Ethanol with its hydrogens listed first: the tree still starts at a heavy atom, every
    torsion still hinges on heavy atoms, and each row follows the documented choices."""
    order = np.r_[3:9, 0:3]  # H H H H H H C C O
    numbers, positions = ethanol.numbers[order], ethanol.positions[:, order]
    rows = build_zmatrix(numbers, positions)
    assert numbers[rows[0, 1]] > 1
    assert (numbers[rows[1:, 2]] > 1).all()
    _check_tree_rules(numbers, positions, rows)
    _check_tree_rules(ethanol.numbers, ethanol.positions,
                      build_zmatrix(ethanol.numbers, ethanol.positions))


def test_zmatrix_root_ties_go_to_the_lower_index():
    """n-Butane's two inner carbons tie (two heavy neighbours, four in all): atom 1 is the root."""
    butane = load("butane-gfn2-500K")[0]
    rows = build_zmatrix(butane.numbers, butane.positions)
    assert rows[0, 1] == 1
    _check_tree_rules(butane.numbers, butane.positions, rows)


def test_zmatrix_of_two_atoms_and_of_one():
    rows = build_zmatrix([1, 1], np.array([[[0.0, 0, 0], [0.74, 0, 0]]]))
    assert rows.tolist() == [[1, 0, -1, -1]]
    with pytest.raises(ValueError, match="^internal coordinates need at least 2 atoms$"):
        build_zmatrix([6], np.zeros((1, 1, 3)))


def test_the_tree_of_a_ring_drops_its_longest_bond():
    """A three-carbon ring with C–C bonds 1.50, 1.45 and 1.40 Å (all shorter than the sum of
    covalent radii, 1.52 Å): the minimum spanning tree keeps the two shorter ones."""
    a, b, c = 1.50, 1.45, 1.40  # bonds 0–1, 0–2, 1–2
    x = (a**2 + b**2 - c**2) / (2 * a)
    positions = np.array([[[0.0, 0, 0], [a, 0, 0], [x, np.sqrt(b**2 - x**2), 0]]])
    assert [sorted(near) for near in bond_tree([6, 6, 6], positions)] == [[2], [2], [0, 1]]


def test_coincident_atoms_still_span_the_tree():
    """Two atoms on top of each other (an untrained model's samples can do that) are joined, not
    left out: a zero distance is an edge, not a missing one."""
    positions = np.array([[[0.0, 0, 0], [0.0, 0, 0], [1.1, 0, 0], [2.2, 0.5, 0]]])
    tree = bond_tree([6, 6, 1, 1], positions)
    assert sum(len(near) for near in tree) == 2 * 3
    assert build_zmatrix([6, 6, 1, 1], positions).shape == (3, 4)


def test_collinear_angles_are_finite():
    """Rounding can push the cosine of a straight angle past ±1 (these vectors do): the angle
    must come out as π or 0, not NaN."""
    u = np.array([0.365, 0.294, 0.028])
    w = np.array([-0.736, -0.163, -0.482])
    rows = np.array([[1, 0, -1, -1], [2, 0, 1, -1]])
    straight = np.array([[[0.0, 0, 0], u, -1.307 * u]])
    folded = np.array([[[0.0, 0, 0], w, 1.18 * w]])
    assert internal_coordinates(straight, rows).angles[0, 0] == pytest.approx(np.pi)
    assert internal_coordinates(folded, rows).angles[0, 0] == pytest.approx(0.0, abs=1e-7)


def test_log_jacobian_is_per_frame():
    rng = np.random.default_rng(6)
    bonds, angles = rng.uniform(0.9, 1.6, (4, 5)), rng.uniform(0.5, 2.5, (4, 4))
    got = log_jacobian(InternalCoordinates(bonds, angles, np.zeros((4, 3))))
    np.testing.assert_allclose(got, [2 * np.log(b).sum() + np.log(np.sin(a)).sum()
                                     for b, a in zip(bonds, angles)])


def test_tree_reads_at_most_max_frames(ethanol):
    """The mean distances come from ⌈n / max_frames⌉-strided frames. The hydroxyl H (atom 8,
    bonded to O, atom 2) is moved onto the methyl C (atom 0) in every frame but 0 and 5: read
    with stride 5 it stays on O, read in full it joins C."""
    frame = ethanol.positions[0]
    away = frame[0] - frame.mean(0)
    frames = np.repeat(frame[None], 10, axis=0)
    moved = [f for f in range(10) if f % 5]
    frames[moved, 8] = frame[0] + 1.09 * away / np.linalg.norm(away)
    assert bond_tree(ethanol.numbers, frames, max_frames=2)[8] == [2]
    assert bond_tree(ethanol.numbers, frames, max_frames=10)[8] == [0]


def test_atoms_no_bond_reaches_join_the_tree_by_their_nearest_atom():
    """A water molecule and an argon atom 3 Å from its hydrogen: the tree keeps the two O–H
    bonds and joins argon to that hydrogen, the nearest atom relative to the covalent radii."""
    positions = np.array([[[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [3.96, 0, 0]]])
    tree = bond_tree([8, 1, 1, 18], positions)
    assert [sorted(near) for near in tree] == [[1, 2], [0, 3], [0], [1]]
    assert build_zmatrix([8, 1, 1, 18], positions).shape == (3, 4)


def test_round_trip_and_invariance(ethanol):
    rows = build_zmatrix(ethanol.numbers, ethanol.positions)
    frames = ethanol.positions[:5]
    internal = internal_coordinates(frames, rows)
    rebuilt = np.stack([place(rows, *(c[f] for c in internal), 9) for f in range(5)])
    for got, want in zip(internal_coordinates(rebuilt, rows), internal):
        np.testing.assert_allclose(got, want, atol=1e-9)
    single = internal_coordinates(frames.astype(np.float32), rows)  # computed in float64
    assert single.bonds.dtype == np.float64 and single.torsions.dtype == np.float64
    moved = frames @ Rotation.random(random_state=0).as_matrix().T - 3.0
    for got, want in zip(internal_coordinates(moved, rows), internal):
        np.testing.assert_allclose(got, want, atol=1e-9)
    # A reflection keeps bonds and angles and flips every torsion's sign.
    mirrored = internal_coordinates(frames * [1.0, -1.0, 1.0], rows)
    np.testing.assert_allclose(mirrored.torsions, -internal.torsions, atol=1e-9)
    # The torsion is the IUPAC dihedral l–k–j–atom.
    atom, j, k, l = rows[4]
    np.testing.assert_allclose(internal.torsions[:, 2],
                               dihedral(frames[:, l], frames[:, k], frames[:, j], frames[:, atom]))
    # Bonds and angles are ASE's, frame by frame, row by row.
    for f in range(len(frames)):
        atoms = Atoms(ethanol.numbers, frames[f])
        np.testing.assert_allclose(internal.bonds[f], [atoms.get_distance(a, b)
                                                       for a, b, _, _ in rows], atol=1e-9)
        np.testing.assert_allclose(np.degrees(internal.angles[f]),
                                   [atoms.get_angle(a, b, c) for a, b, c, _ in rows[1:]],
                                   atol=1e-7)


def test_volume_element_is_eq_12():
    """d³ᴬR = d³T dΩ ∏ r² ∏ sin θ dz: the numerical Jacobian of (translation, rotation vector,
    internal coordinates) → R at the identity rotation, divided by ∏ r² ∏ sin θ, is the same
    constant (the Haar density there) at every conformation."""
    rows = np.array([[1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 0], [4, 2, 1, 0]])
    rng = np.random.default_rng(4)

    def frame(params):
        translation, rotation, z = params[:3], params[3:6], params[6:]
        inner = place(rows, z[:4], z[4:7], z[7:], 5)
        return (inner @ Rotation.from_rotvec(rotation).as_matrix().T + translation).ravel()

    excess = []
    for _ in range(6):
        z = np.concatenate([rng.uniform(0.9, 2.0, 4), rng.uniform(0.6, 2.5, 3),
                            rng.uniform(-3, 3, 2)])
        params = np.concatenate([np.zeros(6), z])
        step = 1e-6
        jacobian = np.stack([(frame(params + step * e) - frame(params - step * e)) / (2 * step)
                             for e in np.eye(15)], axis=1)  # [15, 15]
        coordinates = InternalCoordinates(z[None, :4], z[None, 4:7], z[None, 7:])
        excess.append(np.linalg.slogdet(jacobian)[1] - log_jacobian(coordinates)[0])
    assert np.ptp(excess) < 1e-5


def test_torsion_cut_is_the_minimum_of_the_smoothed_histogram():
    """Two unequal modes whose frames sit on bin centres (so the histogram is exact): the cut is
    the bin centre where Σ_i exp(−d(c, φ_i)²/2w²), d the circular distance, is lowest, w = 0.35
    and 360 bins the defaults; it lies in the wider gap, pushed towards the lighter mode."""
    centres = -np.pi + (np.arange(360) + 0.5) * 2 * np.pi / 360
    heavy, light = centres[80:100], centres[200:206]  # −1.74 … −1.40 and 0.36 … 0.45 rad
    torsions = np.concatenate([np.repeat(heavy, 30), np.repeat(light, 10)])[:, None]
    distance = np.angle(np.exp(1j * (centres[:, None] - torsions[None, :, 0])))
    expected = centres[np.exp(-0.5 * (distance / 0.35) ** 2).sum(1).argmin()]
    assert torsion_cuts(torsions)[0] == pytest.approx(expected, abs=1e-12)
    # The wider gap runs from 0.45 to 2π − 1.74 = 4.55 (middle 2.50); the cut is in it, moved
    # towards the lighter mode.
    assert 0.45 < expected < 2.49


def test_torsion_cuts_fall_where_the_data_are_sparse():
    rng = np.random.default_rng(5)
    torsions = np.stack([rng.normal(0.0, 0.3, 2000),  # one mode at 0: cut near ±π
                         np.angle(np.exp(1j * rng.normal(np.pi, 0.3, 2000))),  # across ±π
                         np.angle(np.exp(1j * rng.choice([-2.0, 0.0, 2.0], 2000)
                                         + 1j * rng.normal(0, 0.2, 2000)))], axis=1)
    cuts = torsion_cuts(torsions)
    assert abs(abs(cuts[0]) - np.pi) < 0.5
    assert abs(cuts[1]) < 0.5
    unwrapped = unwrap_torsions(torsions, cuts)
    assert (unwrapped >= cuts).all() and (unwrapped < cuts + 2 * np.pi).all()
    np.testing.assert_allclose(np.exp(1j * unwrapped), np.exp(1j * torsions), atol=1e-12)
    # No mode is cut in two: each column's spread is that of its modes, not ~2π.
    assert unwrapped[:, 0].std() < 0.4 and unwrapped[:, 1].std() < 0.4
    assert unwrapped[:, 2].std() < 2.0
