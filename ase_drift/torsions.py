"""Torsion moves: Metropolis proposals that turn one side of a rotatable bond.

MALA (:mod:`ase_drift.refine`) moves every atom a little, so it crosses a torsional barrier of
a few kT only after thousands of steps: a region of conformations that the start samples miss
stays missed. A torsion move turns the atoms on one side of a non-ring bond b about the bond's
axis by an angle θ in one proposal,

    x'_a = p + R_u(θ)(x_a − p)   for the atoms a on the moving side,   x'_a = x_a otherwise,

with p the position of the pivot (the bond's atom on the moving side, which lies on the axis
and stays put), u the unit vector from the bond's fixed atom to the pivot and R_u(θ) the
rotation by θ about u (Rodrigues). The bond is drawn uniformly from a list fixed in advance and θ
uniformly from [−θ_max, θ_max].

**Why Metropolis needs no proposal ratio.** Given (b, θ), the map x ↦ x' is a rigid rotation
of some coordinates about an axis that it leaves in place, so it preserves volume (Jacobian 1)
and (b, −θ) undoes it. b is drawn independently of x and θ and −θ are equally likely, so the
proposal density is symmetric, T(x → x') = T(x' → x), and accepting with probability
min(1, γ(x')/γ(x)) leaves any target γ invariant (:meth:`ase_drift.refine.MALAKernel.torsion_step`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RotatableBond(NamedTuple):
    """A bond whose one side can turn about it."""

    fixed: int  # the bond's atom that stays, on the side that does not move
    pivot: int  # the bond's atom on the moving side (on the axis: it stays too)
    moving: np.ndarray  # [m] indices of the atoms that turn (the pivot excluded), m ≥ 1


def bond_graph(numbers, positions: np.ndarray) -> list[list[int]]:
    """Each atom's bonded neighbours in a frame ``[A, 3]`` or frames ``[n, A, 3]`` (Å): the
    project's bonds (:func:`ase_drift.metrics.covalent_bonds`, mean distance below 1.2 × the
    sum of the covalent radii)."""
    from .metrics import covalent_bonds, pair_indices

    numbers = np.asarray(numbers)
    frames = np.asarray(positions, dtype=np.float64).reshape(-1, len(numbers), 3)
    i, j = pair_indices(len(numbers))
    neighbours: list[list[int]] = [[] for _ in numbers]
    for pair in covalent_bonds(numbers, frames):
        neighbours[int(i[pair])].append(int(j[pair]))
        neighbours[int(j[pair])].append(int(i[pair]))
    return [sorted(row) for row in neighbours]


def _side(bonded: list[list[int]], start: int, cut: int) -> set[int]:
    """The atoms reachable from ``start`` without crossing the bond ``start``–``cut`` (``cut``
    itself among them when a ring closes back to it)."""
    seen, stack = {start}, [start]
    while stack:
        atom = stack.pop()
        for near in bonded[atom]:
            if near not in seen and not (atom == start and near == cut):
                seen.add(near)
                stack.append(near)
    return seen


def rotatable_bonds(numbers, positions: np.ndarray) -> list[RotatableBond]:
    """Every bond (:func:`bond_graph` of a frame ``[A, 3]`` or frames ``[n, A, 3]``, Å) that lies
    on no ring and has at least two atoms on each side, i.e. turning one side about it moves
    something; the side with fewer atoms moves (on a tie, the side of the higher-indexed atom). Methyl rotors and
    peptide bonds are included, and so are double bonds (bond orders are not read from the
    geometry): a move that costs many kT is simply rejected."""
    numbers = np.asarray(numbers)
    bonded = bond_graph(numbers, positions)
    bonds = []
    for a, neighbours in enumerate(bonded):
        for b in neighbours:
            if b <= a:
                continue
            side_a, side_b = _side(bonded, a, b), _side(bonded, b, a)
            if side_a & side_b:  # a ring: removing the bond leaves one piece
                continue
            if min(len(side_a), len(side_b)) < 2:
                continue
            fixed, pivot, moving = (a, b, side_b) if len(side_b) <= len(side_a) else (b, a, side_a)
            bonds.append(RotatableBond(fixed, pivot,
                                       np.array(sorted(moving - {pivot}), dtype=np.int64)))
    return bonds


def rotate_about_bond(positions: np.ndarray, bond: RotatableBond, angles) -> np.ndarray:
    """Frames ``[n, A, 3]`` (Å) with ``bond``'s moving atoms turned by ``angles`` ``[n]`` (rad,
    right-handed about the axis from the fixed atom to the pivot), the rest unchanged."""
    x = np.array(positions, dtype=np.float64)  # [n, A, 3]
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 1, 1)  # [n, 1, 1]
    origin = x[:, bond.pivot:bond.pivot + 1]  # [n, 1, 3] on the axis
    axis = origin - x[:, bond.fixed:bond.fixed + 1]
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)  # [n, 1, 3]
    v = x[:, bond.moving] - origin  # [n, m, 3]
    cos, sin = np.cos(angles), np.sin(angles)
    turned = (v * cos + np.cross(axis, v) * sin
              + axis * (v * axis).sum(-1, keepdims=True) * (1 - cos))  # Rodrigues
    x[:, bond.moving] = origin + turned
    return x


class TorsionMoves:
    """The proposal of the module docstring: per frame, a bond drawn uniformly from ``bonds``
    and an angle uniformly from [−``max_angle``, ``max_angle``] (rad).

    Build it from frames of the molecule with :meth:`from_frames`; the bond list stays fixed
    (a proposal whose bonds depended on the current frame would not be symmetric).
    """

    def __init__(self, bonds: list[RotatableBond], max_angle: float = np.pi):
        if not bonds:
            raise ValueError("torsion moves need at least one rotatable bond (a bond on "
                             "no ring with two or more atoms on each side)")
        if not (np.isfinite(max_angle) and 0 < max_angle <= np.pi):
            raise ValueError(f"max_angle must lie in (0, π] rad, got {max_angle!r}")
        self.bonds = list(bonds)
        self.max_angle = float(max_angle)

    @classmethod
    def from_frames(cls, numbers, positions: np.ndarray, max_angle: float = np.pi
                    ) -> TorsionMoves:
        """Moves about every :func:`rotatable_bonds` of a frame ``[A, 3]`` or of frames
        ``[n, A, 3]`` (Å; at most 1,000 of them are read)."""
        from .internal_coordinates import evenly_spaced

        positions = np.asarray(positions)
        if positions.ndim == 3:
            positions = evenly_spaced(positions, 1000)
        return cls(rotatable_bonds(numbers, positions), max_angle)

    def propose(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One proposal per frame of ``positions`` ``[n, A, 3]`` (Å) → ``[n, A, 3]``."""
        x = np.array(positions, dtype=np.float64)
        which = rng.integers(len(self.bonds), size=len(x))  # [n]
        angles = rng.uniform(-self.max_angle, self.max_angle, size=len(x))  # [n]
        for index, bond in enumerate(self.bonds):
            chosen = which == index
            if chosen.any():
                x[chosen] = rotate_about_bond(x[chosen], bond, angles[chosen])
        return x
