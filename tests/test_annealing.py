"""Annealed importance sampling (ase_drift.annealing).

The maths under test: from x₀ ~ q, one MALA step per tempered target γ_k ∝ q^(1−β_k) π^(β_k)
(Eq. 15) and the log-weight Σ (β_k − β_{k−1})(log π − log q)(x_{k−1}) (Eq. 16) give
E[w f(x_K)]/E[w] = E_π[f] and E[w] = Z_π/Z_q (Eq. 17) for every schedule. Checked on a
Gaussian q and the Gaussian π of :class:`~ase_drift.testing.SpringForces`, where Z_π and the
moments are known in closed form: |estimate − truth| < 5 standard errors, which a correct
estimator with Gaussian errors misses with probability < 1e-6 per check.

Sensitivity, checked by hand on mutated copies of annealing.py and refine.py: evaluating the
increment after the level's move instead of before it (log Z off by 12 standard errors),
reversing the sign of β_k − β_{k−1}, dropping the increment, dropping (1 − β)·Δlog q from the
acceptance, a drift in the proposal that the proposal densities do not share, or accepting
with the untempered energy difference: each fails the checks.
mutmut (`make mutants`): 244 mutants of annealing.py, 214 killed, the other 30 equivalent;
refine.py 381, 358 killed, 23 equivalent (benchmarks/mutants_equivalent.toml), counted before
torsion moves were added to both (now 288 and 392 mutants, not re-run).
"""

import numpy as np
import pytest
from scipy.special import logsumexp

from ase_drift import units
from ase_drift.annealing import anneal, anneal_sampler, power_schedule
from ase_drift.forces import ForceResult, LabelingError
from ase_drift.reweighting import reweight
from ase_drift.testing import SpringForces

T = 300.0
KT = units.kT(T)
NUMBERS = np.array([1, 1])  # two hydrogens: six Gaussian coordinates, preconditioner C = 1
DIM = 3 * len(NUMBERS)
SOURCE = SpringForces(k=KT)  # π = N(0, 1 Å²) per coordinate, Z_π = (2π)^(DIM/2)
Q_MEAN, Q_STD = 0.6, 1.4  # Å: q = N(0.6, 1.4²) per coordinate, normalised
STEP = 0.8  # Å: MALA acceptance ≈ 0.8 on π


def _q_log_prob(positions):
    r = np.asarray(positions)
    return (-0.5 * ((r - Q_MEAN) ** 2).sum((1, 2)) / Q_STD**2
            - DIM * np.log(Q_STD) - 0.5 * DIM * np.log(2 * np.pi))


def _q_draws(n, seed):
    return Q_MEAN + Q_STD * np.random.default_rng(seed).standard_normal((n, len(NUMBERS), 3))


def _q_log_prob_gradient(positions):
    """(log q, ∇log q) of the Gaussian q: the exact tempered drift's density."""
    return _q_log_prob(positions), -(np.asarray(positions) - Q_MEAN) / Q_STD**2


@pytest.mark.parametrize("exact_drift", [False, True])
@pytest.mark.parametrize("steps", [1, 5, 40])
def test_annealed_weights_are_unbiased_for_the_partition_function_and_moments(steps,
                                                                             exact_drift):
    n = 20_000
    log_prob, gradient = ((None, _q_log_prob_gradient) if exact_drift
                          else (_q_log_prob, None))
    result = anneal(SOURCE, NUMBERS, _q_draws(n, seed=steps), log_prob, T, steps,
                    step_size=STEP, seed=100 + steps, log_prob_gradient=gradient)
    log_w = result.samples.log_weights + result.log_mean_weight + np.log(n)
    w = np.exp(log_w - log_w.max())
    # the standard error of log mean(w), by the delta method
    log_z_error = np.std(w) / (np.sqrt(n) * np.mean(w))
    exact_log_z = 0.5 * DIM * np.log(2 * np.pi)
    assert abs(result.log_mean_weight - exact_log_z) < 5 * log_z_error
    assert log_z_error < 0.05  # informative
    r2 = result.samples.expectation(lambda r: (r**2).sum((1, 2)), n_boot=100)
    assert abs(r2.value - DIM) < 5 * r2.error  # E_π|r|² = DIM Å²
    mean = result.samples.expectation(lambda r: r.mean((1, 2)), n_boot=100)
    assert abs(mean.value) < 5 * mean.error
    assert 0.5 < result.acceptance.mean() < 0.95


