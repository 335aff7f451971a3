"""Representations: feature maps φ of molecular coordinates and their exact feature-space forces.

A representation is a pair of pure maps on *normalised* coordinates (Å divided by the data's
global standard deviation σ):

- ``features(coords)``: φ(R) ``[B, D]`` from ``[B, A, 3]``, differentiable (the generator's
  gradient flows through it, paper Eq. 30);
- ``feature_scores(coords, scores)``: the Boltzmann score ∇_φ log π ``[N, D]`` from the Cartesian
  score F/kT ``[N, A, 3]`` (paper Eq. 31), computed once per data set.

:class:`Cartesian` is the identity on centred coordinates (frames are Kabsch-aligned beforehand by
:func:`align_frames`); :class:`PairwiseDistances` maps to the M = A(A−1)/2 interatomic distances,
invariant under rotations and translations, with the analytic Jacobian of paper Eq. 27.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from . import units

if TYPE_CHECKING:
    from .data import Conformations


class Prepared(NamedTuple):
    """A data set prepared once for training, in normalised units (Å / ``scale``)."""

    coords: Tensor  # [N, A, 3]  centred (Cartesian: Kabsch-aligned) frames / σ
    aligned_coords: Tensor  # [N, A, 3]  centred, Kabsch-aligned to frame 0, / σ
    features: Tensor  # [N, D]  φ(coords)
    scores: Tensor | None  # [N, D]  σ·F_φ/kT, the feature-space Boltzmann score (Eq. 31)
    reduced_energies: Tensor | None  # [N]  E/kT minus its mean
    scale: float  # σ in Å: the global standard deviation of the centred coordinates


@runtime_checkable
class Representation(Protocol):
    """Feature map φ and its feature-space score; see the module docstring."""

    name: str
    normalization: str  # how prepare() normalises frames, recorded in checkpoints

    def features(self, coords: Tensor) -> Tensor: ...

    def feature_scores(self, coords: Tensor, scores: Tensor) -> Tensor: ...

    def prepare(self, data: Conformations, temperature_K: float) -> Prepared: ...


def _prepare(representation, data: Conformations, temperature_K: float,
             rotate_frames: bool) -> Prepared:
    """Centre the frames (and with ``rotate_frames`` Kabsch-align them to frame 0, rotating
    the forces with them), divide by σ, and map positions and forces to features and
    feature-space scores σ·F_φ/kT (Eq. 31). Forces and energies become scores and reduced
    energies when the data carries them."""
    aligned, aligned_forces = align_frames(data.positions, data.positions[0], data.forces)
    if rotate_frames:
        positions, forces = aligned, aligned_forces
    else:
        positions, forces = data.positions - data.positions.mean(axis=1, keepdims=True), data.forces
    scale = float(positions.std())  # the same for aligned and merely centred frames
    coords = torch.as_tensor(positions / scale, dtype=torch.float32)  # [N, A, 3]
    aligned_coords = torch.as_tensor(aligned / scale, dtype=torch.float32)
    scores = None
    if forces is not None:
        cart_scores = torch.as_tensor(units.reduced_forces(forces, temperature_K) * scale,
                                      dtype=torch.float32)  # [N, A, 3]
        scores = representation.feature_scores(coords, cart_scores)
    energies = None
    if data.energies is not None:
        reduced = data.energies / units.kT(temperature_K)
        energies = torch.as_tensor(reduced - reduced.mean(), dtype=torch.float32)
    return Prepared(coords, aligned_coords, representation.features(coords), scores, energies,
                    scale)


def center(coords: Tensor) -> Tensor:
    """Subtract each frame's centroid ``[B, A, 3]``."""
    return coords - coords.mean(dim=-2, keepdim=True)


