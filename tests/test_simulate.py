"""BAOAB Langevin dynamics (ase_drift.simulate): exact configurational variance on harmonic
potentials, stability, ASE units at the boundary, and input checks.

Statistical tests use two-sided χ² bounds at a false-failure rate of 10⁻⁶ per test (independent
replicas make the samples independent; the bounds come from scipy's χ² quantiles)."""

import numpy as np
import pytest
import torch
from ase import units as ase_units
from scipy.stats import chi2

from ase_drift import units
from ase_drift.forces import ForceResult
from ase_drift.simulate import baoab, simulate

FALSE_FAILURE = 1e-6


def variance_bounds(n: int, variance: float) -> tuple[float, float]:
    """Interval holding the sample variance of n independent N(·, variance) values (known
    mean) with probability 1 − FALSE_FAILURE."""
    lower = chi2.ppf(FALSE_FAILURE / 2, n) / n
    upper = chi2.ppf(1 - FALSE_FAILURE / 2, n) / n
    return variance * lower, variance * upper


def harmonic(k: float):
    return lambda x: -k * x


@pytest.mark.parametrize("omega_h", [0.3, 1.5])
def test_harmonic_configurational_variance_is_exact(omega_h):
    # U = ½k‖x‖²: Boltzmann variance kT/k per coordinate, whatever the masses; BAOAB samples it
    # exactly for any stable step (ωh < 2), so large steps must pass too.
    k, kt = 2.0, 0.5
    masses = torch.tensor([[1.0], [4.0]], dtype=torch.float64)  # [A, 1]: ω = √(k/m)
    h = omega_h / (k / 1.0) ** 0.5  # the light atom's ωh
    x0 = torch.zeros(3000, 2, 3, dtype=torch.float64)
    run = baoab(harmonic(k), x0, masses, kt, h, friction=1.0, steps=int(60 / h),
                rng=torch.Generator().manual_seed(0))
    x = run.x.numpy().ravel()  # [3000 · 6] independent coordinates (one frame per replica)
    low, high = variance_bounds(x.size, kt / k)
    assert low < np.mean(x**2) < high
    assert run.frames.shape == (int(60 / h), 3000, 2, 3)


def test_velocities_follow_maxwell_boltzmann_at_small_steps():
    # Velocity variance kT/m, up to BAOAB's O(h²) error (h = 0.02: ~1e-4 relative).
    kt, mass = 0.7, 3.0
    run = baoab(harmonic(1.0), torch.zeros(20000, 1, dtype=torch.float64), mass, kt, 0.02,
                friction=2.0, steps=300, rng=torch.Generator().manual_seed(1))
    low, high = variance_bounds(run.v.numel(), kt / mass)
    assert low < run.v.square().mean().item() < high


def test_without_friction_energy_is_conserved_and_stable():
    # Velocity Verlet (γ = 0) at ωh = 1.9, close to the stability limit 2: the energy stays
    # bounded over 10,000 steps (no drift), and the positions stay finite.
    k, mass = 1.0, 1.0
    x0 = torch.ones(4, 1, dtype=torch.float64)
    energies = []

    def record(step, x, v):
        energies.append((0.5 * k * x.square() + 0.5 * mass * v.square()).sum().item())

    run = baoab(harmonic(k), x0, mass, 1.0, 1.9, friction=0.0, steps=10000,
                rng=torch.Generator().manual_seed(2), v0=torch.zeros_like(x0), callback=record)
    assert torch.isfinite(run.frames).all()
    energies = np.array(energies)
    assert energies.max() < 15 * energies[0]  # shadow-energy oscillation, no growth
    assert abs(energies[-1000:].mean() - energies[:1000].mean()) < 0.05 * energies[:1000].mean()


class Trap:
    """A ForceSource: every atom in an isotropic harmonic trap of stiffness k (eV/Å²)."""

    def __init__(self, k: float):
        self.k = k

    def compute(self, numbers, positions):
        positions = np.asarray(positions)
        return ForceResult(0.5 * self.k * (positions**2).sum((1, 2)), -self.k * positions)


def test_simulate_uses_ase_units_for_time_mass_and_temperature():
    # A hydrogen atom in a trap of 1 eV/Å², friction 0, nearly 0 K: x(t) = x₀ cos(ωt) with
    # ω = √(k/m) in ASE units, so the half period in fs is π √(m/k) / ase.units.fs (≈ 32 fs).
    frames = simulate(Trap(1.0), [1], np.array([[[0.1, 0.0, 0.0]]]), 1e-9, steps=200,
                      timestep_fs=0.25, friction_per_fs=0.0, seed=0)  # [200, 1, 1, 3]
    x = frames[:, 0, 0, 0]
    half_period_fs = np.pi * np.sqrt(1.00784 / 1.0) / ase_units.fs
    first_minimum = (np.argmin(x[: int(1.5 * half_period_fs / 0.25)]) + 1) * 0.25
    assert abs(first_minimum - half_period_fs) < 0.5
    assert x.min() == pytest.approx(-0.1, abs=1e-3)


def test_simulate_samples_the_boltzmann_variance_in_angstrom():
    # Position variance kT/k per coordinate, kT in eV from units.kT: Å².
    k, temperature = 2.0, 300.0
    frames = simulate(Trap(k), [6, 8], np.zeros((1000, 2, 3)), temperature, steps=400,
                      timestep_fs=1.0, friction_per_fs=0.05, record_every=400, seed=3)
    x = frames[-1].ravel()
    low, high = variance_bounds(x.size, units.kT(temperature) / k)
    assert low < np.mean(x**2) < high


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1}, "steps"),
    ({"timestep": 0.0}, "timestep"),
    ({"friction": -1.0}, "friction"),
    ({"kT": 0.0}, "kT"),
    ({"masses": torch.ones(3, 1)}, "broadcast"),
    ({"masses": -1.0}, "masses"),
    ({"record_every": 0}, "record_every"),
])
def test_baoab_rejects_bad_inputs(kwargs, message):
    args = {"force_fn": harmonic(1.0), "x0": torch.zeros(2, 2, 3), "masses": 1.0, "kT": 1.0,
            "timestep": 0.1, "friction": 1.0, "steps": 3, "rng": torch.Generator()}
    with pytest.raises(ValueError, match=message):
        baoab(**(args | kwargs))


def test_simulate_rejects_bad_positions():
    with pytest.raises(ValueError, match=r"\[n_replicas, 2, 3\]"):
        simulate(Trap(1.0), [1, 1], np.zeros((2, 3)), 300.0, steps=1)
    with pytest.raises(ValueError, match="temperature"):
        simulate(Trap(1.0), [1], np.zeros((1, 1, 3)), 0.0, steps=1)
