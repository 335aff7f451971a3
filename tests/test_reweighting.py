"""Importance weights (ase_drift.reweighting): exact proposals and targets recover the target's
moments and free energies within their bootstrap errors, the errors themselves are right, ESS
is 1 when q = π, and bad inputs are refused."""

import numpy as np
import pytest
from scipy.stats import norm

from ase_drift import units
from ase_drift.likelihood import NCEDensity
from ase_drift.metrics import normalised_histogram
from ase_drift.reweighting import kish_ess, reweight, weighted_histogram
from ase_drift.testing import SpringForces

T = 300.0
KT = units.kT(T)
NUMBERS = np.array([1])  # one atom: its three coordinates are the variables


def _gaussian_case(n, seed, q_std=1.5, target_mean=0.5, target_std=1.0):
    """Frames ``[n, 1, 3]`` from q = N(0, q_std²)³ with exact log q, and energies (eV) of the
    target π = N(target_mean, target_std²)³."""
    x = q_std * np.random.default_rng(seed).standard_normal((n, 1, 3))
    log_q = -0.5 * (x**2).sum((1, 2)) / q_std**2 - 3 * np.log(q_std) + 12.3  # any constant
    energies = KT * 0.5 * ((x - target_mean) ** 2).sum((1, 2)) / target_std**2 + 4.0  # eV
    return x, log_q, energies


def test_exact_weights_recover_the_target_mean_and_variance():
    """π = N(0.5, 1) from q = N(0, 1.5²): |estimate − truth| < 5 bootstrap errors, a tolerance
    that a correct estimator with Gaussian errors misses with probability < 1e-6."""
    x, log_q, energies = _gaussian_case(20_000, seed=0)
    ws = reweight(x, NUMBERS, log_q, energies=energies, temperature_K=T)
    mean = ws.expectation(lambda r: r[:, 0, 0])
    var = ws.expectation(lambda r: (r[:, 0, 0] - 0.5) ** 2)
    assert abs(mean.value - 0.5) < 5 * mean.error
    assert abs(var.value - 1.0) < 5 * var.error
    assert 0 < mean.error < 0.02 and 0 < var.error < 0.04  # informative, not vacuous
    assert np.isclose(ws.weights.sum(), 1.0)


def test_bootstrap_error_matches_the_spread_over_independent_runs():
    """The bootstrap error of the self-normalised mean equals the standard deviation of the
    estimate over 60 independent sample sets within 30 % (the spread of a 60-run std is
    ≈ 9 %, so 30 % is > 3σ)."""
    estimates, errors = [], []
    for seed in range(60):
        x, log_q, energies = _gaussian_case(1000, seed=100 + seed)
        ws = reweight(x, NUMBERS, log_q, energies=energies, temperature_K=T)
        estimate = ws.expectation(lambda r: r[:, 0, 0], n_boot=100, seed=seed)
        estimates.append(estimate.value)
        errors.append(estimate.error)
    assert np.mean(errors) == pytest.approx(np.std(estimates, ddof=1), rel=0.3)


def test_ess_is_one_when_q_is_the_target_and_falls_as_they_part():
    x, log_q, energies = _gaussian_case(5000, seed=1, q_std=1.0, target_mean=0.0)
    ws = reweight(x, NUMBERS, log_q, energies=energies, temperature_K=T)
    assert ws.ess == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(ws.weights, 1 / 5000)
    x2, log_q2, energies2 = _gaussian_case(5000, seed=1, q_std=1.0, target_mean=1.0)
    # Both N(0, 1)³ and N(1, 1)³: Kish ESS → exp(−‖Δμ‖²) = e⁻³ as n → ∞.
    far = reweight(x2, NUMBERS, log_q2, energies=energies2, temperature_K=T).ess
    assert 0.02 < far < 0.1