class Cartesian:
    """φ(R) = centred coordinates, flattened ``[B, 3A]``.

    Frames are centred and Kabsch-aligned to one reference before training (DESIGN.md), so the
    kernel compares conformations rather than orientations.
    """

    name = "cartesian"
    normalization = "frames centred, Kabsch-aligned to frame 0; coordinates / scale_angstrom"

    def features(self, coords: Tensor) -> Tensor:
        return center(coords).flatten(1)  # [B, 3A]

    def feature_scores(self, coords: Tensor, scores: Tensor) -> Tensor:
        # An isolated molecule's forces sum to zero; centring removes round-off drift.
        return center(scores).flatten(1)  # [N, 3A]

    def prepare(self, data: Conformations, temperature_K: float) -> Prepared:
        """Centre, Kabsch-align to frame 0 (forces rotate with their frames), normalise."""
        return _prepare(self, data, temperature_K, rotate_frames=True)


class PairwiseDistances:
    """φ(R) = (‖r_a − r_b‖ / w_ab)_{a<b} ``[B, M]`` (paper Eq. 26 when w = 1), pairs in
    ``numpy.triu_indices`` order; with several exponents, one such block per exponent ``[B, K·M]``.

    ``pair_scale_exponent`` α sets per-pair weights w_ab = (s_ab / s̄)^α, with s_ab the standard
    deviation of distance ab over the data :meth:`prepare` sees and s̄ their mean (beyond the
    paper). A Gaussian kernel on raw distances barely sees a stiff bond (s ≈ 0.02 Å) beside a
    torsion-coupled pair (s ≈ 0.5 Å), so the generator's bonds stay loose and cost energy;
    α = 1 gives every pair unit spread (and in turn barely sees the torsions), α = 0 is the
    paper's map. A tuple such as (0, 1) stacks one block per exponent; the trainer applies the
    drift field to each block separately (:attr:`block_sizes`) and sums the losses, so the raw
    block keeps the torsions and the whitened one the bonds. The weights are fitted by
    :meth:`prepare` (ones before); the Jacobian and the feature scores are those of φ, block by
    block (Eq. 31 for each block's map).

    With ``canonical_rotors`` the three hydrogens of every methyl-like rotor (see
    :func:`find_rotors`) are relabelled, frame by frame, before the distances are taken: the
    hydrogen whose dihedral about the rotor's axis lies within ±60° of the rotor's preferred
    phase (fitted by :meth:`prepare`) becomes the first, the other two follow in their cyclic
    order (beyond the paper). A 120° turn of a methyl is a cyclic permutation of identical
    atoms, which leaves the energy unchanged; the canonical map sends the three staggered
    rotamers to one point, so the generator need not spread a one-mode noise over three modes
    and produce the eclipsed, squeezed methyls that lie between them. The relabelling is
    piecewise constant, so φ stays differentiable wherever it does not switch.
    """

    name = "distance"

    def __init__(self, n_atoms: int, pair_scale_exponent: float | tuple[float, ...] = 0.0,
                 canonical_rotors: bool = False):
        if n_atoms < 2:
            raise ValueError("pairwise distances need at least 2 atoms")
        exponents = tuple(np.atleast_1d(check_pair_scale_exponent(pair_scale_exponent)))
        i, j = np.triu_indices(n_atoms, k=1)
        self.n_atoms = n_atoms
        self.pair_i = torch.as_tensor(i)
        self.pair_j = torch.as_tensor(j)
        self.exponents = exponents
        self.pair_weights = torch.ones(len(exponents), len(i))  # [K, M]  w_ab, fitted by prepare()
        self.canonical_rotors = canonical_rotors
        self.rotors = np.zeros((0, 6), dtype=np.int64)  # [G, 6] found by prepare()
        self.rotor_phases = np.zeros(0)  # [G] rad, fitted by prepare()

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Features per block: M for each exponent."""
        return (len(self.pair_i),) * len(self.exponents)

    @property
    def normalization(self) -> str:
        text = "frames centred; coordinates / scale_angstrom"
        if self.exponents != (0.0,):
            text += ("; distances / (their std over the data / mean std)^α, one block per α in "
                     + ", ".join(f"{a:g}" for a in self.exponents))
        if self.canonical_rotors:
            text += "; methyl hydrogens relabelled to a canonical rotamer"
        return text

    def canonical(self, coords: Tensor) -> Tensor:
        """``coords`` ``[B, A, 3]`` with every rotor's hydrogens relabelled (see the class
        docstring); unchanged without rotors (none are fitted without ``canonical_rotors``)."""
        order = self.canonical_order(coords)
        return coords if order is None else _reorder_atoms(coords, order)

    def canonical_order(self, coords: Tensor) -> Tensor | None:
        """Atom order ``[B, A]`` of the canonical relabelling, None without rotors. The choice
        is made on detached numbers: it is a permutation, not a function to differentiate."""
        if not len(self.rotors):
            return None
        order = canonical_rotor_order(coords.detach().cpu().double().numpy(), self.rotors,
                                      self.rotor_phases)
        return torch.as_tensor(order, device=coords.device)

    def fit_rotors(self, numbers: np.ndarray, positions: np.ndarray) -> None:
        """Find the rotors in the first frame (:func:`find_rotors`) and fit each one's preferred
        phase (:func:`fit_rotor_phases`)."""
        self.rotors = find_rotors(numbers, positions[0])
        self.rotor_phases = fit_rotor_phases(positions, self.rotors)

    def distances(self, coords: Tensor) -> Tensor:
        """The plain interatomic distances ``[B, M]``."""
        diff = coords[:, self.pair_i] - coords[:, self.pair_j]  # [B, M, 3]
        # The tiny offset keeps the gradient finite if two generated atoms coincide.
        return (diff.square().sum(-1) + 1e-12).sqrt()  # [B, M]

    def features(self, coords: Tensor) -> Tensor:
        coords = self.canonical(coords)
        weighted = self.distances(coords)[:, None] / self.pair_weights.to(coords.dtype)  # [B, K, M]
        return weighted.flatten(1)  # [B, K·M]

    def jacobian(self, coords: Tensor) -> Tensor:
        """J = ∂φ/∂R ``[B, K·M, 3A]``: row ab of block k holds +u_ab/w_kab at atom a and
        −u_ab/w_kab at atom b (Eq. 27)."""
        batch, n_atoms, _ = coords.shape
        diff = coords[:, self.pair_i] - coords[:, self.pair_j]  # [B, M, 3]
        unit = diff / diff.norm(dim=-1, keepdim=True)  # [B, M, 3]
        n_pairs = len(self.pair_i)
        jac = coords.new_zeros(batch, n_pairs, n_atoms, 3)
        rows = torch.arange(n_pairs)
        jac[:, rows, self.pair_i] = unit
        jac[:, rows, self.pair_j] = -unit
        jac = jac.reshape(batch, 1, n_pairs, 3 * n_atoms)
        weights = self.pair_weights.to(coords.dtype)[None, :, :, None]  # [1, K, M, 1]
        return (jac / weights).flatten(1, 2)  # [B, K·M, 3A]

    def feature_scores(self, coords: Tensor, scores: Tensor, chunk: int = 4096) -> Tensor:
        """Exact feature-space score F_φ = J G⁺ F with G = JᵀJ (paper Eq. 31), per block.

        The minimum-norm solution of J_kᵀ F_φk = F for each block k; G (3A×3A, rank 3A−6) is
        pseudo-inverted by a batched eigendecomposition, dropping the rigid-motion zero modes.
        With canonical rotors, coordinates and scores are relabelled alike first.
        """
        order = self.canonical_order(coords)
        if order is not None:
            coords, scores = _reorder_atoms(coords, order), _reorder_atoms(scores, order)
        out = []
        n_pairs = len(self.pair_i)
        for start in range(0, len(coords), chunk):
            jac = self.jacobian(coords[start:start + chunk])  # [N, K·M, 3A]
            flat = scores[start:start + chunk].flatten(1)  # [N, 3A]
            blocks = []
            for block in jac.split(n_pairs, dim=1):  # [N, M, 3A]
                gram = block.transpose(1, 2) @ block  # [N, 3A, 3A]
                eigval, eigvec = torch.linalg.eigh(gram)
                cutoff = eigval[:, -1:] * 1e-6  # relative to the stiffest mode
                inv = torch.where(eigval > cutoff, 1 / eigval, torch.zeros_like(eigval))
                solved = eigvec @ (inv * (eigvec.transpose(1, 2) @ flat[..., None])[..., 0]
                                   )[..., None]
                blocks.append((block @ solved)[..., 0])  # [N, M]
            out.append(torch.cat(blocks, -1))
        return torch.cat(out)

    def fit_pair_weights(self, coords: Tensor) -> None:
        """Set w_kab = (s_ab / s̄)^α_k from frames ``[N, A, 3]``; pairs that never move (s_ab
        below 10⁻³ s̄, e.g. a single frame) are floored there so no weight vanishes."""
        spread = self.distances(coords).std(0) if len(coords) > 1 else None  # [M]
        if spread is None or spread.mean() == 0:
            self.pair_weights = torch.ones(len(self.exponents), len(self.pair_i))
            return
        relative = (spread / spread.mean()).clamp_min(1e-3)
        self.pair_weights = torch.stack([relative ** a for a in self.exponents])  # [K, M]

    def prepare(self, data: Conformations, temperature_K: float) -> Prepared:
        """Find and fit the rotors (with ``canonical_rotors``), fit the pair weights on the
        canonical frames, centre and normalise; distances need no rotation (``aligned_coords``
        are aligned all the same, for initialising a generator)."""
        positions = torch.as_tensor(data.positions, dtype=torch.float32)
        if self.canonical_rotors:
            self.fit_rotors(data.numbers, data.positions)
            positions = self.canonical(positions)
        self.fit_pair_weights(positions)
        return _prepare(self, data, temperature_K, rotate_frames=False)


def check_pair_scale_exponent(value, space: str = "distance") -> float | tuple[float, ...]:
    """``value`` as a float (one exponent) or a tuple of floats (several), each in [0, 1];
    anything but 0 only in distance space. Raises ValueError naming what is wrong."""
    exponents = float(value) if np.ndim(value) == 0 else tuple(float(a) for a in value)
    if np.size(exponents) == 0 or not np.all((np.asarray(exponents) >= 0)
                                             & (np.asarray(exponents) <= 1)):
        raise ValueError(f"pair_scale_exponent must lie in [0, 1] (one value or several), "
                         f"got {value}")
    if np.any(exponents) and space != "distance":
        raise ValueError("pair_scale_exponent weights pair distances: use space='distance'")
    return exponents


def check_canonical_rotors(value: bool, space: str) -> bool:
    """``value`` as a bool, refused (ValueError) outside distance space."""
    if value and space != "distance":
        raise ValueError("canonical_rotors relabels atoms before pair distances: use "
                         "space='distance'")
    return bool(value)


def _reorder_atoms(values: Tensor, order: Tensor) -> Tensor:
    """Per-atom ``values`` ``[B, A, 3]`` taken in the atom ``order`` ``[B, A]`` of each frame."""
    return values.gather(1, order[..., None].expand_as(values))


def make_representation(space: str, n_atoms: int,
                        pair_scale_exponent: float | tuple[float, ...] = 0.0,
                        canonical_rotors: bool = False) -> Representation:
    """'cartesian' or 'distance' (with per-pair weights of exponent(s) ``pair_scale_exponent``
    and, with ``canonical_rotors``, methyl hydrogens relabelled to one rotamer; see
    :class:`PairwiseDistances`; distance space only)."""
    if space == "cartesian":
        check_pair_scale_exponent(pair_scale_exponent, space)
        check_canonical_rotors(canonical_rotors, space)
        return Cartesian()
    if space == "distance":
        return PairwiseDistances(n_atoms, pair_scale_exponent, canonical_rotors)
    raise ValueError(f"unknown space {space!r}; use 'cartesian' or 'distance'")


def find_rotors(numbers, positions: np.ndarray) -> np.ndarray:
    """Methyl-like rotors of one frame ``[A, 3]`` (Å): rows (r, x, c, h₁, h₂, h₃) ``[G, 6]``
    for every atom c bonded to exactly three hydrogens and one other atom x, where r is a
    neighbour of x other than c (the lowest index; rotors whose x has no other neighbour are
    skipped: no dihedral defines their phase). The hydrogens are sorted by their dihedral
    r–x–c–h in this frame, so a turn of +120° maps h₁ → h₂ → h₃ → h₁. Bonds: ASE's natural
    cutoffs (covalent radii)."""
    from ase import Atoms
    from ase.neighborlist import NeighborList, natural_cutoffs

    from .peptides import dihedral

    numbers = np.asarray(numbers)
    atoms = Atoms(numbers=numbers, positions=positions)
    positions = atoms.positions
    neighbours = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    neighbours.update(atoms)
    bonded = [sorted(neighbours.get_neighbors(a)[0].tolist()) for a in range(len(atoms))]
    rotors = []
    for centre, partners in enumerate(bonded):
        hydrogens = [b for b in partners if numbers[b] == 1]
        others = [b for b in partners if numbers[b] != 1]
        if len(hydrogens) != 3 or len(others) != 1:
            continue
        axis = others[0]
        anchors = [b for b in bonded[axis] if b != centre]
        if not anchors:
            continue
        angles = [float(dihedral(positions[anchors[0]], positions[axis], positions[centre],
                                 positions[h])) for h in hydrogens]
        rotors.append([anchors[0], axis, centre, *np.asarray(hydrogens)[np.argsort(angles)]])
    return np.asarray(rotors, dtype=np.int64).reshape(-1, 6)


def rotor_dihedrals(positions: np.ndarray, rotors: np.ndarray) -> np.ndarray:
    """Dihedrals r–x–c–h (rad) of each rotor's three hydrogens ``[N, G, 3]`` in frames
    ``[N, A, 3]``."""
    from .peptides import dihedral

    positions = np.asarray(positions)
    r, x, c = (positions[:, rotors[:, k], None] for k in range(3))  # [N, G, 1, 3]
    return dihedral(r, x, c, positions[:, rotors[:, 3:]])


def fit_rotor_phases(positions: np.ndarray, rotors: np.ndarray) -> np.ndarray:
    """Each rotor's preferred phase ``[G]`` (rad) over frames ``[N, A, 3]``: the circular mean of
    3θ over every hydrogen of every frame, divided by 3, so the ±60° window of
    :func:`canonical_rotor_order` is centred on the staggered minima rather than cutting one in
    two."""
    angles = rotor_dihedrals(positions, rotors)  # [N, G, 3]
    return np.angle(np.exp(3j * angles).mean(axis=(0, 2))) / 3


def canonical_rotor_order(frames: np.ndarray, rotors: np.ndarray,
                          phases: np.ndarray) -> np.ndarray:
    """Atom order ``[B, A]`` that relabels each rotor's hydrogens in frames ``[B, A, 3]``: the one
    whose dihedral lies within ±60° of the rotor's phase first, the other two in cyclic order
    (a cyclic permutation, never a reflection)."""
    hydrogens = rotors[:, 3:]  # [G, 3] in cyclic order
    angles = rotor_dihedrals(frames, rotors)  # [B, G, 3]
    offset = np.angle(np.exp(1j * (angles - phases[None, :, None])))
    first = np.abs(offset).argmin(-1)  # [B, G]: the hydrogen nearest the preferred phase
    shifts = (first[..., None] + np.arange(3)) % 3  # [B, G, 3]
    order = np.broadcast_to(np.arange(frames.shape[1]), frames.shape[:2]).copy()
    order[:, hydrogens.ravel()] = np.take_along_axis(
        np.broadcast_to(hydrogens, shifts.shape), shifts, -1).reshape(len(frames), -1)
    return order


def kabsch_rotations(positions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Proper rotations ``[N, 3, 3]`` that best superimpose centred ``positions`` ``[N, A, 3]``
    onto the centred ``reference`` ``[A, 3]`` (Kabsch): aligned = positions @ rot."""
    cov = np.einsum("nai,aj->nij", positions, reference)  # [N, 3, 3]
    u, _, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))  # reflect the last axis where needed
    u[:, :, -1] *= sign[:, None]
    return u @ vt


def align_frames(positions: np.ndarray, reference: np.ndarray,
                 forces: np.ndarray | None = None):
    """Centre every frame and rotate it onto ``reference``; forces rotate with their frame.

    Returns ``(aligned positions [N, A, 3], aligned forces or None)``.
    """
    centred = positions - positions.mean(axis=1, keepdims=True)
    ref = reference - reference.mean(axis=0)
    rot = kabsch_rotations(centred, ref)
    aligned = centred @ rot
    return aligned, None if forces is None else forces @ rot