def test_one_level_is_plain_reweighting_and_more_levels_even_out_the_weights():
    start = _q_draws(5000, seed=1)
    plain = reweight(start, NUMBERS, _q_log_prob(start), forces=SOURCE, temperature_K=T)
    one = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 1, step_size=STEP, seed=2)
    np.testing.assert_allclose(one.samples.log_weights, plain.log_weights, atol=1e-12)
    assert one.ess[-1] == pytest.approx(plain.ess, abs=1e-12)
    assert not np.allclose(one.samples.positions, start)  # the final frames took a step
    # Eq. 9 on the effective log-density gives back the weights
    again = reweight(one.samples.positions, NUMBERS, one.samples.log_q, forces=SOURCE,
                     temperature_K=T)
    np.testing.assert_allclose(again.log_weights, one.samples.log_weights, atol=1e-9)
    many = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 40, step_size=STEP, seed=2)
    assert many.ess[-1] > 1.5 * plain.ess
    assert many.force_evaluations == 5000 * 41
    assert many.ess[0] == 1.0 and many.ess.shape == (41,) and many.acceptance.shape == (40,)


def test_weights_stay_equal_when_q_is_the_target():
    start = np.random.default_rng(3).standard_normal((2000, len(NUMBERS), 3))
    exact = lambda r: -0.5 * (np.asarray(r) ** 2).sum((1, 2)) + 7.0  # log π + any constant
    result = anneal(SOURCE, NUMBERS, start, exact, T, 10, step_size=STEP, seed=4)
    assert result.samples.ess == pytest.approx(1.0, abs=1e-12)
    assert result.log_mean_weight == pytest.approx(-7.0, abs=1e-9)


def test_power_schedule():
    np.testing.assert_allclose(power_schedule(4, 2.0), [0, 1 / 16, 1 / 4, 9 / 16, 1])
    np.testing.assert_allclose(power_schedule(2, 1.0), [0, 0.5, 1])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            power_schedule(bad)
    with pytest.raises(ValueError, match="power"):
        power_schedule(3, 0.0)


class _FailingSource:
    def compute(self, numbers, positions):
        positions = np.asarray(positions)
        if len(positions) and np.abs(positions).max() > 50:
            raise LabelingError("did not converge")
        return ForceResult(np.zeros(len(positions)), np.zeros_like(positions))


def test_bad_inputs_raise_clear_errors():
    start = _q_draws(10, seed=5)
    with pytest.raises(ValueError, match="^pass exactly one of steps"):
        anneal(SOURCE, NUMBERS, start, _q_log_prob, T)
    with pytest.raises(ValueError, match="^pass exactly one of steps"):
        anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 3, betas=[0, 1])
    for betas in ([0, 0.5, 0.5, 1], [0.1, 1], [0, 0.9], [0, 2, 1], [1], [[0, 1]],
                  [[0, 1], [0, 1]]):
        with pytest.raises(ValueError, match="^betas must increase"):
            anneal(SOURCE, NUMBERS, start, _q_log_prob, T, betas=betas)
    for positions in (start[:, :1], start[0], start[:0]):
        with pytest.raises(ValueError, match="^positions must have shape"):
            anneal(SOURCE, NUMBERS, positions, _q_log_prob, T, 3)
    for step_size in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="^step_size must be a positive"):
            anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 3, step_size=step_size)
    nan_q = lambda r: np.where(np.arange(len(r)) == 3, np.nan, 0.0)
    with pytest.raises(ValueError, match="start frame 3 .*log-density"):
        anneal(SOURCE, NUMBERS, start, nan_q, T, 3)
    with pytest.raises(ValueError, match=r"log_prob returned shape \(1,\)"):
        anneal(SOURCE, NUMBERS, start, lambda r: np.zeros(1), T, 3)
    with pytest.raises(LabelingError, match="annealing level 1 of 2"):
        anneal(_FailingSource(), NUMBERS, start, _q_log_prob, T, 2, step_size=1e3, seed=0)


