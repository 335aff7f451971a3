"""Representations: φ(R), its Jacobian J = ∂φ/∂R and the exact feature-space force.

PairwiseDistances φ(R) = (‖r_a − r_b‖)_{a<b}; row ab of J holds +u_ab at atom a and −u_ab at
atom b with u_ab = (r_a − r_b)/d_ab. The feature force F_φ = J G⁺ F (G = JᵀJ) is the minimum-norm
solution of Jᵀ F_φ = F, so Jᵀ F_φ = F exactly when F has no rigid-motion component. Cartesian
φ is the centred coordinates; frames are Kabsch-aligned, forces rotating with their frame.
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.lj import LennardJones
from scipy.spatial.transform import Rotation

from ase_drift import units
from ase_drift.data import Conformations
from ase_drift.features import (
    Cartesian,
    PairwiseDistances,
    align_frames,
    check_canonical_rotors,
    find_rotors,
    kabsch_rotations,
    make_representation,
    rotor_dihedrals,
)
from ase_drift.testing import (
    assert_feature_force_consistent,
    assert_invariant,
    assert_jacobian,
    remove_rigid_motions,
)


def ethanol(n_frames=4, noise=0.05, seed=0, dtype=torch.float64):
    """Ethanol (ase.build) with thermal-like noise, ``[n_frames, 9, 3]`` Å."""
    base = torch.as_tensor(molecule("CH3CH2OH").positions, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    return base + noise * torch.randn(n_frames, *base.shape, generator=gen, dtype=dtype)


def random_geometry(n_atoms=12, n_frames=3, seed=1, dtype=torch.float64):
    """Random non-degenerate geometries ``[n_frames, n_atoms, 3]`` of a few Å."""
    gen = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n_frames, n_atoms, 3, generator=gen, dtype=dtype)


def random_forces(coords, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(coords.shape, generator=gen, dtype=coords.dtype)


# ----------------------------------------------------------------------------- φ and J
def test_distance_features_are_pair_distances_in_triu_order():
    coords = random_geometry(5, 2)
    phi = PairwiseDistances(5).features(coords)
    i, j = np.triu_indices(5, k=1)
    expected = (coords[:, i] - coords[:, j]).norm(dim=-1)
    torch.testing.assert_close(phi, expected, rtol=1e-12, atol=1e-12)
    assert phi.shape == (2, 10)


@pytest.mark.parametrize("make", [ethanol, random_geometry])
def test_distance_jacobian_float64(make):
    """J analytic = autograd = central differences, to 1e-8 in float64."""
    coords = make()
    err = assert_jacobian(PairwiseDistances(coords.shape[1]), coords)
    assert err < 1e-8


def test_distance_jacobian_float32():
    coords = ethanol(dtype=torch.float32)
    assert assert_jacobian(PairwiseDistances(9), coords) < 1e-4


def test_distance_jacobian_rows_are_unit_vectors():
    """Row ab = (+u_ab at a, −u_ab at b): norm √2, entries at other atoms zero."""
    coords = random_geometry(6, 2)
    jac = PairwiseDistances(6).jacobian(coords)  # [B, M, 3A]
    torch.testing.assert_close(jac.norm(dim=-1), torch.full((2, 15), 2**0.5, dtype=coords.dtype))
    torch.testing.assert_close(jac.reshape(2, 15, 6, 3).sum(2), torch.zeros(2, 15, 3,
                                                                            dtype=coords.dtype))


def test_cartesian_jacobian_by_autograd():
    """Cartesian has no analytic Jacobian; autograd vs finite differences (centring matrix)."""
    assert assert_jacobian(Cartesian(), ethanol()) < 1e-8


def test_assert_jacobian_catches_a_wrong_jacobian():
    class WrongSign(PairwiseDistances):
        def jacobian(self, coords):
            return -super().jacobian(coords)

    with pytest.raises(AssertionError, match="autograd"):
        assert_jacobian(WrongSign(9), ethanol())


# ----------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_invariant_under_rotation_and_translation(seed):
    coords = random_geometry(12, 3, seed=seed)
    assert assert_invariant(PairwiseDistances(12), coords, seed=seed) < 1e-12


def test_cartesian_is_translation_invariant_but_not_rotation_invariant():
    coords = ethanol()
    assert assert_invariant(Cartesian(), coords, rotate=False) < 1e-12
    with pytest.raises(AssertionError, match="rotation"):
        assert_invariant(Cartesian(), coords)


def test_cartesian_features_are_centred():
    """φ(R) = R − mean over atoms: every frame's features sum to zero per axis."""
    coords = ethanol() + 3.0
    phi = Cartesian().features(coords).reshape(coords.shape)
    assert phi.sum(dim=1).abs().max() < 1e-12
    torch.testing.assert_close(phi, coords - coords.mean(1, keepdim=True))
    scores = Cartesian().feature_scores(coords, random_forces(coords)).reshape(coords.shape)
    assert scores.sum(dim=1).abs().max() < 1e-12


