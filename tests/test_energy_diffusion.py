"""Energy-based diffusion (ase_drift.diffusion.energy): the score is −∇U, the weak Fokker–Planck
residual vanishes exactly for the VP SDE's own densities and not for wrong ones, DSM learns a
Gaussian's variance, the reverse SDE samples an analytic score's distribution, the noise-aware pair
and volume features (E8) are standard normal under the VP marginal, the bonded prior is ½ k z²
and keeps a stereocentre's handedness, and the
molecular model saves, loads, computes forces in eV/Å and rejects bad inputs.

Statistical bounds: z-scores below 5 (two-sided false-failure rate 6·10⁻⁷ per comparison) for
quantities that must vanish; χ² bounds at 10⁻⁶ where the samples are independent Gaussians."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.stats import chi2

import ase_drift
from ase_drift import units
from ase_drift.checkpoint import CheckpointError, load_checkpoint
from ase_drift.data import Conformations
from ase_drift.diffusion.energy import (
    VPSDE,
    BondedPrior,
    EnergyDiffusion,
    EnergyDiffusionConfig,
    EnergyModel,
    MoleculeFeatures,
    chiral_quadruples,
    dsm_loss,
    expert_steps,
    fp_loss,
    fp_weak_residual,
    restrained_features,
    sample_energy_model,
    sampler_times,
    time_features,
    torsion_quadruples,
    train_energy_model,
    training_times,
)
from ase_drift.diffusion.samplers import reverse_sde_sample

SDE = VPSDE(0.1, 20.0)
F64 = torch.float64


def gaussian_vp(mean, variance, variance_error=0.0, normalised=True):
    """log p_t and its score for Gaussian data N(mean, diag(variance)) under the VP SDE:
    p_t = N(m μ, m² v + σ²) exactly; ``variance_error`` inflates the noise variance (a wrong
    density), ``normalised=False`` drops the normaliser (a wrong t-dependence)."""
    mean, variance = torch.as_tensor(mean, dtype=F64), torch.as_tensor(variance, dtype=F64)

    def log_q(x, t):
        m, s = SDE.marginal(t)
        var = m[:, None] ** 2 * variance + (1 + variance_error) * s[:, None] ** 2  # [B, D]
        out = -0.5 * ((x - m[:, None] * mean) ** 2 / var).sum(-1)
        return out - 0.5 * torch.log(2 * math.pi * var).sum(-1) if normalised else out

    def log_q_and_score(x, t):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = log_q(x, t)
            (score,) = torch.autograd.grad(value.sum(), x)
        return value, score

    return log_q_and_score, log_q


MEAN, VARIANCE = [1.0, -0.5, 0.3], [0.25, 0.5, 0.1]


def residual_means(log_q_and_score, log_q, n_points=6, n_draws=20000, seed=0, sigma=1e-4):
    """Mean and standard error of R̃(x, t; v) over v ~ N(0, ``sigma``² I) at a few fixed
    (x, t) ``[n_points]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.02, 0.9, n_points, dtype=F64)
    m, s = SDE.marginal(t)
    x = (m[:, None] * torch.tensor(MEAN, dtype=F64)
         + (m[:, None] ** 2 * torch.tensor(VARIANCE, dtype=F64) + s[:, None] ** 2).sqrt()
         * torch.randn(n_points, 3, generator=g, dtype=F64))
    xs, ts = x.repeat_interleave(n_draws, 0), t.repeat_interleave(n_draws)
    v = sigma * torch.randn(xs.shape, generator=g, dtype=F64)
    r = fp_weak_residual(log_q_and_score, log_q, xs, ts, v, SDE, sigma, 1e-3, 3)
    r = r.view(n_points, n_draws)
    return r.mean(1), r.std(1) / math.sqrt(n_draws)


@pytest.mark.parametrize("sigma", [1e-4, 0.3])
def test_fp_residual_vanishes_for_the_exact_vp_density(sigma):
    # The VP SDE's Gaussian marginals satisfy the log Fokker–Planck equation (E4), so the weak
    # residual (E5) has zero mean over v at every (x, t). Dropping any term (the ½βD of div f,
    # x·s, ‖s‖², the divergence estimate) or a wrong sign makes it nonzero. For a Gaussian the
    # score is linear, so E_v R̃(x, t; v) = E_v R(x + v, t) = 0 at any σ: a large σ checks that
    # every term is read at the same shifted point x + v.
    mean, error = residual_means(*gaussian_vp(MEAN, VARIANCE), sigma=sigma)
    assert (mean.abs() / error).max() < 5


@pytest.mark.parametrize("wrong", [{"variance_error": 0.1}, {"normalised": False}])
def test_fp_residual_is_clearly_nonzero_for_a_wrong_density(wrong):
    # A density with the wrong noise variance, or without its t-dependent normaliser, does not
    # solve the Fokker–Planck equation: its residual is many standard errors from zero.
    mean, error = residual_means(*gaussian_vp(MEAN, VARIANCE, **wrong))
    assert (mean.abs() / error).max() > 20


@pytest.mark.parametrize("variance_error", [0.1, 1.0])
def test_fp_loss_multiplies_two_independent_estimates(variance_error):
    # E[R̃₁R̃₂] = D⁻² (E R̃)² (unbiased square); one estimate squared would add its variance
    # (~100× the squared mean for the slightly wrong density; for the clearly wrong one the
    # mean dominates and pins the D⁻² scale to a few per cent).
    fns = gaussian_vp(MEAN, VARIANCE, variance_error=variance_error)
    n = 40000
    x = torch.tensor([[1.2, -0.3, 0.1]], dtype=F64).repeat(n, 1)
    t = torch.full((n,), 0.3, dtype=F64)
    g = torch.Generator().manual_seed(1)
    loss = fp_loss(*fns, x, t, SDE, 1e-4, 1e-3, 3,
                   lambda shape: torch.randn(shape, generator=g, dtype=F64)) * 9  # × D²
    r = fp_weak_residual(*fns, x, t, 1e-4 * torch.randn(x.shape, generator=g, dtype=F64), SDE,
                         1e-4, 1e-3, 3)
    target, variance = r.mean().item() ** 2, r.var().item()
    if variance_error < 1:
        assert variance > 20 * target  # the variance an R̃² estimator would add
    # the standard error of a mean of n products of two independent estimates, from the
    # separate draws r (not from the loss itself, so a mis-scaled loss cannot widen it)
    error = math.sqrt((variance + target) ** 2 - target**2) / math.sqrt(n)
    assert abs(loss.mean().item() - target) < 5 * error


def small_model(dtype=F64, **config) -> tuple[EnergyModel, EnergyDiffusionConfig]:
    cfg = EnergyDiffusionConfig(hidden=16, layers=2, **config)
    torch.manual_seed(0)
    return EnergyModel(2, cfg).to(dtype), cfg


def test_score_is_minus_the_gradient_of_the_energy():
    # s = −∇ₓU by autograd (E2): compare with central differences of U in float64.
    model, _ = small_model(experts=(0.1, 0.6))
    x = torch.randn(5, 2, dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.95], dtype=F64)
    score = model.score(x, t)
    h = 1e-6
    for d in range(2):
        step = torch.zeros(2, dtype=F64)
        step[d] = h
        numeric = -(model.energy(x + step, t) - model.energy(x - step, t)) / (2 * h)
        torch.testing.assert_close(score[:, d], numeric, rtol=1e-6, atol=1e-8)
    log_q, score2 = model.log_q_and_score(x, t, create_graph=False)
    torch.testing.assert_close(log_q, -model.energy(x, t))
    torch.testing.assert_close(score2, score)


