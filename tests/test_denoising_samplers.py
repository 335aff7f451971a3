"""Denoising samplers of the GPFF paper (DD, SDD, ancestral, Heun, stochastic Heun, adaptive
sampling, DD+shape, DD+scaffold) against exact references.

References used:

* Gaussian data N(μ, s² I) has the exact EDM denoiser D(x, σ) = μ + s²/(s² + σ²)(x − μ), and
  every sampler step is then a linear map of x − μ plus independent Gaussian noise: the final
  variance v_N follows a scalar recursion (``_expected_variance``), written here from the
  papers' update formulas (Song et al. 2021's ancestral step, Karras et al. 2022's Algorithms
  1–2). Samples are iid N(μ, v_N) per coordinate, so n·V̂/v_N ~ χ²_n with V̂ the mean squared
  deviation from the known mean: tests accept inside the two-sided 1 − 10⁻⁴ interval
  (false-failure rate 10⁻⁴ per test).
* Point-mass data (D(x) = x₀ exactly): x = x₀ + σ ε gives d·σ̂²/σ² ~ χ²_d (Eq. 18).
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from scipy.stats import chi2

from ase_drift.diffusion.samplers import (
    ancestral_sample,
    dd_sample,
    heun_sample,
    noise_level,
    sdd_sample,
    shape_constraint,
    size_trust_region,
    stochastic_heun_sample,
)
from ase_drift.diffusion.schedules import edm_sigmas

ALPHA = 1e-4  # false-failure rate of each statistical test
SIGMA_MIN, SIGMA_MAX = 0.01, 10.0


def gaussian_denoiser(mu, s: float):
    """Exact denoiser of N(mu, s² I): D(x, σ) = mu + s²/(s² + σ²)(x − mu)."""

    def denoise(x, sigma):
        shrink = (s**2 / (s**2 + sigma**2)).reshape(-1, *[1] * (x.ndim - 1))
        return mu + shrink * (x - mu)

    return denoise


def point_mass(x0):
    """Exact denoiser of the single point x0 [A, 3] (or [B, A, 3] matching the batch)."""
    return lambda x, sigma: x0.expand_as(x).clone()


class Counting:
    """Wrap a denoiser; count the rows it is evaluated on and record the batch sizes."""

    def __init__(self, denoiser):
        self.denoiser, self.rows, self.sizes = denoiser, 0, []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.rows += x.shape[0]
        self.sizes.append(x.shape[0])
        return self.denoiser(x, sigma)


def _expected_variance(kind: str, sigmas, s: float, gamma: float = 0.0) -> float:
    """Per-coordinate variance after the sampler ``kind`` walks ``sigmas`` (ending with 0) on
    N(μ, s² I) from the prior N(μ, (s² + σ_0²) I), with y = x − μ mapped linearly."""
    v = s**2 + sigmas[0] ** 2
    def keep(sig):  # D − μ = keep(σ)·y
        return s**2 / (s**2 + sig**2)

    for sig, nxt in itertools.pairwise(sigmas):
        if kind == "ancestral":  # y' = y + (σ² − σ'²)·score + √(σ'²(σ² − σ'²)/σ²) z
            score = -(1 - keep(sig)) / sig**2  # score = (D − x)/σ² = score·y
            v = (1 + (sig**2 - nxt**2) * score) ** 2 * v + nxt**2 * (sig**2 - nxt**2) / sig**2
            continue
        hat = sig * (1 + gamma)  # stochastic Heun: raise the level, add the noise variance
        v = v + hat**2 - sig**2
        h = nxt - hat
        slope = (1 - keep(hat)) / hat  # d = (x − D)/σ = slope·y
        if nxt == 0:
            map_ = 1 + h * slope
        else:
            euler = 1 + h * slope
            map_ = 1 + 0.5 * h * (slope + (1 - keep(nxt)) / nxt * euler)
        v = map_**2 * v
    return v


def _chi2_bounds(n: int) -> tuple[float, float]:
    return chi2.ppf(ALPHA / 2, n) / n, chi2.ppf(1 - ALPHA / 2, n) / n


def _run(kind: str, denoiser, x, nfe: int, rng, **kwargs):
    if kind == "ancestral":
        return ancestral_sample(denoiser, x, nfe, rng, **kwargs)
    if kind == "heun":
        return heun_sample(denoiser, x, nfe, **kwargs)
    return stochastic_heun_sample(denoiser, x, nfe, rng, **kwargs)


# --------------------------------------------------------------------------- schedule


def test_edm_sigmas_is_eq_17():
    n, rho = 6, 5.0
    sigmas = edm_sigmas(n, 0.01, 30.0, rho, dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    expected = (30.0 ** (1 / rho) + i / (n - 1) * (0.01 ** (1 / rho) - 30.0 ** (1 / rho))) ** rho
    assert torch.allclose(sigmas[:-1], expected, rtol=1e-12)
    assert sigmas[-1] == 0 and len(sigmas) == n + 1
    steps = sigmas[:-1] ** (1 / rho)  # equal steps in ρ-space
    assert torch.allclose(steps.diff(), steps.diff()[0].expand(n - 1), rtol=1e-10)
    assert edm_sigmas(1, 0.01, 30.0).tolist() == [30.0, 0.0]
    with pytest.raises(ValueError, match="sigma_min"):
        edm_sigmas(3, 2.0, 1.0)


# --------------------------------------------------------------------------- Gaussian data

GAUSS_S, GAUSS_MU = 1.0, 0.5


@pytest.mark.parametrize("kind", ["ancestral", "heun", "stochastic_heun"])
def test_gaussian_variance_follows_the_exact_discrete_map(kind):
    """On Gaussian data every sampler is linear: its final variance is the recursion's v_N."""
    nfe = 24
    batch, dim = 10_000, 2
    rng = torch.Generator().manual_seed(1)
    x = GAUSS_MU + math.sqrt(GAUSS_S**2 + SIGMA_MAX**2) * torch.randn(
        batch, dim, generator=rng, dtype=torch.float64)
    extra = {}
    gamma = 0.0
    if kind == "stochastic_heun":  # churn at every level
        extra = {"s_churn": 3.0, "s_tmin": 0.0, "s_tmax": math.inf}
        gamma = min(3.0 / 12, math.sqrt(2) - 1)
    run = _run(kind, gaussian_denoiser(GAUSS_MU, GAUSS_S), x, nfe, rng, sigma_min=SIGMA_MIN,
               sigma_max=SIGMA_MAX, **extra)
    levels = (nfe if kind == "ancestral" else (nfe + 1) // 2)
    sigmas = edm_sigmas(levels, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64).tolist()
    expected = _expected_variance(kind.split("_")[0], sigmas, GAUSS_S, gamma)
    observed = ((run.x - GAUSS_MU) ** 2).mean().item()
    low, high = _chi2_bounds(batch * dim)
    assert low < observed / expected < high, (observed, expected)


@pytest.mark.parametrize("kind", ["ancestral", "heun", "stochastic"])
def test_discrete_map_converges_to_the_data_variance(kind):
    """The recursion above (i.e. each sampler, by the previous test) tends to s²: the samplers
    sample N(μ, s² I) in the limit of many levels. Ancestral sampling is first order (its error
    falls like 1/N); Heun's is below 10⁻³ already at 16 levels."""
    errors = []
    for levels in (16, 256, 4096):
        sigmas = edm_sigmas(levels, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64).tolist()
        gamma = 0.0 if kind != "stochastic" else min(40.0 / levels, math.sqrt(2) - 1)
        errors.append(abs(_expected_variance(kind, sigmas, GAUSS_S, gamma) / GAUSS_S**2 - 1))
    if kind == "ancestral":
        assert errors[0] > errors[1] > errors[2]
        assert 8 < errors[1] / errors[2] < 32  # ~16 = 4096/256: first order
    assert errors[2] < (0.01 if kind == "ancestral" else 0.001)
    if kind == "heun":
        assert max(errors[1:]) < 1e-3


def test_heun_samples_the_gaussian():
    """End to end, no recursion: Heun at 255 evaluations gives variance s² (discretisation
    error 0.1 %, far inside the χ² interval)."""
    batch, dim = 8_000, 3
    rng = torch.Generator().manual_seed(2)
    x = GAUSS_MU + math.sqrt(GAUSS_S**2 + SIGMA_MAX**2) * torch.randn(
        batch, dim, generator=rng, dtype=torch.float64)
    run = heun_sample(gaussian_denoiser(GAUSS_MU, GAUSS_S), x, 255, sigma_min=SIGMA_MIN,
                      sigma_max=SIGMA_MAX)
    low, high = _chi2_bounds(batch * dim)
    assert low < ((run.x - GAUSS_MU) ** 2).mean().item() / GAUSS_S**2 < high
    assert (run.nfe == 255).all()


# --------------------------------------------------------------------------- direct denoising


def _molecules(batch: int, atoms: int, scale: float, seed: int):
    rng = torch.Generator().manual_seed(seed)
    x0 = torch.randn(atoms, 3, generator=rng, dtype=torch.float64)
    return x0, x0 + scale * torch.randn(batch, atoms, 3, generator=rng, dtype=torch.float64), rng


def test_dd_reaches_a_point_mass_in_one_step():
    x0, x, _ = _molecules(5, 7, 3.0, seed=3)
    seen = []
    run = dd_sample(point_mass(x0), x, 10, tolerance=1e-6,
                    callback=lambda info: seen.append(info["x"].clone()))
    assert torch.equal(seen[0], x0.expand_as(x))  # the first update lands on x₀
    assert torch.equal(run.x, x0.expand_as(x))
    # the second evaluation, at x₀, sees σ̂ = 0 < tolerance: convergence costs one more call
    assert run.nfe.tolist() == [2] * 5 and (run.sigma_hat == 0).all()
    first = noise_level(x, x0.expand_as(x))
    assert torch.allclose(first, (x - x0).flatten(1).norm(dim=1) / math.sqrt(21))
    assert torch.allclose(noise_level(x[:1], x0[None]), first[:1])  # a batch of one sample
    spent = dd_sample(point_mass(x0), x, 10)  # no tolerance: the whole budget
    assert spent.nfe.tolist() == [10] * 5


@pytest.mark.parametrize("step_size", [0.5, 1.5])
def test_step_size_contracts_a_point_mass_error_geometrically(step_size):
    """x ← x + λ F(x) on a point mass: the error is (1 − λ)^k (x − x₀) after k steps, for DD
    and noise-free SDD alike; σ̂ measures F itself, |1 − λ|^(K−1) times the first error."""
    x0, x, rng = _molecules(4, 6, 2.0, seed=21)
    seen = []
    run = dd_sample(point_mass(x0), x, 5, step_size=step_size,
                    callback=lambda info: seen.append(info["x"].clone()))
    for k, positions in enumerate(seen, start=1):
        assert torch.allclose(positions - x0, (1 - step_size) ** k * (x - x0))
    first = noise_level(x, x0.expand_as(x))
    assert torch.allclose(run.sigma_hat, abs(1 - step_size) ** 4 * first)
    sdd = sdd_sample(point_mass(x0), x, 5, rng, noise_scale=0.0, step_size=step_size)
    assert torch.equal(sdd.x, run.x)


def test_step_size_applies_per_sample_only_below_the_noise_level_given():
    """D(x) = x/2 (σ̂ = x/2 for a constant x): with λ = 1.5 below σ̂ = 1, a sample steps
    x → x/2 while its σ̂ ≥ 1 and x → x/4 once σ̂ < 1 (σ̂ = 1 is not below); each sample of the
    batch by its own σ̂. Powers of two keep it exact."""
    x = torch.stack([torch.full((3, 3), value, dtype=torch.float64) for value in (8.0, 1.0)])
    seen = []
    run = dd_sample(lambda y, sigma: 0.5 * y, x, 5, step_size=1.5, step_size_below=1.0,
                    callback=lambda info: seen.append(info["x"][:, 0, 0].tolist()))
    assert seen == [[4.0, 2.0**-2], [2.0, 2.0**-4], [1.0, 2.0**-6], [2.0**-2, 2.0**-8],
                    [2.0**-4, 2.0**-10]]
    assert run.sigma_hat.tolist() == [2.0**-3, 2.0**-9]
    sdd = sdd_sample(lambda y, sigma: 0.5 * y, x, 5, torch.Generator().manual_seed(0),
                     noise_scale=0.0, step_size=1.5, step_size_below=1.0)
    assert torch.equal(sdd.x, run.x)


@pytest.mark.parametrize("step_size", [1.5, 0.5])
def test_max_overshoot_shortens_each_atoms_step_beyond_the_prediction(step_size):
    """x ← x̂₀ + (λ − 1) F with each atom's (λ − 1) F cut to length m, direction kept: on a point
    mass x₀ = 0, an atom at (−2.4, −3.2, 0) (|λ − 1| F = 2) lands at ±(0.6, 0.8, 0) with m = 1,
    one at (−0.12, −0.16, 0) (0.1 < m) at ±(0.06, 0.08, 0), whatever the sign of λ − 1 (the
    length is each atom's, not each coordinate's over the atoms); λ = 1 is x̂₀ itself."""
    x0 = torch.zeros(1, 2, 3, dtype=torch.float64)
    x = torch.tensor([[[-2.4, -3.2, 0.0], [-0.12, -0.16, 0.0]]], dtype=torch.float64)
    sign = 1.0 if step_size > 1 else -1.0
    expected = sign * torch.tensor([[[0.6, 0.8, 0.0], [0.06, 0.08, 0.0]]], dtype=torch.float64)
    run = dd_sample(point_mass(x0), x, 1, step_size=step_size, max_overshoot=1.0)
    assert torch.allclose(run.x, expected)
    sdd = sdd_sample(point_mass(x0), x, 1, torch.Generator().manual_seed(0), noise_scale=0.0,
                     step_size=step_size, max_overshoot=1.0)
    assert torch.equal(sdd.x, run.x)
    uncapped = dd_sample(point_mass(x0), x, 1, step_size=step_size)
    assert torch.allclose(uncapped.x, (step_size - 1) * (x0 - x))
    assert torch.equal(dd_sample(point_mass(x0), x, 1, max_overshoot=1e-3).x, x0)


def test_size_trust_region_shortens_each_atoms_step_to_a_multiple_of_the_radius():
    """x̂₀ − x per atom cut to length c·R, direction kept, R the sample's radius of gyration
    about its centroid: atoms at (0, 0, 0) and (2, 0, 0) (R = 1; shifted, R stays 1) with
    steps (0, 3, 4) and (0.3, 0.4, 0) and c = 2: the first (length 5) becomes (0, 1.2, 1.6), the
    second (0.5 < 2) stays; the same steps on atoms 4 Å apart (R = 2) give (0, 2.4, 3.2)."""
    x = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]],
                      [[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]], dtype=torch.float64) + 5.0
    steps = torch.tensor([[0.0, 3.0, 4.0], [0.3, 0.4, 0.0]], dtype=torch.float64)
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma)
        return x + steps

    sigma = torch.tensor([0.7, 0.2], dtype=torch.float64)
    denoised = size_trust_region(denoiser, 2.0)(x, sigma)
    expected = torch.tensor([[[0.0, 1.2, 1.6], [0.3, 0.4, 0.0]],
                             [[0.0, 2.4, 3.2], [0.3, 0.4, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(denoised - x, expected, rtol=0, atol=1e-12)
    assert seen[0] is sigma and denoised.dtype == torch.float64
    assert torch.equal(size_trust_region(denoiser, 10.0)(x, sigma), x + steps)


@pytest.mark.parametrize("ratio", [0.0, -1.0, float("nan"), "1", None])
def test_size_trust_region_needs_a_positive_ratio(ratio):
    with pytest.raises(ValueError, match=f"^max_step_ratio must be a positive number, got "
                                         f"{re.escape(repr(ratio))}$"):
        size_trust_region(lambda x, sigma: x, ratio)


@pytest.mark.parametrize(("option", "what"), [("step_size_below", "noise level"),
                                              ("max_overshoot", "length")])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), "1"])
def test_noise_level_and_overshoot_cap_must_be_positive(option, what, value):
    x0, x, rng = _molecules(2, 3, 1.0, seed=23)
    message = f"^{option} must be None or a positive {what}, got {re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=message):
        dd_sample(point_mass(x0), x, 3, step_size=1.2, **{option: value})
    with pytest.raises(ValueError, match=message):
        sdd_sample(point_mass(x0), x, 3, rng, step_size=1.2, **{option: value})


@pytest.mark.parametrize("step_size", [0.0, -0.5, 2.0, float("nan"), "1"])
def test_step_size_outside_the_contracting_range_is_rejected(step_size):
    x0, x, rng = _molecules(2, 3, 1.0, seed=22)
    with pytest.raises(ValueError, match="step_size"):
        dd_sample(point_mass(x0), x, 3, step_size=step_size)
    with pytest.raises(ValueError, match="step_size"):
        sdd_sample(point_mass(x0), x, 3, rng, step_size=step_size)


def test_dd_tolerance_masks_converged_samples():
    """A contraction D(x) = x/2 halves σ̂ per step: each sample stops at its own step, the
    denoiser only sees the rows still running, and the callback reports step ``i``, the rows
    evaluated (``active``) and the running ``nfe``. All values are powers of two, so σ̂ hits
    the tolerance 2⁻⁷ exactly: σ̂ = tolerance is not converged (a sample stops after the first
    evaluation with σ̂ < tolerance)."""
    x = torch.stack([torch.full((4, 3), 2.0**e, dtype=torch.float64) for e in (0, 3, 6)])
    count = Counting(lambda y, sigma: 0.5 * y)
    seen = []
    run = dd_sample(count, x, 20, tolerance=2.0**-7, callback=lambda info: seen.append(
        (info["i"], info["active"].clone(), info["nfe"].clone())))
    # σ̂ of evaluation k = 0, 1, … is 2^(e−k−1): the last one is k = e + 7 (σ̂ = 2⁻⁸)
    assert run.nfe.tolist() == [8, 11, 14]
    assert count.sizes == [3] * 8 + [2] * 3 + [1] * 3
    assert count.rows == int(run.nfe.sum())
    assert run.sigma_hat.tolist() == [2.0**-8] * 3
    assert [i for i, _, _ in seen] == list(range(14))
    for step, (_, active, nfe) in enumerate(seen):
        assert torch.equal(active, run.nfe > step)
        assert torch.equal(nfe, run.nfe.clamp(max=step + 1))


@pytest.mark.parametrize("steps", [2, 5])
def test_sdd_noise_decays_linearly_to_zero(steps):
    """SDD on a point mass: after step k the sample is x₀ + η_k z with η_k = η(K−1−k)/(K−1);
    the last step is noise-free (K = 2: one noisy step, η_0 = η; χ² tests, false-failure rate
    10⁻⁴ each)."""
    atoms, batch, eta = 30, 200, 0.3
    x0, x, rng = _molecules(batch, atoms, 2.0, seed=4)
    spreads = []
    run = sdd_sample(point_mass(x0), x, steps, rng, noise_scale=eta,
                     callback=lambda info: spreads.append(((info["x"] - x0) ** 2).mean().item()))
    n = batch * atoms * 3
    low, high = _chi2_bounds(n)
    for k, spread in enumerate(spreads[:-1]):
        expected = (eta * (steps - 1 - k) / (steps - 1)) ** 2
        assert low < spread / expected < high
    assert spreads[-1] == 0 and torch.equal(run.x, x0.expand_as(x))
    assert run.nfe.tolist() == [steps] * batch


def test_sdd_without_noise_is_dd_and_dd_draws_nothing():
    """η = 0 is allowed and is DD (Eq. 15 with every η_k = 0). DD is deterministic: it draws no
    random numbers, so the global generator's state is untouched."""
    x0, x, _ = _molecules(3, 4, 1.0, seed=18)
    state = torch.get_rng_state()
    dd = dd_sample(gaussian_denoiser(x0, 0.3), x, 4)
    assert torch.equal(torch.get_rng_state(), state)
    sdd = sdd_sample(gaussian_denoiser(x0, 0.3), x, 4, torch.Generator().manual_seed(0),
                     noise_scale=0.0)
    assert torch.equal(sdd.x, dd.x)


def test_noise_and_denoiser_output_are_in_x_precision():
    """(i) SDD with η = 1 on the point mass 0 makes the first step return the injected noise
    itself (x₁ = x̂₀ + η₀ z = z, η₀ = η): it is N(0, 1) drawn in float64, not float32 numbers
    (χ² test, false-failure rate 10⁻⁴). (ii) A float32 model's output is cast to x's dtype
    before use: the run equals that of a float64 model returning the same values."""
    first = []
    sdd_sample(point_mass(torch.zeros(5, 3, dtype=torch.float64)),
               torch.ones(400, 5, 3, dtype=torch.float64), 3, torch.Generator().manual_seed(0),
               noise_scale=1.0, callback=lambda info: first.append(info["x"].clone()))
    z = first[0]
    assert z.dtype == torch.float64 and not torch.equal(z.float().double(), z)
    low, high = _chi2_bounds(z.numel())
    assert low < z.square().mean().item() < high
    x0, x, _ = _molecules(4, 5, 1.0, seed=19)
    model32 = lambda y, sigma: gaussian_denoiser(x0, 0.3)(y, sigma).float()
    model64 = lambda y, sigma: model32(y, sigma).double()
    runs = [sdd_sample(model, x, 4, torch.Generator().manual_seed(1), noise_scale=0.2).x
            for model in (model32, model64)]
    assert runs[0].dtype == torch.float64 and torch.equal(runs[0], runs[1])


def test_samplers_draw_only_from_their_generator():
    x0, x, _ = _molecules(3, 4, 1.0, seed=5)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        rng = torch.Generator().manual_seed(7)
        runs.append(sdd_sample(point_mass(x0), x, 4, rng, noise_scale=0.5).x)
        rng = torch.Generator().manual_seed(7)
        runs.append(stochastic_heun_sample(gaussian_denoiser(0.0, 1.0), x, 6, rng,
                                           sigma_min=0.01, sigma_max=5.0).x)
        rng = torch.Generator().manual_seed(7)
        runs.append(ancestral_sample(gaussian_denoiser(0.0, 1.0), x, 6, rng,
                                     sigma_min=0.01, sigma_max=5.0).x)
    for first, second in zip(runs[:3], runs[3:]):
        assert torch.equal(first, second)


def test_defaults_are_edms_rho_and_the_papers_churn():
    """Left out, ρ is 7 (Karras et al. 2022), SDD's η 0.1 Å, and the churn parameters are the
    GPFF paper's QM9 values (A.2: S_churn 60, S_tmin 0.01 Å, S_tmax 15 Å, S_noise 1; λ = 0.5
    our choice): the samples equal those with the values given. The levels straddle S_tmin and
    S_tmax, and the long run has S_churn/N below the √2 − 1 cap, so each value matters."""
    x0, x, _ = _molecules(3, 4, 5.0, seed=21)
    denoiser = gaussian_denoiser(x0, 0.3)
    common = {"sigma_min": 0.01, "sigma_max": 15.5}
    churn = {"rho": 7.0, "s_churn": 60.0, "s_tmin": 0.01, "s_tmax": 15.0, "s_noise": 1.0,
             "churn_correction": 0.5}

    def seeded():
        return torch.Generator().manual_seed(0)

    pairs = [
        (ancestral_sample(denoiser, x, 6, seeded(), **common),
         ancestral_sample(denoiser, x, 6, seeded(), rho=7.0, **common)),
        (heun_sample(denoiser, x, 7, **common), heun_sample(denoiser, x, 7, rho=7.0, **common)),
        (stochastic_heun_sample(denoiser, x, 15, seeded(), adaptive=True, **common),
         stochastic_heun_sample(denoiser, x, 15, seeded(), adaptive=True, **churn, **common)),
        (stochastic_heun_sample(denoiser, x, 299, seeded(), **common),
         stochastic_heun_sample(denoiser, x, 299, seeded(), **churn, **common)),
        (sdd_sample(denoiser, x, 4, seeded()), sdd_sample(denoiser, x, 4, seeded(),
                                                          noise_scale=0.1)),
    ]
    for default, given in pairs:
        assert torch.equal(default.x, given.x)


@pytest.mark.parametrize("s_churn", [1.2, 60.0])
def test_stochastic_heun_raises_the_levels_inside_its_churn_window(s_churn):
    """Each step first evaluates at σ_i(1 + γ), γ = min(S_churn/N, √2 − 1) for S_tmin ≤ σ_i ≤
    S_tmax (both ends included) and 0 outside; the Heun corrector evaluates at σ_{i+1}."""
    levels = edm_sigmas(6, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    seen = []

    def recording(x, sigma):
        seen.append(sigma[0].item())
        return gaussian_denoiser(0.0, 1.0)(x, sigma)

    x = SIGMA_MAX * torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
    stochastic_heun_sample(recording, x, 11, torch.Generator().manual_seed(1),
                           sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, s_churn=s_churn,
                           s_tmin=levels[3].item(), s_tmax=levels[1].item())
    gamma = min(s_churn / 6, math.sqrt(2) - 1)
    expected = []
    for i in range(6):
        expected.append(levels[i].item() * (1 + (gamma if 1 <= i <= 3 else 0.0)))
        if i < 5:
            expected.append(levels[i + 1].item())
    assert seen == pytest.approx(expected, rel=1e-12)


def test_stochastic_heun_adds_the_churn_noise_scaled_by_s_noise():
    """From x = 0 the first evaluation sees √(σ̂⁺² − σ²)·S_noise·z: per coordinate variance
    σ²((1 + γ)² − 1) S_noise² (χ² test, false-failure rate 10⁻⁴)."""
    seen = []

    def recording(x, sigma):
        if not seen:
            seen.append(x.clone())
        return x

    batch, s_noise = 4000, 0.5
    stochastic_heun_sample(recording, torch.zeros(batch, 5, 3, dtype=torch.float64), 3,
                           torch.Generator().manual_seed(2), sigma_min=SIGMA_MIN,
                           sigma_max=SIGMA_MAX, s_churn=0.6, s_tmin=0.0, s_tmax=math.inf,
                           s_noise=s_noise)
    gamma = 0.6 / 2
    expected = SIGMA_MAX**2 * ((1 + gamma) ** 2 - 1) * s_noise**2
    low, high = _chi2_bounds(batch * 15)
    assert low < seen[0].square().mean().item() / expected < high


def test_adaptive_stochastic_heun_first_step_by_hand():
    """Adaptive stochastic Heun (App. A.3), step 0 in float64 by hand, S_noise = 0 so x̂ = x:
    evaluate D at σ̂⁺ = σ_max(1 + γ) (γ = S_churn/N_target), take σ̂ = ‖D − x‖/√d, adapt the
    schedule to σ̂_pre = σ̂/(1 + γ)^λ (λ = 0.5, the default): σ_1 = (σ̂_pre^(1/ρ) − Δ_target)^ρ,
    then Heun from σ̂ (not σ̂⁺) to σ_1: x' = x + (σ_1 − σ̂)(d + d')/2, d = (x − D)/σ̂,
    d' = (x_E − D(x_E, σ_1))/σ̂_E at x_E = x + (σ_1 − σ̂) d, with σ̂_E = ‖D(x_E) − x_E‖/√d the
    Euler point's own estimate (an adaptive run's every level is estimated). Gaussian data,
    s = 2."""
    s, n, target, rho = 2.0, 8, 3, 7.0
    x = SIGMA_MAX * torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(25),
                                dtype=torch.float64)
    seen = []
    stochastic_heun_sample(gaussian_denoiser(0.0, s), x, 2 * n, torch.Generator().manual_seed(0),
                           sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, s_churn=1.2, s_tmin=0.0,
                           s_tmax=math.inf, s_noise=0.0, adaptive=True, target_steps=target,
                           callback=lambda info: seen.append(info))
    gamma = 1.2 / target
    raised = SIGMA_MAX * (1 + gamma)
    denoised = s**2 / (s**2 + raised**2) * x
    sigma_hat = (denoised - x).flatten(1).norm(dim=1) / math.sqrt(12)  # [B]
    span = SIGMA_MAX ** (1 / rho) - SIGMA_MIN ** (1 / rho)
    before = sigma_hat / (1 + gamma) ** 0.5
    sigma_1 = (before ** (1 / rho) - span / (target - 1)) ** rho
    assert (sigma_1 > SIGMA_MIN).all() and (sigma_1 < edm_sigmas(n, SIGMA_MIN, SIGMA_MAX)[1]).all()
    h, level, estimate = ((sigma_1 - sigma_hat).reshape(-1, 1, 1), sigma_1.reshape(-1, 1, 1),
                          sigma_hat.reshape(-1, 1, 1))
    slope = (x - denoised) / estimate
    euler = x + h * slope
    force_euler = s**2 / (s**2 + level**2) * euler - euler
    estimate_euler = force_euler.flatten(1).norm(dim=1).reshape(-1, 1, 1) / math.sqrt(12)
    assert not torch.allclose(estimate_euler, level, rtol=1e-3)  # the two slopes differ
    slope_euler = -force_euler / estimate_euler
    first = seen[0]
    assert torch.allclose(first["sigma_hat"], sigma_hat, rtol=1e-12)
    assert torch.allclose(first["sigma_next"], sigma_1, rtol=1e-10)
    assert torch.allclose(first["x"], x + h * 0.5 * (slope + slope_euler), rtol=1e-10)


@pytest.mark.parametrize("adaptive", [False, True])
def test_stochastic_heun_without_churn_is_heun(adaptive):
    """S_churn = 0 adds no noise, and the (adaptive) steps are Heun's exactly, with the
    Gaussian model's σ̂ below the scheduled level."""
    _, x, _ = _molecules(4, 5, SIGMA_MAX, seed=17)
    kwargs = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "adaptive": adaptive,
              "target_steps": 4}
    heun = heun_sample(gaussian_denoiser(0.0, 1.0), x, 15, **kwargs)
    churnless = stochastic_heun_sample(gaussian_denoiser(0.0, 1.0), x, 15,
                                       torch.Generator().manual_seed(3), s_churn=0.0, **kwargs)
    assert torch.equal(heun.x, churnless.x) and torch.equal(heun.nfe, churnless.nfe)