def weighted_distances(exponent, coords):
    """A PairwiseDistances whose pair weights are fitted on ``coords``."""
    rep = PairwiseDistances(coords.shape[1], exponent)
    rep.fit_pair_weights(coords)
    return rep


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_pair_weights_scale_each_pair_by_its_spread(exponent):
    """w_ab = (s_ab / s̄)^α: with α = 1 every weighted distance has the same spread s̄; with
    any α the weights' ratio is the spreads' ratio to the power α."""
    coords = ethanol(200, noise=0.05)
    spread = PairwiseDistances(9).features(coords).std(0)
    rep = weighted_distances(exponent, coords)
    torch.testing.assert_close(rep.pair_weights[0], (spread / spread.mean()) ** exponent)
    if exponent == 1.0:
        weighted_spread = rep.features(coords).std(0)
        torch.testing.assert_close(weighted_spread, torch.full_like(spread, spread.mean().item()))


def test_pair_weights_with_zero_exponent_or_one_frame_are_ones():
    coords = ethanol(50)
    assert torch.equal(weighted_distances(0.0, coords).pair_weights, torch.ones(1, 36))
    assert torch.equal(weighted_distances(1.0, coords[:1]).pair_weights, torch.ones(1, 36))
    rigid = weighted_distances(1.0, coords[:1].expand(5, 9, 3))  # nothing moves
    assert torch.equal(rigid.pair_weights, torch.ones(1, 36))
    assert not torch.equal(weighted_distances(1.0, coords[:2]).pair_weights, torch.ones(1, 36))


def test_weighted_distance_jacobian_and_feature_force():
    """φ = d/w keeps the representation contract: analytic J = autograd = differences, and the
    feature score satisfies Jᵀ F_φ = F."""
    coords = ethanol(8)
    rep = weighted_distances(1.0, coords)
    assert rep.pair_weights.std() > 0.1  # the weights differ, so a missing 1/w would show
    assert assert_jacobian(rep, coords) < 1e-8
    forces = remove_rigid_motions(coords, random_forces(coords))
    assert assert_feature_force_consistent(rep, coords, forces) < 1e-8


def test_stacked_blocks_are_the_single_exponent_maps_side_by_side():
    """Exponents (0, 1): φ = [d, d/w] ``[B, 2M]``, J and the feature scores of each block equal
    the single-exponent representation's (each block reproduces F on its own)."""
    coords = ethanol(8)
    stacked = weighted_distances((0.0, 1.0), coords)
    assert stacked.block_sizes == (36, 36)
    forces = remove_rigid_motions(coords, random_forces(coords))
    for block, exponent in enumerate((0.0, 1.0)):
        single = weighted_distances(exponent, coords)
        part = slice(36 * block, 36 * (block + 1))
        torch.testing.assert_close(stacked.features(coords)[:, part], single.features(coords))
        torch.testing.assert_close(stacked.jacobian(coords)[:, part], single.jacobian(coords))
        torch.testing.assert_close(stacked.feature_scores(coords, forces)[:, part],
                                   single.feature_scores(coords, forces))
    assert assert_jacobian(stacked, coords) < 1e-8