def test_experts_own_disjoint_time_intervals():
    model, _ = small_model(experts=(0.1, 0.6))
    t = torch.tensor([0.0, 0.0999, 0.1, 0.5999, 0.6, 1.0], dtype=F64)
    assert model.expert_index(t).tolist() == [0, 0, 1, 1, 2, 2]
    x = torch.randn(6, 2, dtype=F64)
    before = model.energy(x, t)
    with torch.no_grad():
        for p in model.experts[1].parameters():
            p.add_(1.0)
    after = model.energy(x, t)
    changed = (after - before).abs() > 1e-9
    assert changed.tolist() == [False, False, True, True, False, False]


def test_training_times_put_half_of_each_batch_below_the_midpoint():
    g = torch.Generator().manual_seed(0)
    t = training_times(0.1, 0.6, 0.2, 1000, g, F64)
    assert ((t >= 0.1) & (t < 0.6)).all()
    assert (t < 0.2).sum() == 500
    # within each half uniform: the means are the halves' midpoints (standard errors ~0.002, 0.004)
    assert t[t < 0.2].mean().item() == pytest.approx(0.15, abs=0.01)
    assert t[t >= 0.2].mean().item() == pytest.approx(0.4, abs=0.02)
    uniform = training_times(0.1, 0.6, None, 1000, g, F64)
    assert ((uniform >= 0.1) & (uniform < 0.6)).all() and uniform.dtype == F64
    assert (uniform < 0.2).sum().item() == pytest.approx(200, abs=5 * 13)  # binomial sd ~13
    assert (training_times(0.1, 0.6, 0.2, 1001, g, F64) < 0.2).sum() == 500  # odd: ⌊n/2⌋ below
    # the generator alone decides the draws
    again = [training_times(0.1, 0.6, 0.2, 10, torch.Generator().manual_seed(3), F64)
             for _ in range(2)]
    torch.testing.assert_close(*again)


def test_step_split_between_experts():
    assert expert_steps(EnergyDiffusionConfig(steps=900, experts=(0.1, 0.6))) == [600, 150, 150]
    assert expert_steps(EnergyDiffusionConfig(steps=901, experts=(0.1, 0.6))) == [601, 150, 150]
    assert expert_steps(EnergyDiffusionConfig(steps=900)) == [900]
    # the remainder after the smallest-t expert's share goes one step each to the first experts
    assert expert_steps(EnergyDiffusionConfig(steps=1000, experts=(0.1, 0.6))) == [667, 167, 166]
    assert expert_steps(EnergyDiffusionConfig(steps=1001, experts=(0.1, 0.6))) == [667, 167, 167]
    for steps in range(995, 1010):
        split = expert_steps(EnergyDiffusionConfig(steps=steps, experts=(0.1, 0.3, 0.6)))
        assert sum(split) == steps and max(split[1:]) - min(split[1:]) <= 1


def test_dsm_loss_of_the_exact_score_is_its_analytic_value():
    # For data N(μ, diag v) the exact score at t is −(x − mμ)/V with V = m²v + σ² (E1); then
    # σs + ε = ε m²v/V − σm(x₀ − μ)/V and E‖σs + ε‖² = Σ_d m²v_d/V_d, the (E3) loss's minimum.
    # A score off by 10 % scores measurably higher.
    log_q_and_score, _ = gaussian_vp(MEAN, VARIANCE)
    n, g = 100_000, torch.Generator().manual_seed(4)
    t = torch.full((n,), 0.3, dtype=F64)
    x0 = (torch.tensor(MEAN, dtype=F64)
          + torch.tensor(VARIANCE, dtype=F64).sqrt() * torch.randn(n, 3, generator=g, dtype=F64))
    eps = torch.randn(n, 3, generator=g, dtype=F64)

    def exact_score(x, t):
        return log_q_and_score(x, t)[1]

    loss = dsm_loss(exact_score, x0, t, eps, SDE)
    assert loss.shape == (n,)
    m, s = SDE.marginal(t[:1])
    signal = m**2 * torch.tensor(VARIANCE, dtype=F64)
    expected = (signal / (signal + s**2)).sum().item()
    assert abs(loss.mean().item() - expected) < 5 * loss.std().item() / math.sqrt(n)
    off = dsm_loss(lambda x, t: 1.1 * exact_score(x, t), x0, t, eps, SDE)
    assert (off - loss).mean().item() > 5 * (off - loss).std().item() / math.sqrt(n)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sampler_reproduces_an_analytic_gaussian(probability_flow):
    # With the exact VP score of N(μ, diag v), the reverse SDE / probability-flow ODE from
    # N(0, I) at t = 1 ends at N(μ, diag v) up to the Euler error (≲ 1.5 % at 1,000 steps).
    mean, var = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.25, 2.25], dtype=F64)

    def score(x, t):
        m, s = SDE.marginal(t)
        return -(x - m[:, None] * mean) / (m[:, None] ** 2 * var + s[:, None] ** 2)

    n = 10000
    g = torch.Generator().manual_seed(3)
    x = reverse_sde_sample(score,
                           torch.randn(n, 2, generator=g, dtype=F64),
                           torch.linspace(1.0, 1e-4, 1001, dtype=F64), SDE.drift, SDE.beta, g,
                           probability_flow=probability_flow)
    variance = x.var(0)
    low, high = chi2.ppf(1e-6 / 2, n - 1) / (n - 1), chi2.ppf(1 - 1e-6 / 2, n - 1) / (n - 1)
    ratio = variance / var
    assert ((ratio > low - 0.015) & (ratio < high + 0.015)).all(), ratio
    assert ((x.mean(0) - mean).abs()
            < 5 * variance.sqrt() / math.sqrt(n) + 0.01).all()


class _StiffGaussian:
    """The exact VP score of N(0, v) in 1-D, as a model's ``score(x, t)``."""

    def __init__(self, variance: float, sde: VPSDE = SDE):
        self.variance, self.sde = variance, sde

    def score(self, x, t):
        m, s = self.sde.marginal(t)
        return -x / (m[:, None] ** 2 * self.variance + s[:, None] ** 2)


