"""Chemistry of generated molecules (GPFF paper, Sect. 4): RDKit validity, the maximum pair
distance (MPD) and the Jensen–Shannon divergence of 1-D property distributions.

Validity follows the paper: "a parseable, connected, radical-free molecular graph as per RDKit's
DetermineBonds". A molecule (neutral by default) is valid when, in this order,

1. ``connectivity``: RDKit reads it from an XYZ block and ``DetermineConnectivity`` (the
   connect-the-dots method: atoms i, j bonded when d_ij < r_i + r_j + 0.45 Å, RDKit's covalent
   radii r) finds its bonds from the geometry; then the bonds :func:`cross_ring_contacts`
   names are removed;
2. ``fragments``: those bonds join all atoms into one fragment;
3. ``radical``: its electron count Σ Z − charge is even (an odd count forces a radical; RDKit's
   bond-order search then fails with a charge mismatch);
4. ``bond_orders``: ``DetermineBondOrders`` finds bond orders and formal charges (charged
   fragments allowed: zwitterions pass) that match the total charge;
5. ``sanitize``: the molecule passes ``SanitizeMol``;
6. ``radical``: no atom carries radical electrons.

Steps 1 + 4 are ``DetermineBonds(mol, charge)`` with one correction; checking fragments and
electron parity between them only names the reason. :class:`ValidityResult` reports the first
failed check.

The correction: connect-the-dots bonds every C···C pair closer than 1.97 Å, and the distance
across a four-membered ring of QM9's strained cages (bicyclo[1.1.1]pentanes, oxetane and
azetidine cages: about 1.8–1.95 Å for C···C) falls inside it, so plain ``DetermineBonds``
rejects 4.9 % of QM9's own test molecules (97 of 2,000; a five-bonded carbon). Such a contact
is recognisable: its two atoms share two bonded neighbours (the rest of the ring), and it is
longer than the real bonds between such atoms (three-membered rings, e.g. bicyclobutane's
central bond). In 10,000 random QM9 molecules the connect-the-dots bonds whose atoms share two
neighbours have d/(r_i + r_j) ≤ 1.08 (334 real bonds) or ≥ 1.156 (620 contacts):
:data:`RING_CONTACT_RATIO` = 1.12 lies in that gap. With those contacts removed, all
10,000 molecules are valid. Everything else is connect-the-dots: a short contact between
atoms with fewer than two common neighbours (e.g. the squeezed 1,3 pair of a too-compact
sample) stays a bond and makes the molecule invalid, and a stretched bond stays a bond up to
r_i + r_j + 0.45 Å. Measured on 1,000 random QM9 molecules with Gaussian noise on every
coordinate: 99.8 % valid at 0.05 Å, 96 % at 0.1 Å, 24 % at 0.2 Å, 2 % at 0.3 Å (plain
``DetermineBonds``: 93 %, 83 %, 20 %, 2 %).

RDKit is imported lazily (the ``chem`` extra), so ``ase_drift.metrics`` imports without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols
from scipy.spatial.distance import pdist

from .distances import normalised_histogram
from .peptides import js_divergence

REASONS = ("valid", "geometry", "connectivity", "fragments", "radical", "bond_orders",
           "sanitize")
"""Outcomes of :func:`validity`: ``valid`` or the first failed check (``geometry``: non-finite
coordinates, e.g. an exploded sample)."""
#: A bond found by connect-the-dots between two atoms with two or more common bonded neighbours
#: is a contact across a small ring, not a bond, when d_ij > RING_CONTACT_RATIO (r_i + r_j)
#: (module docstring).
RING_CONTACT_RATIO = 1.12


@dataclass(frozen=True)
class ValidityResult:
    """The outcome of :func:`validity` for one molecule."""

    valid: bool
    reason: str
    """``"valid"`` or the first failed check, one of :data:`REASONS`."""
    n_fragments: int
    """Connected components of the bond graph from the geometry (0 if it could not be built)."""
    smiles: str | None = None
    """Canonical SMILES (hydrogens implicit) of a valid molecule, else None."""


def _numbers_positions(molecule) -> tuple[np.ndarray, np.ndarray]:
    """``(numbers [A], positions [A, 3])`` of an ``ase.Atoms`` or a ``(numbers, positions)``
    pair; raise ValueError on inconsistent shapes or unknown elements."""
    if hasattr(molecule, "get_atomic_numbers"):
        numbers, positions = molecule.get_atomic_numbers(), molecule.get_positions()
    else:
        try:
            numbers, positions = molecule
        except (TypeError, ValueError):
            raise ValueError("a molecule must be an ase.Atoms or a (numbers, positions) "
                             "pair") from None
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=float)
    if numbers.ndim != 1 or len(numbers) == 0 or positions.shape != (len(numbers), 3):
        raise ValueError(f"need numbers [A] and positions [A, 3] with A ≥ 1, got shapes "
                         f"{numbers.shape} and {positions.shape}")
    if not np.issubdtype(numbers.dtype, np.integer) or numbers.min() < 1 \
            or numbers.max() >= len(chemical_symbols):
        raise ValueError(f"atomic numbers must be integers in 1..{len(chemical_symbols) - 1}")
    return numbers, positions


def xyz_block(numbers, positions) -> str:
    """The XYZ file text of one molecule (Å), as RDKit's ``MolFromXYZBlock`` reads it."""
    lines = [str(len(numbers)), ""]
    lines += [f"{chemical_symbols[z]} {x:.6f} {y:.6f} {w:.6f}"
              for z, (x, y, w) in zip(numbers, positions)]
    return "\n".join(lines) + "\n"