def test_pair_scale_exponent_is_validated():
    for bad in (1.5, (0.0, -1.0), ()):
        with pytest.raises(ValueError, match="pair_scale_exponent"):
            PairwiseDistances(3, bad)
    with pytest.raises(ValueError, match="^pair_scale_exponent weights pair distances: use "
                                         "space='distance'$"):
        make_representation("cartesian", 3, pair_scale_exponent=0.5)


# ----------------------------------------------------------------------------- feature force
@pytest.mark.parametrize("make", [ethanol, random_geometry], ids=["ethanol", "random12"])
def test_feature_force_reproduces_cartesian_force(make):
    """Jᵀ F_φ = F for F without net force and torque (isolated molecule), float64."""
    coords = make()
    forces = remove_rigid_motions(coords, random_forces(coords))
    assert assert_feature_force_consistent(PairwiseDistances(coords.shape[1]), coords,
                                           forces) < 1e-8


def test_feature_force_float32_ethanol():
    """The training dtype: still reproduces F to 1e-4 of max|F|."""
    coords = ethanol(64, dtype=torch.float32)
    forces = remove_rigid_motions(coords, random_forces(coords))
    assert assert_feature_force_consistent(PairwiseDistances(9), coords, forces) < 1e-4


def test_cartesian_feature_force_is_the_force():
    coords = ethanol()
    forces = remove_rigid_motions(coords, random_forces(coords))
    assert assert_feature_force_consistent(Cartesian(), coords, forces) < 1e-12


def test_feature_force_is_the_minimum_norm_solution():
    """F_φ = J G⁺ F lies in the column space of J (orthogonal to ker Jᵀ) and, for a rigid
    motion's force (a pure torque), vanishes: such a force has no feature-space component."""
    coords = random_geometry(12, 2)
    rep = PairwiseDistances(12)
    forces = random_forces(coords)
    rigid_part = forces - remove_rigid_motions(coords, forces)
    assert rep.feature_scores(coords, rigid_part).abs().max() < 1e-8
    f_phi = rep.feature_scores(coords, remove_rigid_motions(coords, forces))
    jac = rep.jacobian(coords)
    projector = jac @ torch.linalg.pinv(jac)  # onto range(J)
    torch.testing.assert_close((projector @ f_phi[..., None])[..., 0], f_phi)


def test_remove_rigid_motions_is_a_projection():
    """No net force, no net torque about the centroid; idempotent; numpy in, numpy out."""
    coords = random_geometry(8, 2)
    clean = remove_rigid_motions(coords, random_forces(coords))
    rel = coords - coords.mean(1, keepdim=True)
    assert clean.sum(1).abs().max() < 1e-12
    assert torch.linalg.cross(rel, clean, dim=-1).sum(1).abs().max() < 1e-12
    torch.testing.assert_close(remove_rigid_motions(coords, clean), clean)
    as_numpy = remove_rigid_motions(coords.numpy(), random_forces(coords).numpy())
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, clean.numpy(), atol=1e-12)


def test_feature_force_check_refuses_forces_with_net_torque():
    coords = ethanol()
    with pytest.raises(ValueError, match="rigid-motion"):
        assert_feature_force_consistent(PairwiseDistances(9), coords, random_forces(coords))


