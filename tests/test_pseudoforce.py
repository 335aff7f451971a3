"""Generative pseudo-force fields (GPFF): the training target, the alignment, the network's
symmetries, the ASE calculator, generation with scaffolds, files and the CLI.

The network tests use a tiny untrained PaiNN: the properties tested (equivariance, the
calculator equals the model, fixed atoms stay, round trips) hold for any weights."""

from __future__ import annotations

import itertools
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.constraints import FixAtoms
from ase.optimize import FIRE

from ase_drift.calculators import PseudoForceCalculator
from ase_drift.checkpoint import CheckpointError, save_checkpoint
from ase_drift.cli import main
from ase_drift.datasets.qm9 import QM9
from ase_drift.diffusion import pseudoforce as pf
from ase_drift.diffusion import samplers

TINY = pf.PseudoForceConfig(n_features=16, n_interactions=2, n_rbf=12)
ELEMENTS = [1, 6, 7, 8, 9]


def tiny_model(time_conditioned: bool = False, seed: int = 0) -> pf.PseudoForceField:
    torch.manual_seed(seed)
    config = pf.PseudoForceConfig(**{**TINY.as_dict(), "time_conditioned": time_conditioned})
    return pf.PseudoForceField(pf.PseudoForceNet(config), None, {"elements": ELEMENTS})


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ---- training target and alignment (paper Eqs. 7-9, A.8)


def test_hungarian_alignment_recovers_a_permutation_within_elements():
    ethanol = molecule("CH3CH2OH")
    numbers, reference = ethanol.numbers, ethanol.positions
    rng = np.random.default_rng(0)
    perm = np.arange(len(numbers))
    for z in np.unique(numbers):  # shuffle the atoms of each element among themselves
        atoms = np.flatnonzero(numbers == z)
        perm[atoms] = rng.permutation(atoms)
    noisy = reference[perm] + 0.01 * rng.normal(size=reference.shape) + 5.0  # moved, too
    assert np.array_equal(pf.hungarian_alignment(reference, noisy, numbers), perm)


def test_hungarian_alignment_never_matches_across_elements():
    numbers = np.array([6, 1])
    reference = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    swapped = reference[::-1].copy()  # the C now sits where the H was: a cross match is closer
    assert np.array_equal(pf.hungarian_alignment(reference, swapped, numbers), [0, 1])