def cross_ring_contacts(numbers, positions, bonds) -> list[tuple[int, int]]:
    """The pairs of ``bonds`` (``[(i, j)]``, e.g. from connect-the-dots) that are contacts
    across a small ring rather than bonds: i and j share at least two bonded neighbours and
    d_ij > :data:`RING_CONTACT_RATIO` (r_i + r_j) (RDKit's covalent radii r; ``positions`` in
    Å)."""
    from rdkit.Chem import GetPeriodicTable

    table = GetPeriodicTable()
    radii = np.array([table.GetRcovalent(int(z)) for z in numbers])  # [A] Å
    adjacency = np.zeros((len(numbers), len(numbers)), dtype=np.int64)
    for i, j in bonds:
        adjacency[i, j] = adjacency[j, i] = 1
    common = adjacency @ adjacency  # [A, A] common bonded neighbours
    return [(i, j) for i, j in bonds if common[i, j] >= 2
            and np.linalg.norm(positions[i] - positions[j])
            > RING_CONTACT_RATIO * (radii[i] + radii[j])]


def validity(molecule, charge: int = 0) -> ValidityResult:
    """Whether one molecule is valid in the paper's sense (module docstring), and if not,
    which check failed.

    Args:
        molecule: an ``ase.Atoms`` or a ``(numbers [A], positions [A, 3] Å)`` pair.
        charge: the total charge (the paper's QM9 molecules are neutral).

    Returns:
        :class:`ValidityResult`.
    """
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    numbers, positions = _numbers_positions(molecule)
    if not np.isfinite(positions).all():
        return ValidityResult(False, "geometry", 0)
    with rdBase.BlockLogs():  # RDKit's failure messages are the reasons returned here
        mol = Chem.MolFromXYZBlock(xyz_block(numbers, positions))
        if mol is None:
            return ValidityResult(False, "connectivity", 0)
        try:
            rdDetermineBonds.DetermineConnectivity(mol, charge=charge)
        except (ValueError, RuntimeError):
            return ValidityResult(False, "connectivity", 0)
        bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
        contacts = cross_ring_contacts(numbers, positions, bonds)
        if contacts:
            editable = Chem.RWMol(mol)
            for i, j in contacts:
                editable.RemoveBond(i, j)
            mol = editable.GetMol()
        n_fragments = len(Chem.GetMolFrags(mol))
        if n_fragments != 1:
            return ValidityResult(False, "fragments", n_fragments)
        if (int(numbers.sum()) - charge) % 2:
            return ValidityResult(False, "radical", n_fragments)
        try:
            rdDetermineBonds.DetermineBondOrders(mol, charge=charge)
        except (ValueError, RuntimeError):
            return ValidityResult(False, "bond_orders", n_fragments)
        try:
            Chem.SanitizeMol(mol)
        except (ValueError, RuntimeError):
            return ValidityResult(False, "sanitize", n_fragments)
        if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
            return ValidityResult(False, "radical", n_fragments)
        return ValidityResult(True, "valid", n_fragments, Chem.MolToSmiles(Chem.RemoveHs(mol)))