def test_log_snr_grid_inverts_and_resolves_a_stiff_target():
    # t(λ(t)) = t; N(0, 10⁻⁴) (a bond's spread in normalised units), 300 steps: uniform steps
    # in t are unstable at t_min (β h k ≈ 0.1 · 3·10⁻³ · 10⁴ = 3 > 2: the variance comes out
    # ~5×), steps uniform in log-SNR reach the marginal variance at t_min, m² v + σ², within
    # the χ² bounds at 10⁻⁶ and 3 % Euler error
    t = torch.tensor([1e-4, 1e-3, 0.1, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(SDE.time_of_log_snr(SDE.log_snr(t)), t)
    times = sampler_times(SDE, 1e-4, 300, "log-snr")
    assert times[0] == 1.0 and times[-1] == 1e-4 and (times.diff() < 0).all()
    steps_in_log_snr = SDE.log_snr(times).diff()  # equal to float64 precision
    assert times.dtype == F64 and torch.allclose(steps_in_log_snr, steps_in_log_snr.mean(),
                                                 rtol=1e-9)
    uniform = sampler_times(SDE, 1e-4, 300, "uniform", t_start=0.5)
    assert uniform.dtype == F64 and len(uniform) == len(times) == 301
    torch.testing.assert_close(uniform.diff(), torch.full((300,), -(0.5 - 1e-4) / 300, dtype=F64))
    n, variance = 10000, 1e-4
    low, high = chi2.ppf(1e-6 / 2, n - 1) / (n - 1), chi2.ppf(1 - 1e-6 / 2, n - 1) / (n - 1)
    outcomes = []
    for grid in ("log-snr", "uniform"):
        config = EnergyDiffusionConfig(sampler_steps=300, sampler_grid=grid)
        m, s = SDE.marginal(torch.tensor(config.t_min, dtype=F64))
        x = sample_energy_model(_StiffGaussian(variance), n, (1,), config,
                                torch.Generator().manual_seed(0), dtype=F64)
        ratio = x.var().item() / (m**2 * variance + s**2).item()
        outcomes.append(low - 0.03 < ratio < high + 0.03)
    assert outcomes == [True, False]


@pytest.mark.parametrize("t_start", [0.05, 0.3])
def test_a_start_noised_to_t_start_maps_as_the_probability_flow_predicts(t_start):
    # N(0, v) with its exact score: the probability-flow ODE maps x_t to x_t·√(V(t_min)/V(t)),
    # V(t) = m² v + σ², so a start x_s noised to x_t = m x_s + σ ε ends at mean
    # √(V_min/V_t) m x_s and variance V_min σ²/V_t (within 5 standard errors, 3 % Euler error)
    n, variance, x_s = 20000, 0.01, 0.3
    config = EnergyDiffusionConfig(sampler_steps=400, probability_flow=True)
    x = sample_energy_model(_StiffGaussian(variance), n, (1,), config,
                            torch.Generator().manual_seed(0), dtype=F64,
                            start=torch.full((n, 1), x_s, dtype=F64), t_start=t_start)
    m, s = SDE.marginal(torch.tensor(t_start, dtype=F64))
    m_min, s_min = SDE.marginal(torch.tensor(config.t_min, dtype=F64))
    gain = math.sqrt((m_min**2 * variance + s_min**2) / (m**2 * variance + s**2))
    expected_var = (gain * s) ** 2
    expected_mean = float(gain * m * x_s)
    assert x.mean().item() == pytest.approx(
        expected_mean, abs=5 * math.sqrt(float(expected_var) / n) + 0.03 * abs(expected_mean))
    assert x.var().item() == pytest.approx(float(expected_var), rel=0.05)
    assert x.dtype == F64
    for bad in (1e-5, config.t_min, 1.5):
        with pytest.raises(ValueError, match="t_start"):
            sample_energy_model(_StiffGaussian(variance), 2, (1,), config, torch.Generator(),
                                start=torch.zeros(2, 1), t_start=bad)


def test_sampling_follows_the_configured_schedule_and_generator():
    # with β_max = 15 and its exact score, the reverse SDE returns the marginal variance at
    # t_min (a schedule mismatch would not); one seeded generator decides every draw
    n, variance = 20000, 0.3
    sde = VPSDE(0.1, 15.0)
    config = EnergyDiffusionConfig(beta_max=15.0, sampler_steps=200)
    draws = [sample_energy_model(_StiffGaussian(variance, sde), n, (1,), config,
                                 torch.Generator().manual_seed(2), dtype=F64) for _ in range(2)]
    torch.testing.assert_close(*draws, rtol=0, atol=0)
    m, s = sde.marginal(torch.tensor(config.t_min, dtype=F64))
    low, high = chi2.ppf(1e-6 / 2, n - 1) / (n - 1), chi2.ppf(1 - 1e-6 / 2, n - 1) / (n - 1)
    ratio = draws[0].var().item() / float(m**2 * variance + s**2)
    assert low - 0.03 < ratio < high + 0.03


def test_denoise_keeps_coarse_structure_and_forgets_it_at_t_start_1(trained):
    # from frames at one fixed shift: at t_start = 10⁻³ the output stays near its start (the
    # noise is σ ≈ 0.01 Å), at t_start = 1 the start is forgotten (m(1) < 0.01)
    trained_model, _ = trained
    model = EnergyDiffusion(trained_model.model, trained_model.numbers, trained_model.scale,
                            replace(trained_model.config, sampler_steps=300),
                            trained_model.metadata)
    frames = pyramid_data(200, seed=3).positions
    frames = frames - frames.mean(axis=1, keepdims=True)
    near = model.denoise(frames, 1e-3, seed=0)
    assert near.shape == frames.shape
    assert np.sqrt(((near - frames) ** 2).sum(-1).mean()) < 0.05
    far = model.denoise(frames, 1.0, seed=0)
    assert np.sqrt(((far - frames) ** 2).sum(-1).mean()) > 0.3
    with pytest.raises(ValueError, match=r"\[n, 4, 3\]"):
        model.denoise(frames[:, :3], 0.1)
    with pytest.raises(ValueError, match="^positions are not finite$"):
        model.denoise(np.full((1, 4, 3), np.nan), 0.1)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sampler_steps_by_hand(probability_flow):
    """Each Euler–Maruyama step, in float64 by hand from a float32 batch on a float64 grid
    ending at t = 0: x' = x − (f(x, t) − w g²(t) s(x, t)) dt + √(g² dt) z, w = 1 (SDE, the
    default, z from ``rng``) or ½ (probability flow, no noise); the callback sees every step
    and the batch keeps its dtype."""
    x = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float32)
    times = torch.tensor([0.8, 0.3, 0.0], dtype=F64)

    def score(y, t):  # [B] times, a time-dependent linear score
        return -y * (1 + t)[:, None]

    seen = []
    options = {"probability_flow": True} if probability_flow else {}
    out = reverse_sde_sample(score, x, times, SDE.drift, SDE.beta,
                             torch.Generator().manual_seed(7), callback=seen.append, **options)
    assert out.dtype == torch.float32
    draws = torch.Generator().manual_seed(7)
    expected = x.clone()
    for i, (t, t_next) in enumerate(zip(times[:-1].float(), times[1:].float())):
        dt, g2 = t - t_next, SDE.beta(t)
        weight = 0.5 * g2 if probability_flow else g2
        expected = expected - (SDE.drift(expected, t) + weight * expected * (1 + t)) * dt
        if not probability_flow:
            expected = expected + (g2 * dt).sqrt() * torch.randn(x.shape, generator=draws)
        assert set(seen[i]) == {"x", "i", "t", "t_next"} and seen[i]["i"] == i
        assert float(seen[i]["t"]) == float(t) and float(seen[i]["t_next"]) == float(t_next)
        assert torch.allclose(seen[i]["x"], expected, atol=1e-6)
    assert len(seen) == 2 and torch.allclose(out, expected, atol=1e-6)
    asked = []
    reverse_sde_sample(score, x, times, SDE.drift, SDE.beta, None, **options,
                       noise_sampler=lambda t, t_next: asked.append((float(t), float(t_next)))
                       or torch.zeros_like(x))
    steps = [(float(t), float(t_next)) for t, t_next in zip(times[:-1].float(), times[1:].float())]
    assert asked == ([] if probability_flow else steps)


@pytest.mark.parametrize(("times", "message"), [
    ([0.5, 1.0], "^times must be strictly decreasing and non-negative$"),
    ([1.0, 1.0, 0.5], "strictly decreasing"),
    ([1.0, 0.3, 0.5, 0.0], "strictly decreasing"),
    ([1.0, 0.5, -0.1], "non-negative"),
    ([1.0], r"at least 2 entries, got shape \(1,\)$"),
    ([[1.0, 0.5], [0.4, 0.3]], r"1-D sequence .* got shape \(2, 2\)$"),
])
def test_reverse_sampler_rejects_bad_times(times, message):
    with pytest.raises(ValueError, match=message):
        reverse_sde_sample(lambda x, t: x, torch.zeros(2, 1), times, SDE.drift, SDE.beta,
                           torch.Generator())


@pytest.mark.slow
def test_dsm_learns_the_variance_of_gaussian_data():
    # 1-D N(0.5, 0.25): the i.i.d. samples of a short seeded DSM run (3,000 steps) reproduce
    # the variance within 15 % (measured 1.13×) and the mean within 0.03. (Langevin dynamics on
    # the same model's t_min force gives 1.38× — the inconsistency the Fokker–Planck
    # regulariser targets; the Müller–Brown benchmark measures it.)
    g = torch.Generator().manual_seed(0)
    data = 0.5 + 0.5 * torch.randn(20000, 1, generator=g)
    config = EnergyDiffusionConfig(hidden=32, layers=2, steps=3000, batch_size=256,
                                   learning_rate=2e-3, sampler_steps=500)
    model = train_energy_model(data, config, progress=False).model
    samples = sample_energy_model(model, 8000, (1,), config, torch.Generator().manual_seed(1))
    assert samples.var().item() == pytest.approx(0.25, rel=0.15)
    assert samples.mean().item() == pytest.approx(0.5, abs=0.03)


# --------------------------------------------------------------------------- molecules


def pyramid_data(n=400, seed=0) -> Conformations:
    """NH3-like frames: N with three H at 1.0 Å in a pyramid, thermal noise 0.03 Å."""
    rng = np.random.default_rng(seed)
    angles = np.radians([0, 120, 240])
    base = np.array([[0, 0, 0.0]] + [[0.94 * np.cos(a), 0.94 * np.sin(a), 0.33] for a in angles])
    positions = base + 0.03 * rng.standard_normal((n, 4, 3))
    return Conformations([7, 1, 1, 1], positions, temperature_K=300.0)


def test_molecule_features_tell_mirror_images_apart():
    data = pyramid_data(10)
    quadruples = chiral_quadruples(data.numbers, data.positions)
    assert quadruples == [[0, 1, 2, 3]]
    features = MoleculeFeatures(4, quadruples)
    x = torch.as_tensor(data.positions[:3], dtype=F64)
    mirror = x * torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    phi, phi_mirror = features(x.flatten(1)), features(mirror.flatten(1))
    torch.testing.assert_close(phi[:, :6], phi_mirror[:, :6])  # distances: equal
    torch.testing.assert_close(phi[:, 6], -phi_mirror[:, 6])  # signed volume: flipped
    assert (phi[:, 6].abs() > 0.1).all()
    rotation = torch.as_tensor(np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0])
    rotation = rotation * torch.linalg.det(rotation)  # proper
    torch.testing.assert_close(features((x @ rotation.T + 2.0).flatten(1)), phi)