def test_anneal_sampler_draws_folds_and_weights(tiny_model):
    """On the two-step ethanol model of conftest with a density of its own samples."""
    from ase_drift import load
    from ase_drift.likelihood import NCEDensity

    sampler = load(tiny_model)
    density = NCEDensity.fit(sampler, n=500, steps=5, hidden=8, depth=1, progress=False)
    spring = SpringForces(k=1.0)
    result = anneal_sampler(sampler, density, 64, forces=spring, steps=3, seed=0,
                            temperature_K=T, progress=False)
    assert result.samples.positions.shape == (64, len(sampler.numbers), 3)
    assert np.isclose(result.samples.weights.sum(), 1.0)
    assert np.isfinite(result.samples.log_q).all()
    assert np.isclose(logsumexp(result.samples.log_weights), 0.0)
    # by default the proposals drift along the density's gradient, as anneal does with it
    start = density.fold(sampler.sample_positions(64, seed=0))
    exact = anneal(spring, sampler.numbers, start, None, T, 3, seed=0,
                   log_prob_gradient=density.log_prob_gradient)
    np.testing.assert_allclose(result.samples.positions, exact.samples.positions, atol=1e-12)
    assert result.step_size == 0.03
    force = anneal_sampler(sampler, density, 64, forces=spring, steps=3, seed=0,
                           temperature_K=T, progress=False, exact_drift=False)
    plain = anneal(spring, sampler.numbers, start, density.log_prob, T, 3, seed=0)
    np.testing.assert_allclose(force.samples.positions, plain.samples.positions, atol=1e-12)
    assert not np.allclose(force.samples.positions, exact.samples.positions)
    with pytest.raises(ValueError, match="not fitted to this sampler's molecule"):
        other = NCEDensity.fit(np.random.default_rng(0).normal(size=(50, 2)), steps=1,
                               hidden=4, depth=1, progress=False)
        anneal_sampler(sampler, other, 8, forces=spring, steps=2, temperature_K=T)


def test_cli_reweight_with_annealing_writes_weighted_frames(tiny_model, tmp_path, capsys):
    import ase.io

    from ase_drift.cli import main

    out = tmp_path / "annealed.extxyz"
    common = ["reweight", str(tiny_model), "--calculator", "emt", "-n", "12",
              "--fit-samples", "300", "--fit-steps", "2"]
    assert main(common + ["--anneal-steps", "3", "--anneal-step-size", "0.01",
                          "-o", str(out)]) == 0
    assert "after 3 annealing levels" in capsys.readouterr().out
    frames = ase.io.read(out, ":")
    weights = np.array([atoms.info["weight"] for atoms in frames])
    assert len(frames) == 12 and weights.sum() == pytest.approx(1.0)
    assert main(common + ["--anneal-steps", "3", "--torsion-moves", "-o", str(out)]) == 0
    assert len(ase.io.read(out, ":")) == 12
    capsys.readouterr()
    for bad in (["--anneal-step-size", "0.01"], ["--torsion-moves"]):
        assert main(common + [*bad, "-o", str(out)]) == 2
        assert "--torsion-moves need --anneal-steps" in capsys.readouterr().err


def test_explicit_schedules_seeds_and_masses_are_used():
    start = _q_draws(500, seed=6)
    linear = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 2, step_size=STEP, seed=7)
    given = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, betas=[0, 0.5, 1], step_size=STEP,
                   seed=7)
    np.testing.assert_array_equal(given.samples.positions, linear.samples.positions)
    np.testing.assert_array_equal(given.samples.log_weights, linear.samples.log_weights)
    nested = anneal(SOURCE, [NUMBERS.tolist()], start, _q_log_prob, T, 2, step_size=STEP,
                    seed=7)  # numbers of any shape are flattened
    np.testing.assert_array_equal(nested.samples.positions, linear.samples.positions)
    np.testing.assert_array_equal(linear.betas, [0, 0.5, 1])
    assert linear.step_size == STEP
    other_seed = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 2, step_size=STEP, seed=8)
    assert not np.allclose(other_seed.samples.positions, linear.samples.positions)
    heavy = anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 2, step_size=STEP, seed=7,
                   masses=[16.0, 16.0])  # the preconditioner: smaller moves
    assert not np.allclose(heavy.samples.positions, linear.samples.positions)


def test_acceptance_is_recorded_per_level():
    """At β ≈ 0 the target is a q of width 0.01 Å, where 0.8 Å moves are all rejected; at β = 1
    it is π, where they are mostly accepted."""
    start = 0.01 * np.random.default_rng(9).standard_normal((2000, len(NUMBERS), 3))
    narrow = lambda r: -0.5 * (np.asarray(r) ** 2).sum((1, 2)) / 0.01**2
    result = anneal(SOURCE, NUMBERS, start, narrow, T, betas=[0, 1e-9, 1], step_size=STEP,
                    seed=10)
    assert result.acceptance[0] < 0.01 and result.acceptance[1] > 0.3


