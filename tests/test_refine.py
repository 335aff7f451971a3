"""MALA refinement (ase_drift.refine, TemplateSampler.sample(refine=...)).

The maths under test: a MALA step proposes x' = x + (ε²/2)C F(x)/kT + εC^½ξ (C = m_H/m per atom)
and accepts with min(1, π(x')q(x|x')/(π(x)q(x'|x))), π ∝ exp(−E/kT). This kernel leaves π
invariant (detailed balance), so

(a) k steps from exact Boltzmann samples give exact Boltzmann samples, and
(b) from any other start the distribution approaches π (KL to π never grows).

Both are checked on :class:`~ase_drift.testing.HarmonicTriatomic`, whose Boltzmann marginals of
each bond length and of the angle are known in closed form: a one-sample Kolmogorov–Smirnov test
per marginal (three per check) against the exact CDF, each at α/3 with α = 1e-3 (Bonferroni),
so an exact kernel fails a check with probability at most 1e-3 over seeds. The chains are
independent and start from independent frames, so their final states are i.i.d., as the KS test
assumes.

Sensitivity, checked by hand on mutated copies of refine.py (the invariance test, 20,000 chains,
ε = 0.1 Å, 10 steps; smallest of the three p-values): the exact kernel passes with p = 0.19;
dropping the proposal-density ratio log q(x|x') − log q(x'|x) fails with p ≈ 1e-119, swapping
the two densities with p ≈ 1e-298, the wrong sign of the force in the backward density with
p = 0, and a 10 % error in kT in the energy term with p ≈ 6e-8. Changing the drift coefficient ½
in the proposal *and* the densities together is, correctly, not detected: MH with consistent
densities is exact for any drift.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from scipy.stats import kstest

from ase_drift.forces import CalculatorForces, ForceResult, LabelingError
from ase_drift.models import GeneratorConfig, MLPGenerator
from ase_drift.refine import DEFAULT_STEP_SIZE, REFERENCE_MASS_AMU, MALAResult, mala
from ase_drift.sampler import DriftSampler, TemplateSampler
from ase_drift.testing import (
    HarmonicTriatomic,
    biased_triatomic_positions,
    boltzmann_triatomic_positions,
    triatomic_internal_coordinates,
)

ALPHA = 1e-3  # false-failure rate of each statistical check (three KS tests at α/3 each)
TEMPERATURE_K = 300.0
N_CHAINS = 20_000
STEP_SIZE = 0.1  # Å: acceptance ≈ 0.73 on the triatomic, large enough for a wrong ratio to show


def marginal_ks(source: HarmonicTriatomic, positions) -> list:
    """KS results (statistic, p-value) of d₁, d₂ and θ of ``positions`` ``[n, 3, 3]`` against the
    exact Boltzmann marginals of ``source``."""
    d1, d2, theta = triatomic_internal_coordinates(positions)
    return [kstest(d1, source.bond_cdf), kstest(d2, source.bond_cdf),
            kstest(theta, source.angle_cdf)]


def assert_boltzmann(source: HarmonicTriatomic, positions, what: str) -> None:
    results = marginal_ks(source, positions)
    p_values = [r.pvalue for r in results]
    assert min(p_values) > ALPHA / 3, (
        f"{what}: KS p-values of (d₁, d₂, θ) against the exact Boltzmann marginals are "
        f"{[f'{p:.3g}' for p in p_values]}, below α/3 = {ALPHA / 3:.3g}")


@pytest.mark.parametrize(("masses", "step_size"), [(None, STEP_SIZE),
                                                  (np.full(3, REFERENCE_MASS_AMU), 0.07)],
                         ids=["mass-preconditioned", "unpreconditioned"])
def test_mala_leaves_the_boltzmann_distribution_invariant(masses, step_size):
    source = HarmonicTriatomic(TEMPERATURE_K)
    start = boltzmann_triatomic_positions(N_CHAINS, seed=1, rotate=True)
    assert_boltzmann(source, start, "the start")
    result = mala(source, source.numbers, start, TEMPERATURE_K, 10, step_size=step_size, seed=2,
                  masses=masses)
    assert_boltzmann(source, result.positions, "after 10 MALA steps from Boltzmann samples")
    assert 0.6 < result.acceptance_rate < 0.85  # moves happen: invariance is not trivial
    moved = np.abs(triatomic_internal_coordinates(result.positions)[2]
                   - triatomic_internal_coordinates(start)[2])
    assert np.median(moved) > 0.05  # rad: the angle decorrelated substantially


def test_mala_from_a_biased_start_approaches_the_boltzmann_distribution():
    source = HarmonicTriatomic(TEMPERATURE_K)
    # too cold and without the Jacobian d₁²d₂² sinθ: every KS p-value is 0 at the start
    start = biased_triatomic_positions(N_CHAINS, sigma_r=0.03, sigma_theta=np.deg2rad(4.0),
                                       seed=3)
    snapshots = {0: start}

    def keep(k: int, state: MALAResult) -> None:
        snapshots[k] = state.positions

    result = mala(source, source.numbers, start, TEMPERATURE_K, 30, step_size=STEP_SIZE, seed=4,
                  callback=keep)
    assert sorted(snapshots) == list(range(31))
    assert snapshots[30] is result.positions
    distance = {k: max(r.statistic for r in marginal_ks(source, snapshots[k]))
                for k in (0, 1, 3, 30)}  # largest KS distance of the three marginals
    noise = 1.36 / np.sqrt(N_CHAINS)  # the KS statistic's 95 % quantile for exact samples
    assert distance[0] > distance[1] > distance[3] > 2 * noise, distance
    assert_boltzmann(source, snapshots[30], "after 30 MALA steps from a biased start")


def test_mala_result_counts_and_is_reproducible():
    source = HarmonicTriatomic(TEMPERATURE_K)
    start = boltzmann_triatomic_positions(50, seed=5)
    calls = []

    class Counting:
        def compute(self, numbers, positions):
            calls.append(len(positions))
            return source.compute(numbers, positions)

    first = mala(Counting(), source.numbers, start, TEMPERATURE_K, 7, seed=6)
    again = mala(source, source.numbers, start, TEMPERATURE_K, 7, seed=6)
    assert calls == [50] * 8  # one batched call per step, plus the start's labels
    assert first.force_evaluations == 50 * 8 and first.step_size == DEFAULT_STEP_SIZE
    assert first.acceptance.shape == (7,) and first.accepted.shape == (50,)
    assert first.acceptance_rate == pytest.approx(first.accepted.sum() / (50 * 7))
    np.testing.assert_array_equal(first.positions, again.positions)
    labels = source.compute(source.numbers, first.positions)  # the returned labels are current
    np.testing.assert_allclose(first.energies, labels.energies, rtol=1e-12)
    np.testing.assert_allclose(first.forces, labels.forces, rtol=1e-12, atol=1e-12)
    nested = mala(source, [list(source.numbers)], start, TEMPERATURE_K, 7, seed=6)
    np.testing.assert_array_equal(nested.positions, again.positions)  # numbers flattened
    other = mala(source, source.numbers, start, TEMPERATURE_K, 7, seed=7)
    assert not np.array_equal(first.positions, other.positions)
    zero = mala(source, source.numbers, start, TEMPERATURE_K, 0)
    np.testing.assert_array_equal(zero.positions, start)
    assert zero.force_evaluations == 50 and np.isnan(zero.acceptance_rate)


def test_non_finite_proposals_are_rejected():
    """E = +inf beyond d₁ = 1.03 Å is a hard wall: exact MALA never crosses it, and its forces
    (NaN there) must not leak into accepted states."""
    source = HarmonicTriatomic(TEMPERATURE_K)

    class Walled:
        def compute(self, numbers, positions):
            result = source.compute(numbers, positions)
            d1 = triatomic_internal_coordinates(positions)[0]
            outside = d1 > 1.03
            energies, forces = result.energies.copy(), result.forces.copy()
            energies[outside] = np.inf
            forces[outside] = np.nan
            return ForceResult(energies, forces)

    start = boltzmann_triatomic_positions(400, seed=8)
    start = start[triatomic_internal_coordinates(start)[0] < 1.03]
    result = mala(Walled(), source.numbers, start, TEMPERATURE_K, 20, step_size=STEP_SIZE,
                  seed=9)
    assert triatomic_internal_coordinates(result.positions)[0].max() < 1.03
    assert np.isfinite(result.energies).all() and np.isfinite(result.forces).all()
    assert 0 < result.acceptance_rate < 0.73  # the wall rejects moves that would be accepted

    with pytest.raises(ValueError, match="start frame 0 has a non-finite energy"):
        mala(Walled(), source.numbers, np.array([[[0, 0, 0], [1.2, 0, 0], [0, 1, 0.0]]]),
             TEMPERATURE_K, 1)


def test_finite_energies_with_non_finite_forces_are_refused_too():
    """A source may return a finite energy with NaN forces (a failed gradient): such a start
    frame is refused by its index, and such proposals are never accepted."""
    source = HarmonicTriatomic(TEMPERATURE_K)

    class NoGradient:
        def compute(self, numbers, positions):
            result = source.compute(numbers, positions)
            forces = result.forces.copy()
            forces[triatomic_internal_coordinates(positions)[0] > 1.03] = np.nan
            return ForceResult(result.energies, forces)

    start = boltzmann_triatomic_positions(400, seed=8)
    start = start[triatomic_internal_coordinates(start)[0] < 1.03]
    result = mala(NoGradient(), source.numbers, start, TEMPERATURE_K, 20, step_size=STEP_SIZE,
                  seed=9)
    assert np.isfinite(result.forces).all()
    assert triatomic_internal_coordinates(result.positions)[0].max() < 1.03
    bad = np.concatenate([start[:2], [[[0, 0, 0], [1.2, 0, 0], [0, 1, 0.0]]]])
    with pytest.raises(ValueError, match="start frame 2 has a non-finite"):
        mala(NoGradient(), source.numbers, bad, TEMPERATURE_K, 1)


def test_callback_sees_the_state_after_each_step_and_counts_are_integers():
    source = HarmonicTriatomic(TEMPERATURE_K)
    seen = []
    result = mala(source, source.numbers, boltzmann_triatomic_positions(20, seed=3),
                  TEMPERATURE_K, 4, seed=4,
                  callback=lambda k, state: seen.append((k, len(state.acceptance),
                                                         state.force_evaluations)))
    assert seen == [(k, k, 20 * (k + 1)) for k in range(1, 5)]
    assert result.accepted.dtype.kind == "i"
    light = mala(source, source.numbers, boltzmann_triatomic_positions(20, seed=3),
                 TEMPERATURE_K, 2, seed=4, masses=[0.5, 0.5, 0.5])  # below 1 amu is allowed
    assert light.positions.shape == (20, 3, 3)


def test_the_kernel_refuses_a_tempered_target_without_a_density():
    from ase_drift.refine import MALAKernel

    source = HarmonicTriatomic(TEMPERATURE_K)
    kernel = MALAKernel(source, source.numbers, 0.0258, 0.03)
    chains = kernel.start(boltzmann_triatomic_positions(3))
    nested = MALAKernel(source, [list(source.numbers)], 0.0258, 0.03)  # flattened
    moved, _ = nested.step(chains, np.random.default_rng(1))
    again, _ = kernel.step(chains, np.random.default_rng(1))
    np.testing.assert_array_equal(moved.positions, again.positions)
    with pytest.raises(ValueError, match=r"^a tempered target \(β < 1\) needs the start "
                                         "density: pass log_prob or log_prob_gradient$"):
        kernel.step(chains, np.random.default_rng(0), beta=0.5)


def test_a_failing_source_names_the_step():
    source = HarmonicTriatomic(TEMPERATURE_K)
    calls = []

    class Failing:
        def compute(self, numbers, positions):
            calls.append(1)
            if len(calls) == 3:
                raise LabelingError("frame 1 of the batch: SCF did not converge")
            return source.compute(numbers, positions)

    with pytest.raises(LabelingError, match=r"MALA step 2 of 5: .*SCF did not converge"):
        mala(Failing(), source.numbers, boltzmann_triatomic_positions(4), TEMPERATURE_K, 5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": -1}, "steps must be a non-negative integer"),
    ({"steps": 2.0}, "steps must be a non-negative integer"),
    ({"steps": True}, "steps must be a non-negative integer"),
    ({"step_size": 0.0}, "step_size must be a positive"),
    ({"step_size": float("nan")}, "step_size must be a positive"),
    ({"temperature_K": 0.0}, "temperature must be positive"),
    ({"positions": np.zeros((2, 4, 3))}, r"positions must have shape \[n, 3, 3\]"),
    ({"masses": [16.0, 1.0]}, "masses must be 3 positive numbers"),
    ({"masses": [16.0, 1.0, 0.0]}, "masses must be 3 positive numbers"),
])
def test_mala_validates_its_arguments(kwargs, message):
    source = HarmonicTriatomic(TEMPERATURE_K)
    arguments = {"positions": boltzmann_triatomic_positions(2), "temperature_K": TEMPERATURE_K,
                 "steps": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        mala(source, source.numbers, **arguments)


def test_mala_rejects_labels_of_the_wrong_shape():
    class Flat:
        def compute(self, numbers, positions):
            return ForceResult(np.zeros(len(positions)), np.zeros((len(positions), 9)))

    with pytest.raises(ValueError, match=r"forces of shape \(2, 9\) for 2 frames of shape "
                                         r"\(3, 3\)"):
        mala(Flat(), [8, 1, 1], boltzmann_triatomic_positions(2), TEMPERATURE_K, 1)


# ---------------------------------------------------------------------- the Atoms API
@pytest.fixture(scope="module")
def water_sampler() -> DriftSampler:
    """An untrained generator whose affine path is the Gaussian fit of Boltzmann water-like
    triatomics: it draws sensible O–H–H geometries (Å, scale 1) at 300 K."""
    import torch

    generator = MLPGenerator(GeneratorConfig(n_atoms=3, noise_dim=8, hidden=16, depth=1))
    frames = torch.as_tensor(boltzmann_triatomic_positions(500, seed=10), dtype=torch.float32)
    generator.initialize_from_data(frames - frames.mean(1, keepdim=True))
    return DriftSampler(generator, [8, 1, 1], 1.0, {}, {"temperature_K": TEMPERATURE_K})


@pytest.fixture
def water():
    from ase import Atoms

    return Atoms("OH2", positions=[[0, 0, 0], [1, 0, 0], [-0.25, 0.97, 0]], info={"tag": 1})


def test_refined_atoms_carry_their_energies_forces_and_acceptance(water_sampler, water):
    emt = CalculatorForces(EMT())
    frames = water_sampler.sample(water, 6, seed=0, refine=emt, refine_steps=5)
    assert len(frames) == 6
    for atoms in frames:
        assert atoms.info["mala_steps"] == 5 and atoms.info["tag"] == 1
        assert atoms.info["mala_acceptance"] in {k / 5 for k in range(6)}
        stored_energy, stored_forces = atoms.get_potential_energy(), atoms.get_forces()
        np.testing.assert_allclose(atoms.positions.mean(0), water.positions.mean(0), atol=1e-12)
        fresh = atoms.copy()
        fresh.calc = EMT()
        assert stored_energy == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(stored_forces, fresh.get_forces(), atol=1e-10)
    assert np.mean([a.info["mala_acceptance"] for a in frames]) > 0
    again = water_sampler.sample(water, 6, seed=0, refine=emt, refine_steps=5)
    np.testing.assert_array_equal(frames[3].positions, again[3].positions)


def test_refine_with_zero_steps_labels_the_one_step_samples(water_sampler, water):
    plain = water_sampler.sample(water, 3, seed=1)
    labelled = water_sampler.sample(water, 3, seed=1, refine=CalculatorForces(EMT()))
    for a, b in zip(plain, labelled):
        assert a.calc is None
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)  # float32 samples
        assert b.info["mala_steps"] == 0 and np.isnan(b.info["mala_acceptance"])
        assert np.isfinite(b.get_potential_energy())


def test_refine_uses_the_sampler_temperature(water_sampler, water, monkeypatch):
    import ase_drift.refine

    seen = []
    real = ase_drift.refine.mala

    def spy(source, numbers, positions, temperature_K, steps, **kwargs):
        seen.append((temperature_K, steps, kwargs))
        return real(source, numbers, positions, temperature_K, steps, **kwargs)

    monkeypatch.setattr(ase_drift.refine, "mala", spy)
    water_sampler.sample(water, 2, seed=3, refine=CalculatorForces(EMT()), refine_steps=1,
                         refine_step_size=0.01)
    assert seen == [(TEMPERATURE_K, 1, {"step_size": 0.01, "seed": 3, "torsion_moves": None})]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"refine_steps": 3}, ValueError, "need a force source"),
    ({"refine_step_size": 0.01}, ValueError, "need a force source"),
    ({"refine_torsions": True}, ValueError, "need a force source"),
    ({"refine_steps": -1, "refine": "emt"}, ValueError, "non-negative integer, got -1"),
    ({"refine_steps": 1.5, "refine": "emt"}, ValueError, "non-negative integer, got 1.5"),
    ({"refine": EMT()}, TypeError, "must be a ForceSource, got EMT; wrap"),
])
def test_sample_validates_refine_arguments(water_sampler, water, kwargs, error, message):
    if kwargs.get("refine") == "emt":
        kwargs = kwargs | {"refine": CalculatorForces(EMT())}
    with pytest.raises(error, match=message):
        water_sampler.sample(water, 2, **kwargs)


def test_refine_needs_a_known_temperature(water):
    class Untempered(TemplateSampler):
        def __init__(self):
            self.numbers = np.array([8, 1, 1])
            self.metadata = {"temperature_K": None}  # a DSM sampler trained on positions only

        def sample_positions(self, n, seed=None):
            return boltzmann_triatomic_positions(n)

    with pytest.raises(ValueError, match="trained without one"):
        Untempered().sample(water, 2, refine=CalculatorForces(EMT()), refine_steps=1)
    assert len(Untempered().sample(water, 2)) == 2