def test_dihedral_features_are_the_dihedral_angles_ase_reads():
    # (cos ω, sin ω) of butane's three rotatable bonds, read through heavy atoms where there
    # are any, in ASE's sign convention; a mirror flips sin only, a rigid motion changes none,
    # and a collinear triple keeps finite gradients
    from ase.build import molecule

    atoms = molecule("trans-butane")
    torsions = torsion_quadruples(atoms.numbers, atoms.positions)
    assert torsions == [[4, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 5]]
    features = MoleculeFeatures(len(atoms), [], torsions)
    rng = np.random.default_rng(0)
    frames = atoms.positions + 0.3 * rng.standard_normal((20, len(atoms), 3))
    phi = features(torch.as_tensor(frames).flatten(1))[:, -6:]  # [20, cos ×3, sin ×3]
    for frame, row in zip(frames, phi):
        atoms.positions = frame
        omega = np.radians([atoms.get_dihedral(*t) for t in torsions])
        np.testing.assert_allclose(row.numpy(), np.concatenate([np.cos(omega), np.sin(omega)]),
                                   atol=1e-5)
    mirrored = features(torch.as_tensor(frames * [1.0, -1.0, 1.0]).flatten(1))[:, -6:]
    torch.testing.assert_close(mirrored, phi * torch.tensor([1.0] * 3 + [-1.0] * 3, dtype=F64))
    rotation = torch.as_tensor(np.linalg.qr(rng.normal(size=(3, 3)))[0])
    rotation = rotation * torch.linalg.det(rotation)
    moved = torch.as_tensor(frames) @ rotation.T + 1.5
    torch.testing.assert_close(features(moved.flatten(1))[:, -6:], phi)
    collinear = torch.as_tensor(frames[:1]).clone()
    collinear[0, 4] = collinear[0, 0] + 0.5 * (collinear[0, 0] - collinear[0, 1])
    collinear = collinear.flatten(1).requires_grad_(True)
    features(collinear)[:, -6:].sum().backward()
    assert torch.isfinite(collinear.grad).all()


def test_torsions_are_read_through_heavy_atoms_whatever_the_atom_order():
    # With butane's hydrogens listed first, the central bond's dihedral is still C–C–C–C, not
    # one through the lower-numbered hydrogens.
    from ase.build import molecule

    atoms = molecule("trans-butane")
    order = np.argsort(atoms.numbers != 1, kind="stable")  # hydrogens first
    atoms = atoms[order]
    carbons = set(np.flatnonzero(atoms.numbers == 6).tolist())
    torsions = torsion_quadruples(atoms.numbers, atoms.positions)
    assert any(set(q) == carbons for q in torsions)
    for a, b, c, d in torsions:  # each end atom is a carbon where the bond's atom has one
        for end, inner, other in ((a, b, c), (d, c, b)):
            heavy = [n for n in carbons if n not in (inner, other)
                     and np.linalg.norm(atoms.positions[n] - atoms.positions[inner]) < 1.7]
            assert (end in carbons) == bool(heavy)


def test_given_quadruples_make_a_chain_tell_its_mirror_image_apart():
    # an unbranched C–N–C–C chain at a gauche dihedral: no atom has three bonded neighbours
    rng = np.random.default_rng(0)
    base = np.array([[1.2, 0.8, 0.0], [0, 0, 0], [0, 0, 1.45], [1.0, 0.9, 1.9]])
    data = Conformations([6, 7, 6, 6], base + 0.03 * rng.standard_normal((200, 4, 3)),
                         temperature_K=300.0)
    assert chiral_quadruples(data.numbers, data.positions) == []
    frames = data.positions[:5]
    mirror = frames * np.array([1.0, 1.0, -1.0])
    # the signed volume, or the dihedral's sine, carries the handedness; distances do not
    for quadruples, dihedrals, tells_apart in ((None, False, False), ([[0, 1, 2, 3]], False, True),
                                               (None, True, True)):
        config = EnergyDiffusionConfig(hidden=16, layers=2, steps=30, dihedrals=dihedrals)
        model = EnergyDiffusion.train(data, config=config, quadruples=quadruples,
                                      progress=False)
        energy = model.compute(data.numbers, frames).energies
        energy_mirror = model.compute(data.numbers, mirror).energies
        assert (np.abs(energy - energy_mirror).max() > 1e-6) == tells_apart  # float32: ~1e-8
        assert model.metadata["chiral_quadruples"] == (quadruples or [])