def brute_force_alignment(reference, noisy, numbers) -> np.ndarray:
    """The within-element permutation of least squared distance, by enumeration."""
    groups = [np.flatnonzero(numbers == z) for z in np.unique(numbers)]
    best, best_cost = None, np.inf
    for choice in itertools.product(*(itertools.permutations(g) for g in groups)):
        perm = np.arange(len(numbers))
        for group, image in zip(groups, choice):
            perm[group] = image
        cost = ((noisy - reference[perm]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = perm, cost
    return best


@pytest.mark.parametrize("seed", range(4))
def test_hungarian_alignment_is_the_least_squares_within_element_permutation(seed):
    """Against enumeration: a lone lightest atom first, three elements of several atoms
    shuffled among themselves, noise comparable to the atom spacing, the structures apart."""
    rng = np.random.default_rng(seed)
    numbers = np.array([1, 6, 6, 6, 7, 7, 7, 8, 8])
    shuffle = np.arange(9)
    for atoms in ([1, 2, 3], [4, 5, 6], [7, 8]):
        shuffle[atoms] = rng.permutation(atoms)
    reference = 1.5 * rng.normal(size=(9, 3))
    noisy = reference[shuffle] + 0.6 * rng.normal(size=(9, 3)) + [-7.0, 3.0, 5.0]
    perm = pf.hungarian_alignment(reference, noisy, numbers)
    np.testing.assert_array_equal(perm, brute_force_alignment(reference, noisy, numbers))
    assert (perm != np.arange(9)).any()  # the shuffle is undone, not ignored


def test_target_is_reference_minus_noisy_after_alignment():
    water = molecule("H2O")
    numbers = torch.as_tensor(water.numbers)
    reference = torch.as_tensor(water.positions - water.positions.mean(0), dtype=torch.float32)
    noisy = reference[[0, 2, 1]] + 0.02  # the two hydrogens swapped (and shifted)
    idx_m = torch.zeros(3, dtype=torch.long)
    target = pf.pseudo_force_targets(reference, noisy, numbers, idx_m)
    torch.testing.assert_close(target, reference[[0, 2, 1]] - noisy)
    # without alignment the label is the (longer) displacement to the swapped atoms
    unaligned = pf.pseudo_force_targets(reference, noisy, numbers, idx_m, align=False)
    torch.testing.assert_close(unaligned, reference - noisy)
    assert unaligned.norm() > 10 * target.norm()


def test_targets_align_every_molecule_of_a_batch():
    """Three waters (H, O, H), each with its hydrogens swapped: each molecule, the first atom
    of the first and the last of the last included, is aligned on its own."""
    water = molecule("H2O")[[1, 0, 2]]
    one = torch.as_tensor(water.positions - water.positions.mean(0), dtype=torch.float32)
    reference = torch.cat([one, one + 0.1, one - 0.1])
    swap = torch.tensor([2, 1, 0, 5, 4, 3, 8, 7, 6])
    noisy = reference[swap] + 0.02
    numbers = torch.as_tensor(np.tile(water.numbers, 3))
    idx_m = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    target = pf.pseudo_force_targets(reference, noisy, numbers, idx_m)
    torch.testing.assert_close(target, reference[swap] - noisy)


def test_targets_never_match_atoms_of_another_molecule():
    """Two waters on the same centre, hydrogens on x and on y; each noisy hydrogen sits nearer
    the other molecule's hydrogens than its own, yet is matched within its molecule."""
    numbers = torch.tensor([8, 1, 1, 8, 1, 1])
    idx_m = torch.tensor([0, 0, 0, 1, 1, 1])
    reference = torch.tensor([[0.0, 0, 0], [1, 0, 0], [-1, 0, 0],
                              [0, 0, 0], [0, 1, 0], [0, -1, 0]])
    noisy = torch.tensor([[0.0, 0, 0], [0.3, 0.9, 0], [-0.3, -0.9, 0],
                          [0, 0, 0], [0.9, 0.3, 0], [-0.9, -0.3, 0]])
    target = pf.pseudo_force_targets(reference, noisy, numbers, idx_m)
    torch.testing.assert_close(target, reference - noisy)


def test_gpff_loss_is_weighted_squared_error_of_the_aligned_pseudo_forces():
    """Eq. 9: w(σ)·‖F_θ(x̃) − (x₀ − x̃)‖² (aligned), w = min(1/σ, 1000), averaged over
    molecules, here for the predictor F_θ(x̃) = 0.3 x̃ + 0.1."""
    water = molecule("H2O")
    numbers = torch.as_tensor(np.tile(water.numbers, 2))
    one = torch.as_tensor(water.positions - water.positions.mean(0), dtype=torch.float32)
    reference = torch.cat([one, one])
    idx_m = torch.tensor([0, 0, 0, 1, 1, 1])

    class Affine(torch.nn.Module):
        config = pf.PseudoForceConfig()

        def forward(self, numbers, positions, idx_m, n_molecules, sigma=None):
            return 0.3 * positions + 0.1

    rng = torch.Generator().manual_seed(3)
    loss = pf.training_loss(Affine(), numbers, reference, idx_m, 2, rng)
    rng = torch.Generator().manual_seed(3)  # replay the same draws
    sigma = pf.sample_sigmas(2, Affine.config, rng)
    eps = torch.randn(reference.shape, generator=rng)
    eps = eps - pf.molecule_mean(eps, idx_m, 2)
    noisy = reference + sigma[idx_m, None] * eps
    residual = 0.3 * noisy + 0.1 - pf.pseudo_force_targets(reference, noisy, numbers, idx_m)
    per_molecule = torch.stack([residual[idx_m == m].square().sum() for m in range(2)])
    torch.testing.assert_close(loss, (pf.loss_weights(sigma) * per_molecule).mean())
    assert torch.allclose(pf.loss_weights(torch.tensor([1e-5, 0.5])), torch.tensor([1e3, 2.0]))


def test_edm_preconditioning_gives_unit_variance_targets():
    """c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²) (Karras et al. 2022): for data of
    variance σ_d² the target (x₀ − c_skip x̃)/c_out has unit variance at every σ, i.e.
    (1 − c_skip)² σ_d² + c_skip² σ² = c_out²."""
    sigma = torch.tensor([0.01, 0.5, 1.5, 30.0], dtype=torch.float64)
    c_skip, c_out = pf.edm_coefficients(sigma, 1.5)
    torch.testing.assert_close(c_skip[2], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(c_out[2], torch.tensor(1.5 / 2**0.5, dtype=torch.float64))
    torch.testing.assert_close((1 - c_skip) ** 2 * 1.5**2 + c_skip**2 * sigma**2, c_out**2)


def test_baseline_loss_is_the_unaligned_preconditioned_error():
    """The time-conditioned baseline's loss is ‖v_θ(x̃, σ) − (x₀ − c_skip x̃)/c_out‖² summed over
    atoms, unweighted, averaged over molecules (here v_θ = 0.3 x̃ + 0.1); the network sees σ."""
    water = molecule("H2O")
    numbers = torch.as_tensor(np.tile(water.numbers, 2))
    one = torch.as_tensor(water.positions - water.positions.mean(0), dtype=torch.float32)
    reference = torch.cat([one, one])
    idx_m = torch.tensor([0, 0, 0, 1, 1, 1])
    seen = []

    class Affine(torch.nn.Module):
        config = pf.PseudoForceConfig(time_conditioned=True, sigma_data=1.2)

        def forward(self, numbers, positions, idx_m, n_molecules, sigma=None):
            seen.append((numbers, idx_m, n_molecules, sigma))
            return 0.3 * positions + 0.1

    loss = pf.training_loss(Affine(), numbers, reference, idx_m, 2,
                            torch.Generator().manual_seed(4))
    rng = torch.Generator().manual_seed(4)  # replay the same draws
    sigma = pf.sample_sigmas(2, Affine.config, rng)
    eps = torch.randn(reference.shape, generator=rng)
    noisy = reference + sigma[idx_m, None] * (eps - pf.molecule_mean(eps, idx_m, 2))
    c_skip, c_out = pf.edm_coefficients(sigma[idx_m, None], 1.2)
    residual = 0.3 * noisy + 0.1 - (reference - c_skip * noisy) / c_out
    per_molecule = torch.stack([residual[idx_m == m].square().sum() for m in range(2)])
    torch.testing.assert_close(loss, per_molecule.mean())
    assert torch.equal(seen[0][0], numbers) and torch.equal(seen[0][1], idx_m)
    assert seen[0][2] == 2
    torch.testing.assert_close(seen[0][3], sigma)


def test_training_noise_levels_follow_the_clipped_log_normal():
    config = pf.PseudoForceConfig(p_mean=0.0, p_std=1.5, sigma_min=0.01, sigma_max=30.0)
    sigma = pf.sample_sigmas(100_000, config, torch.Generator().manual_seed(0))
    assert sigma.min() >= 0.01 and sigma.max() <= 30.0
    assert abs(float(sigma.log().median())) < 0.02  # median σ = exp(p_mean) = 1 Å
    expected = torch.distributions.Normal(0.0, 1.5).cdf(torch.tensor(np.log(30.0)))
    assert abs(float((sigma == 30.0).float().mean()) - float(1 - expected)) < 0.003


def test_all_pairs_are_the_ordered_pairs_within_each_molecule():
    idx_i, idx_j = pf.all_pairs(torch.tensor([2, 3]))
    pairs = set(zip(idx_i.tolist(), idx_j.tolist()))
    assert pairs == {(0, 1), (1, 0), (2, 3), (2, 4), (3, 2), (3, 4), (4, 2), (4, 3)}


# ---- the network's symmetries and the calculator


@pytest.mark.parametrize("time_conditioned", [False, True])
def test_predicted_vectors_are_rotation_equivariant_and_translation_invariant(time_conditioned):
    model = tiny_model(time_conditioned)
    atoms = molecule("CH3CH2OH")
    x = torch.as_tensor(atoms.positions[None], dtype=torch.float32) * 1.3  # [1, A, 3]
    numbers = torch.as_tensor(atoms.numbers[None])
    sigma = torch.tensor([0.7]) if time_conditioned else None
    rotation = torch.as_tensor(random_rotation(1), dtype=torch.float32)
    out = model._network(numbers, x, sigma)
    assert out.abs().max() > 1e-4  # not trivially zero
    torch.testing.assert_close(model._network(numbers, x @ rotation.T, sigma), out @ rotation.T,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model._network(numbers, x + torch.tensor([3.0, -2, 7]), sigma),
                               out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.sum(1), torch.zeros(1, 3), atol=1e-5, rtol=0)  # no net force


def test_radial_basis_is_gaussians_in_log_distance_spaced_by_their_width():
    rbf = pf.LogGaussianRBF(5, 0.5, 8.0)
    centres = np.linspace(np.log(0.5), np.log(8.0), 5)
    width = centres[1] - centres[0]
    far = 0.5 * np.exp(width * np.sqrt(61.0))  # ≈ 112 Å: exponent 30.5 for the first centre
    d = torch.tensor([[0.5], [1.3], [8.0], [0.0], [far]])  # [E, 1]
    out = rbf(d)
    assert out.shape == (5, 1, 5) and rbf.n_rbf == 5
    log_d = np.log([0.5, 1.3, 8.0, 1e-6, far])[:, None]  # d = 0 counts as 1e-6 Å
    expected = np.exp(-0.5 * ((log_d - centres) / width) ** 2)
    expected[0.5 * ((log_d - centres) / width) ** 2 >= 30.0] = 0.0  # exact zeros, no denormals
    np.testing.assert_allclose(out[:, 0].double().numpy(), expected, rtol=1e-5, atol=0)
    assert out[3, 0].eq(0).all() and out[4, 0, 0] == 0 and out[4, 0, 1] > 0
    assert out[0, 0, 0] == 1


def test_every_pair_of_a_molecule_lies_inside_the_cutoff():
    # all pairs are edges, and the cosine cutoff sits at twice the radial basis' largest
    # distance (600 Å by default), so it weighs no pair of a molecule to zero
    config = pf.PseudoForceConfig(n_features=8, n_interactions=1, n_rbf=4, rbf_max=50.0)
    assert pf.PseudoForceNet(config).painn.cutoff_fn.cutoff.item() == 100.0


def test_noise_embedding_is_a_network_of_sines_and_cosines_of_log_sigma():
    torch.manual_seed(0)
    embedding = pf.NoiseEmbedding(n_features=6, n_frequencies=3)
    sigma = torch.tensor([0.02, 1.0, 7.5])
    phase = sigma.log()[:, None] * torch.tensor([0.5, 1.0, 1.5])  # [N, 3]
    expected = embedding.net(torch.cat([phase.sin(), phase.cos()], -1))
    out = embedding(torch.zeros(3, 6), {"sigma": sigma})
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, expected)


def test_molecule_mean_broadcasts_each_molecules_mean_to_its_atoms():
    values = torch.tensor([[1.0, 0, 0], [3, 2, 0], [5, 5, 5], [0, 1, 2], [1, 0, 4]])
    idx_m = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.tensor([[2.0, 1, 0]] * 2 + [[2.0, 2, 11 / 3]] * 3)
    torch.testing.assert_close(pf.molecule_mean(values, idx_m, 2), expected)
    # a third molecule without atoms changes nothing
    torch.testing.assert_close(pf.molecule_mean(values, idx_m, 3), expected)


@pytest.mark.parametrize("time_conditioned", [False, True])
def test_a_batch_of_molecules_is_each_molecule_on_its_own(time_conditioned):
    net = tiny_model(time_conditioned).net
    water, methane = molecule("H2O"), molecule("CH4")
    numbers = torch.as_tensor(np.concatenate([water.numbers, methane.numbers]))
    positions = torch.as_tensor(np.concatenate([water.positions, 1.2 * methane.positions]),
                                dtype=torch.float32)
    idx_m = torch.tensor([0] * 3 + [1] * 5)
    sigma = torch.tensor([0.3, 2.0]) if time_conditioned else None
    both = net(numbers, positions, idx_m, 2, sigma)
    for m, rows in enumerate((slice(0, 3), slice(3, 8))):
        alone = net(numbers[rows], positions[rows], torch.zeros(rows.stop - rows.start,
                                                                 dtype=torch.long), 1,
                    None if sigma is None else sigma[m:m + 1])
        torch.testing.assert_close(both[rows], alone, atol=1e-5, rtol=1e-4)
    if time_conditioned:  # the level matters, and only the molecule's own
        other = net(numbers, positions, idx_m, 2, torch.tensor([0.3, 0.05]))
        torch.testing.assert_close(other[:3], both[:3], atol=1e-5, rtol=1e-4)
        assert (other[3:] - both[3:]).abs().max() > 1e-4
        with pytest.raises(ValueError, match="^the time-conditioned baseline needs the noise "
                                             "level sigma$"):
            net(numbers, positions, idx_m, 2)


def test_baseline_denoiser_is_edm_preconditioning_with_sigma_floored_at_sigma_min():
    """x̂₀ = c_skip x + c_out v(x, σ), c_skip = σd²/(σ²+σd²), c_out = σ σd/√(σ²+σd²), with σ
    floored at sigma_min; the first len(x) rows of numbers; x's dtype kept."""
    model = tiny_model(time_conditioned=True)
    numbers = torch.tensor([[6, 8, 1, 1], [6, 8, 1, 1], [6, 8, 1, 1]])
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.001, 0.7], dtype=torch.float64)
    out = model.denoiser(numbers)(x, sigma)
    floored = torch.tensor([model.config.sigma_min, 0.7])  # [2]
    sd = model.config.sigma_data
    c_skip = (sd**2 / (floored**2 + sd**2))[:, None, None]
    c_out = (floored * sd / (floored**2 + sd**2).sqrt())[:, None, None]
    velocity = model._network(numbers[:2], x, floored)  # [2, 4, 3]
    assert out.dtype == velocity.dtype == torch.float64
    torch.testing.assert_close(out, c_skip * x + c_out * velocity, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(velocity, model._network(numbers[:2], x, floored * 3))


def test_check_numbers_returns_int64_and_names_unknown_elements():
    model = tiny_model()
    checked = model.check_numbers(np.array([6, 8], dtype=np.int32))  # two atoms are enough
    assert checked.dtype == np.int64 and checked.tolist() == [6, 8]
    unchecked = pf.PseudoForceField(model.net, None, {})  # no element list: anything goes
    assert unchecked.check_numbers([92, 1]).tolist() == [92, 1]
    with pytest.raises(ValueError, match=r"^element\(s\) S, Cl not among the model's elements "
                                         r"\(H, C, N, O, F\)$"):
        model.check_numbers([6, 17, 16, 1])
    for bad in ([6], [[6, 1], [1, 1]]):
        with pytest.raises(ValueError, match="at least 2 atoms"):
            model.check_numbers(bad)


def test_calculator_forces_are_the_models_pseudo_forces_and_energy_is_quadratic():
    model = tiny_model()
    atoms = molecule("CH3CH2OH")
    atoms.calc = model.calculator()
    expected = model.pseudo_forces(atoms.numbers, atoms.positions)
    np.testing.assert_allclose(atoms.get_forces(), expected, rtol=1e-6, atol=1e-7)
    assert atoms.get_potential_energy() == pytest.approx(0.5 * (expected**2).sum())
    assert atoms.calc.results["free_energy"] == atoms.calc.results["energy"]
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    assert atoms.calc.results["sigma_hat"] == pytest.approx(np.sqrt((expected**2).mean()))
    gpff = model.denoiser(torch.as_tensor(atoms.numbers[None]))
    x = torch.as_tensor(atoms.positions[None])
    np.testing.assert_allclose((gpff(x, torch.ones(1)) - x)[0].numpy(), expected, atol=1e-6)


class ExactPseudoForces:
    """The exact pseudo-forces of the quadratic pseudo-PES around x₀ (k = 1 eV/Å²)."""

    def __init__(self, reference):
        self.reference = reference

    def pseudo_forces(self, numbers, positions):
        return self.reference - positions


def test_fire_with_the_calculator_is_direct_denoising_and_reduces_sigma_hat():
    atoms = molecule("CH3CH2OH")
    reference = atoms.positions.copy()
    atoms.positions += np.random.default_rng(0).normal(scale=0.3, size=reference.shape)
    atoms.calc = PseudoForceCalculator(ExactPseudoForces(reference))
    atoms.get_forces()
    before = atoms.calc.results["sigma_hat"]  # ‖F‖/√(3A), Eq. 18
    FIRE(atoms, logfile=None).run(fmax=0.01, steps=500)
    atoms.get_forces()
    after = atoms.calc.results["sigma_hat"]
    assert before > 0.2 and after < 0.01 and after < before / 20
    np.testing.assert_allclose(atoms.positions, reference, atol=0.02)


def test_fix_atoms_hold_under_fire_with_the_calculator():
    atoms = molecule("CH3CH2OH")
    reference = atoms.positions.copy()
    atoms.positions += np.random.default_rng(1).normal(scale=0.3, size=reference.shape)
    start = atoms.positions.copy()
    atoms.set_constraint(FixAtoms(indices=[0, 1, 2]))
    atoms.calc = PseudoForceCalculator(ExactPseudoForces(reference))
    FIRE(atoms, logfile=None).run(fmax=0.01, steps=500)
    np.testing.assert_array_equal(atoms.positions[:3], start[:3])
    np.testing.assert_allclose(atoms.positions[3:], reference[3:], atol=0.02)


def test_baseline_is_not_a_force_field():
    with pytest.raises(ValueError, match=r"^the time-conditioned diffusion baseline needs a "
                                         r"noise level: it is not a force field \(only a GPFF is\)$"):
        tiny_model(time_conditioned=True).pseudo_forces([6, 1], [[0, 0, 0], [1.0, 0, 0]])


def test_pseudo_forces_of_a_batch_are_those_of_each_molecule_in_float64():
    model = tiny_model()
    atoms = molecule("CH3CH2OH")
    batch = atoms.positions[None] + np.random.default_rng(0).normal(0, 0.1, (3, len(atoms), 3))
    forces = model.pseudo_forces(atoms.numbers, batch)  # [3, A, 3]
    assert forces.shape == batch.shape and forces.dtype == np.float64
    for positions, expected in zip(batch, forces):
        single = model.pseudo_forces(atoms.numbers, positions.astype(np.float32))
        assert single.shape == positions.shape and single.dtype == np.float64
        np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(forces[0], forces[1])
    bad = batch.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"^positions contain NaN or inf$"):
        model.pseudo_forces(atoms.numbers, bad)


