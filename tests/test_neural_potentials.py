"""Neural potentials as force sources: tiny SchNetPack and MACE models end to end.

:func:`ase_drift.potentials.fit_potential` fits each to the bundled ethanol labels and returns
its package's ASE calculator; a drift sampler then trains on labels from that calculator. The
tiny runs check the plumbing and the units, not the accuracy: energies in eV, forces = −dE/dR in
eV/Å, CalculatorForces agrees with the calculator, training beats predicting zero forces, and
the label cache resumes without calling the calculator again. The examples that do the same at
full size run as scripts (slow).
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

import ase_drift
from ase_drift import Conformations, DriftSampler
from ase_drift.datasets import load
from ase_drift.forces import CalculatorForces, label_positions, source_fingerprint
from ase_drift.metrics import DistanceReport, evaluate
from ase_drift.potentials import Errors, fit_potential, potential_errors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FORCE_TOL = 1e-5  # eV/Å, where two routes to the same calculator must agree
FINITE_DIFFERENCE_STEP = 1e-3  # Å
FINITE_DIFFERENCE_TOL = 1e-3  # eV/Å; a kcal/mol-vs-eV mix-up is off by a factor of 23
ENERGY_TOL = 2.0  # eV; read as kcal/mol, ethanol's ≈ −300 eV would be off by thousands
TEMPERATURE_K = 500.0

FIT_FRAMES, HELD_OUT, SAMPLES = 64, 32, 200
FIT = {  # tiny fits: 8 epochs in batches of 16
    "schnetpack": {"hidden": 16, "learning_rate": 5e-3},
    "mace": {"hidden": 8, "learning_rate": 1e-2},
}
TINY = ["--frames", "64", "--epochs", "2", "--batch-size", "16", "--drift-steps", "5",
        "--held-out", "32", "--samples", "200", "--threads", "1"]
EXAMPLE_RUNS = {
    "schnetpack": ("schnetpack_forces.py", ["--hidden", "16"]),
    "mace": ("mace_forces.py", ["--hidden", "8"]),
}


@dataclass
class Run:
    """A tiny potential and the drift sampler trained on its labels (eV, eV/Å)."""

    calculator: object  # the package's ASE calculator around the fitted potential
    fit_set: Conformations  # labelled frames the potential was fitted on (the drift positives)
    fit_errors: Errors
    held_out_errors: Errors
    label_cache: Path
    sampler: DriftSampler
    report: DistanceReport


@pytest.fixture(scope="module", params=sorted(FIT))
def run(request, tmp_path_factory):
    """Fit the potential, train a 5-step FK drift sampler on its cached labels, sample 200
    conformers (one torch thread, restored after; ~5 s for SchNetPack, ~9 s for MACE)."""
    kind = request.param
    pytest.importorskip(kind)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_set, reference = load("ethanol-gfn2-500K")
        rng = np.random.default_rng(0)
        fit_set = train_set[np.sort(rng.permutation(len(train_set))[:FIT_FRAMES])]
        held_out = reference[np.sort(rng.permutation(len(reference))[:HELD_OUT])]
        out = tmp_path_factory.mktemp(kind)
        calc = fit_potential(kind, fit_set, out / "model.pt", epochs=8, batch_size=16, seed=0,
                             progress=False, **FIT[kind])
        label_cache = out / "labels.h5"
        positions_only = Conformations(fit_set.numbers, fit_set.positions,
                                       temperature_K=TEMPERATURE_K)
        sampler = ase_drift.train(positions_only, temperature_K=TEMPERATURE_K, field="fk",
                                  space="distance", steps=5, seed=0,
                                  forces=CalculatorForces(calc), label_cache=label_cache)
        samples = sampler.sample_positions(SAMPLES, seed=0)
        yield Run(calc, fit_set, potential_errors(calc, fit_set),
                  potential_errors(calc, held_out), label_cache, sampler,
                  evaluate(samples, reference.positions, reference.numbers))
    finally:
        torch.set_num_threads(threads)


class CountingSource:
    """A force source that counts the frames it is asked to label."""

    def __init__(self, source):
        self.source = source
        self.frames = 0

    def compute(self, numbers, positions):
        self.frames += len(np.asarray(positions).reshape(-1, len(numbers), 3))
        return self.source.compute(numbers, positions)

    def fingerprint(self):
        """The wrapped source's: a label cache serves this source the wrapped one's labels."""
        return source_fingerprint(self.source)


def test_calculator_returns_ev_and_forces_are_minus_energy_gradient(run):
    data = run.fit_set[:2]
    for positions, energy_label in zip(data.positions, data.energies):
        atoms = Atoms(numbers=data.numbers, positions=positions)
        atoms.calc = run.calculator
        forces = atoms.get_forces()
        assert forces.shape == (data.n_atoms, 3)
        assert np.isfinite(forces).all()
        assert abs(atoms.get_potential_energy() - energy_label) < ENERGY_TOL

    atoms = Atoms(numbers=data.numbers, positions=data.positions[0])
    atoms.calc = run.calculator
    forces = atoms.get_forces()
    gradient = np.empty_like(forces)
    for atom, axis in np.ndindex(forces.shape):
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.calc = run.calculator
            displaced.positions[atom, axis] += sign * FINITE_DIFFERENCE_STEP
            energies.append(displaced.get_potential_energy())
        gradient[atom, axis] = (energies[0] - energies[1]) / (2 * FINITE_DIFFERENCE_STEP)
    np.testing.assert_allclose(forces, -gradient, atol=FINITE_DIFFERENCE_TOL)


def test_calculator_forces_agrees_with_direct_calls(run):
    data = run.fit_set[:4]
    result = CalculatorForces(run.calculator).compute(data.numbers, data.positions)
    for k, positions in enumerate(data.positions):
        atoms = Atoms(numbers=data.numbers, positions=positions)
        atoms.calc = run.calculator
        np.testing.assert_allclose(result.forces[k], atoms.get_forces(), rtol=0, atol=FORCE_TOL)
        assert result.energies[k] == pytest.approx(atoms.get_potential_energy(), abs=FORCE_TOL)


def test_training_beats_predicting_zero_forces(run):
    assert run.fit_errors.zero_force_mae == pytest.approx(np.abs(run.fit_set.forces).mean())
    assert run.fit_errors.force_mae < 0.95 * run.fit_errors.zero_force_mae
    assert np.isfinite(run.held_out_errors).all()


def test_drift_sampler_trains_on_cached_calculator_labels(run):
    assert run.label_cache.exists()
    samples = run.sampler.sample_positions(16, seed=1)
    assert samples.shape == (16, run.fit_set.n_atoms, 3)
    assert np.isfinite(samples).all()
    assert run.report.n_samples == SAMPLES and np.isfinite(run.report.tvd)

    counting = CountingSource(CalculatorForces(run.calculator))
    cached = label_positions(counting, run.fit_set.numbers, run.fit_set.positions,
                             cache=run.label_cache, progress=False)
    assert counting.frames == 0
    direct = CalculatorForces(run.calculator).compute(run.fit_set.numbers,
                                                      run.fit_set.positions[:3])
    np.testing.assert_allclose(cached.forces[:3], direct.forces, rtol=0, atol=FORCE_TOL)
    np.testing.assert_allclose(cached.energies[:3], direct.energies, rtol=0, atol=FORCE_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXAMPLE_RUNS))
def test_example_runs_as_a_script(kind, tmp_path):
    """``python examples/<kind>_forces.py`` with tiny options: the example imports its model
    from the package and its shared steps from ``potential_drift.py`` beside it, writes the
    sampler and the samples, and prints the evaluation table. A fresh interpreter and a full
    example: 16 s (SchNetPack) and 22 s (MACE) on one thread, hence slow."""
    pytest.importorskip(kind)
    script, options = EXAMPLE_RUNS[kind]
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *TINY, *options,
                           "--out", str(tmp_path)], check=False, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sampler.pt").exists() and (tmp_path / "samples.extxyz").exists()
    assert "noise floor" in done.stdout
