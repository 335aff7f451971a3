"""The reusable checks in ase_drift.testing pass on correct inputs and fail, with a message, on
broken ones (a check that cannot fail checks nothing)."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from ase_drift.features import PairwiseDistances
from ase_drift.forces import CalculatorForces, ForceResult
from ase_drift.testing import (
    SIGMA_R,
    SIGMA_THETA,
    HarmonicTriatomic,
    assert_force_source_consistent,
    assert_invariant,
    assert_jacobian,
    biased_triatomic_positions,
    boltzmann_triatomic_positions,
    default_atol,
    metropolis,
    remove_rigid_motions,
    triatomic_internal_coordinates,
)

#: Statistical tests below pass when a KS p-value exceeds this. Under the null hypothesis (the
#: sampler is right) p is uniform on [0, 1], so each KS test fails a correct sampler with
#: probability 1e-4 over the random seed (as in ASE's test_position_distribution); the seeds
#: are fixed, so a given run is deterministic.
KS_P_MIN = 1e-4


def argon_cluster(n=6, seed=0):
    """``n`` atoms about 3.8 Å apart (no overlaps), positions ``[n, 3]`` Å."""
    rng = np.random.default_rng(seed)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])[:n]
    return 3.8 * grid + 0.2 * rng.normal(size=(n, 3))


class FlippedForces:
    """A ForceSource with the classic sign bug: returns +∇E instead of −∇E."""

    def __init__(self, source):
        self.source = source

    def compute(self, numbers, positions):
        result = self.source.compute(numbers, positions)
        return ForceResult(result.energies, -result.forces)


def test_default_tolerances():
    assert default_atol(torch.float64) == 1e-8 and default_atol(torch.float32) == 1e-4


def test_force_source_check_passes_for_ase_calculators():
    """F = −∇E for Lennard-Jones (one frame, then a batch of two) and EMT on ethanol."""
    positions = argon_cluster()
    lj = CalculatorForces(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True))
    assert assert_force_source_consistent(lj, [18] * 6, positions, atol=1e-5) < 1e-5
    batch = np.stack([positions, argon_cluster(seed=1)])
    assert assert_force_source_consistent(lj, [18] * 6, batch, atol=1e-5) < 1e-5
    ethanol = molecule("CH3CH2OH")
    assert assert_force_source_consistent(CalculatorForces(EMT()), ethanol.numbers,
                                          ethanol.positions, atol=1e-4) < 1e-4


def test_force_source_check_catches_a_sign_error():
    lj = CalculatorForces(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True))
    with pytest.raises(AssertionError, match=r"frame 0: force on atom \d \([xyz]\)"):
        assert_force_source_consistent(FlippedForces(lj), [18] * 6, argon_cluster(), atol=1e-5)


def test_jacobian_check_catches_a_non_differentiable_mismatch():
    """A Jacobian missing the −u_ab half (atom b) is caught against autograd."""

    class HalfJacobian(PairwiseDistances):
        def jacobian(self, coords):
            jac = super().jacobian(coords).reshape(len(coords), -1, self.n_atoms, 3)
            return jac.clamp_min(0).reshape(len(coords), -1, 3 * self.n_atoms)

    coords = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert assert_jacobian(PairwiseDistances(5), coords) < 1e-8
    with pytest.raises(AssertionError, match="differs from autograd"):
        assert_jacobian(HalfJacobian(5), coords)


def test_invariance_check_catches_a_non_invariant_representation():
    class Shifted(PairwiseDistances):
        def features(self, coords):
            return super().features(coords) + coords[:, :1, 0]  # depends on absolute position

    coords = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(AssertionError, match="rotation and translation"):
        assert_invariant(Shifted(5), coords)


def test_remove_rigid_motions_on_a_linear_molecule():
    """A linear molecule has 5 rigid modes (no rotation about its axis); the projection still
    removes net force and torque and keeps the axial stretch untouched."""
    coords = torch.tensor([[[0.0, 0.0, -1.16], [0.0, 0.0, 0.0], [0.0, 0.0, 1.16]]],
                          dtype=torch.float64)  # CO2
    stretch = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]],
                           dtype=torch.float64)
    torch.testing.assert_close(remove_rigid_motions(coords, stretch), stretch)
    forces = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clean = remove_rigid_motions(coords, forces)
    assert clean.sum(1).abs().max() < 1e-12
    assert torch.linalg.cross(coords, clean, dim=-1).sum(1).abs().max() < 1e-12
    assert torch.isfinite(clean).all()


# ----------------------------------------------------------------------------- the toy molecule
@pytest.mark.parametrize("temperature_K", [300.0, 1200.0])
def test_triatomic_closed_form_marginals_integrate_their_densities(temperature_K):
    """The closed-form CDFs of d and θ equal the numerical integrals of d²·N(d; r₀, σ²) and
    sin θ·N(θ; θ₀, σ_θ²) (normalised), and the mean bond at 300 K is 1.0127 Å, not r₀ = 1."""
    from scipy.integrate import quad

    source = HarmonicTriatomic()
    for pdf, cdf, points in ((source.bond_pdf, source.bond_cdf, [0.6, 0.9, 1.0, 1.1, 1.5]),
                             (source.angle_pdf, source.angle_cdf, [1.0, 1.6, 1.8, 2.2, 3.0])):
        for x in points:
            integral = quad(pdf, 0.0, x, args=(temperature_K,), epsabs=1e-13, limit=200)[0]
            assert cdf(x, temperature_K) == pytest.approx(integral, abs=1e-10)
        assert cdf(10.0, temperature_K) == pytest.approx(1.0, abs=1e-12)
    if temperature_K == 300.0:
        mean = quad(lambda d: d * source.bond_pdf(d), 0.0, 3.0)[0]
        assert mean == pytest.approx(1.0127, abs=1e-4)


@pytest.mark.parametrize(("temperature_K", "rotate"), [(300.0, False), (1200.0, True)])
def test_boltzmann_triatomic_sampler_matches_the_analytic_marginals(temperature_K, rotate):
    """KS tests of 20,000 exact draws against the closed-form marginals: d₁ and d₂ pooled
    (they are independent, so the 40,000 bonds are i.i.d.) and θ. False-failure rate: 1e-4 per
    KS test, 2e-4 per case. With ``rotate`` the orientation is uniform: cos of the polar angle
    of bond 1 is uniform on [−1, 1] (a third KS test)."""
    from scipy import stats

    source = HarmonicTriatomic()
    positions = source.sample(20_000, seed=11, temperature_K=temperature_K, rotate=rotate)
    d1, d2, theta = triatomic_internal_coordinates(positions)
    bonds = stats.kstest(np.concatenate([d1, d2]), lambda d: source.bond_cdf(d, temperature_K))
    angles = stats.kstest(theta, lambda t: source.angle_cdf(t, temperature_K))
    assert bonds.pvalue > KS_P_MIN, bonds
    assert angles.pvalue > KS_P_MIN, angles
    if rotate:
        axis = (positions[:, 1] - positions[:, 0]) / d1[:, None]
        orientation = stats.kstest(axis[:, 2], stats.uniform(-1, 2).cdf)
        assert orientation.pvalue > KS_P_MIN, orientation
        np.testing.assert_allclose(positions[:, 0], 0.0)
        unrotated = source.sample(20_000, seed=11, temperature_K=temperature_K)
        np.testing.assert_allclose(triatomic_internal_coordinates(unrotated), (d1, d2, theta),
                                   atol=1e-12)


def test_ks_test_catches_the_missing_jacobian():
    """Power of the test above: Gaussian bonds and angle (the old 'Boltzmann' sampler, now
    :func:`biased_triatomic_positions`) miss the Jacobian d₁²d₂² sin θ. Its KS distance to the
    bond marginal is 0.065, √n·D ≈ 13 for 40,000 bonds where p = 1e-4 needs only 2.2, so a
    seed that lets it pass (probability < 1e-40) does not exist in practice."""
    from scipy import stats

    source = HarmonicTriatomic()
    d1, d2, theta = triatomic_internal_coordinates(
        biased_triatomic_positions(20_000, SIGMA_R, SIGMA_THETA, seed=11))
    assert stats.kstest(np.concatenate([d1, d2]), source.bond_cdf).pvalue < 1e-30
    assert stats.kstest(theta, source.angle_cdf).pvalue < KS_P_MIN
    assert np.concatenate([d1, d2]).mean() == pytest.approx(1.0, abs=2e-3)  # not 1.0127


def test_metropolis_in_cartesian_coordinates_agrees_with_the_exact_sampler():
    """An independent reference: random-walk Metropolis on the 9 Cartesian coordinates with
    ``HarmonicTriatomic.energy`` at 300 K — 8,000 independent chains, all started far from
    equilibrium (d = 1.3 and 0.8 Å, θ = 75°), 600 steps of 0.05 Å per coordinate (acceptance
    0.54), the final frame of each chain kept.

    MCMC error: the slowest internal coordinate (θ) has autocorrelation 0.05 at lag 50 steps
    (τ ≈ 16 steps), so after 600 steps (≈ 37 τ) the memory of the start is ~e⁻³⁷ and the
    chains' final frames are independent Boltzmann draws; the error is statistical only, e.g.
    0.0006 Å (one standard error) on the mean bond, 20× smaller than the Jacobian's shift of the
    mean bond (0.0127 Å). Checks: two-sample KS tests of bonds and angle against the exact
    sampler (false-failure rate 1e-4 each) and the mean bond against the closed form within
    4.4 standard errors (false-failure rate 1e-5).
    """
    from scipy import stats
    from scipy.integrate import quad

    source = HarmonicTriatomic()
    chains = 8000
    start = np.zeros((chains, 3, 3))
    start[:, 1, 0] = 1.3
    start[:, 2, :2] = 0.8 * np.cos(np.deg2rad(75.0)), 0.8 * np.sin(np.deg2rad(75.0))
    final, acceptance = metropolis(source.energy, start, 300.0, steps=600, step_size=0.05,
                                   seed=5)
    assert 0.4 < acceptance < 0.7
    d1, d2, theta = triatomic_internal_coordinates(final.numpy())
    r1, r2, reference_theta = triatomic_internal_coordinates(
        boltzmann_triatomic_positions(chains, seed=6))
    bonds = np.concatenate([d1, d2])
    bond_test = stats.ks_2samp(bonds, np.concatenate([r1, r2]))
    angle_test = stats.ks_2samp(theta, reference_theta)
    assert bond_test.pvalue > KS_P_MIN, bond_test
    assert angle_test.pvalue > KS_P_MIN, angle_test
    exact_mean = quad(lambda d: d * source.bond_pdf(d), 0.0, 3.0)[0]
    standard_error = bonds.std() / np.sqrt(len(bonds))
    assert abs(bonds.mean() - exact_mean) < 4.4 * standard_error
    assert exact_mean - 1.0 > 15 * standard_error  # the Jacobian's shift is resolved