# ---- generation


@pytest.mark.parametrize("sampler", pf.SAMPLERS)
def test_generate_returns_molecules_of_the_formula(sampler):
    frames = tiny_model().generate("CH2O", 3, sampler=sampler, nfe=4, seed=0)
    assert [a.get_chemical_formula() for a in frames] == ["CH2O"] * 3
    assert all(0 < a.info["nfe"] <= 4 and np.isfinite(a.positions).all() for a in frames)
    np.testing.assert_allclose(frames[0].positions.mean(0), 0, atol=1e-5)


def test_the_shipped_models_load_with_their_training_records():
    # the pretrained GPFF (with its shape prior) and its baseline load offline, their metadata
    # agrees with the JSON training record beside them, and the GPFF generates a formula
    import json

    from ase_drift.datasets import bundled_path

    for name, kind in (("qm9", "gpff"), ("qm9-baseline", "baseline")):
        model = pf.PseudoForceField.load_pretrained(name)
        record = json.loads(bundled_path(f"gpff-{name}.json").read_text())
        assert model.metadata["training"]["steps"] == record["steps"] > 0
        assert model.config.time_conditioned == (kind == "baseline")
        assert (model.shape_prior is not None) == (kind == "gpff")
    frames = pf.PseudoForceField.load_pretrained().generate("C3H8O", 2, sampler="dd", nfe=8,
                                                             seed=0)  # the default is the GPFF
    assert [a.get_chemical_formula() for a in frames] == ["C3H8O"] * 2


def test_generate_is_reproducible_by_seed():
    model = tiny_model()
    one, two = (model.generate("C2H6O", 2, sampler="sdd", nfe=3, seed=5) for _ in range(2))
    np.testing.assert_array_equal(one[1].positions, two[1].positions)


def test_fixed_atoms_of_a_scaffold_do_not_move_in_generate():
    template = molecule("CH3CH2OH")
    template.set_constraint(FixAtoms(indices=[0, 1, 2]))
    for sampler in ("dd", "stochastic-heun"):
        frames = tiny_model().generate(template, 2, sampler=sampler, nfe=6, seed=1)
        for atoms in frames:
            np.testing.assert_array_equal(atoms.positions[:3].astype(np.float32),
                                          template.positions[:3].astype(np.float32))
            assert np.abs(atoms.positions[3:] - template.positions[3:]).max() > 1e-3
            assert isinstance(atoms.constraints[0], FixAtoms)