@pytest.mark.parametrize("t", [1e-3, 0.05, 0.3, 0.6])
def test_pair_features_are_standard_normal_under_the_vp_marginal(t):
    # (E8): a pair whose distance is N(μ, s²) at t = 0 has, at time t, distance
    # ≈ N(m μ, m² s² + 2σ²) while σ ≪ μ (the χ bias 2σ²/(mμ) is < 0.04 of its spread at
    # μ = 200): z has mean 0 and variance 1 within 0.06 (standard errors 0.007 and 0.01).
    g = torch.Generator().manual_seed(0)
    n, mu, s = 20000, 200.0, 1.0
    d0 = mu + s * torch.randn(n, generator=g, dtype=F64)
    x0 = torch.zeros(n, 2, 3, dtype=F64)
    x0[:, 1, 2] = d0
    tt = torch.full((n,), t, dtype=F64)
    m, sigma = SDE.marginal(tt)
    xt = m[:, None, None] * x0 + sigma[:, None, None] * torch.randn(n, 2, 3, generator=g,
                                                                   dtype=F64)
    prior = BondedPrior(torch.tensor([mu]), torch.tensor([s]), torch.tensor([1e-5, 1.0]),
                        torch.zeros(2, 0), torch.ones(2, 0), [0], SDE).to(F64)
    z = prior((xt[:, 1] - xt[:, 0]).norm(dim=-1, keepdim=True), tt)[:, 0]
    assert abs(z.mean().item()) < 0.06
    assert abs(z.var().item() - 1) < 0.06