def test_free_energy_difference_of_two_gaussian_wells():
    """π(x) = 0.3 N(−2, 0.5²) + 0.7 N(2, 1) in x (y, z standard normal); regions x < 0 and
    x > 0. ΔF = −ln(P_b/P_a) from the exact normal CDFs; the estimate from a broad Gaussian
    proposal lies within 5 bootstrap errors (false failure < 1e-6)."""
    rng = np.random.default_rng(3)
    n = 40_000
    r = rng.standard_normal((n, 1, 3)) * [2.5, 1.0, 1.0]
    x = r[:, 0, 0]
    log_q = norm.logpdf(x, scale=2.5) + norm.logpdf(r[:, 0, 1:]).sum(1)
    log_pi = (np.logaddexp(np.log(0.3) + norm.logpdf(x, -2, 0.5), np.log(0.7) + norm.logpdf(x, 2, 1))
              + norm.logpdf(r[:, 0, 1:]).sum(1))
    ws = reweight(r, NUMBERS, log_q, energies=-KT * log_pi, temperature_K=T)
    p_a = 0.3 * norm.cdf(0, -2, 0.5) + 0.7 * norm.cdf(0, 2, 1)
    truth = -np.log((1 - p_a) / p_a)
    estimate = ws.free_energy_difference(lambda r: r[:, 0, 0] < 0, lambda r: r[:, 0, 0] > 0)
    assert abs(estimate.value - truth) < 5 * estimate.error
    assert 0 < estimate.error < 0.05
    swapped = ws.free_energy_difference(lambda r: r[:, 0, 0] > 0, lambda r: r[:, 0, 0] < 0)
    assert swapped.value == pytest.approx(-estimate.value)


def test_energies_from_a_force_source_equal_given_energies():
    x, log_q, _ = _gaussian_case(50, seed=4)
    source = SpringForces(k=0.3)
    computed = reweight(x, NUMBERS, log_q, forces=source, temperature_K=T)
    given = reweight(x, NUMBERS, log_q, energies=source.compute(NUMBERS, x).energies,
                     temperature_K=T)
    np.testing.assert_allclose(computed.log_weights, given.log_weights)
    np.testing.assert_allclose(computed.reduced_energies, 0.5 * 0.3 * (x**2).sum((1, 2)) / KT)


def test_kish_ess_and_weighted_histogram():
    assert kish_ess(np.log([1.0, 1.0, 0.0 + 1e-300, 0.0 + 1e-300])) == pytest.approx(0.5)
    values = np.random.default_rng(5).normal(size=(100, 4))
    np.testing.assert_allclose(weighted_histogram(values, np.full(100, 0.3), 10, (-2, 2)),
                               normalised_histogram(values, 10, (-2, 2)))
    # Weight only the first frame: its four values, clipped into the edge bins, are all.
    only_first = weighted_histogram(values, np.eye(100)[0], 10, (-2, 2))
    np.testing.assert_allclose(only_first, normalised_histogram(values[:1], 10, (-2, 2)))


def test_bad_inputs_raise_clear_errors():
    x, log_q, energies = _gaussian_case(10, seed=6)
    bad = log_q.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="not finite at 1 frames"):
        reweight(x, NUMBERS, bad, energies=energies, temperature_K=T)
    with pytest.raises(ValueError, match="one value per frame"):
        reweight(x, NUMBERS, log_q[:-1], energies=energies, temperature_K=T)
    with pytest.raises(ValueError, match="exactly one of forces"):
        reweight(x, NUMBERS, log_q, temperature_K=T)
    with pytest.raises(ValueError, match="exactly one of forces"):
        reweight(x, NUMBERS, log_q, energies=energies, forces=SpringForces(), temperature_K=T)
    with pytest.raises(ValueError, match=r"energies must have shape \[10\]"):
        reweight(x, NUMBERS, log_q, energies=energies[:5], temperature_K=T)
    with pytest.raises(ValueError, match=r"positions must have shape \[n, 2, 3\]"):
        reweight(x, [1, 1], log_q, energies=energies, temperature_K=T)
    with pytest.raises(ValueError, match="temperature must be positive"):
        reweight(x, NUMBERS, log_q, energies=energies, temperature_K=0)
    ws = reweight(x, NUMBERS, log_q, energies=energies, temperature_K=T)
    with pytest.raises(ValueError, match="one value per frame"):
        ws.expectation(lambda r: r[:, 0])
    with pytest.raises(ValueError, match="holds no frame"):
        ws.free_energy_difference(lambda r: r[:, 0, 0] > 100, lambda r: r[:, 0, 0] < 100)


