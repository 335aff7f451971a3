"""Neural potentials as force sources: the SchNetPack and MACE examples, end to end, tiny.

Each example fits a small potential to the bundled ethanol labels, wraps it in its package's
ASE calculator and trains a drift sampler whose labels come from that calculator. The tiny runs
check the plumbing and the units, not the accuracy: energies in eV, forces = −dE/dR in eV/Å,
CalculatorForces agrees with the calculator, training beats predicting zero forces, and the
label cache resumes without calling the calculator again.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_drift.forces import CalculatorForces, label_positions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FORCE_TOL = 1e-5  # eV/Å, where two routes to the same calculator must agree
FINITE_DIFFERENCE_STEP = 1e-3  # Å
FINITE_DIFFERENCE_TOL = 1e-3  # eV/Å; a kcal/mol-vs-eV mix-up is off by a factor of 23
ENERGY_TOL = 2.0  # eV; read as kcal/mol, ethanol's ≈ −300 eV would be off by thousands

TINY = ["--frames", "64", "--epochs", "8", "--batch-size", "16", "--drift-steps", "5",
        "--held-out", "32", "--samples", "200", "--threads", "1"]
EXAMPLE_RUNS = {
    "schnetpack": ("schnetpack_forces", ["--hidden", "16", "--learning-rate", "5e-3"]),
    "mace": ("mace_forces", ["--hidden", "8", "--learning-rate", "1e-2"]),
}


def import_example(name: str):
    """Import ``examples/<name>.py`` as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(EXAMPLE_RUNS))
def run(request, tmp_path_factory):
    """The example's ``RunSummary`` after its tiny run (one torch thread, restored after)."""
    package = request.param
    pytest.importorskip(package)
    name, options = EXAMPLE_RUNS[package]
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp(package)
    try:
        yield import_example(name).main(TINY + options + ["--out", str(out)])
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
    assert run.report.n_samples == 200 and np.isfinite(run.report.tvd)

    counting = CountingSource(CalculatorForces(run.calculator))
    cached = label_positions(counting, run.fit_set.numbers, run.fit_set.positions,
                             cache=run.label_cache, progress=False)
    assert counting.frames == 0
    direct = CalculatorForces(run.calculator).compute(run.fit_set.numbers,
                                                      run.fit_set.positions[:3])
    np.testing.assert_allclose(cached.forces[:3], direct.forces, rtol=0, atol=FORCE_TOL)
    np.testing.assert_allclose(cached.energies[:3], direct.energies, rtol=0, atol=FORCE_TOL)
