"""Internal coordinates of a molecule (a Z-matrix): bond lengths, bond angles and torsions.

A Z-matrix places atom 0 at the origin and every other atom ``a`` by its distance r to a bonded
atom ``j``, its angle θ = ∠(a, j, k) and its torsion φ = dihedral(l, k, j, a). The A − 1 bonds,
A − 2 angles and A − 3 torsions are 3A − 6 coordinates that, with a translation and a
rotation, fix the frame; the volume element of Cartesian space is (the "Z-matrix Jacobian")

    d³ᴬR = d³T · dΩ(SO(3)) · ∏_{a ≥ 1} r_a² · ∏_{a ≥ 2} sin θ_a · dr dθ dφ,             (Eq. 13)

dΩ the Haar measure of the rotations (the direction of atom 1 and the turn of atom 2 about it).
Unlike pair distances, internal coordinates fill an open set of R^(3A − 6): a density on them
has no manifold to collapse onto (docs/likelihoods.md, "Internal coordinates").

Torsions are periodic. :func:`torsion_cuts` puts each one's cut where the data are sparsest, and
:func:`unwrap_torsions` maps it into [cut, cut + 2π), so a density on the real line sees each
torsion in one piece.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np
import torch
from ase.data import covalent_radii

from .metrics.distances import pair_distances, pair_indices
from .peptides import dihedral


class InternalCoordinates(NamedTuple):
    bonds: np.ndarray  # [n, A − 1] Å, row k of the Z-matrix
    angles: np.ndarray  # [n, A − 2] rad, rows 1..
    torsions: np.ndarray  # [n, A − 3] rad in (−π, π], rows 2..


def evenly_spaced(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` of ``frames`` ``[n, ...]``, every ⌈n / max_frames⌉-th from the
    first: enough for a mean over frames without holding them all."""
    return frames[::-(-len(frames) // max_frames)]


def bond_tree(numbers, positions: np.ndarray, max_frames: int = 1000) -> list[list[int]]:
    """Each atom's neighbours in a spanning tree of the molecule: the minimum spanning tree of the
    mean distances over ``positions`` ``[n, A, 3]`` (at most ``max_frames`` evenly spaced
    frames: a mean needs no more, and [n, A, A] distances of 200,000 frames would not fit), each
    divided by the sum of the two atoms' covalent radii (:data:`ase.data.covalent_radii`). Every
    tree edge of a molecule is then a covalent bond (bonds have ratios near 1, other pairs well
    above); atoms that no bond reaches, as in the samples of an untrained model or a cluster of
    molecules, are still joined, by their shortest such ratio."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    numbers = np.asarray(numbers)
    positions = np.asarray(positions).reshape(-1, len(numbers), 3)  # pair_distances: float64
    i, j = pair_indices(len(numbers))
    mean = pair_distances(evenly_spaced(positions, max_frames)).mean(0)  # [M]
    ratio = mean / (covalent_radii[numbers][i] + covalent_radii[numbers][j])
    # A zero entry would be a missing edge: coincident atoms keep a tiny positive one.
    tree = minimum_spanning_tree(coo_matrix((np.maximum(ratio, 1e-12), (i, j)),
                                            shape=(len(numbers),) * 2)).toarray()
    neighbours: list[list[int]] = [[] for _ in range(len(numbers))]
    for a, b in zip(*np.nonzero(tree)):
        neighbours[a].append(int(b))
        neighbours[b].append(int(a))
    return neighbours


def build_zmatrix(numbers, positions: np.ndarray) -> np.ndarray:
    """Z-matrix rows (atom, j, k, l) ``[A − 1, 4]`` in placement order, −1 where an early row has
    no angle or torsion partner. A breadth-first search over :func:`bond_tree` of ``positions``
    ``[n, A, 3]`` (Å) from the heavy atom with most heavy neighbours (the lowest index on ties); j
    is the atom's parent, k the first placed neighbour of j, l the first placed neighbour of k
    (of j if k has none: an improper torsion), "first" meaning heavy atoms before hydrogens, then
    the lowest index, so that angles and torsions hinge on heavy atoms."""
    numbers = np.asarray(numbers)
    if len(numbers) < 2:
        raise ValueError("internal coordinates need at least 2 atoms")
    neighbours = bond_tree(numbers, positions)
    heavy = numbers > 1

    def preference(atom: int) -> tuple:
        return (not heavy[atom], atom)

    root = max(range(len(numbers)),
               key=lambda a: (heavy[a], int(heavy[neighbours[a]].sum()), len(neighbours[a]), -a))
    parent: dict[int, int] = {}
    order, queue = [root], deque([root])
    while queue:
        atom = queue.popleft()
        for near in sorted(neighbours[atom], key=preference):
            if near != root and near not in parent:
                parent[near] = atom
                order.append(near)
                queue.append(near)

    placed: list[int] = [root]

    def first_placed(candidates, exclude) -> int:
        """The preferred placed atom among ``candidates`` not in ``exclude``, −1 if none."""
        options = sorted((c for c in candidates if c in placed and c not in exclude),
                         key=preference)
        return options[0] if options else -1

    # The placed atoms are a breadth-first prefix, a connected subtree: once two are placed, j
    # has a placed neighbour other than the atom, and once three are, k or j has another one.
    rows = []
    for atom in order[1:]:
        j = parent[atom]
        k = l = -1
        if len(placed) >= 2:
            k = first_placed(neighbours[j], {atom, j})
        if len(placed) >= 3:
            l = first_placed(neighbours[k], {atom, j, k})
            if l < 0:
                l = first_placed(neighbours[j], {atom, j, k})
        rows.append((atom, j, k, l))
        placed.append(atom)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def internal_coordinates(positions, rows: np.ndarray) -> InternalCoordinates:
    """Bonds, angles and torsions of frames ``[n, A, 3]`` (Å) along Z-matrix ``rows``: float64
    arrays, or tensors of ``positions``' dtype when it is a torch tensor (differentiable, for
    ∇ log q on these coordinates)."""
    if not isinstance(positions, torch.Tensor):
        return InternalCoordinates(*(z.numpy() for z in internal_coordinates(
            torch.as_tensor(np.asarray(positions, dtype=np.float64)), rows)))
    atom, j, k, l = torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1, 4)).T
    bonds = torch.linalg.norm(positions[:, atom] - positions[:, j], dim=-1)  # [n, A − 1]
    a, j2, k2 = atom[1:], j[1:], k[1:]
    u = positions[:, a] - positions[:, j2]  # [n, A − 2, 3]
    v = positions[:, k2] - positions[:, j2]
    cosine = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1))
    angles = torch.arccos(cosine.clamp(-1.0, 1.0))
    a, j3, k3, l3 = atom[2:], j[2:], k[2:], l[2:]
    torsions = dihedral(positions[:, l3], positions[:, k3], positions[:, j3], positions[:, a])
    return InternalCoordinates(bonds, angles, torsions)


def log_jacobian(coordinates: InternalCoordinates):
    """log ∏ r² ∏ sin θ ``[n]`` of Eq. 13: log d³ᴬR per d(internal) up to the rigid motions
    (arrays or tensors, as :func:`internal_coordinates` gave them)."""
    xp = torch if isinstance(coordinates.bonds, torch.Tensor) else np
    return 2 * xp.log(coordinates.bonds).sum(1) + xp.log(xp.sin(coordinates.angles)).sum(1)


def torsion_cuts(torsions: np.ndarray, bins: int = 360, width: float = 0.35) -> np.ndarray:
    """Each torsion's cut ``[T]`` (rad): where the histogram of frames ``[n, T]`` (``bins`` arcs),
    smoothed by a circular Gaussian of ``width`` rad, is lowest; in a wide gap between modes that
    is the gap's middle, far from both (the smoothing's tails decay into it from both sides; a
    direct sum of positive terms keeps those tiny values exact)."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    centres = edges[:-1] + np.pi / bins
    counts = np.array([np.histogram(column, bins=edges)[0] for column in
                       np.asarray(torsions).T]).reshape(-1, bins)  # [T, bins]
    gap = np.angle(np.exp(1j * (centres[:, None] - centres[None, :])))  # [bins, bins]
    smoothed = counts @ np.exp(-0.5 * (gap / width) ** 2)  # [T, bins]
    return centres[smoothed.argmin(1)]


def unwrap_torsions(torsions, cuts: np.ndarray):
    """Torsions ``[n, T]`` (an array, or a tensor: the shift is piecewise constant, so the
    gradient passes unchanged) mapped into [cut, cut + 2π) per column."""
    if isinstance(torsions, torch.Tensor):
        cuts = torch.as_tensor(cuts, dtype=torsions.dtype)
    else:
        torsions = np.asarray(torsions)
    return (torsions - cuts) % (2 * np.pi) + cuts
