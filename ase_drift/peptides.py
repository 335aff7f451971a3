"""Peptide analysis with mdtraj: backbone dihedrals, chirality, Ramachandran references.

Positions are ``[n, A, 3]`` in Å (converted to mdtraj's nm via :mod:`ase_drift.units`); angles
are in radians; free energies in kT.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import units
from .metrics import block_bootstrap, free_energy_difference, ramachandran_histogram


def topology_from_pdb(pdb_text: str):
    """An mdtraj topology from PDB text (as stored with the peptide data sets)."""
    import tempfile

    import mdtraj

    with tempfile.NamedTemporaryFile("w", suffix=".pdb") as handle:
        handle.write(pdb_text)
        handle.flush()
        return mdtraj.load_pdb(handle.name).topology


def trajectory(positions: np.ndarray, topology):
    import mdtraj

    return mdtraj.Trajectory(units.angstrom_to_nm(positions), topology)


def backbone_dihedrals(positions: np.ndarray, topology) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) ``[n]`` of the first residue that has both (alanine dipeptide: ALA)."""
    import mdtraj

    traj = trajectory(positions, topology)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    return phi[:, 0], psi[:, 0]


def backbone_beads(topology) -> np.ndarray:
    """Atom indices ``[5]`` of the backbone beads C(i−1), N, CA, C, N(i+1) of the first residue
    that has both φ and ψ (alanine dipeptide: ACE C, ALA N, CA, C, NME N; the 5-bead
    coarse-graining of ScoreMD). φ is the dihedral of beads 0–3, ψ of beads 1–4."""
    import mdtraj

    empty = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    phi_atoms, psi_atoms = mdtraj.compute_phi(empty)[0], mdtraj.compute_psi(empty)[0]
    for phi in phi_atoms:
        for psi in psi_atoms:
            if np.array_equal(phi[1:], psi[:3]):  # the same residue's N, CA, C
                return np.append(phi, psi[3])
    raise ValueError("the topology has no residue with both φ and ψ")


def dihedral(a, b, c, d):
    """Dihedral angle (rad, in (−π, π]) of points a–b–c–d ``[..., 3]`` → ``[...]``, IUPAC sign:
    atan2(|b₂| b₁·(b₂ × b₃), (b₁ × b₂)·(b₂ × b₃)) with b₁ = b − a, b₂ = c − b, b₃ = d − c
    (positive when, looking along b → c, the near bond a–b turns clockwise onto the far bond
    c–d). Arrays give a float64 array; torch tensors give a tensor, differentiable (for
    gradients of densities on internal coordinates)."""
    import torch

    tensor = isinstance(a, torch.Tensor)
    a, b, c, d = (x if tensor else torch.as_tensor(np.asarray(x, dtype=np.float64))
                  for x in (a, b, c, d))
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = torch.linalg.norm(b2, dim=-1) * (b1 * n2).sum(-1)
    angle = torch.atan2(y, (n1 * n2).sum(-1))
    return angle if tensor else angle.numpy()


def bead_dihedrals(beads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) ``[n]`` of 5-bead backbone frames ``[n, 5, 3]`` (:func:`backbone_beads` order);
    the same angles as :func:`backbone_dihedrals` of the all-atom frames they come from."""
    beads = np.asarray(beads, dtype=np.float64)
    if beads.ndim != 3 or beads.shape[1:] != (5, 3):
        raise ValueError(f"beads must be [n, 5, 3], got {beads.shape}")
    points = [beads[:, k] for k in range(5)]
    return dihedral(*points[:4]), dihedral(*points[1:])


def alpha_carbon_chirality(positions: np.ndarray, topology) -> np.ndarray:
    """Sign of the improper (N, C, CB) volume about each α-carbon ``[n, n_chiral]``.

    L-amino acids give one sign throughout a correct trajectory; a flipped sign is a mirror-image
    (D) centre, which pairwise-distance models cannot tell apart from the right one.
    """
    centres = []
    for residue in topology.residues:
        names = {atom.name: atom.index for atom in residue.atoms}
        if {"CA", "N", "C", "CB"} <= names.keys():
            centres.append([names["CA"], names["N"], names["C"], names["CB"]])
    if not centres:
        raise ValueError("the topology has no chiral α-carbon (CA with N, C, CB)")
    idx = np.array(centres)  # [n_chiral, 4]
    ca = positions[:, idx[:, 0]]
    vectors = [positions[:, idx[:, k]] - ca for k in (1, 2, 3)]  # each [n, n_chiral, 3]
    volume = np.einsum("nci,nci->nc", vectors[0], np.cross(vectors[1], vectors[2]))
    return np.sign(volume)


def mirrored_fraction(positions: np.ndarray, reference_positions: np.ndarray, topology) -> float:
    """Fraction of samples with any α-carbon of the opposite handedness to the reference's."""
    expected = np.sign(alpha_carbon_chirality(reference_positions, topology).mean(axis=0))
    return float((alpha_carbon_chirality(positions, topology) != expected).any(axis=1).mean())