# ----------------------------------------------------------------------------- Kabsch
def test_align_frames_recovers_a_known_rotation_and_rotates_forces():
    """Frames = reference·Qᵀ + t: alignment returns the centred reference, forces F·Qᵀ → F."""
    ref = molecule("CH3CH2OH").positions
    ref_c = ref - ref.mean(0)
    rng = np.random.default_rng(0)
    rotations = Rotation.random(5, random_state=rng).as_matrix()  # [5, 3, 3]
    shifts = rng.normal(size=(5, 1, 3)) * 4
    positions = np.einsum("aj,nij->nai", ref, rotations) + shifts  # r·Qᵀ
    forces_ref = remove_rigid_motions(ref, rng.normal(size=ref.shape))
    forces = np.einsum("aj,nij->nai", forces_ref, rotations)
    aligned, aligned_forces = align_frames(positions, ref, forces)
    np.testing.assert_allclose(aligned, np.broadcast_to(ref_c, aligned.shape), atol=1e-10)
    np.testing.assert_allclose(aligned_forces, np.broadcast_to(forces_ref, forces.shape),
                               atol=1e-10)
    rot = kabsch_rotations(positions - positions.mean(1, keepdims=True), ref_c)
    np.testing.assert_allclose(rot, rotations, atol=1e-10)  # aligned = (ref·Qᵀ)·Q = ref
    _, none = align_frames(positions, ref)
    assert none is None


