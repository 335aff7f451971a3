"""Diffusion: the predictor–corrector sampler against an analytic score, and the DSM baseline
behind the Sampler protocol (trains, samples, round-trips, checks input)."""

import itertools
import re

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import ase_drift
from ase_drift.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ase_drift.data import Conformations
from ase_drift.diffusion import DiffusionConfig, DiffusionSampler, train_diffusion
from ase_drift.diffusion.dsm import dsm_loss, sigma_at
from ase_drift.diffusion.samplers import pc_sample
from ase_drift.diffusion.schedules import ve_sigmas
from ase_drift.sampler import DriftSampler, Sampler
from ase_drift.testing import HarmonicTriatomic, boltzmann_triatomic_positions

TINY = DiffusionConfig(d_model=16, n_layers=1, n_heads=2, steps=30, batch_size=32,
                       sampler_steps=5)


@pytest.fixture(scope="module")
def data():
    positions = boltzmann_triatomic_positions(200)
    labels = HarmonicTriatomic().compute([8, 1, 1], positions)
    return Conformations([8, 1, 1], positions, labels.forces, labels.energies, 300.0)


def test_noise_schedule_spans_sigma_min_to_sigma_max():
    ends = sigma_at(torch.tensor([0.0, 1.0]), TINY)
    torch.testing.assert_close(ends, torch.tensor([TINY.sigma_min, TINY.sigma_max]))
    levels = ve_sigmas(5, 0.01, 100.0, dtype=torch.float64)
    torch.testing.assert_close(levels, torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01, 0.0],
                                                    dtype=torch.float64))


# --- pc_sample against the exact score of Gaussian data -----------------------------------------
# Data N(0, s² I): p_σ = N(0, (s² + σ²) I), score s(x, σ) = −x / (s² + σ²).
PC_LEVELS, PC_SNR, SIGMA_MIN, SIGMA_MAX = 1000, 0.05, 0.01, 10.0
FALSE_FAILURE_RATE = 1e-4  # per s value, two-sided, for the chi-square test below
# The sampler is exact only as the level spacing and the corrector step go to zero. For these
# linear-Gaussian updates the variance after each step is known in closed form; that recursion
# (below) puts the relative bias of these settings at +0.25 % (s ≥ 0.1) to +0.37 % (s = 0.02).
# It is added to the statistical tolerance, so the stated false-failure rate holds.
DISCRETISATION_BUDGET = 0.005


def _gaussian_score(s):
    return lambda x, sigma: -x / (s**2 + sigma[:, None] ** 2)


def _tweedie_variance(s):
    """Variance of E[x₀ | x_σmin] for x_σmin ~ N(0, s² + σ_min²): s² · s²/(s² + σ_min²) (the
    last, noise-free step returns this posterior mean; → s² as σ_min → 0)."""
    return s**2 * s**2 / (s**2 + SIGMA_MIN**2)


def _predicted_variance(s):
    """The variance the PC updates produce, step by step, on N(0, s² I) data (scalar maths:
    predictor x ← (1 − Δ/b) x + √Δ z; corrector x ← (1 − ε/a) x + √(2ε) z with ε = 2 snr² a²/v
    for the exact score; last step x ← s²/(s² + σ_min²) x)."""
    sigmas = ve_sigmas(PC_LEVELS, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)[:-1].tolist()
    v = SIGMA_MAX**2
    for sigma, sigma_next in itertools.pairwise(sigmas):
        b, a, delta = s**2 + sigma**2, s**2 + sigma_next**2, sigma**2 - sigma_next**2
        v = (1 - delta / b) ** 2 * v + delta
        eps = 2 * PC_SNR**2 * a**2 / v
        v = (1 - eps / a) ** 2 * v + 2 * eps
    return (s**2 / (s**2 + SIGMA_MIN**2)) ** 2 * v