def test_anneal_sampler_uses_its_arguments(tiny_model):
    from ase_drift import load
    from ase_drift.likelihood import NCEDensity

    sampler = load(tiny_model)
    density = NCEDensity.fit(sampler, n=500, steps=5, hidden=8, depth=1, progress=False)
    spring = SpringForces(k=1.0)
    first, again = (anneal_sampler(sampler, density, 16, forces=spring, steps=2, seed=3,
                                   temperature_K=T, step_size=0.005, progress=False)
                    for _ in range(2))
    np.testing.assert_array_equal(first.samples.positions, again.samples.positions)
    assert first.step_size == 0.005
    energies = spring.compute(sampler.numbers, first.samples.positions).energies
    np.testing.assert_allclose(first.samples.reduced_energies, energies / KT)
    assert np.isnan(first.torsion_acceptance).all()
    turned = anneal_sampler(sampler, density, 16, forces=spring, steps=2, seed=3,
                            temperature_K=T, step_size=0.005, torsion_moves=True,
                            progress=False)
    assert np.isfinite(turned.torsion_acceptance).all()  # ethanol: the methyl and the hydroxyl
    assert turned.force_evaluations == 16 * (2 + 1 + 2)


class _WalledSprings:
    """SpringForces with E = +inf and NaN forces beyond |r| = 2 Å on the first atom."""

    def compute(self, numbers, positions):
        result = SOURCE.compute(numbers, positions)
        outside = np.linalg.norm(np.asarray(positions)[:, 0], axis=-1) > 2.0
        energies, forces = result.energies.copy(), result.forces.copy()
        energies[outside], forces[outside] = np.inf, np.nan
        return ForceResult(energies, forces)


def test_walls_hold_at_every_level_and_bad_starts_are_refused():
    start = np.random.default_rng(11).standard_normal((1000, len(NUMBERS), 3))
    start = start[np.linalg.norm(start[:, 0], axis=-1) < 2.0]
    exact = lambda r: -0.5 * (np.asarray(r) ** 2).sum((1, 2))
    result = anneal(_WalledSprings(), NUMBERS, start, exact, T, 10, step_size=STEP, seed=12)
    assert np.linalg.norm(result.samples.positions[:, 0], axis=-1).max() < 2.0
    assert np.isfinite(result.samples.reduced_energies).all()
    outside = np.concatenate([start[:2], 3.0 * np.ones((1, len(NUMBERS), 3))])
    with pytest.raises(ValueError, match="start frame 2 has a non-finite"):
        anneal(_WalledSprings(), NUMBERS, outside, exact, T, 3)


class _Recorder:
    """SpringForces that keeps every batch of frames it labels."""

    def __init__(self):
        self.frames = []

    def compute(self, numbers, positions):
        self.frames.append(np.array(positions))
        return SOURCE.compute(numbers, positions)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_exact_drift_proposes_along_the_tempered_gradient(beta):
    """x' = x + (ε²/2)·C·(β F/kT + (1 − β)∇log q) + ε C^½ ξ, ξ the kernel's first normal draws;
    C = m_H/m: 1 for hydrogen, 1/16 for the oxygen."""
    from ase_drift.refine import REFERENCE_MASS_AMU, MALAKernel

    numbers, masses = np.array([1, 8]), np.array([REFERENCE_MASS_AMU, 16 * REFERENCE_MASS_AMU])
    recorder, epsilon = _Recorder(), 0.3
    kernel = MALAKernel(recorder, numbers, KT, epsilon, masses,
                        log_prob_gradient=_q_log_prob_gradient)
    x = _q_draws(50, seed=11)
    chains = kernel.start(x)
    np.testing.assert_allclose(chains.grad_log_q, _q_log_prob_gradient(x)[1])
    kernel.step(chains, np.random.default_rng(12), beta=beta)
    xi = np.random.default_rng(12).standard_normal(x.shape)
    c = np.array([1.0, 1 / 16])[None, :, None]
    drift = beta * SOURCE.compute(numbers, x).forces / KT + (1 - beta) * _q_log_prob_gradient(x)[1]
    expected = x + 0.5 * epsilon**2 * c * drift + epsilon * np.sqrt(c) * xi
    np.testing.assert_allclose(recorder.frames[-1], expected, rtol=0, atol=1e-12)
    # a float32 gradient is used in float64 arithmetic
    single = MALAKernel(recorder, numbers, KT, epsilon, masses, log_prob_gradient=lambda r: (
        _q_log_prob(r), _q_log_prob_gradient(r)[1].astype(np.float32)))
    single.step(single.start(x), np.random.default_rng(12), beta=beta)
    gradient32 = _q_log_prob_gradient(x)[1].astype(np.float32).astype(np.float64)
    drift = beta * SOURCE.compute(numbers, x).forces / KT + (1 - beta) * gradient32
    expected = x + 0.5 * epsilon**2 * c * drift + epsilon * np.sqrt(c) * xi
    np.testing.assert_allclose(recorder.frames[-1], expected, rtol=0, atol=1e-12)