def test_kabsch_returns_proper_rotations_for_mirror_images():
    """A mirror image cannot be reached by a rotation: det(rot) = +1 always."""
    ref = molecule("CH3CH2OH").positions
    ref = ref - ref.mean(0)
    mirrored = ref * np.array([1.0, 1.0, -1.0])
    rot = kabsch_rotations(np.stack([mirrored, ref]), ref)
    np.testing.assert_allclose(np.linalg.det(rot), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(rot[1], np.eye(3), atol=1e-12)


def test_make_representation():
    assert isinstance(make_representation("cartesian", 9), Cartesian)
    assert isinstance(make_representation("distance", 9), PairwiseDistances)
    with pytest.raises(ValueError, match="unknown space"):
        make_representation("internal", 9)
    with pytest.raises(ValueError, match="at least 2 atoms"):
        PairwiseDistances(1)


# ----------------------------------------------------------------------------- prepared scores
LJ = {"sigma": 2.5, "epsilon": 0.02, "rc": 50.0}  # Å, eV; the cutoff is beyond the cluster


def lj_energy(positions):
    """Lennard-Jones energy (eV) of one 6-atom argon-like cluster ``[6, 3]`` Å."""
    atoms = Atoms("Ar6", positions=positions)
    atoms.calc = LennardJones(**LJ)
    return atoms.get_potential_energy()


def rotated_lj_frames(n_frames=5, seed=0, temperature_K=300.0):
    """A distorted LJ octahedron (nearest neighbours 2^(1/6)σ, 0.12 Å noise), every frame
    randomly rotated and translated, with its LJ forces and energies."""
    rng = np.random.default_rng(seed)
    half = 2 ** (1 / 6) * LJ["sigma"] / np.sqrt(2)
    base = half * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    rotations = Rotation.random(n_frames, random_state=rng).as_matrix()
    positions = np.stack([(base + 0.12 * rng.normal(size=base.shape)) @ rot.T
                          + rng.normal(scale=5.0, size=3) for rot in rotations])
    forces, energies = [], []
    for frame in positions:
        atoms = Atoms("Ar6", positions=frame)
        atoms.calc = LennardJones(**LJ)
        forces.append(atoms.get_forces())
        energies.append(atoms.get_potential_energy())
    return Conformations([18] * 6, positions, np.array(forces), np.array(energies),
                         temperature_K)


@pytest.mark.parametrize("space", ["cartesian", "distance"])
def test_prepared_scores_are_finite_differences_of_reduced_energy(space):
    """On the PREPARED frames (centred, Kabsch-aligned in Cartesian space, divided by σ) the
    scores are the gradient of −E/kT in normalised units: for any direction δ [A, 3],

        [E(R + hσδ) − E(R − hσδ)] / (2h·kT) = −scores·(J δ),   R = σ·coords (Å),

    J = the centring map in Cartesian space (scores are centred) and ∂φ/∂R of the pair
    distances in distance space (PairwiseDistances.jacobian; Jᵀ F_φ = F). Every frame of the
    LJ cluster is randomly rotated and translated, so Cartesian scores are right only if the
    forces rotate with their frames (unrotated forces miss by O(1)). h = 1e-4 (≈ 1.5e-4 Å);
    tolerance 1e-5 relative to the largest directional derivative (measured 6e-7 Cartesian,
    8e-7 distance; 3e-5 at h = 1e-3, the truncation error). The reduced energies equal
    E(R)/kT minus their mean."""
    temperature = 300.0
    kT = units.kT(temperature)
    data = rotated_lj_frames(temperature_K=temperature)
    representation = make_representation(space, data.n_atoms)
    prepared = representation.prepare(data, temperature)
    coords = prepared.coords.double()
    frames = coords.numpy() * prepared.scale  # Å, as prepared (aligned in Cartesian space)

    # the prepared frames are the data's frames up to a rigid motion: same energies
    energies = np.array([lj_energy(frame) for frame in frames])
    np.testing.assert_allclose(energies, data.energies, rtol=0, atol=1e-6)  # float32 frames
    reduced = energies / kT
    np.testing.assert_allclose(prepared.reduced_energies.double().numpy(),
                               reduced - reduced.mean(), rtol=0, atol=1e-5)

    rng = np.random.default_rng(1)
    directions = rng.normal(size=frames.shape)  # [N, A, 3], normalised units
    h = 1e-4
    numeric = np.array([(lj_energy(frame + h * prepared.scale * d)
                         - lj_energy(frame - h * prepared.scale * d)) / (2 * h * kT)
                        for frame, d in zip(frames, directions, strict=True)])
    delta = torch.as_tensor(directions)
    if space == "cartesian":
        moved = (delta - delta.mean(1, keepdim=True)).flatten(1)  # J δ: centred δ
    else:
        moved = (representation.jacobian(coords) @ delta.flatten(1)[..., None])[..., 0]
    predicted = -(prepared.scores.double() * moved).sum(-1).numpy()
    scale = np.abs(numeric).max()
    assert scale > 1.0  # the test has something to compare
    np.testing.assert_allclose(predicted, numeric, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- details (mutation tests)
@pytest.mark.parametrize("space", ["cartesian", "distance"])
def test_prepare_centres_aligns_to_frame_0_and_divides_by_one_scale(space):
    """Prepared: coords = centred frames (Cartesian: Kabsch-aligned to frame 0, forces and all)
    / σ, σ = std of the centred frames (the same in both spaces); aligned_coords = the aligned
    frames / σ whatever the space; features = φ(coords); float32 throughout; no forces or
    energies, no scores or reduced energies."""
    data = rotated_lj_frames()
    centred = data.positions - data.positions.mean(1, keepdims=True)
    aligned, _ = align_frames(data.positions, data.positions[0])
    scale = centred.std()
    representation = make_representation(space, data.n_atoms)
    prepared = representation.prepare(data, 300.0)
    assert prepared.scale == pytest.approx(scale, rel=1e-12)
    expected = aligned if space == "cartesian" else centred
    np.testing.assert_allclose(prepared.coords.numpy(), expected / scale, atol=1e-6)
    np.testing.assert_allclose(prepared.aligned_coords.numpy(), aligned / scale, atol=1e-6)
    np.testing.assert_allclose(prepared.aligned_coords[0].numpy(), centred[0] / scale, atol=1e-6)
    torch.testing.assert_close(prepared.features, representation.features(prepared.coords))
    for tensor in (prepared.coords, prepared.aligned_coords, prepared.features, prepared.scores,
                   prepared.reduced_energies):
        assert tensor.dtype == torch.float32
    bare = representation.prepare(Conformations(data.numbers, data.positions,
                                                temperature_K=300.0), 300.0)
    assert bare.scores is None and bare.reduced_energies is None


def test_distance_features_of_a_diatomic_and_of_coincident_atoms():
    """Two atoms are enough; coincident atoms give distance 1e-6 (the offset √1e-12) and a
    finite gradient."""
    representation = PairwiseDistances(2)
    assert representation.n_atoms == 2
    coords = torch.tensor([[[0.0, 0, 0], [1.5, 0, 0]], [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]]],
                          dtype=torch.float64, requires_grad=True)
    phi = representation.features(coords)
    torch.testing.assert_close(phi[:, 0], torch.tensor([1.5, 1e-6], dtype=torch.float64))
    phi.sum().backward()
    assert torch.isfinite(coords.grad).all()
    with pytest.raises(ValueError, match="^pairwise distances need at least 2 atoms$"):
        PairwiseDistances(1)


def test_kabsch_flips_the_weakest_axis_for_a_mirror_image():
    """The best proper rotation of a nearly planar molecule's mirror image (through its plane)
    leaves it nearly in place: the reflection is absorbed by the axis of the smallest singular
    value, so the aligned RMSD is of the order of the molecule's thickness (0.01 Å), not Å."""
    rng = np.random.default_rng(0)
    ref = np.c_[2 * rng.normal(size=(8, 2)), 0.01 * rng.normal(size=8)]
    ref -= ref.mean(0)
    mirrored = ref * np.array([1.0, 1.0, -1.0])
    rot = kabsch_rotations(mirrored[None], ref)[0]
    rmsd = np.sqrt(((mirrored @ rot - ref) ** 2).sum(-1).mean())
    assert np.linalg.det(rot) == pytest.approx(1.0) and rmsd < 0.05


# Canonical rotors: a methyl's three hydrogens relabelled to one rotamer before the distances.


def _turn_methyl(positions: np.ndarray, rotor, degrees: float) -> np.ndarray:
    """``positions`` ``[A, 3]`` with the rotor's hydrogens turned by ``degrees`` about x → c."""
    _, x, c, *hydrogens = rotor
    axis = positions[c] - positions[x]
    turn = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis))
    out = positions.copy()
    out[hydrogens] = turn.apply(positions[hydrogens] - positions[c]) + positions[c]
    return out