@pytest.mark.parametrize(("sampler", "adaptive", "shape"),
                         [("sdd", False, None), ("heun", True, None), ("dd", True, "disc")])
def test_generate_is_batches_of_generate_positions_seeded_by_their_first_index(sampler,
                                                                               adaptive, shape):
    """Molecules start..start+B−1 are one :func:`pf.generate_positions` run seeded
    seed + start, each centred, in the formula's order; ``info`` records the run."""
    model = tiny_model()
    model.shape_prior = small_shape_prior(4)
    numbers = pf.formula_numbers("CH2O")
    options = {"noise_scale": 0.3} if sampler == "sdd" else {}
    frames = model.generate("CH2O", 5, sampler=sampler, nfe=4, adaptive=adaptive, shape=shape,
                            seed=11, batch_size=2, **options)
    assert len(frames) == 5
    for start, count in ((0, 2), (2, 2), (4, 1)):
        run = pf.generate_positions(model, numbers, count, sampler, 4, adaptive, shape,
                                    seed=11 + start, **options)
        for k in range(count):
            atoms = frames[start + k]
            positions = run.x[k].double().numpy()
            np.testing.assert_array_equal(atoms.numbers, numbers)
            np.testing.assert_allclose(atoms.positions, positions - positions.mean(0),
                                       rtol=0, atol=1e-12)
            assert atoms.info == {"sampler": sampler, "nfe": int(run.nfe[k]),
                                  "sigma_hat": float(run.sigma_hat[k]), "adaptive": adaptive,
                                  "shape": shape or "none"}
            assert type(atoms.info["nfe"]) is int and not atoms.constraints


def test_generate_defaults_to_dd_at_64_nfe_with_fixed_steps_in_batches_of_256(monkeypatch):
    calls, seeds = [], []
    real = pf.generate_positions

    def spy(model, numbers, count, sampler, nfe, adaptive, shape, seed, **options):
        calls.append((count, sampler, nfe, adaptive, shape))
        seeds.append(seed)
        return real(model, numbers, count, sampler, 1, adaptive, shape, seed, **options)

    monkeypatch.setattr(pf, "generate_positions", spy)
    frames = tiny_model().generate("CH2O", 257)
    assert len(frames) == 257 and seeds[1] == seeds[0] + 256  # a fresh seed when none given
    assert calls == [(256, "dd", 64, False, None), (1, "dd", 64, False, None)]


def test_generate_refuses_a_bad_count_and_constraints_other_than_fix_atoms():
    from ase.constraints import FixBondLength

    model = tiny_model()
    for n in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match=f"^n must be a non-negative integer, got {n!r}$"):
            model.generate("CH4", n)
    assert model.generate("CH4", 0) == [] and len(model.generate("CH4", np.int64(1))) == 1
    template = molecule("CH3OH")
    template.set_constraint([FixAtoms(indices=[0]), FixBondLength(0, 1)])
    with pytest.raises(ValueError, match=r"^generate keeps FixAtoms constraints only, not "
                                         r"\['FixBondLengths'\]$"):
        model.generate(template, 1)
    template.set_constraint(FixAtoms(indices=[]))  # no fixed atom: the centred prior
    free = model.generate(template, 2, sampler="dd", nfe=2, seed=3)
    expected = model.generate("COH4", 2, sampler="dd", nfe=2, seed=3)
    assert [a.get_chemical_symbols() for a in free] == [list(template.symbols)] * 2
    np.testing.assert_array_equal(free[1].positions, expected[1].positions)
    assert not free[0].constraints


@pytest.mark.parametrize("formula", ["C4Xx", "", "C2H6Si"])
def test_bad_formula_is_a_clear_error(formula):
    with pytest.raises(ValueError, match="element|formula"):
        tiny_model().generate(formula, 1)


def test_bad_sampler_and_shape_without_prior_are_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="^unknown sampler 'euler'; choose one of dd, sdd, "
                                         "ancestral, heun, stochastic-heun$"):
        model.generate("CH4", 1, sampler="euler")
    with pytest.raises(ValueError, match="^unknown shape 'cube'; choose None or one of gmm, "
                                         "sphere, disc, rod$"):
        model.generate("CH4", 1, shape="cube")
    with pytest.raises(ValueError, match="shape prior"):
        model.generate("CH4", 1, shape="rod")
    with pytest.raises(ValueError, match="^shape constraints \\(DD\\+shape\\) need sampler "
                                         "'dd' or 'sdd'"):
        model.generate("CH4", 1, sampler="heun", shape="rod")


def prior_draw(seed: int, count: int, n_atoms: int) -> tuple[torch.Tensor, torch.Generator]:
    """generate's standard-normal draw ``[count, A, 3]`` and its generator, for replays."""
    rng = torch.Generator().manual_seed(seed)
    return torch.randn((count, n_atoms, 3), generator=rng), rng


GENERATE_CASES = [
    ("dd", False, {"tolerance": 1e3}, lambda d, x, rng: samplers.dd_sample(d, x, 5)),
    ("dd", True, {"tolerance": 0.3},
     lambda d, x, rng: samplers.dd_sample(d, x, 5, tolerance=0.3)),
    ("dd", True, {}, lambda d, x, rng: samplers.dd_sample(d, x, 5, tolerance=0.005)),
    ("dd", False, {"step_size": 1.4},
     lambda d, x, rng: samplers.dd_sample(d, x, 5, step_size=1.4)),
    ("sdd", False, {"noise_scale": 0.3},
     lambda d, x, rng: samplers.sdd_sample(d, x, 5, rng, noise_scale=0.3)),
    ("sdd", False, {"step_size": 0.7},
     lambda d, x, rng: samplers.sdd_sample(d, x, 5, rng, step_size=0.7)),
    ("dd", False, {"step_size": 1.4, "step_size_below": 1e-6},
     lambda d, x, rng: samplers.dd_sample(d, x, 5, step_size=1.4, step_size_below=1e-6)),
    ("sdd", False, {"step_size": 1.4, "step_size_below": 1e-6},
     lambda d, x, rng: samplers.sdd_sample(d, x, 5, rng, step_size=1.4, step_size_below=1e-6)),
    ("sdd", False, {"step_size": 1.6, "max_overshoot": 0.05},
     lambda d, x, rng: samplers.sdd_sample(d, x, 5, rng, step_size=1.6, max_overshoot=0.05)),
    ("dd", False, {"max_step_ratio": 0.01}, lambda d, x, rng: samplers.dd_sample(
        samplers.size_trust_region(d, 0.01), x, 5)),
    ("ancestral", True, {"sigma_min": 0.05, "rho": 5.0},
     lambda d, x, rng: samplers.ancestral_sample(d, x, 5, rng, sigma_min=0.05, sigma_max=4.0,
                                                 rho=5.0, adaptive=True)),
    ("heun", False, {}, lambda d, x, rng: samplers.heun_sample(
        d, x, 5, sigma_min=TINY.sigma_min, sigma_max=4.0)),
    ("heun", True, {"target_steps": 3}, lambda d, x, rng: samplers.heun_sample(
        d, x, 5, sigma_min=TINY.sigma_min, sigma_max=4.0, adaptive=True, target_steps=3)),
    ("stochastic-heun", False, {"s_churn": 0.6},
     lambda d, x, rng: samplers.stochastic_heun_sample(
         d, x, 5, rng, sigma_min=TINY.sigma_min, sigma_max=4.0, s_churn=0.6)),
]


@pytest.mark.parametrize(("sampler", "adaptive", "options", "direct"), GENERATE_CASES)
def test_generate_is_the_centred_isotropic_prior_then_the_named_sampler(sampler, adaptive,
                                                                        options, direct):
    """x = σ_max·z centred per molecule (z ~ N(0, I) from the seed), then the sampler with the
    options given (the EDM samplers' σ_max is the prior's), one generator throughout."""
    model, numbers = tiny_model(), pf.formula_numbers("CH2O")
    run = pf.generate_positions(model, numbers, 3, sampler, 5, adaptive, None, seed=4,
                                sigma_max=4.0, **options)
    z, rng = prior_draw(4, 3, 4)
    x = 4.0 * z
    x = x - x.mean(1, keepdim=True)
    expected = direct(model.denoiser(torch.as_tensor(numbers).expand(3, -1)), x, rng)
    assert torch.equal(run.x, expected.x) and torch.equal(run.nfe, expected.nfe)