# --------------------------------------------------------------------------- budgets, masks


def _all_samplers(**common):
    kwargs = dict(sigma_min=0.01, sigma_max=5.0, **common)
    return {
        "dd": lambda d, x, n, g: dd_sample(d, x, n, **common),
        "dd_tol": lambda d, x, n, g: dd_sample(d, x, n, tolerance=0.05, **common),
        "sdd": lambda d, x, n, g: sdd_sample(d, x, n, g, **common),
        "ancestral": lambda d, x, n, g: ancestral_sample(d, x, n, g, **kwargs),
        "heun": lambda d, x, n, g: heun_sample(d, x, n, **kwargs),
        "stochastic_heun": lambda d, x, n, g: stochastic_heun_sample(d, x, n, g, **kwargs),
        "ancestral_as": lambda d, x, n, g: ancestral_sample(d, x, n, g, adaptive=True,
                                                            **kwargs),
        "heun_as": lambda d, x, n, g: heun_sample(d, x, n, adaptive=True, **kwargs),
        "stochastic_heun_as": lambda d, x, n, g: stochastic_heun_sample(
            d, x, n, g, adaptive=True, **kwargs),
    }


SAMPLERS = list(_all_samplers())
EXACT_NFE = {"dd": lambda n: n, "sdd": lambda n: n, "ancestral": lambda n: n,
             "heun": lambda n: 2 * ((n + 1) // 2) - 1,
             "stochastic_heun": lambda n: 2 * ((n + 1) // 2) - 1}


def _denoisers(x0):
    rng = torch.Generator().manual_seed(11)
    return {
        "point mass": point_mass(x0),
        "gaussian": gaussian_denoiser(x0, 0.3),
        "erratic": lambda x, sigma: x + torch.randn(x.shape, generator=rng, dtype=x.dtype)
        * torch.rand(x.shape[0], 1, 1, generator=rng, dtype=x.dtype) * 10,
    }


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("budget", [1, 2, 7, 16])
def test_budget_is_counted_exactly_and_never_exceeded(name, budget):
    x0, x, _ = _molecules(6, 5, 5.0, seed=6)
    for denoiser in _denoisers(x0).values():
        count = Counting(denoiser)
        run = _all_samplers()[name](count, x, budget, torch.Generator().manual_seed(0))
        assert run.nfe.dtype == torch.int64 and run.nfe.shape == (6,)
        assert count.rows == int(run.nfe.sum())
        assert int(run.nfe.max()) <= budget
        if name in EXACT_NFE:
            assert run.nfe.tolist() == [EXACT_NFE[name](budget)] * 6
        assert run.x.shape == x.shape and run.sigma_hat.shape == (6,)


@pytest.mark.parametrize("name", SAMPLERS)
def test_samples_keep_their_precision_whatever_the_denoiser_returns(name):
    """A float32 batch stays float32 (samples, σ̂ and callbacks) under a float64 denoiser."""
    x0, x, _ = _molecules(3, 4, 2.0, seed=9)
    seen = []
    run = _all_samplers(callback=lambda info: seen.append(info["x"].dtype))[name](
        lambda y, sigma: point_mass(x0)(y, sigma).double(), x.float(), 5,
        torch.Generator().manual_seed(0))
    assert run.x.dtype == run.sigma_hat.dtype == torch.float32
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_fixed_atoms_never_move(name, per_sample):
    """DD+scaffold: fixed atoms keep their positions bit for bit, the others reach x₀."""
    x0, x, _ = _molecules(4, 6, 2.0, seed=8)
    fixed = torch.tensor([True, False, False, True, False, False])
    if per_sample:
        fixed = torch.stack([fixed, fixed.roll(1), fixed.roll(2), ~fixed])
    mask = fixed.expand(4, 6)
    first = []
    run = _all_samplers(fixed=fixed, callback=lambda info: first.append(
        info["sigma_hat"].clone()))[name](point_mass(x0), x, 9, torch.Generator().manual_seed(0))
    assert torch.equal(run.x[mask], x[mask])
    assert torch.allclose(run.x[~mask], x0.expand_as(x)[~mask], atol=1e-9)
    # σ̂ is taken over the free coordinates only
    free = (x - x0).masked_fill(mask[..., None], 0.0)
    expected = free.flatten(1).norm(dim=1) / (3 * (~mask).sum(dim=1)).sqrt()
    if not name.startswith("stochastic"):  # (stochastic Heun adds noise before evaluating)
        assert torch.allclose(first[0], expected)


def test_noise_level_counts_the_free_coordinates_of_flat_samples():
    """Samples may be flat, ``[B, D]`` with ``fixed`` over the D coordinates: with one free
    coordinate, d = 1 and σ̂ = |x̂₀ − x| there (D(x) = x + 0.5: σ̂ = 0.5)."""
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    run = dd_sample(lambda y, sigma: y + 0.5, x, 1, fixed=torch.tensor([True, False, True]))
    assert run.sigma_hat.tolist() == [0.5, 0.5]
    assert run.x[:, 1].tolist() == [1.5, 1.5] and torch.equal(run.x[:, ::2], x[:, ::2])


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_batch_of_one(name):
    """Samples are independent: a batch of one sample runs like any other (point mass: it
    reaches x₀ within the documented evaluations) and, for the deterministic samplers on
    Gaussian data, gives its row of a larger batch's run (Heun's second evaluation included)."""
    x0, x, _ = _molecules(3, 4, 2.0, seed=20)
    sampler = _all_samplers()[name]
    run = sampler(point_mass(x0), x[:1], 7, torch.Generator().manual_seed(0))
    assert torch.allclose(run.x, x0[None], atol=1e-9) and run.nfe.shape == (1,)
    if name in EXACT_NFE:
        assert run.nfe.tolist() == [EXACT_NFE[name](7)]
    if name in ("dd", "dd_tol", "heun", "heun_as"):
        single, batch = (sampler(gaussian_denoiser(x0, 0.3), y, 7, None) for y in (x[:1], x))
        assert torch.allclose(single.x, batch.x[:1], rtol=1e-12, atol=0.0)
        assert torch.equal(single.nfe, batch.nfe[:1])


@pytest.mark.parametrize("stochastic", [False, True])
def test_constraint_is_applied_before_each_step_and_respects_fixed_atoms(stochastic):
    """DD and SDD (here η = 0, so the expected positions are exact) apply ``constrain`` before
    every step; the fixed atom is restored."""
    _, x, _ = _molecules(3, 8, 2.0, seed=9)
    fixed = torch.zeros(8, dtype=torch.bool)
    fixed[0] = True
    steps = []

    def constrain(y, step):
        steps.append(step)
        return y + 1.0  # moves every atom, including the fixed one

    seen = []
    identity = lambda y, sigma: (seen.append(y.clone()), y)[1]
    if stochastic:
        run = sdd_sample(identity, x, 3, torch.Generator().manual_seed(0), noise_scale=0.0,
                         constrain=constrain, fixed=fixed)
    else:
        run = dd_sample(identity, x, 3, constrain=constrain, fixed=fixed)
    assert steps == [0, 1, 2]
    assert torch.equal(seen[0][:, 1:], x[:, 1:] + 1.0)  # the denoiser sees constrained input
    assert torch.equal(run.x[:, 0], x[:, 0])  # the fixed atom stayed
    assert torch.allclose(run.x[:, 1:], x[:, 1:] + 3.0)


# --------------------------------------------------------------------------- DD+shape


def _principal_variances(x):
    centred = x - x.mean(dim=1, keepdim=True)
    return torch.linalg.eigvalsh(centred.transpose(1, 2) @ centred / x.shape[1]).flip(-1)


def _principal_axes(x):
    centred = x - x.mean(dim=1, keepdim=True)
    return torch.linalg.eigh(centred.transpose(1, 2) @ centred)[1]  # [B, 3, 3] columns


def test_shape_constraint_sets_the_target_principal_variances():
    rng = torch.Generator().manual_seed(10)
    x = torch.randn(5, 9, 3, generator=rng, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5],
                                                                                dtype=torch.float64)
    target = torch.tensor([[4.0, 2.0, 1.0]] * 4 + [[0.3, 5.0, 1.0]], dtype=torch.float64)
    strict = shape_constraint(x, target, 1.0)
    assert torch.allclose(_principal_variances(strict),
                          target.sort(dim=-1, descending=True).values, rtol=1e-10)
    assert torch.allclose(strict.mean(dim=1), x.mean(dim=1))  # the centroid stays
    # targets pair with the principal axes by size: the longest axis stays the longest
    assert torch.allclose(_principal_axes(strict).abs(), _principal_axes(x).abs(), atol=1e-8)
    assert torch.equal(shape_constraint(x, target, 0.0), x)  # identity at strictness 0
    half = shape_constraint(x, target[0], 0.5)  # [3] target for all
    assert torch.allclose(half, 0.5 * (x + shape_constraint(x, target[0], 1.0)))


def test_shape_constraint_fixed_points_and_a_diatomic():
    """At s = 1 a sample whose principal variances already are τ is a fixed point (√(τ/λ) = 1:
    x' = c + Y V Vᵀ = x). A list τ is taken in x's precision (variances exact to 10⁻¹²). A
    diatomic (A = 2, the fewest atoms allowed) has one non-zero principal variance, (d/2)² for
    the bond vector d: s = 1 makes it τ₁, i.e. d' = 2√τ₁ d/|d|, about the same centre (the
    zero-variance directions are left alone up to rounding)."""
    rng = torch.Generator().manual_seed(21)
    x = torch.randn(3, 6, 3, generator=rng, dtype=torch.float64)
    assert torch.allclose(shape_constraint(x, _principal_variances(x), 1.0), x, atol=1e-12)
    target = [0.1, 0.3, 0.2]
    assert torch.allclose(_principal_variances(shape_constraint(x, target, 1.0)),
                          torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64), rtol=1e-12)
    pair = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]], dtype=torch.float64)  # |d| = 3
    stretched = shape_constraint(pair, target, 1.0)[0]
    bond = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    expected = bond / 2 + torch.outer(torch.tensor([-1.0, 1.0], dtype=torch.float64),
                                      math.sqrt(0.3) * bond / 3)
    assert torch.allclose(stretched, expected, atol=1e-6)


