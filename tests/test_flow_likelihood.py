"""Probability-flow likelihoods (ase_drift.diffusion.flow_likelihood): with the exact score of
Gaussian data the ODE log-density equals the analytic Gaussian one (VE and VP, full space and
the centred subspace of a molecule); the exact divergence is the autograd trace; Hutchinson's
estimate is unbiased; the rotation-orbit volume factor equals a numerical Jacobian; the
molecular samplers' log q are rotation invariant and per Å^(3A−3)."""

import math

import numpy as np
import pytest
import torch

from ase_drift.diffusion.energy import VPSDE
from ase_drift.diffusion.flow_likelihood import (
    centre_flat,
    exact_divergence,
    flow_log_prob,
    gaussian_log_prob,
    hutchinson_divergence,
    orbit_log_volume,
    rademacher,
    ve_log_prob,
    vp_log_prob,
)
from ase_drift.features import align_frames

TIGHT = {"rtol": 1e-9, "atol": 1e-9}
D = 4


def _covariance(dim=D, seed=0) -> torch.Tensor:
    """A random, well-conditioned, non-diagonal covariance Σ ``[D, D]`` (float64)."""
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.3 * torch.eye(dim, dtype=torch.float64)


def _gaussian(mean, cov):
    """(log N(x; mean, cov) [B], score −cov⁻¹(x − mean) [B, D]) as functions of x."""
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    inverse = torch.linalg.inv(cov)
    return dist.log_prob, lambda x: -(x - mean) @ inverse


def _ve_case(sigma_min=0.05, sigma_max=20.0):
    """Data N(μ, Σ) under the VE SDE: p_σ = N(μ, Σ + σ² I), so s(x, σ) = −(Σ + σ²I)⁻¹(x − μ)."""
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    cov = _covariance()
    eye = torch.eye(D, dtype=torch.float64)

    def score(x, sigma):  # sigma [B]
        return -torch.linalg.solve(cov + sigma[:, None, None] ** 2 * eye, (x - mean)[..., None])[..., 0]

    log_p0 = _gaussian(mean, cov + sigma_min**2 * eye)[0]
    prior = _gaussian(mean, cov + sigma_max**2 * eye)[0]
    x = mean + torch.randn(6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return score, x, log_p0, prior


def test_ve_flow_equals_the_analytic_gaussian_log_density():
    """(F2)+(F3): log p_{σ_min}(x) = log N(x; μ, Σ + σ_min² I) to 1e-6 with the exact prior; the
    default N(0, σ_max² I) prior differs by O(‖μ‖²/σ_max² + tr Σ/σ_max²) only."""
    score, x, log_p0, prior = _ve_case()
    out = ve_log_prob(score, x, 0.05, 20.0, prior_log_prob=prior, **TIGHT)
    torch.testing.assert_close(out.log_prob, log_p0(x), atol=1e-6, rtol=0)
    assert out.nfe > 10 and out.delta_log_prob.abs().min() > 1  # the flow does real work
    default = ve_log_prob(score, x, 0.05, 20.0, **TIGHT).log_prob
    assert (default - log_p0(x)).abs().max() < 0.2


def test_vp_flow_equals_the_analytic_gaussian_log_density():
    """(F4): x_t = m x₀ + σ ε gives p_t = N(m μ, m² Σ + σ² I); the ODE from t_min to 1 with
    this exact score reproduces log p_{t_min} to 1e-6."""
    sde = VPSDE(0.1, 20.0)
    mean = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=torch.float64)
    cov = _covariance(seed=2)
    eye = torch.eye(D, dtype=torch.float64)

    def marginal(t: float):
        m, s = (v.item() for v in sde.marginal(torch.tensor(t, dtype=torch.float64)))
        return _gaussian(m * mean, m**2 * cov + s**2 * eye)

    def score(x, t):  # t [B], all equal inside the ODE
        return marginal(float(t[0]))[1](x)

    x = mean + torch.randn(5, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = vp_log_prob(score, x, sde.beta, 1e-3, prior_log_prob=marginal(1.0)[0], **TIGHT)
    torch.testing.assert_close(out.log_prob, marginal(1e-3)[0](x), atol=1e-6, rtol=0)


def test_centred_subspace_density_has_3A_minus_3_dimensions():
    """Three 'atoms' distributed N(μ, s² P) in the centred subspace (P removes the centroid,
    rank 6 of 9): log p_{σ_min} = −‖x − μ‖²/(2v) − 3 log(2πv), v = s² + σ_min²; the score is
    −P(x − μ)/(s² + σ²). Reading it as a 9-dimensional density would be off by 1.5 log(2πv)."""
    n_atoms, s2, sigma_min, sigma_max = 3, 0.7, 0.1, 30.0
    gen = torch.Generator().manual_seed(4)
    mean = centre_flat(torch.randn(1, 3 * n_atoms, generator=gen, dtype=torch.float64), n_atoms)

    def score(x, sigma):
        return -centre_flat(x - mean, n_atoms) / (s2 + sigma[:, None] ** 2)

    def log_normal(x, v):
        return gaussian_log_prob(x - mean, v, dim=3 * n_atoms - 3)

    x = mean + centre_flat(torch.randn(5, 9, generator=gen, dtype=torch.float64), n_atoms)
    out = ve_log_prob(score, x, sigma_min, sigma_max, dim=6,
                      prior_log_prob=lambda z: log_normal(z, s2 + sigma_max**2),
                      project=lambda z: centre_flat(z, n_atoms), **TIGHT)
    torch.testing.assert_close(out.log_prob, log_normal(x, s2 + sigma_min**2), atol=1e-6, rtol=0)
    point = x[:1].expand(300, 9)  # Hutchinson with probes Pε: E[Pε εᵀP] = P, unbiased
    hutch = ve_log_prob(score, point, sigma_min, sigma_max, dim=6, divergence="hutchinson",
                        rng=torch.Generator().manual_seed(0),
                        prior_log_prob=lambda z: log_normal(z, s2 + sigma_max**2),
                        project=lambda z: centre_flat(z, n_atoms), rtol=1e-7, atol=1e-7)
    err = hutch.log_prob - out.log_prob[0]
    assert err.std() > 0.01 and abs(err.mean()) < 5 * err.std() / math.sqrt(len(err))


def _random_net(dim=5, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, dim)).double()
    return lambda x: net(x) * x.sum(-1, keepdim=True)  # rows independent, Jacobian dense