def _fitted(positions: np.ndarray, numbers) -> PairwiseDistances:
    representation = PairwiseDistances(len(numbers), canonical_rotors=True)
    representation.fit_rotors(np.asarray(numbers), positions)
    return representation


def test_find_rotors_finds_each_methyl_with_its_hydrogens_in_cyclic_order():
    atoms = molecule("CH3CH2OH")
    (rotor,) = find_rotors(atoms.numbers, atoms.positions)
    r, x, c, *hydrogens = rotor
    assert atoms.numbers[c] == 6 and (atoms.numbers[hydrogens] == 1).all()
    assert np.linalg.norm(atoms.positions[hydrogens] - atoms.positions[c], axis=1).max() < 1.2
    # The anchor r: the lowest-indexed atom bonded to x other than c.
    bonded = np.linalg.norm(atoms.positions - atoms.positions[x], axis=1) < 1.6
    assert atoms.numbers[x] == 6 and r == min(set(np.flatnonzero(bonded)) - {x, c})
    # Hydrogens in ascending dihedral r–x–c–h: +120° about x → c takes h₁ to h₂'s place.
    assert np.all(np.diff(rotor_dihedrals(atoms.positions[None], rotor[None])[0, 0]) > 0)
    turned = _turn_methyl(atoms.positions, rotor, 120.0)
    np.testing.assert_allclose(turned[hydrogens[:2]], atoms.positions[hydrogens[1:]], atol=0.05)
    assert len(find_rotors(molecule("C2H6").numbers, molecule("C2H6").positions)) == 2
    assert find_rotors(molecule("H2O").numbers, molecule("H2O").positions).shape == (0, 6)
    # Hydrogens first (no rotor centres) and a methyl whose x has no other neighbour (CH₃Cl:
    # no dihedral fixes its phase) before ethanol's: only ethanol's rotor, every time.
    backwards = atoms[::-1]
    assert len(find_rotors(backwards.numbers, backwards.positions)) == 1
    chloride = molecule("CH3Cl")
    assert find_rotors(chloride.numbers, chloride.positions).shape == (0, 6)
    both = chloride + atoms
    both.positions[len(chloride):] += 10.0
    (found,) = find_rotors(both.numbers, both.positions)
    np.testing.assert_array_equal(found, rotor + len(chloride))