@pytest.mark.parametrize("s", [0.02, 0.1, 1.0])
def test_pc_sample_returns_the_variance_of_gaussian_data(s):
    """Sample variance of 20,000 samples × 4 dimensions against s² (times Tweedie's factor
    s²/(s² + σ_min²), 0.8 at s = 0.02, where leaving out the denoising step would give 1.25 s²).

    With the mean known (0), n·D·V̂/v ~ χ²(n·D): the acceptance interval is the χ² quantiles at
    FALSE_FAILURE_RATE (two-sided), widened by the discretisation budget.
    """
    n, dim = 20_000, 4
    rng = torch.Generator().manual_seed(7)
    x = SIGMA_MAX * torch.randn(n, dim, generator=rng, dtype=torch.float64)
    sigmas = ve_sigmas(PC_LEVELS, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    samples = pc_sample(_gaussian_score(s), x, sigmas, rng, snr=PC_SNR, n_corrector=1)
    expected = _tweedie_variance(s)
    assert abs(_predicted_variance(s) / expected - 1) < DISCRETISATION_BUDGET
    dof = n * dim
    low, high = chi2.ppf([FALSE_FAILURE_RATE / 2, 1 - FALSE_FAILURE_RATE / 2], dof) / dof
    ratio = samples.square().mean().item() / expected
    assert low - DISCRETISATION_BUDGET <= ratio <= high + DISCRETISATION_BUDGET, (
        f"variance {ratio:.4f} × expected, accepted [{low - DISCRETISATION_BUDGET:.4f}, "
        f"{high + DISCRETISATION_BUDGET:.4f}]")


def test_pc_sample_steps_predictor_then_corrector_then_denoises():
    """n levels cost n + (n − 1)·n_corrector score evaluations, at σ_0 (predictor), then
    σ_1 (corrector), σ_1 (predictor), ...; the last step adds no noise."""
    calls, reports = [], []

    def score(x, sigma):
        assert sigma.shape == (len(x),)
        calls.append(sigma[0].item())
        return -x

    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = pc_sample(score, x, sigmas, torch.Generator().manual_seed(1), callback=reports.append,
                    n_corrector=2)
    assert calls == [4.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    assert [r["i"] for r in reports] == [0, 1, 2]
    last = reports[-1]
    assert last["sigma_next"] == 0
    torch.testing.assert_close(out, last["denoised"])  # x + σ_min² s(x, σ_min), no noise


@pytest.mark.parametrize("sigmas", [[2.0, 1.0], [1.0, 2.0, 0.0], [2.0, -1.0, 0.0], [1.0]])
def test_pc_sample_rejects_levels_that_are_not_decreasing_to_zero(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        pc_sample(_gaussian_score(1.0), torch.zeros(2, 1), sigmas, torch.Generator())


def test_trains_samples_and_round_trips(data, tmp_path):
    sampler = train_diffusion(data, TINY, progress=False)
    assert isinstance(sampler, Sampler)
    calls = []
    hook = sampler.model.register_forward_hook(lambda *args: calls.append(1))
    samples = sampler.sample_positions(7, seed=3)
    hook.remove()
    assert len(calls) == sampler.network_evaluations == 2 * TINY.sampler_steps - 1
    assert samples.shape == (7, 3, 3) and np.isfinite(samples).all()
    np.testing.assert_allclose(samples.mean(axis=1), 0.0, atol=1e-4)  # centred subspace
    path = sampler.save(tmp_path / "dsm.pt")
    assert load_checkpoint(path)["metadata"]["kind"] == "dsm-sampler"
    for again in (DiffusionSampler.load(path), ase_drift.load(path)):
        assert isinstance(again, DiffusionSampler)
        np.testing.assert_array_equal(again.sample_positions(7, seed=3), samples)
    with pytest.raises(CheckpointError, match="not a DriftSampler"):
        DriftSampler.load(path)
    # files written before the move to ase_drift.diffusion say "diffusion-sampler"
    payload = load_checkpoint(path)
    legacy = save_checkpoint(tmp_path / "legacy.pt", payload["config"], payload["state_dict"],
                             dict(payload["metadata"], kind="diffusion-sampler"))
    np.testing.assert_array_equal(ase_drift.load(legacy).sample_positions(7, seed=3), samples)


def test_training_leaves_the_global_rng_alone(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_diffusion(data, TINY, progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_force_targets_need_forces(data):
    unlabelled = Conformations(data.numbers, data.positions, temperature_K=300.0)
    with pytest.raises(ValueError, match="forces"):
        train_diffusion(unlabelled, DiffusionConfig(force_sigma=0.05, steps=1), progress=False)


def test_force_targets_replace_the_dsm_target_at_small_noise(data):
    """Below force_sigma the regression target is the clean sample's score, so a model that
    outputs exactly that score has zero loss whatever the noise draw."""
    config = DiffusionConfig(sigma_min=0.01, sigma_max=0.02, force_sigma=1.0)
    scores = torch.randn(4, 3, 3)

    class Oracle(torch.nn.Module):
        def forward(self, x, sigma):
            return scores

    loss = dsm_loss(Oracle(), torch.zeros(4, 3, 3), scores, config, torch.Generator())
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_pc_sample_is_algorithm_2_written_out_with_the_generators_draws():
    """Two positive levels, one corrector step, batch [5, 2, 3]: pc_sample equals the update
    rules written out, with noise drawn from ``rng`` in x's dtype in the order predictor,
    corrector, and ε = 2 (snr · mean_b ‖z_b‖ / mean_b ‖s_b‖)² from per-sample norms. Levels
    given as a list take x's dtype (1.1 and 0.3 are not exact in float32)."""
    def score(x, sigma):
        return -x / (0.3**2 + sigma[:, None, None] ** 2)

    x0 = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(123)  # the global RNG must not be what pc_sample draws from
    out = pc_sample(score, x0, [1.1, 0.3, 0.0], torch.Generator().manual_seed(1), snr=0.2,
                    n_corrector=1)

    draws = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(x0.shape, generator=draws, dtype=torch.float64) for _ in range(2))
    ones = torch.ones(5, dtype=torch.float64)
    variance = 1.1**2 - 0.3**2
    x = x0 + variance * score(x0, 1.1 * ones) + variance**0.5 * z1  # predictor 1.1 → 0.3
    s = score(x, 0.3 * ones)
    per_sample = lambda t: t.reshape(5, -1).norm(dim=1).mean()
    eps = 2 * (0.2 * per_sample(z2) / per_sample(s)) ** 2
    x = x + eps * s + (2 * eps) ** 0.5 * z2  # corrector at 0.3
    x = x + 0.3**2 * score(x, 0.3 * ones)  # noise-free last step
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_pc_sample_defaults_noise_sampler_and_callback():
    """Defaults snr = 0.16 and one corrector step; a ``noise_sampler`` is called with
    (σ, σ') for the predictor and (σ', σ') for the corrector; the callback reports x and σ;
    n_corrector = 0 is the plain reverse-diffusion sampler and one level (σ, 0) is Tweedie's
    step alone."""
    def score(x, sigma):
        return -x / (1 + sigma[:, None] ** 2)

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = torch.tensor([3.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    default = pc_sample(score, x, sigmas, torch.Generator().manual_seed(2))
    explicit = pc_sample(score, x, sigmas, torch.Generator().manual_seed(2), snr=0.16,
                         n_corrector=1)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)

    calls, reports = [], []

    def noise(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.ones_like(x)

    pc_sample(score, x, sigmas, torch.Generator(), callback=reports.append, noise_sampler=noise)
    assert calls == [(3.0, 1.0), (1.0, 1.0), (1.0, 0.5), (0.5, 0.5)]
    assert [float(r["sigma"]) for r in reports] == [3.0, 1.0, 0.5]
    torch.testing.assert_close(reports[-1]["x"], reports[-1]["denoised"])

    calls.clear()
    pc_sample(score, x, sigmas, torch.Generator(), n_corrector=0, noise_sampler=noise)
    assert calls == [(3.0, 1.0), (1.0, 0.5)]
    one_level = pc_sample(score, x, [0.5, 0.0], torch.Generator())
    torch.testing.assert_close(one_level, x + 0.25 * score(x, torch.full((4,), 0.5)))
    with pytest.raises(ValueError, match="n_corrector must be >= 0"):
        pc_sample(score, x, sigmas, torch.Generator(), n_corrector=-1)


@pytest.mark.parametrize("sigmas, message", [
    ([0.0], "1-D sequence of at least 2 levels"),
    ([[2.0, 0.0], [1.0, 0.0]], "1-D sequence of at least 2 levels"),
    ([2.0, 0.0, 0.0], "^" + re.escape("sigmas must be positive and end with 0 (the noise-free "
                                      "level; see schedules.append_zero)") + "$"),
    ([2.0, 2.0, 0.0], "^sigmas must be strictly decreasing$"),
    ([3.0, 1.0, 2.0, 0.0], "^sigmas must be strictly decreasing$"),
])
def test_pc_sample_names_what_is_wrong_with_the_levels(sigmas, message):
    with pytest.raises(ValueError, match=message):
        pc_sample(_gaussian_score(1.0), torch.zeros(2, 1), sigmas, torch.Generator())


def test_ve_sigmas_are_exactly_geometric_in_the_requested_dtype():
    levels = ve_sigmas(5, 0.01, 100.0, dtype=torch.float64)
    exact = torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01, 0.0], dtype=torch.float64)
    torch.testing.assert_close(levels, exact, rtol=1e-13, atol=0)
    assert ve_sigmas(3, 0.1, 1.0).dtype == torch.float32
    torch.testing.assert_close(ve_sigmas(1, 0.5, 0.5, dtype=torch.float64),
                               torch.tensor([0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="need at least one noise level"):
        ve_sigmas(0, 0.1, 1.0)
    for sigma_min, sigma_max in ((0.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="need 0 < sigma_min <= sigma_max"):
            ve_sigmas(3, sigma_min, sigma_max)


def test_streamed_batches_are_the_conformations_drawn_at_once(data, monkeypatch):
    """iter_positions in batches == sample_positions (one generator throughout, same batch
    size), so ase-drift sample streams what the API returns."""
    sampler = train_diffusion(data, DiffusionConfig(d_model=16, n_layers=1, n_heads=2, steps=2,
                                                    batch_size=8, sampler_steps=3),
                              progress=False)
    monkeypatch.setattr(sampler, "batch_size", 3)
    batches = list(sampler.iter_positions(7, seed=4))
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), sampler.sample_positions(7, seed=4))
    assert not np.array_equal(batches[0], batches[1])