def test_generate_uses_the_configured_noise_range_and_a_separate_prior_width():
    model, numbers = tiny_model(), pf.formula_numbers("CH2O")
    run = pf.generate_positions(model, numbers, 2, "heun", 3, False, None, seed=1,
                                prior_sigma=2.0)
    z, _ = prior_draw(1, 2, 4)
    x = 2.0 * z
    x = x - x.mean(1, keepdim=True)
    expected = samplers.heun_sample(model.denoiser(torch.as_tensor(numbers).expand(2, -1)), x,
                                    3, sigma_min=TINY.sigma_min, sigma_max=2.0, rho=7.0)
    assert torch.equal(run.x, expected.x)
    dd = pf.generate_positions(model, numbers, 2, "dd", 3, False, None, seed=1)
    x = TINY.sigma_max * z
    x = x - x.mean(1, keepdim=True)
    assert torch.equal(dd.x, samplers.dd_sample(
        model.denoiser(torch.as_tensor(numbers).expand(2, -1)), x, 3).x)
    with pytest.raises(TypeError, match="^unknown generate option\\(s\\): colour, size"):
        pf.generate_positions(model, numbers, 2, "dd", 3, False, None, seed=1, colour=1, size=2)
    for sampler, adaptive in (("heun", False), ("dd", True)):
        with pytest.raises(ValueError, match="target_steps .* needs adaptive=True and an EDM"):
            pf.generate_positions(model, numbers, 2, sampler, 3, adaptive, None, seed=1,
                                  target_steps=2)


@pytest.mark.parametrize(("sampler", "prior_sigma"), [("dd", None), ("dd", 0.5), ("sdd", 0.5)])
def test_scaffold_prior_adds_noise_to_the_free_atoms_only(sampler, prior_sigma):
    """DD+scaffold: x = template + σ z on the free atoms (σ = prior_sigma, default 1 Å), no
    centring, and the fixed atoms are handed to the sampler."""
    template = molecule("CH3CH2OH")
    fixed = np.zeros(len(template), dtype=bool)
    fixed[:3] = True
    model = tiny_model()
    options = {} if prior_sigma is None else {"prior_sigma": prior_sigma}
    run = pf.generate_positions(model, template.numbers, 2, sampler, 2, False, None, seed=3,
                                template=template, fixed=fixed, **options)
    z, rng = prior_draw(3, 2, len(template))
    start = torch.as_tensor(template.positions, dtype=torch.float32)
    x = start + (prior_sigma or 1.0) * z * torch.as_tensor(~fixed)[:, None]
    denoiser = model.denoiser(torch.as_tensor(template.numbers).expand(2, -1))
    expected = (samplers.dd_sample(denoiser, x, 2, fixed=fixed) if sampler == "dd"
                else samplers.sdd_sample(denoiser, x, 2, rng, fixed=fixed))
    assert torch.equal(run.x, expected.x)


def positions_set(molecules: list[np.ndarray]):
    """A QM9-like set (``n_atoms``, ``set[m] -> (numbers, positions)``) of bare positions, all
    :func:`pf.fit_shape_prior` reads."""

    class Positions:
        n_atoms = np.array([len(m) for m in molecules])

        def __getitem__(self, m):
            return None, molecules[m]

    return Positions()


def small_shape_prior(n_atoms: int) -> dict:
    rng = np.random.default_rng(0)
    molecules = [rng.normal(size=(n_atoms, 3)) * [1.5, 1.0, 0.6] for _ in range(40)]
    return pf.fit_shape_prior(positions_set(molecules), components=2, seed=0)


@pytest.mark.parametrize("sampler", ["dd", "sdd"])
def test_shape_prior_draws_shaped_noise_and_constrains_with_decaying_strictness(sampler):
    """DD+shape (Eq. 16): x = z·√τ per principal axis (τ from :func:`shape_variances` with the
    seed), centred, and before step k the constraint at strictness s(1 − k/K)."""
    model = tiny_model()
    model.shape_prior = small_shape_prior(4)
    numbers = pf.formula_numbers("CH2O")
    run = pf.generate_positions(model, numbers, 3, sampler, 4, False, "disc", seed=6,
                                strictness=0.8)
    target = torch.as_tensor(pf.shape_variances(model, 4, 3, "disc", np.random.default_rng(6)),
                             dtype=torch.float32)
    z, rng = prior_draw(6, 3, 4)
    x = z * target.sqrt()[:, None, :]
    x = x - x.mean(1, keepdim=True)
    denoiser = model.denoiser(torch.as_tensor(numbers).expand(3, -1))
    seen = []

    def constrain(y, step):
        seen.append(step)
        return samplers.shape_constraint(y, target[:len(y)], 0.8 * (1 - step / 4))

    expected = (samplers.dd_sample(denoiser, x, 4, constrain=constrain) if sampler == "dd"
                else samplers.sdd_sample(denoiser, x, 4, rng, constrain=constrain))
    assert torch.equal(run.x, expected.x) and seen == [0, 1, 2, 3]


def test_shape_archetypes_split_the_drawn_total_variance():
    """Rod, disc and sphere keep each draw's total variance and split it as their relative
    variances, the disc's third axis raised to 2 % (then normalised); "gmm" keeps the drawn
    principal variances, largest first."""
    model = tiny_model()
    model.shape_prior = small_shape_prior(5)
    drawn = np.diagonal(pf.sample_shape_covariances(model.shape_prior, 5, 50,
                                                    np.random.default_rng(3)), axis1=1, axis2=2)
    gmm = pf.shape_variances(model, 5, 50, "gmm", np.random.default_rng(3))
    np.testing.assert_allclose(gmm, -np.sort(-drawn, axis=1))
    for shape, relative in (("rod", [0.8, 0.1, 0.1]), ("sphere", [1 / 3] * 3),
                            ("disc", np.array([0.5, 0.5, 0.02]) / 1.02)):
        variances = pf.shape_variances(model, 5, 50, shape, np.random.default_rng(3))
        np.testing.assert_allclose(variances, drawn.sum(1, keepdims=True) * relative)


def test_principal_covariance_is_the_sorted_diagonal_of_the_centred_covariance():
    """A rectangle of half-sides 2 and 1 Å, rotated and moved away from the origin: principal
    variances 2², 1² and (planar) the floor 10⁻⁶ Å², largest first."""
    corners = np.array([[2.0, 1, 0], [-2, 1, 0], [2, -1, 0], [-2, -1, 0]])
    rotated = corners @ random_rotation(3).T + [4.0, -7.0, 1.5]
    np.testing.assert_allclose(pf.principal_covariance(rotated), np.diag([4.0, 1.0, 1e-6]),
                               atol=1e-12)


def test_shape_prior_fits_each_atom_count_on_its_own():
    """An atom count seen once is a point mass widened by reg_covar·I; one seen often gets the
    requested number of components (fewer when it has fewer molecules); the fit is seeded."""
    rng = np.random.default_rng(1)
    molecules = ([rng.normal(size=(3, 3))] + [rng.normal(size=(4, 3)) for _ in range(3)]
                 + [rng.normal(size=(5, 3)) * [2, 1, 0.5] for _ in range(30)]
                 + [rng.normal(size=(6, 3)) for _ in range(2)])
    prior = pf.fit_shape_prior(positions_set(molecules), components=4, seed=2, reg_covar=1e-3)
    assert prior["3"] == {"weights": [1.0],
                          "means": [pf.cholesky_log_vector(pf.principal_covariance(
                              molecules[0])).tolist()],
                          "covariances": [(1e-3 * np.eye(6)).tolist()]}
    assert len(prior["4"]["weights"]) == 3 and len(prior["5"]["weights"]) == 4
    assert len(prior["6"]["weights"]) == 2  # two molecules: a mixture, not a point mass
    default = pf.fit_shape_prior(positions_set(molecules))
    assert len(default["5"]["weights"]) == 5  # the paper's 5 components
    assert min(np.linalg.eigvalsh(np.asarray(prior["5"]["covariances"])).ravel()) >= 1e-3
    assert pf.fit_shape_prior(positions_set(molecules), components=4, seed=2,
                              reg_covar=1e-3) == prior


