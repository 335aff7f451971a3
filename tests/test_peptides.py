"""Peptide analysis: chirality of α-carbons and its repair by reflection."""

import numpy as np
import pytest
import torch

from ase_drift.datasets import load, topology_pdb
from ase_drift.metrics import pair_distances
from ase_drift.peptides import (
    alpha_carbon_chirality,
    backbone_beads,
    backbone_dihedrals,
    bead_dihedrals,
    dihedral,
    mirrored_fraction,
    restore_chirality,
    topology_from_pdb,
)

NAME = "alanine-dipeptide-amber99sbildn-300K-small"


def test_a_reflection_flips_chirality_and_the_dihedrals_but_no_distance():
    _, reference = load(NAME)
    topology = topology_from_pdb(topology_pdb(NAME))
    frames = reference.positions[:50].astype(float)
    mirrored = frames * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(pair_distances(mirrored), pair_distances(frames), atol=1e-6)
    assert np.all(alpha_carbon_chirality(mirrored, topology) == -1)
    phi, psi = backbone_dihedrals(frames, topology)
    mirror_phi, mirror_psi = backbone_dihedrals(mirrored, topology)
    np.testing.assert_allclose(mirror_phi, -phi, atol=1e-5)  # D-Ala: (φ, ψ) → (−φ, −ψ)
    np.testing.assert_allclose(mirror_psi, -psi, atol=1e-5)


def test_restore_chirality_reflects_exactly_the_mirrored_samples():
    _, reference = load(NAME)
    topology = topology_from_pdb(topology_pdb(NAME))
    frames = reference.positions[:40].astype(float)
    samples = frames.copy()
    samples[::4] *= np.array([-1.0, 1.0, 1.0])  # every 4th sample is the D-enantiomer
    assert mirrored_fraction(samples, reference.positions, topology) == 0.25
    fixed, was_mirrored = restore_chirality(samples, reference.positions, topology)
    assert was_mirrored.tolist() == [k % 4 == 0 for k in range(40)]
    assert mirrored_fraction(fixed, reference.positions, topology) == 0.0
    np.testing.assert_allclose(pair_distances(fixed), pair_distances(frames), atol=1e-6)
    np.testing.assert_array_equal(fixed[1::4], frames[1::4])  # the L samples are untouched


def test_five_bead_dihedrals_equal_the_all_atom_ones():
    _, reference = load(NAME)
    topology = topology_from_pdb(topology_pdb(NAME))
    beads = backbone_beads(topology)
    names = [(topology.atom(i).residue.name, topology.atom(i).name) for i in beads]
    assert names == [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]
    frames = reference.positions[::50].astype(float)
    phi, psi = backbone_dihedrals(frames, topology)
    bead_phi, bead_psi = bead_dihedrals(frames[:, beads])
    np.testing.assert_allclose(bead_phi, phi, atol=1e-5)
    np.testing.assert_allclose(bead_psi, psi, atol=1e-5)
    mirror_phi, _ = bead_dihedrals(frames[:, beads] * np.array([-1.0, 1.0, 1.0]))
    np.testing.assert_allclose(mirror_phi, -phi, atol=1e-5)  # the sign convention is IUPAC's


def test_dihedral_of_a_known_geometry():
    a, b, c = np.array([1.0, 0, 0]), np.zeros(3), np.array([0, 0, 1.0])
    # d turned by t about b → c (+z) from a's direction: looking along +z, x → y is clockwise,
    # so the IUPAC dihedral is +t
    angles = [dihedral(a, b, c, c + np.array([np.cos(t), np.sin(t), 0])) for t in
              (0.0, np.pi / 2, np.pi, -np.pi / 3)]
    np.testing.assert_allclose(angles, [0.0, np.pi / 2, np.pi, -np.pi / 3], atol=1e-12)
    # arrays of any float dtype are computed in float64; tensors keep theirs, with gradients
    points = np.random.default_rng(0).normal(size=(4, 20, 3)).astype(np.float32)
    single = dihedral(*points)
    assert single.dtype == np.float64
    np.testing.assert_allclose(single, dihedral(*points.astype(np.float64)), rtol=0, atol=1e-14)
    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in points]
    value = dihedral(*tensors)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64
    np.testing.assert_allclose(value.detach().numpy(), single, atol=1e-12)
    grad = torch.autograd.grad(value.sum(), tensors[3])[0].numpy()  # ∂φ/∂d
    h, step = 1e-6, np.zeros((20, 3))
    step[:, 1] = h
    shifted = points.astype(np.float64)
    numeric = (dihedral(*shifted[:3], shifted[3] + step) - dihedral(*shifted[:3], shifted[3] - step))
    np.testing.assert_allclose(grad[:, 1], numeric / (2 * h), atol=1e-6)


def test_bead_inputs_are_checked_and_computed_in_float64():
    with pytest.raises(ValueError, match=r"^beads must be \[n, 5, 3\], got \(2, 4, 3\)$"):
        bead_dihedrals(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"^beads must be \[n, 5, 3\], got \(5, 3\)$"):
        bead_dihedrals(np.zeros((5, 3)))
    beads = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    phi, psi = bead_dihedrals(beads)
    assert phi.dtype == psi.dtype == np.float64
    np.testing.assert_allclose(phi, dihedral(*[beads[:, k].astype(float) for k in range(4)]),
                               rtol=0, atol=1e-12)


def test_backbone_beads_need_a_residue_with_phi_and_psi():
    import mdtraj

    topology = mdtraj.Topology()
    residue = topology.add_residue("ALA", topology.add_chain())
    for name, element in (("N", "N"), ("CA", "C"), ("C", "C")):
        topology.add_atom(name, mdtraj.element.get_by_symbol(element), residue)
    with pytest.raises(ValueError, match="^the topology has no residue with both φ and ψ$"):
        backbone_beads(topology)