def test_exact_divergence_is_the_autograd_trace():
    fn = _random_net()
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out, div = exact_divergence(fn, x)
    traces = torch.stack([torch.autograd.functional.jacobian(lambda r: fn(r[None])[0], row).trace()
                          for row in x])
    torch.testing.assert_close(div, traces)
    torch.testing.assert_close(out, fn(x))


def test_hutchinson_estimate_is_unbiased():
    """E_ε[εᵀJε] = tr J for Rademacher ε: the mean of 20,000 single-probe estimates at one point
    lies within 5 standard errors of the exact trace, and the spread is not zero (the check is
    informative: J is dense)."""
    fn = _random_net(seed=1)
    x = torch.randn(1, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = exact_divergence(fn, x)[1]
    k = 20_000
    probe = rademacher((k, 5), torch.Generator().manual_seed(7), torch.float64)
    estimates = hutchinson_divergence(fn, x.expand(k, 5), probe)[1]
    assert estimates.std() > 0.1
    assert abs(estimates.mean() - exact) < 5 * estimates.std() / math.sqrt(k)


def test_hutchinson_log_prob_is_unbiased_and_errors_are_refused():
    """The Hutchinson log-density of one point under the anisotropic VE Gaussian, over 400
    probes: mean within 5 standard errors of the analytic value, spread > 0."""
    score, x, log_p0, prior = _ve_case()
    point = x[:1].expand(400, D)
    out = ve_log_prob(score, point, 0.05, 20.0, prior_log_prob=prior, divergence="hutchinson",
                      rng=torch.Generator().manual_seed(8), rtol=1e-7, atol=1e-7)
    err = out.log_prob - log_p0(point)
    assert err.std() > 0.01
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(len(err))
    with pytest.raises(ValueError, match="needs rng"):
        ve_log_prob(score, x, 0.05, 20.0, divergence="hutchinson")
    with pytest.raises(ValueError, match="unknown divergence"):
        ve_log_prob(score, x, 0.05, 20.0, divergence="trace")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ve_log_prob(score, x, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        flow_log_prob(lambda z, t: z, x[0], 0.0, 1.0, lambda z: z.sum(-1))


def test_orbit_volume_factor_is_the_jacobian_of_rotations_times_the_aligned_section():
    """R = Q s maps SO(3) × S onto centred coordinates with volume element
    |det[Ω_s, T_S]| (Ω_s = ∂(Q s)/∂θ at Q = I, T_S an orthonormal tangent basis of
    S = {s : Σ s_a r_aᵀ symmetric}, found numerically as the null space of the constraint's
    Jacobian); (F7) says it equals det(tr(H) I − H)/√det I_r, I_r the reference's inertia."""
    rng = np.random.default_rng(0)
    n_atoms = 5
    ref = rng.normal(size=(n_atoms, 3))
    ref -= ref.mean(0)
    s = align_frames((ref + 0.4 * rng.normal(size=(n_atoms, 3)))[None], ref)[0][0]  # [A, 3] on S
    basis = np.linalg.svd(np.kron(np.eye(n_atoms) - 1 / n_atoms, np.eye(3)))[0][:, :3 * n_atoms - 3]

    def constraint(flat):  # antisymmetric part of H
        h = flat.reshape(n_atoms, 3).T @ ref
        return np.array([h[1, 2] - h[2, 1], h[2, 0] - h[0, 2], h[0, 1] - h[1, 0]])

    eps = 1e-6
    jac_c = np.stack([(constraint(s.ravel() + eps * b) - constraint(s.ravel() - eps * b))
                      / (2 * eps) for b in basis.T], 1)  # [3, 3A − 3] in subspace coordinates
    tangent = np.linalg.svd(jac_c)[2][3:].T  # [3A − 3, 3A − 6] orthonormal null space
    generators = [np.cross(np.eye(3)[k], s).ravel() @ basis for k in range(3)]  # Ω_s
    volume = abs(np.linalg.det(np.column_stack([*generators, tangent])))
    inertia = (ref**2).sum() * np.eye(3) - ref.T @ ref
    expected = np.exp(orbit_log_volume(s[None], ref)[0]) / math.sqrt(np.linalg.det(inertia))
    assert volume == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- molecules

TINY_DSM = {"d_model": 16, "n_layers": 1, "n_heads": 2, "steps": 20, "batch_size": 32,
            "sampler_steps": 5}


@pytest.fixture(scope="module")
def ethanol():
    from ase_drift.datasets import load

    return load("ethanol-gfn2-500K")[0]


def _rigid_motion(positions, seed=0):
    """Positions ``[n, A, 3]`` rotated by a random proper rotation and translated."""
    rot = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    rot *= np.linalg.det(rot)
    return positions @ rot.T + np.array([1.0, -2.0, 3.0])


def test_dsm_log_prob_is_invariant_under_rigid_motions(ethanol):
    """log q̄ of DiffusionSampler is a density of the whole rotation orbit (F7): frames are
    aligned first, so rotating and translating them changes nothing beyond solver tolerance;
    exact and Hutchinson divergences agree to within the estimator's noise (a few nats here:
    an untrained net's Jacobian is far from isotropic)."""
    from ase_drift.diffusion import DiffusionConfig, train_diffusion

    dsm = train_diffusion(ethanol, DiffusionConfig(**TINY_DSM), progress=False)
    frames = ethanol.positions[:4]
    log_q = dsm.log_prob(frames)
    assert log_q.shape == (4,) and np.isfinite(log_q).all()
    assert dsm.log_prob(frames[:0]).shape == (0,)
    np.testing.assert_allclose(dsm.log_prob(_rigid_motion(frames)), log_q, atol=1e-3)
    hutchinson = dsm.log_prob(frames, divergence="hutchinson", seed=0)
    assert np.abs(hutchinson - log_q).max() < 10
    with pytest.raises(ValueError, match=r"shape \[n, 9, 3\]"):
        dsm.log_prob(frames[:, :3])
    dsm.metadata = {k: v for k, v in dsm.metadata.items() if k != "reference_angstrom"}
    with pytest.raises(ValueError, match="retrain"):
        dsm.log_prob(frames)


def test_energy_diffusion_log_prob_is_invariant_under_rigid_motions(ethanol):
    """The energy model's ODE density (F4) needs no alignment: its energy is a function of
    distances and signed volumes, so q is invariant under proper rotations and translations.
    (Without the bonded prior (E8): its stiff score at t_min takes the adaptive solver minutes
    per frame.)"""
    from ase_drift.diffusion import EnergyDiffusion, EnergyDiffusionConfig

    config = EnergyDiffusionConfig(hidden=32, layers=2, batch_size=64, steps=100,
                                   bonded_prior=False)
    model = EnergyDiffusion.train(ethanol, config=config, progress=False)
    frames = ethanol.positions[:3]
    log_q = model.log_prob(frames)
    assert log_q.shape == (3,) and np.isfinite(log_q).all()
    np.testing.assert_allclose(model.log_prob(_rigid_motion(frames, seed=1)), log_q, atol=1e-3)