def test_formula_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="^need a chemical formula such as 'C4H10O', got 5"):
        pf.formula_numbers(5)
    with pytest.raises(ValueError, match="^cannot parse the formula 'C2\\('"):
        pf.formula_numbers("C2(")
    with pytest.raises(ValueError, match="^the formula 'CQqZz' has unknown element\\(s\\) Qq, Zz"):
        pf.formula_numbers("CQqZz")
    assert pf.formula_numbers(" CH4 ").tolist() == [6, 1, 1, 1, 1]


# ---- shape prior (paper A.5, A.6)


def test_cholesky_log_vector_round_trips_and_any_vector_is_a_covariance():
    covariance = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, 0.3], [0.5, 0.3, 1.0]])
    np.testing.assert_allclose(pf.covariance_from_vector(pf.cholesky_log_vector(covariance)),
                               covariance, atol=1e-12)
    vectors = np.random.default_rng(0).normal(size=(100, 6)) * 2
    assert (np.linalg.eigvalsh(pf.covariance_from_vector(vectors)) > 0).all()


def test_shape_prior_reproduces_principal_variances_and_shapes_the_prior():
    rng = np.random.default_rng(0)
    scales = np.array([2.0, 1.0, 0.5])  # a prolate family of 6-atom "molecules"
    molecules = [rng.normal(size=(6, 3)) * scales for _ in range(400)]
    prior = pf.fit_shape_prior(positions_set(molecules), seed=0)
    sampled = pf.sample_shape_covariances(prior, 6, 2000, np.random.default_rng(1))
    observed = np.mean([np.diag(pf.principal_covariance(m)) for m in molecules], axis=0)
    np.testing.assert_allclose(np.diagonal(sampled, axis1=1, axis2=2).mean(0), observed,
                               rtol=0.1)
    with pytest.raises(ValueError, match="atoms"):
        pf.sample_shape_covariances(prior, 7, 1, rng)
    model = tiny_model()
    model.shape_prior = prior
    variances = pf.shape_variances(model, 6, 500, "rod", np.random.default_rng(2))
    np.testing.assert_allclose(variances / variances.sum(1, keepdims=True),
                               np.tile([0.8, 0.1, 0.1], (500, 1)), atol=1e-12)
    frames = model.generate("CH4O", 2, sampler="sdd", nfe=3, shape="gmm", seed=0)
    assert len(frames) == 2


# ---- files and the command line


def test_a_field_is_frozen_for_inference_and_its_repr_names_its_kind():
    """Generation never trains the field: its weights need no gradients; repr names GPFF or
    the EDM baseline, the network's size and the elements."""
    for time_conditioned, kind in ((False, "GPFF"), (True, "EDM baseline")):
        model = tiny_model(time_conditioned)
        assert not any(p.requires_grad for p in model.net.parameters())
        assert repr(model) == f"PseudoForceField({kind}, PaiNN 16x2, elements {ELEMENTS})"


def with_mismatched_weights(path):
    """A copy of the checkpoint at ``path`` (``mismatch.pt`` beside it) whose stored
    configuration asks for an 8-feature network while the weights are of the 16-feature one."""
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["n_features"] = 8
    torch.save(payload, path.parent / "mismatch.pt")
    return path.parent / "mismatch.pt"


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = tiny_model()
    model.shape_prior = {"5": {"weights": [1.0], "means": [[0.0] * 6],
                               "covariances": [np.eye(6).tolist()]}}
    path = model.save(tmp_path / "gpff.pt")
    loaded = pf.PseudoForceField.load(path)
    atoms = molecule("CH4")
    np.testing.assert_array_equal(loaded.pseudo_forces(atoms.numbers, atoms.positions),
                                  model.pseudo_forces(atoms.numbers, atoms.positions))
    assert loaded.shape_prior == model.shape_prior and loaded.config == model.config
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError):
        pf.PseudoForceField.load(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "other.pt", {}, {}, {"kind": "drift-sampler"})
    with pytest.raises(CheckpointError, match="'drift-sampler' checkpoint, not a 'gpff'"):
        pf.PseudoForceField.load(tmp_path / "other.pt")


def test_checkpoint_keeps_metadata_and_refuses_non_finite_or_mismatched_weights(tmp_path):
    model = tiny_model(time_conditioned=True)
    model.metadata = {"elements": ELEMENTS, "training": {"steps": 3}}
    loaded = pf.PseudoForceField.load(model.save(tmp_path / "baseline.pt"))
    assert loaded.metadata == model.metadata and loaded.shape_prior is None  # kind kept apart
    assert loaded.config.time_conditioned and loaded.kind == "gpff"
    x = torch.as_tensor(molecule("CH4").positions[None], dtype=torch.float32)
    numbers = torch.as_tensor(molecule("CH4").numbers[None])
    torch.testing.assert_close(loaded.denoiser(numbers)(x, torch.tensor([0.4])),
                               model.denoiser(numbers)(x, torch.tensor([0.4])), rtol=0, atol=0)
    broken = tiny_model()
    with torch.no_grad():
        next(broken.net.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match=r"not saving PseudoForceField\(GPFF, PaiNN 16x2, "
                                         r"elements \[1, 6, 7, 8, 9\]\): its weights are not finite"):
        broken.save(tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()
    mismatch = with_mismatched_weights(tiny_model().save(tmp_path / "gpff.pt"))
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit the stored "
                                              "configuration"):
        pf.PseudoForceField.load(mismatch)
    with pytest.raises(ValueError, match=r"unknown pretrained model 'qm7'; available: qm9, "
                                         r"qm9-baseline"):
        pf.PseudoForceField.load_pretrained("qm7")


def test_cli_generate_writes_n_molecules_of_the_formula(tmp_path, capsys):
    import ase.io

    model = tiny_model().save(tmp_path / "gpff.pt")
    out = tmp_path / "out.extxyz"
    code = main(["generate", "C3H8O", "-n", "3", "--sampler", "dd", "--adaptive", "--nfe", "4",
                 "--model", str(model), "--seed", "2", "-o", str(out)])
    assert code == 0
    frames = ase.io.read(out, index=":")
    assert len(frames) == 3 and {a.get_chemical_formula() for a in frames} == {"C3H8O"}
    assert frames[0].info["seed"] == 2
    code = main(["generate", "C3Qq", "-n", "1", "--model", str(model), "-o", str(out)])
    assert code == 2 and "element" in capsys.readouterr().err


def test_cli_generate_passes_the_step_size_and_prior_width(tmp_path, capsys):
    import ase.io

    path = tiny_model().save(tmp_path / "gpff.pt")
    out = tmp_path / "out.extxyz"
    code = main(["generate", "C3H8O", "-n", "2", "--sampler", "sdd", "--nfe", "3",
                 "--step-size", "1.4", "--step-size-below", "1e-6", "--prior-sigma", "2",
                 "--max-overshoot", "0.3", "--max-step-ratio", "0.05", "--noise-scale", "0.25",
                 "--model", str(path),
                 "--seed", "5", "-o", str(out)])
    assert code == 0
    frames = ase.io.read(out, index=":")
    expected = pf.PseudoForceField.load(path).generate("C3H8O", 2, sampler="sdd", nfe=3,
                                                       seed=5, step_size=1.4,
                                                       step_size_below=1e-6, prior_sigma=2.0,
                                                       max_overshoot=0.3, max_step_ratio=0.05,
                                                       noise_scale=0.25)
    for written, atoms in zip(frames, expected):
        assert np.allclose(written.positions, atoms.positions, atol=1e-6)
        assert written.info["step_size"] == 1.4 and written.info["prior_sigma"] == 2.0
        assert written.info["step_size_below"] == 1e-6 and written.info["max_overshoot"] == 0.3
        assert written.info["noise_scale"] == 0.25
        assert written.info["max_step_ratio"] == 0.05
    default = pf.PseudoForceField.load(path).generate("C3H8O", 2, sampler="sdd", nfe=3, seed=5)
    assert not np.allclose(default[0].positions, expected[0].positions, atol=1e-3)
    code = main(["generate", "C3H8O", "-n", "1", "--step-size", "2.5", "--model", str(path),
                 "-o", str(out)])
    assert code == 2 and "step_size" in capsys.readouterr().err