@dataclass(frozen=True)
class RamachandranReference:
    """Reference free-energy surface F(φ, ψ) = −log p in kT (64×64 by default), with
    block-bootstrap standard errors, and ΔF = F(αL/C7ax) − F(C7eq/β/αR) with its error, the
    basins split by :func:`~ase_drift.metrics.basin_masks_phi` (0 < φ < 2.2 rad) (NaN when a
    basin is empty in the data or in a bootstrap replicate: the data cannot resolve it)."""

    free_energy: np.ndarray  # [bins, bins], NaN where empty, min 0
    free_energy_error: np.ndarray  # [bins, bins]
    delta_f: float
    delta_f_error: float
    n_frames: int


def ramachandran_reference(phi: np.ndarray, psi: np.ndarray, bins: int = 64,
                           n_blocks: int = 20, n_boot: int = 200, seed: int = 0
                           ) -> RamachandranReference:
    """Free-energy surface and ΔF of a time series of (φ, ψ), errors by block bootstrap."""
    series = np.stack([phi, psi], axis=1)  # [n, 2]

    def surface(s):
        hist = ramachandran_histogram(s[:, 0], s[:, 1], bins)
        with np.errstate(divide="ignore"):
            return -np.log(hist)

    free_energy = surface(series)
    free_energy -= np.min(free_energy)
    rng = np.random.default_rng(seed)
    blocks = np.array_split(series, n_blocks)
    replicates = []
    for _ in range(n_boot):
        pick = rng.integers(0, n_blocks, n_blocks)
        replicates.append(surface(np.concatenate([blocks[k] for k in pick])))
    replicates = np.array(replicates)
    replicates[~np.isfinite(replicates)] = np.nan
    replicates -= np.nanmin(replicates, axis=(1, 2), keepdims=True)
    with warnings.catch_warnings():  # bins populated in < 2 replicates have no error: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        error = np.nanstd(replicates, axis=0, ddof=1)
    try:
        delta_f, delta_f_error = block_bootstrap(lambda s: free_energy_difference(s[:, 0]),
                                                 series, n_blocks=n_blocks, n_boot=n_boot,
                                                 seed=seed)
    except ValueError:  # a basin is empty in the data or in a replicate: ΔF is not resolved
        delta_f, delta_f_error = float("nan"), float("nan")
    free_energy[~np.isfinite(free_energy)] = np.nan
    return RamachandranReference(free_energy, error, delta_f, delta_f_error, len(series))


def restore_chirality(positions: np.ndarray, reference_positions: np.ndarray,
                      topology) -> tuple[np.ndarray, np.ndarray]:
    """Mirror every sample whose α-carbons all have the wrong handedness.

    Pairwise distances cannot tell a molecule from its mirror image, so a distance-space model
    may emit D-enantiomers; reflecting one (x → −x) keeps every distance and restores L. Samples
    with only some centres flipped cannot be fixed by a reflection and are left as they are
    (:func:`mirrored_fraction` still counts them). Returns ``(positions [n, A, 3], mirrored [n])``.
    """
    expected = np.sign(alpha_carbon_chirality(reference_positions, topology).mean(axis=0))
    mirrored = (alpha_carbon_chirality(positions, topology) != expected).all(axis=1)  # [n]
    fixed = np.array(positions, copy=True)
    fixed[mirrored, :, 0] *= -1.0
    return fixed, mirrored