def test_shape_constraint_floor_is_per_sample_and_scales_with_the_sample():
    """A direction of variance λ below ε·tr C (machine ε, C the sample's own covariance) is
    rescaled by √(τ/(ε tr C)) instead of √(τ/λ). The floor belongs to the sample, so the map
    acts on each sample alone, and it scales like C: shape(c x, c² τ) = c shape(x, τ) also in
    the floored direction. Here an axis-aligned, almost flat sample (z = ±10⁻¹⁰): C is
    diagonal, its eigenvectors are the axes."""
    flat = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0.5, 0], [0, -0.5, 0], [0, 0, 1e-10],
                         [0, 0, -1e-10]], dtype=torch.float64)
    other = torch.randn(6, 3, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    tau = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    c = 2.0**10
    out = shape_constraint(torch.stack([flat, c * flat, other]),
                           torch.stack([tau, c**2 * tau, tau]), 1.0)
    assert torch.allclose(out[1], c * out[0], rtol=1e-12, atol=0.0)
    assert torch.equal(out[2], shape_constraint(other[None], tau, 1.0)[0])
    trace = (2 * 1.0 + 2 * 0.25 + 2 * 1e-20) / 6
    floored = flat[:, 2] * math.sqrt(1.0 / (torch.finfo(torch.float64).eps * trace))
    assert torch.allclose(out[0, :, 2], floored, rtol=1e-10, atol=0.0)


def test_shape_constraint_is_rotation_and_translation_equivariant():
    rng = torch.Generator().manual_seed(12)
    x = torch.randn(4, 7, 3, generator=rng, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=rng, dtype=torch.float64))
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    target = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)
    moved = shape_constraint(x @ rotation.T + shift, target, 0.7)
    assert torch.allclose(moved, shape_constraint(x, target, 0.7) @ rotation.T + shift,
                          atol=1e-10)