def test_cli_generate_passes_the_adaptive_target_schedule(tmp_path):
    import ase.io

    path = tiny_model().save(tmp_path / "gpff.pt")
    out = tmp_path / "out.extxyz"
    code = main(["generate", "C3H8O", "-n", "2", "--sampler", "heun", "--adaptive", "--nfe",
                 "8", "--target-steps", "4", "--model", str(path), "--seed", "5", "-o", str(out)])
    assert code == 0
    expected = pf.PseudoForceField.load(path).generate("C3H8O", 2, sampler="heun", nfe=8,
                                                       adaptive=True, seed=5, target_steps=4)
    for written, atoms in zip(ase.io.read(out, index=":"), expected):
        assert np.allclose(written.positions, atoms.positions, atol=1e-6)
        assert written.info["target_steps"] == 4


def test_conformer_sampler_trains_samples_and_round_trips(tmp_path):
    from ase_drift.data import Conformations
    from ase_drift.sampler import Sampler

    ethanol = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    frames = ethanol.positions + 0.05 * rng.normal(size=(20, len(ethanol), 3))
    data = Conformations(ethanol.numbers, frames)
    sampler = pf.PseudoForceField.train_conformers(
        data, pf.TrainingConfig(steps=3, minutes=None, batch_size=4), TINY, progress=False,
        sampler="sdd", nfe=3)
    assert isinstance(sampler, Sampler)
    positions = sampler.sample_positions(5, seed=1)
    assert positions.shape == (5, 9, 3) and np.isfinite(positions).all()
    loaded = pf.ConformerSampler.load(sampler.save(tmp_path / "conformers.pt"))
    np.testing.assert_array_equal(loaded.sample_positions(5, seed=1), positions)
    assert [a.get_chemical_formula() for a in loaded.sample(ethanol, 2, seed=0)] == ["C2H6O"] * 2


def test_train_conformers_trains_on_each_frame_as_a_molecule(monkeypatch):
    """Each conformation is one reference molecule; defaults: 2,000 steps of the default
    network, or the base's network and configuration; the elements are the molecule's and
    the base's; the record, frame count and temperature go into the metadata."""
    from ase_drift.data import Conformations

    calls = []

    def fake_training(molecules, config, training, progress, initial):
        calls.append((molecules, config, training, progress, initial))
        return pf.PseudoForceNet(TINY), {"steps": 7, "wall_time_s": 1.5, "history": [1.0]}

    monkeypatch.setattr(pf, "train_pseudo_force_field", fake_training)
    ethanol = molecule("CH3CH2OH")
    frames = ethanol.positions + 0.05 * np.random.default_rng(0).normal(size=(3, 9, 3))
    data = Conformations(ethanol.numbers, frames, temperature_K=450.0)
    sampler = pf.PseudoForceField.train_conformers(data, progress=False)
    molecules, config, training, progress, initial = calls[-1]
    assert len(molecules) == 3 and np.array_equal(molecules.index, np.arange(3))
    for m in range(3):
        np.testing.assert_array_equal(molecules[m][0], ethanol.numbers)
        np.testing.assert_array_equal(molecules[m][1], frames[m].astype(np.float32))
    assert training == pf.TrainingConfig(steps=2000, minutes=None)
    assert config == pf.PseudoForceConfig() and progress is False and initial is None
    assert sampler.field.metadata == {"elements": [1, 6, 8]}
    assert sampler.sampling == {"sampler": "stochastic-heun", "nfe": 64}
    assert sampler.metadata == {"numbers": ethanol.numbers.tolist(),
                                "training": {"steps": 7, "wall_time_s": 1.5},
                                "training_frames": 3, "fine_tuned": False,
                                "temperature_K": 450.0, "units": {"positions": "Å"}}
    np.testing.assert_array_equal(sampler.numbers, ethanol.numbers)

    base = tiny_model()
    base.metadata["elements"] = [1, 6, 7]
    short = pf.TrainingConfig(steps=2, minutes=None)
    tuned = pf.PseudoForceField.train_conformers(data, short, base=base, sampler="sdd", nfe=9,
                                                 noise_scale=0.2)
    _, config, training, progress, initial = calls[-1]
    assert config == TINY and training == short and progress is True and initial is base.net
    assert tuned.field.metadata == {"elements": [1, 6, 7, 8]}
    assert tuned.metadata["fine_tuned"] is True
    assert tuned.sampling == {"sampler": "sdd", "nfe": 9, "noise_scale": 0.2}
    other = replace(TINY, n_rbf=8)
    pf.PseudoForceField.train_conformers(data, short, other, base=base)
    assert calls[-1][1] == other
    # any object with numbers and positions will do; its numbers become int64
    plain = SimpleNamespace(numbers=ethanol.numbers.astype(np.int32), positions=frames)
    assert pf.PseudoForceField.train_conformers(plain, short).metadata["temperature_K"] is None
    assert calls[-1][0].numbers.dtype == np.int64


def test_conformer_sampler_batches_are_seeded_generate_positions_runs_centred(tmp_path):
    """Each batch of n is one :func:`pf.generate_positions` run of the stored settings (call
    options override them), seeded by a draw from the sampler's generator, centred."""
    numbers = pf.formula_numbers("CH2O")
    sampling = {"sampler": "sdd", "nfe": 3, "noise_scale": 0.3}
    sampler = pf.ConformerSampler(tiny_model(), numbers, sampling,
                                  {"numbers": numbers.tolist(), "temperature_K": 300.0})
    sampler.field.metadata["elements"] = [1, 6, 8]
    sampler.batch_size = 2
    assert repr(sampler) == "ConformerSampler(CH2O, GPFF, sdd 3 NFE)"
    assert sampler.scale == 1.0 and sampler.config is sampler.field.config  # positions in Å
    cases = ((sampling, {}, "sdd", 3, False, {"noise_scale": 0.3}),
             ({"sampler": "sdd", "nfe": 3}, {"nfe": 2, "sampler": "dd", "adaptive": True},
              "dd", 2, True, {}),
             ({"sampler": "heun", "nfe": 4}, {}, "heun", 4, False, {}))  # fixed steps unless set
    for stored, options, name, nfe, adaptive, extra in cases:
        sampler.sampling = stored
        positions = sampler.sample_positions(3, seed=4, **options)
        rng = torch.Generator().manual_seed(4)
        expected = []
        for count in (2, 1):
            seed = int(torch.randint(0, 2**62, (1,), generator=rng))
            run = pf.generate_positions(sampler.field, numbers, count, name, nfe, adaptive, None,
                                        seed, **extra)
            expected.append((run.x - run.x.mean(1, keepdim=True)).numpy())
        assert positions.dtype == np.float32
        np.testing.assert_array_equal(positions, np.concatenate(expected))
        assert sampler.sampling == stored  # options of one call are not kept
    sampler.sampling = sampling
    loaded = pf.ConformerSampler.load(sampler.save(tmp_path / "conformers.pt"))
    assert loaded.sampling == sampling and loaded.temperature_K == 300.0
    assert loaded.metadata == {"numbers": numbers.tolist(), "temperature_K": 300.0}
    assert loaded.field.metadata["elements"] == [1, 6, 8]
    assert loaded.field.config == TINY and loaded.kind == "gpff-conformers"
    np.testing.assert_array_equal(loaded.numbers, numbers)
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit"):
        pf.ConformerSampler.load(with_mismatched_weights(tmp_path / "conformers.pt"))