def test_exact_drift_keeps_q_at_beta_zero_and_rejects_non_finite_gradients():
    """At β = 0 the exact drift is q's own Langevin drift: from q, the chains stay q-distributed
    (mean and variance within 5 standard errors) and accept most moves, where drifting along
    π's force at the same ε accepts fewer. A proposal whose gradient is not finite is
    rejected; a start frame with one is refused."""
    from ase_drift.refine import MALAKernel

    x = _q_draws(20_000, seed=13)
    rng = np.random.default_rng(14)
    exact = MALAKernel(SOURCE, NUMBERS, KT, 1.2, log_prob_gradient=_q_log_prob_gradient)
    force = MALAKernel(SOURCE, NUMBERS, KT, 1.2, log_prob=_q_log_prob)
    chains, moved = exact.start(x), []
    for _ in range(5):
        chains, move = exact.step(chains, rng, beta=0.0)
        moved.append(move.mean())
    _, force_move = force.step(force.start(x), rng, beta=0.0)
    assert min(moved) > force_move.mean() + 0.1
    r = chains.positions.reshape(-1)
    assert abs(r.mean() - Q_MEAN) < 5 * Q_STD / np.sqrt(len(r) / 5)
    assert abs(r.var() / Q_STD**2 - 1) < 5 * np.sqrt(2 / (len(r) / 5))

    def gradient_nan_far_out(positions):
        log_q, gradient = _q_log_prob_gradient(positions)
        far = np.abs(np.asarray(positions)).max((1, 2)) > 3.0
        gradient[far] = np.nan
        return log_q, gradient

    walled = MALAKernel(SOURCE, NUMBERS, KT, 1.2, log_prob_gradient=gradient_nan_far_out)
    start = x[np.abs(x).max((1, 2)) < 3.0][:2000]
    chains = walled.start(start)
    for _ in range(5):
        chains, move = walled.step(chains, rng, beta=0.5)
        assert move.mean() > 0.3  # a wall somewhere stops only the chains that hit it
    assert np.abs(chains.positions).max() <= 3.0
    bad_third = np.concatenate([start[:2], np.full((1, 2, 3), 4.0)])
    with pytest.raises(ValueError, match="^the start frame 2 has a non-finite"):
        walled.start(bad_third)

    class NaNForcesFarOut:
        """Finite energies everywhere, NaN forces beyond 3 Å: at β = 0 the forces enter the
        drift only as 0·F, which is still NaN, so such a move is refused."""

        def compute(self, numbers, positions):
            result = SOURCE.compute(numbers, positions)
            far = np.abs(np.asarray(positions)).max((1, 2)) > 3.0
            result.forces[far] = np.nan
            return result

    forceless = MALAKernel(NaNForcesFarOut(), NUMBERS, KT, 1.2,
                           log_prob_gradient=_q_log_prob_gradient)
    chains = forceless.start(start)
    for _ in range(5):
        chains, _ = forceless.step(chains, rng, beta=0.0)
    assert np.abs(chains.positions).max() <= 3.0
    with pytest.raises(ValueError, match="^the start frame 2 has a non-finite"):
        forceless.start(bad_third)


def test_exact_drift_arguments_are_checked():
    from ase_drift.refine import MALAKernel

    start = _q_draws(10, seed=15)
    with pytest.raises(ValueError, match="^pass exactly one of log_prob and log_prob_gradient"):
        anneal(SOURCE, NUMBERS, start, _q_log_prob, T, 2, log_prob_gradient=_q_log_prob_gradient)
    with pytest.raises(ValueError, match="^pass exactly one of log_prob and log_prob_gradient"):
        anneal(SOURCE, NUMBERS, start, None, T, 2)
    with pytest.raises(ValueError, match="^pass log_prob or log_prob_gradient, not both"):
        MALAKernel(SOURCE, NUMBERS, KT, 0.1, log_prob=_q_log_prob,
                   log_prob_gradient=_q_log_prob_gradient)
    with pytest.raises(ValueError, match=r"^log_prob_gradient returned a gradient of shape \(10, 6\)"):
        anneal(SOURCE, NUMBERS, start, None, T, 2, log_prob_gradient=lambda r: (
            _q_log_prob(r), np.zeros((len(r), 6))))
    with pytest.raises(ValueError, match=r"^log_prob returned shape \(1,\)"):
        anneal(SOURCE, NUMBERS, start, None, T, 2,
               log_prob_gradient=lambda r: (np.zeros(1), np.zeros_like(r)))