def test_shape_constraint_rejects_bad_input():
    x = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="strictness"):
        shape_constraint(x, [1.0, 1.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="^target_variances must be positive$"):
        shape_constraint(x, [1.0, 0.0, 1.0], 0.5)
    for bad, shape in ((torch.zeros(4, 3), r"\(4, 3\)"), (torch.zeros(2, 1, 3), r"\(2, 1, 3\)"),
                       (torch.zeros(2, 4, 4), r"\(2, 4, 4\)"), ([[0.0]], r"\(\)")):
        with pytest.raises(ValueError, match=r"^x must be \[B, A, 3\] with at least 2 atoms, "
                           rf"got {shape}$"):
            shape_constraint(bad, [1.0, 1.0, 1.0], 0.5)
    with pytest.raises(ValueError, match=r"^target_variances must be \[3\] or \[B, 3\] = "
                       r"\[2, 3\], got \(3, 3\)$"):
        shape_constraint(x, torch.ones(3, 3), 0.5)


# --------------------------------------------------------------------------- adaptive sampling

ATOMS, TRACK_BATCH = 30, 256


@pytest.mark.parametrize("kind", ["ancestral", "heun", "stochastic_heun"])
def test_adaptive_noise_estimate_tracks_the_schedule_for_an_exact_model(kind):
    """Point-mass data, exact denoiser: σ̂ of every step matches the level the step started
    from (χ² with d = 90 per sample; stochastic Heun: the raised level σ(1 + γ)), so the
    adaptive run follows its target schedule: its evaluations match the target's."""
    x0, _, rng = _molecules(1, ATOMS, 0.0, seed=13)
    x = x0 + SIGMA_MAX * torch.randn(TRACK_BATCH, ATOMS, 3, generator=rng, dtype=torch.float64)
    target, budget = 10, 64
    gamma = min(2.0 / target, math.sqrt(2) - 1)
    extra = ({"s_churn": 2.0, "s_tmin": 0.0, "s_tmax": math.inf, "churn_correction": 1.0}
             if kind == "stochastic_heun" else {})
    ratios = []

    def record(info):
        rows = info["active"] & (info["sigma"] > 0)
        raised = info["sigma"][rows] * (1 + gamma if kind == "stochastic_heun" else 1)
        ratios.append((((info["sigma_hat"][rows] / raised) ** 2).mean().item(), int(rows.sum())))

    run = _run(kind, point_mass(x0), x, budget, rng, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
               adaptive=True, target_steps=target, callback=record, **extra)
    # mean of b·d χ²_1/1 variables: 5 standard deviations, √(2/(b·d)) each
    assert all(abs(r - 1) < 5 * math.sqrt(2 / (b * ATOMS * 3)) for r, b in ratios), ratios
    per_level = 1 if kind == "ancestral" else 2
    expected = per_level * target - (per_level - 1)  # the target schedule's evaluations
    assert abs(run.nfe.double().mean().item() - expected) <= per_level
    assert torch.allclose(run.x, x0.expand_as(x), atol=1e-9)


def _adaptive_plan(factors, n_levels, target, sigma_min, sigma_max, rho):
    """The adaptive schedule (``_Levels``' docstring) in plain float64 Python, for a model
    whose estimate at the planned level σ_i is σ̂_i = f_i σ_i: the pairs (σ_i, σ_{i+1})."""
    u_max, u_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    delta_target = (u_max - u_min) / (target - 1)
    delta_slow = (u_max - u_min) / (n_levels - 1)
    upper = edm_sigmas(n_levels, sigma_min, sigma_max, rho, dtype=torch.float64).tolist()
    sigma, steps = sigma_max, []
    for i, factor in enumerate(factors):
        u_hat = (factor * sigma) ** (1 / rho)
        delta = delta_target if i == 0 else max(
            delta_target + sigma ** (1 / rho) - u_hat, delta_slow)
        planned = u_hat - delta
        nxt = min(planned**rho if planned >= u_min else 0.0, upper[i + 1])
        steps.append((sigma, nxt))
        sigma = nxt
        if nxt == 0:
            break
    return steps


def test_adaptive_schedule_follows_its_recursion():
    """AS (``_Levels``), in ρ-space u = σ^(1/ρ): step 0 plans û_0 − Δ_target, step i ≥ 1 plans
    û_i − max(Δ_target + u_i − û_i, Δ_slow), a level below σ_min becomes 0 and none exceeds
    the fixed schedule's σ^max_{i+1}; Δ_target = (u_max − u_min)/(N_target − 1) with the
    default N_target = ⌈N/2⌉ and Δ_slow = (u_max − u_min)/(N − 1). A scripted model,
    D = x + f_i σ_i (σ̂_i = f_i σ_i), takes every branch: a fast step, a slow one (floored at
    Δ_slow), a slower one (floored, then capped by σ^max_2), a fast one (Δ_target + u − û),
    and the jump to 0. The callback reports each step's ``i``, levels, ``nfe`` and ``x``."""
    factors = [0.5, 3.0, 4.0, 0.5, 0.5]
    n, rho = 8, 5.0

    def scripted(x, sigma):
        return x + factors[len(seen)] * sigma.reshape(-1, 1, 1)

    seen = []
    x = SIGMA_MAX * torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(23),
                                dtype=torch.float64)
    run = ancestral_sample(scripted, x, n, torch.Generator().manual_seed(24),
                           sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=rho, adaptive=True,
                           callback=lambda info: seen.append(
                               (info["i"], info["sigma"].clone(), info["sigma_next"].clone(),
                                info["nfe"].clone(), info["x"].clone())))
    expected = _adaptive_plan(factors, n, (n + 1) // 2, SIGMA_MIN, SIGMA_MAX, rho)
    assert len(seen) == len(expected) == 5
    for step, ((i, sigma, sigma_next, nfe, _), (level, nxt)) in enumerate(zip(seen, expected)):
        assert i == step and nfe.tolist() == [step + 1] * 2
        assert sigma.tolist() == pytest.approx([level] * 2, rel=1e-9)
        assert sigma_next.tolist() == pytest.approx([nxt] * 2, rel=1e-9)
    assert torch.equal(seen[-1][-1], run.x) and run.nfe.tolist() == [5, 5]


def test_ancestral_noise_stays_real_when_rounding_plans_above_the_estimate():
    """σ_up = σ' √(1 − σ'²/σ̂²) needs σ' ≤ σ̂. With σ_min = σ_max (Δ = 0) the adaptive plan is
    σ̂ itself up to the ρ-space round trip (σ̂^(1/ρ))^ρ, which can round above σ̂: the ratio
    σ'/σ̂ is clamped at 1 and no sample turns NaN. One row per estimate σ̂ = 1 − k ulp (exact:
    x = 0, D = x + σ̂, d = 1), k < 64."""
    estimates = torch.ones(64, 1, dtype=torch.float64)
    for k in range(1, 64):
        estimates[k] = torch.nextafter(estimates[k - 1], torch.zeros(1, dtype=torch.float64))
    first = []
    ancestral_sample(lambda x, sigma: x + estimates[:len(x)], torch.zeros(64, 1,
                     dtype=torch.float64), 2, torch.Generator().manual_seed(0), sigma_min=1.0,
                     sigma_max=1.0, adaptive=True, target_steps=2,
                     callback=lambda info: first.append(info["x"].clone()))
    assert torch.isfinite(first[0]).all()


def test_adaptive_level_at_sigma_min_is_kept():
    """Only a planned level *below* σ_min becomes 0. With ρ = 1 and dyadic numbers the plan
    is exact: from x = 0, D = x + 4 gives σ̂ = 4 = σ_max, and with N_target = 2 (Δ_target =
    σ_max − σ_min) the plan is exactly σ_min = 1/4, still a level: a second step follows."""
    levels = []
    run = ancestral_sample(lambda x, sigma: x + 4.0, torch.zeros(1, 2, 3, dtype=torch.float64),
                           2, torch.Generator().manual_seed(0), sigma_min=0.25, sigma_max=4.0,
                           rho=1.0, adaptive=True, target_steps=2,
                           callback=lambda info: levels.append(info["sigma_next"].item()))
    assert levels == [0.25, 0.0] and run.nfe.tolist() == [2]


@pytest.mark.parametrize("kind", ["ancestral", "heun", "stochastic_heun"])
def test_adaptive_run_saves_evaluations_when_the_model_denoises_faster(kind):
    """Gaussian data with s = 1: the exact denoiser's σ̂ = σ²/√(s² + σ²) falls below σ, the
    adaptive steps grow and the run ends before the budget the fixed schedule spends."""
    rng = torch.Generator().manual_seed(14)
    x = math.sqrt(1 + SIGMA_MAX**2) * torch.randn(64, ATOMS, 3, generator=rng,
                                                   dtype=torch.float64)
    budget = 40
    runs = [_run(kind, gaussian_denoiser(0.0, 1.0), x, budget, rng, sigma_min=SIGMA_MIN,
                 sigma_max=SIGMA_MAX, adaptive=adaptive, target_steps=budget // 2)
            for adaptive in (False, True)]
    assert (runs[0].nfe == EXACT_NFE[kind](budget)).all()
    assert runs[1].nfe.double().mean() < 0.75 * EXACT_NFE[kind](budget)


@pytest.mark.parametrize("kind", ["ancestral", "heun", "stochastic_heun"])
def test_adaptive_run_without_progress_ends_on_the_upper_bound(kind):
    """A model whose noise estimate never falls (σ̂ = 100 always) would stall an adaptive
    schedule: the upper-bound schedule stops it exactly at the budget."""
    rng = torch.Generator().manual_seed(15)
    x = torch.randn(3, 4, 3, generator=rng, dtype=torch.float64)
    stuck = lambda y, sigma: y + 100.0
    run = _run(kind, stuck, x, 9, rng, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, adaptive=True,
               target_steps=2)
    assert (run.nfe == EXACT_NFE[kind](9)).all()


# --------------------------------------------------------------------------- validation


def test_bad_input_raises():
    x = torch.zeros(2, 3, 3)
    rng = torch.Generator()
    identity = lambda y, sigma: y
    with pytest.raises(ValueError, match="nfe"):
        dd_sample(identity, x, 0)
    with pytest.raises(ValueError, match="nfe"):
        heun_sample(identity, x, 2.5, sigma_min=0.1, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"^x contains non-finite values \(NaN or inf\)$"):
        dd_sample(identity, torch.full((2, 3, 3), float("nan")), 3)
    for bad in (torch.zeros(2, 3, 3, dtype=torch.int64), [[0.0, 1.0]]):
        with pytest.raises(ValueError, match=r"^x must be a floating-point torch\.Tensor$"):
            dd_sample(identity, bad, 3)
    for bad in (torch.zeros(3), torch.zeros(0, 3, 3), torch.zeros(2, 0)):
        with pytest.raises(ValueError, match=r"^x must be a non-empty batch \[B, \.\.\.\] of "):
            dd_sample(identity, bad, 3)
    with pytest.raises(ValueError, match="fixed"):
        dd_sample(identity, x, 3, fixed=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^fixed must be a boolean mask, got dtype torch\.int64$"):
        dd_sample(identity, x, 3, fixed=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="sigma_min"):
        ancestral_sample(identity, x, 3, rng, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        dd_sample(identity, x, 3, tolerance=0.0)
    with pytest.raises(ValueError, match=r"^the denoiser must return a tensor shaped like its "
                       r"input \(2, 3, 3\), got torch\.Size\(\[1, 3, 3\]\)$"):
        dd_sample(lambda y, sigma: y[:1], x, 3)
    with pytest.raises(ValueError, match=r"shaped like its input \(2, 3, 3\), got <class 'list'>$"):
        dd_sample(lambda y, sigma: [0.0], x, 3)
    with pytest.raises(TypeError, match="^rng must be a torch.Generator, got int$"):
        sdd_sample(identity, x, 3, 0)
    with pytest.raises(ValueError, match=r"^noise_scale must be >= 0, got -0\.1$"):
        sdd_sample(identity, x, 3, rng, noise_scale=-0.1)
    with pytest.raises(ValueError, match=r"^target_steps must be an integer >= 1, got 0$"):
        heun_sample(identity, x, 4, sigma_min=0.1, sigma_max=1.0, adaptive=True, target_steps=0)
    with pytest.raises(ValueError, match=r"^rho must be positive, got -1\.0$"):
        heun_sample(identity, x, 4, sigma_min=0.1, sigma_max=1.0, rho=-1.0)
    for bad in ({"s_churn": -1.0}, {"s_noise": -0.1}, {"churn_correction": -0.5}):
        with pytest.raises(ValueError, match="^s_churn, s_noise and churn_correction must be"):
            stochastic_heun_sample(identity, x, 3, rng, sigma_min=0.1, sigma_max=1.0, **bad)
    stochastic_heun_sample(identity, x, 3, rng, sigma_min=0.1, sigma_max=1.0, s_churn=0.0,
                           s_noise=0.0, churn_correction=0.0)  # zero is allowed
    # a sample of a single coordinate is a sample: D = x/2, one step
    assert dd_sample(lambda y, sigma: 0.5 * y, torch.ones(2, 1), 1).x.tolist() == [[0.5]] * 2
    # σ_min = σ_max is allowed: one level σ, then 0, gives D(x, σ) = x/(1 + σ²) for s = 1
    one_level = ancestral_sample(gaussian_denoiser(0.0, 1.0), x + 1.0, 1, rng, sigma_min=2.0,
                                 sigma_max=2.0)
    assert torch.allclose(one_level.x, torch.full_like(x, 0.2))


@pytest.mark.parametrize("name", SAMPLERS)
def test_dtype_follows_the_input(name):
    x0, x, _ = _molecules(3, 4, 1.0, seed=16)
    x32 = x.float()
    run = _all_samplers()[name](gaussian_denoiser(x0.float(), 0.3), x32, 5,
                                torch.Generator().manual_seed(0))
    assert run.x.dtype == torch.float32 and run.sigma_hat.dtype == torch.float32
    assert torch.isfinite(run.x).all()