def _symmetric_methyl(positions: np.ndarray, rotor) -> np.ndarray:
    """``positions`` with h₂ and h₃ put at h₁ turned by 120° and 240°: a C₃-symmetric methyl,
    for which a 120° turn is exactly a relabelling."""
    out = positions.copy()
    for k, degrees in ((4, 120.0), (5, 240.0)):
        out[rotor[k]] = _turn_methyl(positions, rotor, degrees)[rotor[3]]
    return out


@pytest.mark.parametrize("degrees", [120.0, 240.0, -120.0])
def test_canonical_distances_ignore_a_methyl_turn_of_120_degrees(degrees):
    atoms = molecule("CH3CH2OH")
    rotor = find_rotors(atoms.numbers, atoms.positions)[0]
    frames = np.stack([_symmetric_methyl(f, rotor) for f in ethanol(n_frames=3, noise=0.02)
                       .numpy()])
    representation = _fitted(frames, atoms.numbers)
    turned = np.stack([_turn_methyl(f, representation.rotors[0], degrees) for f in frames])
    plain = PairwiseDistances(9)
    before, after = (torch.as_tensor(f) for f in (frames, turned))
    assert (plain.features(before) - plain.features(after)).abs().max() > 0.3
    torch.testing.assert_close(representation.features(after), representation.features(before),
                               atol=1e-7, rtol=0)
    # …but they do see a turn that is not a symmetry of the methyl.
    twisted = torch.as_tensor(np.stack([_turn_methyl(f, representation.rotors[0], 40.0)
                                        for f in frames]))
    assert (representation.features(twisted) - representation.features(before)).abs().max() > 0.1


def test_canonical_first_hydrogen_lies_within_60_degrees_of_the_fitted_phase():
    atoms = molecule("CH3CH2OH")
    rotor = find_rotors(atoms.numbers, atoms.positions)[0]
    rng = np.random.default_rng(0)
    # Data around a staggered phase, spread over all three rotamers: the fitted phase is the
    # rotamers' common one (mod 120°), whatever the labels.
    # (staggered 23° away from ase's geometry, whose dihedrals sit at ±60° and 180°)
    turns = 23.0 + rng.choice([0.0, 120.0, 240.0], 60) + rng.normal(0.0, 10.0, 60)
    frames = np.stack([_turn_methyl(atoms.positions, rotor, t) for t in turns])
    representation = _fitted(frames, atoms.numbers)
    start = rotor_dihedrals(atoms.positions[None], rotor[None])[0, 0]  # [3]
    offset = np.angle(np.exp(3j * (representation.rotor_phases[0] - start[0]
                                   - np.radians(23.0)))) / 3
    assert abs(offset) < np.radians(3.0)
    # Any turn at all, relabelled: the first hydrogen ends within ±60° of the phase.
    symmetric = _symmetric_methyl(atoms.positions, rotor)
    anywhere = np.stack([_turn_methyl(symmetric, rotor, t)
                         for t in rng.uniform(-180.0, 180.0, 200)])
    angles = rotor_dihedrals(representation.canonical(torch.as_tensor(anywhere)).numpy(),
                             representation.rotors)[:, 0]  # [N, 3]
    first = np.angle(np.exp(1j * (angles[:, 0] - representation.rotor_phases[0])))
    assert np.abs(first).max() < np.radians(60.0)
    # The other two follow at +120° and +240°: cyclic order kept, no mirror-image relabelling.
    np.testing.assert_allclose(np.angle(np.exp(1j * (angles[:, 1] - angles[:, 0]))),
                               np.radians(120.0), atol=np.radians(5.0))