def test_ase_drift_load_reads_both_gpff_kinds_in_a_fresh_process(tmp_path):
    """ase_drift.load knows 'gpff' and 'gpff-conformers' without the caller importing the
    pseudoforce module first (a new interpreter: the registry starts empty)."""
    import subprocess
    import sys

    path = tiny_model().save(tmp_path / "gpff.pt")
    code = ("import ase_drift, sys; m = ase_drift.load(sys.argv[1]); "
            "from ase_drift.sampler import sampler_kinds; "
            "print(type(m).__name__, sorted(k for k in sampler_kinds() if 'gpff' in k))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["PseudoForceField", "['gpff',", "'gpff-conformers']"]


def ethanol_set(copies: int = 4, seed: int = 0) -> QM9:
    """A QM9-like set of ``copies`` slightly different ethanol geometries."""
    ethanol = molecule("CH3CH2OH")
    noise = 0.05 * np.random.default_rng(seed).normal(size=(copies * len(ethanol), 3))
    return QM9(np.tile(ethanol.numbers, copies), np.tile(ethanol.positions, (copies, 1)) + noise,
               np.arange(copies + 1) * len(ethanol), np.arange(copies))


def test_fine_tuning_may_change_the_training_noise_but_not_the_network():
    """A further stage trains the initial weights with its own noise levels; a configuration of
    another network is refused instead of being silently replaced."""
    base = tiny_model()
    before = {k: v.clone() for k, v in base.net.state_dict().items()}
    molecules = ethanol_set()
    training = pf.TrainingConfig(steps=2, minutes=None, batch_size=2)
    low_noise = replace(base.config, p_mean=-1.2, p_std=0.5)
    net, record = pf.train_pseudo_force_field(molecules, low_noise, training, progress=False,
                                              initial=base.net)
    assert net.config == low_noise and record["steps"] == 2
    assert base.net.config == TINY  # the initial net is left as it was, weights and all
    for name, value in base.net.state_dict().items():
        assert torch.equal(value, before[name]), name
    changed = [not torch.equal(a, b) for a, b in zip(net.parameters(), base.net.parameters())]
    assert any(changed)  # trained from the initial weights, which it loaded
    with pytest.raises(ValueError, match="does not describe the initial net"):
        pf.train_pseudo_force_field(molecules, replace(low_noise, n_features=8), training,
                                    progress=False, initial=base.net)


# ---- the training loop: budget, schedule, EMA, checkpoints


def test_learning_rate_decays_by_a_half_cosine_to_five_percent():
    assert pf.cosine_learning_rate(2.0, 0.0) == pytest.approx(2.0)
    assert pf.cosine_learning_rate(2.0, 0.5) == pytest.approx(2.0 * (0.05 + 0.95 / 2))
    assert pf.cosine_learning_rate(2.0, 1.0) == pytest.approx(0.1)
    assert pf.cosine_learning_rate(1.0, 0.25) == pytest.approx(0.05 + 0.95 * (2 + 2**0.5) / 4)


def test_budget_fraction_is_the_further_of_steps_and_time():
    both = pf.TrainingConfig(steps=100, minutes=2.0)
    assert pf.budget_fraction(both, 50, 30.0) == pytest.approx(0.5)  # steps ahead
    assert pf.budget_fraction(both, 10, 90.0) == pytest.approx(0.75)  # time ahead
    assert pf.budget_fraction(pf.TrainingConfig(steps=None, minutes=2.0), 10**6, 60.0) == (
        pytest.approx(0.5))
    assert pf.budget_fraction(pf.TrainingConfig(steps=8, minutes=None), 2, 10**6) == 0.25


def test_ema_decay_warms_up_to_its_configured_value():
    assert pf.ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert pf.ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert pf.ema_decay_at(10_000, 0.999) == 0.999


def trainer_checkpoint(path) -> dict:
    from ase_drift.checkpoint import load_checkpoint

    return load_checkpoint(path, kind="gpff-trainer")


def test_one_step_updates_the_average_by_the_warm_up_decay(tmp_path):
    """After one step the EMA is 0.1·initial + 0.9·trained (decay (1+0)/(10+0)), the fresh net is
    drawn from the training seed, and the optimiser ran at the configured rate and decay."""
    training = pf.TrainingConfig(steps=1, minutes=None, batch_size=2, seed=5,
                                 learning_rate=3e-3, weight_decay=0.02)
    ema, _ = pf.train_pseudo_force_field(ethanol_set(), TINY, training, progress=False,
                                         checkpoint=str(tmp_path / "run.ckpt"))
    torch.manual_seed(5)
    initial = pf.PseudoForceNet(TINY).state_dict()
    payload = trainer_checkpoint(tmp_path / "run.ckpt")
    trained = payload["state_dict"]["net"]
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(value, 0.1 * initial[name] + 0.9 * trained[name])
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    group = payload["state_dict"]["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(3e-3) and group["weight_decay"] == 0.02
    assert not any(p.requires_grad for p in ema.parameters())


def test_interrupted_training_resumes_exactly_from_its_checkpoint(tmp_path, monkeypatch):
    """A run stopped after 3 of 4 steps and started again with the same checkpoint ends with
    the same weights, history and schedule as one that was never stopped; every checkpoint
    records the EMA's validation loss."""
    molecules = ethanol_set()
    training = pf.TrainingConfig(steps=4, minutes=None, batch_size=2, checkpoint_minutes=0.0,
                                 learning_rate=1e-2)
    straight, straight_record = pf.train_pseudo_force_field(
        molecules, TINY, training, progress=False, validation=molecules,
        checkpoint=str(tmp_path / "straight.ckpt"))

    real_loss, calls = pf.training_loss, []

    def stopping_loss(*args):
        if torch.is_grad_enabled():  # a training step, not a validation
            if len(calls) == 3:
                raise KeyboardInterrupt
            calls.append(1)
        return real_loss(*args)

    path = str(tmp_path / "stopped.ckpt")
    monkeypatch.setattr(pf, "training_loss", stopping_loss)
    with pytest.raises(KeyboardInterrupt):
        pf.train_pseudo_force_field(molecules, TINY, training, progress=False,
                                    validation=molecules, checkpoint=path)
    stopped = trainer_checkpoint(path)
    assert stopped["metadata"]["step"] == 3 and 0 < stopped["metadata"]["elapsed_s"] < 100
    save_checkpoint(path, stopped["config"], stopped["state_dict"],
                    {**stopped["metadata"], "elapsed_s": 1000.0})  # as if it had run 1000 s
    monkeypatch.setattr(pf, "training_loss", real_loss)
    resumed, record = pf.train_pseudo_force_field(molecules, TINY, training, progress=False,
                                                  validation=molecules, checkpoint=path)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert record["steps"] == 4 == straight_record["steps"]
    assert 1000.0 <= record["wall_time_s"] < 1100  # the time counts on from the checkpoint's
    assert isinstance(record["wall_time_s"], float)
    assert record["wall_time_s"] == round(record["wall_time_s"], 1)
    assert record["history"]["validation_step"] == [1, 2, 3, 4]
    assert record["history"] == straight_record["history"]
    assert record["history"]["validation_loss"][-1] == pytest.approx(
        pf.validation_loss(resumed, molecules))
    payload = trainer_checkpoint(path)
    assert payload["metadata"]["step"] == 4
    assert payload["config"]["model"] == TINY.as_dict()
    assert payload["config"]["training"] == training.as_dict()
    group = payload["state_dict"]["optimizer"]["param_groups"][0]  # the last step's rate
    assert group["lr"] == pytest.approx(pf.cosine_learning_rate(1e-2, 3 / 4))
    model_file = str(pf.PseudoForceField(resumed, None, {}).save(tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match="gpff-trainer"):  # not a trainer checkpoint
        pf.train_pseudo_force_field(molecules, TINY, training, progress=False,
                                    checkpoint=model_file)


def test_checkpoints_wait_for_their_period_and_the_last_step(tmp_path):
    molecules = ethanol_set()
    training = pf.TrainingConfig(steps=3, minutes=None, batch_size=2, checkpoint_minutes=60.0)
    _, record = pf.train_pseudo_force_field(molecules, TINY, training, progress=False,
                                            validation=molecules,
                                            checkpoint=str(tmp_path / "run.ckpt"))
    assert record["history"]["validation_step"] == [3]


def test_loss_history_holds_the_mean_of_each_50_steps(monkeypatch):
    real_loss, losses = pf.training_loss, []

    def recording_loss(*args):
        loss = real_loss(*args)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(pf, "training_loss", recording_loss)
    training = pf.TrainingConfig(steps=60, minutes=None, batch_size=1)
    _, record = pf.train_pseudo_force_field(ethanol_set(2), TINY, training, progress=False)
    assert record["history"]["step"] == [50]
    assert record["history"]["loss"] == [pytest.approx(np.mean(losses[:50]))]
    assert len(losses) == 60 and record["steps"] == 60


def test_a_time_budget_ends_training_and_gradients_are_clipped(monkeypatch):
    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm):
        norms.append(max_norm)
        return real_clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    training = pf.TrainingConfig(steps=None, minutes=1e-9, batch_size=1, grad_clip=0.5)
    _, record = pf.train_pseudo_force_field(ethanol_set(2), TINY, training, progress=False)
    assert record["steps"] == 1 and record["wall_time_s"] >= 0 and norms == [0.5]


def test_training_without_a_budget_or_with_a_nan_loss_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="^give steps or minutes"):
        pf.train_pseudo_force_field(ethanol_set(), TINY,
                                    pf.TrainingConfig(steps=None, minutes=None), progress=False)
    monkeypatch.setattr(pf, "training_loss",
                        lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="training loss is nan at step 0"):
        pf.train_pseudo_force_field(ethanol_set(), TINY,
                                    pf.TrainingConfig(steps=2, minutes=None), progress=False)