def test_density_cached_beside_the_model_and_samples_reweighted(tiny_model):
    from ase_drift import load
    from ase_drift.reweighting import reweight_sampler

    options = {"n": 200, "steps": 2, "hidden": 8, "depth": 1, "progress": False}
    density = NCEDensity.for_model(tiny_model, **options)
    cache = tiny_model.with_name("tiny.pt.nce.pt")
    written = cache.stat().st_mtime_ns
    assert NCEDensity.for_model(tiny_model, **options).metadata == density.metadata
    assert cache.stat().st_mtime_ns == written  # read, not refitted
    refitted = NCEDensity.for_model(tiny_model, **dict(options, steps=3))
    assert refitted.config.steps == 3 and cache.stat().st_mtime_ns != written
    sampler = load(tiny_model)
    ws = reweight_sampler(sampler, density, 30, forces=SpringForces(), seed=0)
    assert ws.positions.shape == (30, 9, 3) and ws.weights.sum() == pytest.approx(1.0)
    assert not density.chirality(ws.positions).mirror.any()
    other = NCEDensity.fit(np.random.default_rng(0).normal(size=(50, 2)), steps=1, hidden=4,
                           depth=1, progress=False)
    with pytest.raises(ValueError, match="not fitted to this sampler's molecule"):
        reweight_sampler(sampler, other, 5, forces=SpringForces())
    sampler.metadata = {}
    with pytest.raises(ValueError, match="records no temperature"):
        reweight_sampler(sampler, density, 5, forces=SpringForces())
    hot = reweight_sampler(sampler, density, 30, forces=SpringForces(), seed=0,
                           temperature_K=1000.0)
    np.testing.assert_allclose(hot.reduced_energies, ws.reduced_energies * 500.0 / 1000.0)


def test_cli_reweight_writes_normalised_weights_into_each_frame(tiny_model, tmp_path, capsys):
    import ase.io

    from ase_drift.cli import main

    out = tmp_path / "weighted.extxyz"
    assert main(["reweight", str(tiny_model), "--calculator", "emt", "-n", "20",
                 "--fit-samples", "200", "--fit-steps", "2", "-o", str(out)]) == 0
    assert "Kish ESS" in capsys.readouterr().out
    frames = ase.io.read(out, ":")
    weights = np.array([atoms.info["weight"] for atoms in frames])
    log_weights = np.array([atoms.info["log_weight"] for atoms in frames])
    assert len(frames) == 20 and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.exp(log_weights), weights, rtol=1e-9)
    cache = tiny_model.with_name(tiny_model.name + ".nce.pt")
    assert NCEDensity.load(cache).config.coordinates == "internal"
    assert main(["reweight", str(tiny_model), "--calculator", "emt", "-n", "5",
                 "--fit-samples", "200", "--fit-steps", "2", "--density-coordinates",
                 "distances", "-o", str(out)]) == 0
    assert NCEDensity.load(cache).config.coordinates == "distances"  # refitted, not reused
    assert main(["reweight", str(tiny_model), "--calculator", "emt", "-n", "5",
                 "-o", str(tmp_path / "w.pdb")]) == 2
    assert "weighted frames are written as" in capsys.readouterr().err


def test_reweight_sampler_for_diffusion_samplers():
    """Issue part 4: every sampler kind can be reweighted. A DSM (5 predictor–corrector levels)
    and an energy-based diffusion model (probability-flow sampling), both barely trained, each
    with an NCE density fitted on its own samples: normalised, finite weights of the right
    frames. The DSM's probability-flow likelihood serves as the density as well (it has no
    mirror images to fold)."""
    from ase_drift.datasets import load
    from ase_drift.diffusion import (
        DiffusionConfig,
        EnergyDiffusion,
        EnergyDiffusionConfig,
        train_diffusion,
    )
    from ase_drift.reweighting import reweight_sampler

    train, _ = load("ethanol-gfn2-500K")
    dsm = train_diffusion(train, DiffusionConfig(d_model=16, n_layers=1, n_heads=2, steps=20,
                                                 batch_size=32, sampler_steps=5),
                          progress=False)
    energy = EnergyDiffusion.train(train, config=EnergyDiffusionConfig(
        hidden=32, layers=2, batch_size=64, steps=400, sampler_steps=100, t_min=5e-3,
        probability_flow=True), progress=False)
    for sampler in (dsm, energy):
        density = NCEDensity.fit(sampler, n=200, steps=2, hidden=8, depth=1, progress=False)
        ws = reweight_sampler(sampler, density, 20, forces=SpringForces(), seed=0,
                              progress=False)
        np.testing.assert_array_equal(ws.positions,
                                      density.fold(sampler.sample_positions(20, seed=0)))
        assert np.isfinite(ws.log_weights).all() and ws.weights.sum() == pytest.approx(1.0)
    exact = reweight_sampler(dsm, dsm, 4, forces=SpringForces(), seed=0, progress=False)
    np.testing.assert_allclose(exact.log_q, dsm.log_prob(dsm.sample_positions(4, seed=0)))
    assert exact.weights.sum() == pytest.approx(1.0)