def test_canonical_features_and_scores_ignore_a_cyclic_relabelling_of_the_hydrogens():
    atoms = molecule("CH3CH2OH")
    frames = ethanol(n_frames=2, noise=0.02).numpy()
    representation = _fitted(frames, atoms.numbers)
    forces = np.random.default_rng(1).normal(size=frames.shape)
    forces -= forces.mean(axis=1, keepdims=True)
    hydrogens = representation.rotors[0, 3:]
    order = np.arange(9)
    order[hydrogens] = np.roll(hydrogens, -1)  # h₁ ← h₂, h₂ ← h₃, h₃ ← h₁: labels, not atoms
    coords, relabelled = torch.as_tensor(frames), torch.as_tensor(frames[:, order])
    torch.testing.assert_close(representation.features(relabelled),
                               representation.features(coords), atol=1e-12, rtol=0)
    scores = representation.feature_scores(coords, torch.as_tensor(forces))
    moved = representation.feature_scores(relabelled, torch.as_tensor(forces[:, order]))
    torch.testing.assert_close(moved, scores, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(scores).all() and scores.abs().max() > 0.1
    # Without the relabelling, the same frames give other features.
    plain = PairwiseDistances(9)
    assert (plain.features(relabelled) - plain.features(coords)).abs().max() > 0.3


def test_canonical_rotors_need_distance_space_and_leave_rotor_free_molecules_alone():
    message = "canonical_rotors relabels atoms before pair distances: use space='distance'"
    with pytest.raises(ValueError, match=message):
        make_representation("cartesian", 9, canonical_rotors=True)
    with pytest.raises(ValueError, match=message):
        check_canonical_rotors(True, "cartesian")
    assert check_canonical_rotors(True, "distance") is True
    assert check_canonical_rotors(0, "cartesian") is False
    assert make_representation("cartesian", 9).name == "cartesian"
    representation = make_representation("distance", 9, 0.5, canonical_rotors=True)
    assert representation.canonical_rotors is True and representation.exponents == (0.5,)
    assert make_representation("distance", 9).canonical_rotors is False
    water = molecule("H2O")
    representation = _fitted(water.positions[None], water.numbers)
    coords = torch.as_tensor(water.positions[None])
    assert representation.canonical(coords) is coords


def test_prepare_fits_the_rotors_and_weighs_the_pairs_of_the_canonical_frames():
    """prepare() finds the methyl in the data and fits its phase; the pair weights are the
    spreads of the relabelled frames, in which the three rotamers coincide."""
    atoms = molecule("CH3CH2OH")
    rotor = find_rotors(atoms.numbers, atoms.positions)[0]
    rng = np.random.default_rng(0)
    frames = np.stack([_turn_methyl(_symmetric_methyl(atoms.positions, rotor), rotor, turn)
                       + rng.normal(0.0, 0.01, (9, 3))
                       for turn in rng.choice([0.0, 120.0, 240.0], 90)])
    data = Conformations(atoms.numbers, frames, temperature_K=300.0)
    representation = PairwiseDistances(9, pair_scale_exponent=1.0, canonical_rotors=True)
    prepared = representation.prepare(data, 300.0)
    found = representation.rotors
    assert len(found) == 1 and np.array_equal(found[0, :3], rotor[:3])
    assert any(np.array_equal(np.roll(rotor[3:], k), found[0, 3:]) for k in range(3))
    plain = PairwiseDistances(9, pair_scale_exponent=1.0)
    plain.prepare(data, 300.0)
    # Canonical frames differ only by the noise: every pair's spread is of its order.
    canonical = representation.distances(representation.canonical(torch.as_tensor(frames)))
    relative = canonical.std(0) / canonical.std(0).mean()
    torch.testing.assert_close(representation.pair_weights[0], relative.float().clamp_min(1e-3),
                               rtol=1e-4, atol=1e-5)
    assert plain.pair_weights.max() > 3 * representation.pair_weights.max()
    spread = prepared.features.std(0)  # unit spread per pair at α = 1, within round-off
    assert spread.max() / spread.min() < 1.01 and "canonical" in representation.normalization