@pytest.mark.parametrize("t", [3e-4, 0.02, 0.15, 0.45, 0.8])
def test_volume_features_are_standard_normal_under_the_vp_marginal(t):
    # the volumes' statistics are tabulated on noised training frames at log-spaced times and
    # interpolated in log t: fresh frames noised at times between the table's rows standardise
    # to mean 0 within 0.1 and variance 1 within 0.15 (table and test from 4,096 and 4,000
    # frames: standard errors ~0.02 and, for the heavy-tailed volumes, ~0.03)
    data = pyramid_data(8000, seed=1)
    features = MoleculeFeatures(4, [[0, 1, 2, 3]])
    x0 = torch.as_tensor(data.positions / 0.6, dtype=torch.float32).flatten(1)
    x0 = (x0.view(-1, 4, 3) - x0.view(-1, 4, 3).mean(1, keepdim=True)).flatten(1)
    prior = BondedPrior.fit(features, x0[:4000], [6], SDE, 1e-4,
                            torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = x0[4000:]
    tt = torch.full((len(x),), t)
    m, sigma = SDE.marginal(tt)
    noise = torch.randn(x.shape, generator=g).view(-1, 4, 3)
    noise = (noise - noise.mean(1, keepdim=True)).flatten(1)
    z = prior(features(m[:, None] * x + sigma[:, None] * noise), tt)
    assert abs(z[:, 6].mean().item()) < 0.1
    assert abs(z[:, 6].var().item() - 1) < 0.15


def test_bonded_prior_fit_tabulates_the_volumes_only_reproducibly_over_t_min_to_1():
    # the table spans [t_min, 1] and holds the Q volume columns, not the dihedral columns after
    # them; the generator alone decides its noise; a molecule without volumes fits silently
    import warnings

    data = pyramid_data(200)
    x = torch.as_tensor(data.positions, dtype=torch.float32).flatten(1)
    features = MoleculeFeatures(4, [[0, 1, 2, 3]], torsions=[[1, 0, 2, 3]])
    fits = [BondedPrior.fit(features, x, [0], SDE, 1e-4, torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert fits[0].volume_mean.shape == fits[0].volume_std.shape == (len(fits[0].times), 1)
    assert fits[0].times[0] <= 1e-4 and fits[0].times[-1] >= 1.0
    torch.testing.assert_close(fits[0].volume_mean, fits[1].volume_mean, rtol=0, atol=0)
    torch.testing.assert_close(fits[0].volume_std, fits[1].volume_std, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = BondedPrior.fit(MoleculeFeatures(4, []), x, [], SDE, 1e-4,
                                torch.Generator().manual_seed(5))
    assert plain.volume_std.shape == (len(plain.times), 0)
    # statistics in the default dtype whatever they came in; restrained columns index even empty
    assert plain.restrained.dtype == torch.int64
    assert BondedPrior(*(np.ones(2) for _ in range(5)), [0], SDE).mean.dtype == torch.float32
    # the feature quadruples come from the checkpoint's metadata, not its state dict
    assert list(features.state_dict()) == []


def test_volume_table_is_interpolated_linearly_in_log_t_and_held_beyond_its_ends():
    # a table whose mean is 3 + log₁₀ t and whose log std is twice that, at t = 10⁻³ … 1: the
    # interpolation in log t reproduces both between rows and holds the end rows outside
    times = torch.logspace(-3, 0, 4)
    rows = torch.arange(4.0)[:, None]  # [T, 1]
    prior = BondedPrior(torch.zeros(1), torch.ones(1), times, rows, (2 * rows).exp(), [0], SDE)
    t = torch.tensor([1e-6, 1e-3, 10**-2.5, 0.02, 0.3, 1.0, 5.0])
    mean, std = prior.volume_statistics(t)
    expected = (3 + t.log10()).clamp(0, 3)[:, None]
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(std, (2 * expected).exp())


def test_time_features_are_fourier_features_of_t_and_of_the_time_within_the_expert():
    # [t − ½, cos 2πt, sin 2πt, −cos 4πt, cos 2πu, sin 2πu, −cos 4πu] with u = (t − low) /
    # (high − low), here on [0.1, 0.6]: u = 0, ½, ¼, 1 at these t
    t = torch.tensor([0.1, 0.35, 0.225, 0.6], dtype=F64)
    relative = torch.tensor([[1, 0, -1], [-1, 0, -1], [0, 1, 1], [1, 0, -1]], dtype=F64)
    angle = 2 * math.pi * t
    absolute = torch.stack([t - 0.5, angle.cos(), angle.sin(), -(2 * angle).cos()], -1)
    torch.testing.assert_close(time_features(t, 0.1, 0.6), torch.cat([absolute, relative], -1))


def test_bonded_prior_energy_is_half_k_z_squared_on_restrained_features():
    # with the networks' last layers zeroed, U = ½ Σ_R k_p z_p², k = exp(log k): here the
    # restrained columns are pair 0, pair 2 and the volume, with k = 3 on pair 2
    data = pyramid_data(50)
    features = MoleculeFeatures(4, [[0, 1, 2, 3]])
    x = torch.as_tensor(data.positions, dtype=torch.float32).flatten(1)
    prior = BondedPrior.fit(features, x, [0, 2, 6], SDE, 1e-4, torch.Generator().manual_seed(0))
    model = EnergyModel(features.n_features, EnergyDiffusionConfig(hidden=8, layers=1,
                                                                   experts=(0.1,)),
                        features, prior)
    with torch.no_grad():
        for expert in model.experts:
            expert.net[-1].weight.zero_()
            expert.net[-1].bias.zero_()
            expert.log_stiffness.copy_(torch.log(torch.tensor([1.0, 3.0, 1.0])))
    t = torch.tensor([1e-3, 0.05, 0.5, 0.9]).repeat_interleave(2)  # both experts
    x = x[:8]
    phi = features(x)
    m, sigma = SDE.marginal(t)
    z = (phi[:, :6] - m[:, None] * prior.mean) / (
        (m[:, None] * prior.std) ** 2 + 2 * sigma[:, None] ** 2).sqrt()
    volume_mean, volume_std = prior.volume_statistics(t)
    z_volume = (phi[:, 6] - volume_mean[:, 0]) / volume_std[:, 0]
    expected = 0.5 * z[:, 0] ** 2 + 1.5 * z[:, 2] ** 2 + 0.5 * z_volume ** 2
    torch.testing.assert_close(model.energy(x, t), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.prior(phi, t), torch.cat([z, z_volume[:, None]], 1),
                               rtol=1e-4, atol=1e-5)
    # at a tabulated time the table's own row comes back
    row = 20
    mean, std = prior.volume_statistics(prior.times[row:row + 1])
    torch.testing.assert_close(mean, prior.volume_mean[row:row + 1])
    torch.testing.assert_close(std, prior.volume_std[row:row + 1])
    # outside the table (before its first time, after its last) the end rows hold
    mean, std = prior.volume_statistics(torch.tensor([1e-7, 2.0]))
    torch.testing.assert_close(mean, prior.volume_mean[[0, -1]])
    torch.testing.assert_close(std, prior.volume_std[[0, -1]])


def test_restrained_features_are_bonds_1_3_pairs_and_stereocentre_volumes():
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    quadruples = chiral_quadruples(atoms.numbers, atoms.positions)
    restrained = restrained_features(atoms.numbers, atoms.positions, quadruples)
    i, j = np.triu_indices(len(atoms), k=1)
    pairs = {(int(i[k]), int(j[k])) for k in restrained if k < len(i)}
    # 8 bonds; 1-3 pairs: 6 about each carbon (four neighbours), 1 about the oxygen
    assert len(pairs) == 8 + 6 + 6 + 1
    symbols = atoms.get_chemical_symbols()
    c_c = next((a, b) for a, b in pairs if symbols[a] == symbols[b] == "C")
    assert atoms.get_distance(*c_c) == pytest.approx(1.51, abs=0.02)
    assert all(atoms.get_distance(a, b) < 2.6 for a, b in pairs)
    far = [(a, b) for a, b in zip(i, j) if (a, b) not in pairs]
    assert all(atoms.get_distance(a, b) > 2.3 for a, b in far)  # 1-4 and beyond
    # both carbons are centres: their volumes follow the 36 pairs
    assert len(quadruples) == 2 and restrained[-2:] == [36, 37]
    # a chain's dihedral-sign volume is no centre's: not restrained
    assert restrained_features(atoms.numbers, atoms.positions, [[2, 0, 1, 8]]) == restrained[:-2]


def test_the_bonded_prior_holds_bonds_and_handedness_of_a_briefly_trained_model():
    # 100 steps are far too few for the network, but the prior alone is a Gaussian of the
    # right bond lengths, spreads and signed volume (E8): the i.i.d. N–H distances keep the
    # data's mean within 0.02 Å and its spread within a factor 1.5, and 99 % of the samples the
    # pyramid's handedness; without the prior they do none of it (mirror images ~half)
    data = pyramid_data(400)
    reference = np.linalg.norm(data.positions[:, 1:] - data.positions[:, :1], axis=-1)
    features = MoleculeFeatures(4, [[0, 1, 2, 3]])
    outcomes = []
    for bonded_prior in (True, False):
        config = EnergyDiffusionConfig(hidden=16, layers=2, steps=100, sampler_steps=300,
                                       bonded_prior=bonded_prior)
        model = EnergyDiffusion.train(data, config=config, progress=False)
        samples = model.sample_positions(1000, seed=0)
        bonds = np.linalg.norm(samples[:, 1:] - samples[:, :1], axis=-1)
        volumes = features(torch.as_tensor(samples).flatten(1))[:, 6]
        outcomes.append((abs(bonds.mean() - reference.mean()) < 0.02,
                         1 / 1.5 < bonds.std() / reference.std() < 1.5,
                         (volumes > 0).float().mean().item() > 0.99))
    assert outcomes == [(True, True, True), (False, False, False)]


def test_checkpoints_from_before_the_pair_prior_still_load(tmp_path):
    config = EnergyDiffusionConfig(hidden=8, layers=1, steps=5, sampler_steps=5,
                                   bonded_prior=False)
    model = EnergyDiffusion.train(pyramid_data(30), config=config, progress=False)
    path = model.save(tmp_path / "old.pt")
    payload = load_checkpoint(path)
    del payload["config"]["energy_diffusion"]["bonded_prior"]
    del payload["metadata"]["restrained_features"]
    del payload["metadata"]["torsions"]
    torch.save(payload, path)
    loaded = ase_drift.load(path)
    assert loaded.model.prior is None and not loaded.config.bonded_prior
    np.testing.assert_array_equal(loaded.compute([7, 1, 1, 1], pyramid_data(2).positions).forces,
                                  model.compute([7, 1, 1, 1], pyramid_data(2).positions).forces)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = EnergyDiffusion.train(pyramid_data(), temperature_K=300.0, fokker_planck=1e-3,
                                  experts=(0.1,), steps=60, seed=0,
                                  config=EnergyDiffusionConfig(hidden=16, layers=2,
                                                               sampler_steps=50),
                                  progress=False)
    path = model.save(tmp_path_factory.mktemp("energy") / "nh3.pt")
    return model, path


def test_checkpoint_round_trip_through_ase_drift_load(trained):
    model, path = trained
    payload = load_checkpoint(path)  # weights_only=True
    assert set(payload) == {"format_version", "config", "state_dict", "metadata"}
    # the experts' copies of the restrained columns are not weights (the prior's are stored)
    assert not [k for k in payload["state_dict"] if k.startswith("experts")
                and k.endswith("restrained")]
    # sequences in the configuration become tuples, as the dataclass's fields say
    assert EnergyDiffusionConfig(experts=[0.1, 0.6], time_midpoints=[0.05, 0.3, 0.8]) == \
        EnergyDiffusionConfig(experts=(0.1, 0.6), time_midpoints=(0.05, 0.3, 0.8))
    assert payload["metadata"]["kind"] == "energy-diffusion"
    loaded = ase_drift.load(path)
    assert isinstance(loaded, EnergyDiffusion)
    assert loaded.config == model.config and loaded.config.experts == (0.1,)
    np.testing.assert_array_equal(loaded.sample_positions(5, seed=4),
                                  model.sample_positions(5, seed=4))
    positions = pyramid_data(3, seed=9).positions
    np.testing.assert_array_equal(loaded.compute([7, 1, 1, 1], positions).forces,
                                  model.compute([7, 1, 1, 1], positions).forces)


def test_calculator_reports_ev_and_ev_per_angstrom(trained):
    # F = kT·∇log q (eV/Å) and E = −kT log q (eV): the forces are −dE/dx of the calculator's own
    # energies (finite differences in Å), and kT comes from units.kT of the model's temperature.
    model, _ = trained
    atoms = Atoms("NH3", positions=pyramid_data(1, seed=5).positions[0])
    atoms.calc = model.calculator()
    forces = atoms.get_forces()
    h = 1e-3
    for atom, axis in [(0, 2), (1, 0), (3, 1)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            moved.calc = model.calculator()
            shifted.append(moved.get_potential_energy())
        assert forces[atom, axis] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h),
                                                   rel=2e-2, abs=2e-3)
    x = torch.as_tensor(atoms.positions / model.scale, dtype=torch.float32).reshape(1, -1)
    score = model.model.score(x, torch.full((1,), model.config.t_min))
    expected = units.kT(300.0) * score.numpy().reshape(4, 3) / model.scale
    np.testing.assert_allclose(forces, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(forces.sum(0)).max() < 1e-5  # translation invariance: no net force


def test_sampling_and_simulation_shapes(trained):
    model, _ = trained
    atoms = Atoms("NH3", positions=pyramid_data(1).positions[0])
    frames = model.sample(atoms, 3, seed=0)
    assert len(frames) == 3 and frames[0].get_chemical_formula() == "H3N"
    traj = model.simulate(atoms, n_replicas=2, steps=4, timestep_fs=0.5, record_every=2, seed=0,
                          progress=False)
    assert traj.shape == (2, 2, 4, 3) and np.isfinite(traj).all()
    assert model.sample_positions(0).shape == (0, 4, 3)
    with pytest.warns(RuntimeWarning):  # 50 steps are too few for some samples: see below
        positions = model.sample_positions(20, seed=1)
    finite = np.isfinite(positions).all(axis=(1, 2))  # centred, in float32 like every sampler's
    assert positions.dtype == np.float32 and finite.any()
    assert np.abs(positions[finite].mean(axis=1)).max() < 1e-5


def test_simulate_is_baoab_on_the_learned_potential(trained):
    # the method is ase_drift.simulate.simulate on the model at its temperature, with every
    # setting passed through, recording every 100 steps by default; repr names the temperature
    from ase_drift.simulate import simulate

    model, _ = trained
    atoms = Atoms("NH3", positions=pyramid_data(1).positions[0])
    traj = model.simulate(atoms, n_replicas=2, steps=200, timestep_fs=0.7, friction_per_fs=0.05,
                          seed=1, progress=False)
    direct = simulate(model, model.numbers, np.repeat(atoms.positions[None], 2, axis=0), 300.0,
                      200, timestep_fs=0.7, friction_per_fs=0.05, record_every=100, seed=1)
    assert traj.shape == (2, 2, 4, 3)
    np.testing.assert_array_equal(traj, direct)
    assert "T=300.0 K" in repr(model)
    # atomic numbers of any shape that flatten to the model's are accepted
    positions = pyramid_data(2).positions
    np.testing.assert_array_equal(model.compute(np.array([[7, 1, 1, 1]]), positions).forces,
                                  model.compute([7, 1, 1, 1], positions).forces)


def test_denoise_centres_its_start_and_is_reproducible_by_seed(trained):
    # shifted frames denoise to what the centred frames do (centred outputs), the seed alone
    # decides the noise
    model, _ = trained
    frames = pyramid_data(20, seed=4).positions
    frames = frames - frames.mean(axis=1, keepdims=True)
    out = model.denoise(frames, 0.3, seed=5)
    np.testing.assert_allclose(model.denoise(frames + [4.0, -2.0, 1.0], 0.3, seed=5), out,
                               atol=1e-5)
    assert np.abs(out.mean(axis=1)).max() < 1e-5
    assert not np.allclose(model.denoise(frames, 0.3, seed=6), out)


def test_checkpoint_keeps_dihedrals_and_the_noise_schedule(tmp_path):
    # a model with dihedral features and a non-default β_max loads with both; its metadata
    # comes back without the checkpoint's kind; weights that do not fit are a clear error
    from ase_drift.datasets import load

    data = load("ethanol-gfn2-500K")[0]
    config = EnergyDiffusionConfig(hidden=8, layers=1, steps=5, sampler_steps=5, dihedrals=True,
                                   beta_max=15.0)
    model = EnergyDiffusion.train(data, config=config, temperature_K=500.0, progress=False)
    assert model.metadata["torsions"]
    path = model.save(tmp_path / "ethanol.pt")
    loaded = ase_drift.load(path)
    assert "kind" not in loaded.metadata
    frames = data.positions[:3]
    for name in ("energies", "forces"):
        np.testing.assert_array_equal(getattr(loaded.compute(data.numbers, frames), name),
                                      getattr(model.compute(data.numbers, frames), name))
    payload = load_checkpoint(path)
    key = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][key] = payload["state_dict"][key][:1]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        ase_drift.load(path)


@pytest.mark.parametrize("options, message", [
    ({"experts": (0.6, 0.1)}, "increasing"),
    ({"experts": (1.2,)}, "increasing"),
    ({"fokker_planck": -1.0}, "fokker_planck"),
    ({"steps": 0}, "steps"),
    ({"beta_min": 30.0}, "beta_min"),
    ({"temperature_K": -3}, "temperature"),
    ({"sampler_grid": "cosine"}, "sampler_grid"),
    ({"time_midpoints": (0.05, 0.3)}, "time_midpoints"),  # two midpoints, one expert
    ({"t_min": 0.0}, "t_min"),
    ({"t_min": 0.01}, "t_min"),
    ({"experts": (0.1, 0.1)}, "increasing"),
    ({"experts": (0.1,), "time_midpoints": (0.05, 0.1)}, "time_midpoints"),  # at a bound
    ({"experts": (0.1,), "time_midpoints": (0.05, 1.0)}, "time_midpoints"),
    ({"hidden": True}, "hidden"),
    ({"beta_min": 20.0}, "beta_min"),
    ({"beta_min": 0.0}, "beta_min"),
    ({"small_t_share": 0.0}, "small_t_share"),
    ({"small_t_share": 1.0}, "small_t_share"),
    ({"experts": (0.1,), "time_midpoints": (0.05, 0.05)}, "time_midpoints"),  # 0.05 < 0.1
])
def test_config_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        EnergyDiffusionConfig(**options)


def test_config_accepts_settings_inside_the_bounds():
    config = EnergyDiffusionConfig(experts=(0.1, 0.6), time_midpoints=(0.05, 0.3, 0.9),
                                   t_min=0.009, small_t_share=0.99, beta_min=19.9)
    assert config.time_midpoints == (0.05, 0.3, 0.9)


def test_model_rejects_bad_inputs(trained):
    model, _ = trained
    with pytest.raises(TypeError, match="Conformations"):
        EnergyDiffusion.train(np.zeros((3, 4, 3)), temperature_K=300.0)
    with pytest.raises(ValueError, match="differ"):
        model.compute([6, 1, 1, 1], np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[B, 4, 3\]"):
        model.compute([7, 1, 1, 1], np.zeros((2, 3, 3)))
    wrong = Atoms("CH3", positions=np.zeros((4, 3)))
    wrong.calc = model.calculator()
    with pytest.raises(ValueError, match="species or order"):
        wrong.get_forces()
    with pytest.raises(ValueError, match="non-negative"):
        model.sample_positions(-1)
    untempered = EnergyDiffusion(model.model, model.numbers, model.scale, model.config,
                                 dict(model.metadata, temperature_K=None))
    with pytest.raises(ValueError, match="without a temperature"):
        untempered.compute([7, 1, 1, 1], np.zeros((4, 3)))


# --------------------------------------------------------------------------- 2-D metrics

LIMITS = ((0.0, 1.0), (0.0, 1.0))


def test_histogram_2d_counts_escaped_points_in_its_own_bin():
    from ase_drift.metrics.density2d import histogram_2d

    points = np.array([[0.1, 0.1], [0.9, 0.9], [5.0, 0.5], [0.5, -2.0]])
    h = histogram_2d(points, LIMITS, bins=2)
    assert h.tolist() == [0.25, 0.0, 0.0, 0.25, 0.5]


def test_js_2d_is_zero_for_equal_sets_and_log2_for_disjoint_ones():
    from ase_drift.metrics.density2d import js_2d

    a = np.array([[0.1, 0.1], [0.2, 0.3]])
    assert js_2d(a, a, LIMITS, bins=4) == 0.0
    assert js_2d(a, a + 0.6, LIMITS, bins=4) == pytest.approx(math.log(2))


def test_pmf_error_is_the_mixture_weighted_squared_free_energy_difference():
    # p: all in one bin A; q: half in A, half in B (p_B = baseline 1e-6). Weights (p + q)/2 over
    # the occupied bins, normalised; error (log p − log q)² in kT².
    from ase_drift.metrics.density2d import pmf_error

    p = np.array([[0.05, 0.05]] * 4)
    q = np.array([[0.05, 0.05]] * 2 + [[0.95, 0.95]] * 2)
    w_a, w_b = (1 + 0.5) / 2, (1e-6 + 0.5) / 2
    expected = (w_a * math.log(2) ** 2 + w_b * math.log(1e-6 / 0.5) ** 2) / (w_a + w_b)
    assert pmf_error(p, q, LIMITS, bins=8) == pytest.approx(expected)
    assert pmf_error(p, p, LIMITS, bins=8) == 0.0
    # beyond the limits, points land in the outermost bins (as ScoreMD's grid)
    assert pmf_error(p + 10.0, np.array([[1.5, 1.5]] * 4), LIMITS, bins=8) == 0.0
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        pmf_error(np.zeros((3, 3)), p, LIMITS)


def test_the_shell_samples_an_energy_diffusion_model_as_the_api_does(trained, tmp_path):
    from ase_drift.cli import main
    from ase_drift.io import read_positions

    model, path = trained
    out = tmp_path / "samples.extxyz"
    assert main(["sample", str(path), "-n", "3", "--seed", "2", "-o", str(out)]) == 0
    np.testing.assert_allclose(read_positions(out).positions, model.sample_positions(3, seed=2),
                               rtol=0, atol=1e-6)


def test_the_shell_trains_and_simulates_an_energy_diffusion_model(trained, tmp_path, capsys):
    from ase_drift.cli import main
    from ase_drift.io import read_positions

    data = tmp_path / "nh3.extxyz"
    pyramid_data(40).write(data)
    path = tmp_path / "ed.pt"
    assert main(["train", str(data), "--method", "energy-diffusion", "--temperature", "300",
                 "--experts", "0.1", "--fokker-planck", "0.001", "--steps", "2", "--quiet",
                 "-o", str(path)]) == 0
    loaded = ase_drift.load(path)
    assert isinstance(loaded, EnergyDiffusion) and loaded.config.experts == (0.1,)
    assert loaded.config.fokker_planck == 0.001 and loaded.temperature_K == 300.0
    assert main(["train", str(data), "--method", "energy-diffusion", "--omega", "0.1",
                 "-o", str(path)]) == 2
    assert "--omega: drift options" in capsys.readouterr().err

    model, model_path = trained
    out = tmp_path / "traj.extxyz"
    assert main(["simulate", str(model_path), "--start", str(data), "--replicas", "2",
                 "--steps", "4", "--record-every", "2", "--seed", "1", "-o", str(out)]) == 0
    frames = model.simulate(pyramid_data(40).to_atoms()[0], 2, 4, record_every=2, seed=1,
                            progress=False)
    np.testing.assert_allclose(read_positions(out).positions, frames.reshape(-1, 4, 3),
                               rtol=0, atol=1e-6)


def test_a_diverging_reverse_diffusion_names_sampler_steps(trained):
    # 5 Euler steps cannot resolve the bonded prior's stiffness at t_min: say so
    model, _ = trained
    coarse = EnergyDiffusion(model.model, model.numbers, model.scale,
                             replace(model.config, sampler_steps=5), model.metadata)
    with pytest.warns(RuntimeWarning, match="raise sampler_steps") as caught:
        samples = coarse.sample_positions(50, seed=0)
    # the warning counts the diverged samples and points at a line outside the package (the
    # caller's, here this file)
    diverged = int((~np.isfinite(samples).all(axis=(1, 2))).sum())
    assert 0 < diverged and f"for {diverged} of 50 samples" in str(caught[0].message)
    package = Path(ase_drift.__file__).resolve().parent
    assert not Path(caught[0].filename).resolve().is_relative_to(package)


class _ExactGaussianEnergy(torch.nn.Module):
    """log q of centred isotropic Gaussian data N(0, v I) under the VP SDE, exactly: the
    marginal N(0, (m²v + σ²) I) on the 3A − 3 centred dimensions."""

    experts = ()

    def __init__(self, variance: float, n_atoms: int, sde: VPSDE):
        super().__init__()
        self.variance, self.dim, self.sde = variance, 3 * n_atoms - 3, sde

    def log_q(self, x, t):
        m, s = self.sde.marginal(t)
        var = m**2 * self.variance + s**2  # [B]
        return -0.5 * x.square().sum(-1) / var - 0.5 * self.dim * torch.log(2 * math.pi * var)


def test_log_prob_is_the_data_density_in_angstrom_for_an_exact_model():
    # With the exact log-density, the probability-flow ODE (docs/likelihoods.md F4, F5) returns
    # log p_{t_min}: for frames in Å, the centred Gaussian N(0, (m²v + σ²) s²) on 3A − 3
    # dimensions, i.e. the normalised density minus (3A − 3) log s. Frames need not be centred;
    # the model's own noise schedule (here β_max = 15) is the one integrated.
    n_atoms, scale, variance = 3, 1.7, 0.5
    sde = VPSDE(0.1, 15.0)
    model = EnergyDiffusion(_ExactGaussianEnergy(variance, n_atoms, sde), [1] * n_atoms, scale,
                            EnergyDiffusionConfig(beta_max=15.0), {})
    rng = np.random.default_rng(0)
    frames = rng.normal(scale=math.sqrt(variance) * scale, size=(4, n_atoms, 3))
    log_p = model.log_prob(frames + [0.3, -1.0, 2.0], batch_size=3)
    centred = frames - frames.mean(1, keepdims=True)
    m, s = sde.marginal(torch.tensor(model.config.t_min, dtype=F64))
    var = float(m**2 * variance + s**2) * scale**2  # Å²
    dim = 3 * n_atoms - 3
    expected = -0.5 * (centred**2).sum((1, 2)) / var - 0.5 * dim * np.log(2 * np.pi * var)
    np.testing.assert_allclose(log_p, expected, atol=2e-3)
    # Hutchinson's estimate is seeded, and differs from the exact divergence's
    hutchinson = [model.log_prob(frames, divergence="hutchinson", seed=3) for _ in range(2)]
    np.testing.assert_array_equal(*hutchinson)
    assert np.abs(hutchinson[0] - log_p).max() > 1e-3
    # no frames: no values; frames of the wrong shape: a clear error
    assert model.log_prob(np.zeros((0, n_atoms, 3))).shape == (0,)
    with pytest.raises(ValueError, match=r"shape \[n, 3, 3\], got \(4, 2, 3\)"):
        model.log_prob(frames[:, :2])