def validity_counts(molecules: Iterable, charge: int = 0) -> dict[str, int]:
    """How many of ``molecules`` end in each outcome of :data:`REASONS` (all keys present)."""
    counts = Counter(validity(molecule, charge).reason for molecule in molecules)
    return {reason: counts.get(reason, 0) for reason in REASONS}


def validity_fraction(molecules: Iterable, charge: int = 0) -> float:
    """The fraction of ``molecules`` (``ase.Atoms`` or ``(numbers, positions)`` pairs) that
    :func:`validity` accepts: all of 10,000 random QM9 geometries (qm9pack), at about 1 ms per
    molecule on one shared CPU core."""
    counts = validity_counts(molecules, charge)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("need at least one molecule")
    return counts["valid"] / total


def _one_mpd(positions) -> float:
    if hasattr(positions, "get_positions"):
        positions = positions.get_positions()
    positions = np.asarray(positions, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) == 0:
        raise ValueError(f"a molecule's positions must be [A, 3] with A ≥ 1, got "
                         f"{positions.shape}")
    return float(pdist(positions).max()) if len(positions) > 1 else 0.0


def max_pair_distance(positions) -> np.ndarray | float:
    """The maximum distance between any two atoms (MPD, Å) of each molecule.

    ``positions``: one molecule ``[A, 3]`` (returns a float); a batch ``[N, A, 3]``; or a list
    or tuple of molecules of any sizes (``[A_i, 3]`` arrays or ``ase.Atoms``), both returning
    ``[N]``. A single atom has MPD 0.
    """
    if isinstance(positions, (list, tuple)):
        return np.array([_one_mpd(molecule) for molecule in positions])
    array = np.asarray(positions, dtype=float)
    if array.ndim == 2:
        return _one_mpd(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[1] == 0:
        raise ValueError(f"positions must be [A, 3] or [N, A, 3], got {array.shape}")
    if array.shape[1] == 1:
        return np.zeros(len(array))
    rows, cols = np.triu_indices(array.shape[1], k=1)
    return np.linalg.norm(array[:, rows] - array[:, cols], axis=-1).max(axis=1)  # [N]


def sample_range(values) -> tuple[float, float]:
    """[min, max] of ``values`` (±0.5 around a single value): the bin range of
    :func:`histogram_js`."""
    low, high = float(np.min(values)), float(np.max(values))
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def histogram_js(x, y, bins: int = 100, range: tuple[float, float] | None = None) -> float:
    """Jensen–Shannon divergence (nats; ≤ ln 2, reached by disjoint samples) between the
    distributions of two 1-D samples on ``bins`` shared equal bins (the paper's 100-bin JS of
    MPD, gap and energy).

    ``range`` defaults to [min, max] of both samples pooled; values outside a given range are
    clipped into the edge bins (:func:`~ase_drift.metrics.distances.normalised_histogram`).
    """
    x, y = np.ravel(np.asarray(x, float)), np.ravel(np.asarray(y, float))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("both samples must be non-empty")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("samples must be finite")
    if range is None:
        range = sample_range(np.concatenate([x, y]))
    return js_divergence(normalised_histogram(x, bins, range), normalised_histogram(y, bins,
                                                                                    range))
