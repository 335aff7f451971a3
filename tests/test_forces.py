"""Force sources: engines agree in ASE units, forces are -∇E, labelling resumes from its cache."""

import os
from typing import ClassVar

# The machine's cores are shared with long MD jobs; an oversubscribed OpenMP SCF (tblite) spins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py
import numpy as np
import pytest
from ase import units as ase_units
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from ase_drift.data import Conformations
from ase_drift.forces import (
    CalculatorForces,
    ForceResult,
    ForceSource,
    LabelForces,
    LabelingError,
    OpenMMCalculator,
    OpenMMForces,
    label,
    label_positions,
)

FORCE_TOL = 1e-5  # eV/Å, where two engines must agree

ARGON_Z = 18
ARGON_MASS_AMU = 39.948
SIGMA_NM = 0.34
EPSILON_KJ_MOL = 0.996
SIGMA_ANGSTROM = 3.4  # = SIGMA_NM · 10, written out so the test does not reuse units.py
EPSILON_EV = EPSILON_KJ_MOL * ase_units.kJ / ase_units.mol


def argon_system(n_atoms, masses=None):
    """OpenMM System of ``n_atoms`` uncharged Lennard-Jones atoms, no cutoff. Skips the calling
    test when the optional ``openmm`` extra is missing (only the OpenMM tests call this: the
    other tests of this module use ASE calculators and run everywhere)."""
    openmm = pytest.importorskip("openmm", reason="OpenMMForces needs the optional openmm extra")
    system = openmm.System()
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for mass in masses if masses is not None else [ARGON_MASS_AMU] * n_atoms:
        system.addParticle(mass)
        nonbonded.addParticle(0.0, SIGMA_NM, EPSILON_KJ_MOL)
    system.addForce(nonbonded)
    return system


def argon_cluster(n_frames, seed=0):
    """Positions [n_frames, 8, 3] Å: a 2×2×2 lattice (3.8 Å) jittered by ±0.4 Å, no overlaps."""
    lattice = 3.8 * np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    jitter = np.random.default_rng(seed).uniform(-0.4, 0.4, (n_frames, len(lattice), 3))
    return lattice + jitter


def ase_lj():
    return LennardJones(sigma=SIGMA_ANGSTROM, epsilon=EPSILON_EV, rc=100.0, smooth=False)


class CountingCalculator(Calculator):
    """Harmonic springs to the origin (E = ½k Σ r², F = -k r); NaN energy on poisoned frames."""

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(self, k=0.7, poisoned=()):
        super().__init__()
        self.k = k
        self.poisoned = [np.asarray(p) for p in poisoned]
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        positions = self.atoms.positions
        poisoned = any(np.array_equal(positions, p) for p in self.poisoned)
        self.results["energy"] = np.nan if poisoned else 0.5 * self.k * np.sum(positions**2)
        self.results["forces"] = -self.k * positions


# ---------------------------------------------------------------------- engines agree
def test_openmm_and_ase_lennard_jones_agree_in_ase_units():
    """The same LJ argon cluster in OpenMM (nm, kJ/mol) and ASE (Å, eV) gives equal eV/Å forces.

    This checks the unit conversion of OpenMMForces: positions Å→nm, energies kJ/mol→eV and
    forces kJ/mol/nm→eV/Å. ASE's LennardJones shifts every pair within rc by
    e0 = 4ε((σ/rc)¹² − (σ/rc)⁶) so that it vanishes at rc; OpenMM has no shift, hence
    E_OpenMM = E_ASE + n_pairs · e0.
    """
    positions = argon_cluster(3)  # [3, 8, 3] Å
    numbers = np.full(positions.shape[1], ARGON_Z)
    openmm_result = OpenMMForces(argon_system(len(numbers))).compute(numbers, positions)
    ase_result = CalculatorForces(ase_lj()).compute(numbers, positions)

    assert isinstance(OpenMMForces(argon_system(8)), ForceSource)
    assert openmm_result.forces.shape == positions.shape
    assert np.abs(openmm_result.forces).max() > 0.01  # a non-trivial check
    np.testing.assert_allclose(openmm_result.forces, ase_result.forces, rtol=0, atol=FORCE_TOL)
    n_pairs = len(numbers) * (len(numbers) - 1) // 2
    shift = 4 * EPSILON_EV * ((SIGMA_ANGSTROM / 100.0) ** 12 - (SIGMA_ANGSTROM / 100.0) ** 6)
    np.testing.assert_allclose(openmm_result.energies, ase_result.energies + n_pairs * shift,
                               rtol=0, atol=1e-8)


def test_openmm_calculator_matches_source_and_forces_are_minus_energy_gradient():
    """OpenMMCalculator = OpenMMForces, and F = −∂E/∂r by central differences (h = 1e-4 Å)."""
    positions = argon_cluster(1, seed=3)[0]  # [8, 3] Å
    numbers = np.full(len(positions), ARGON_Z)
    system = argon_system(len(numbers))
    direct = OpenMMForces(system).compute(numbers, positions)  # single frame -> B = 1

    from ase import Atoms

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = OpenMMCalculator(system)
    assert atoms.get_potential_energy() == pytest.approx(direct.energies[0], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), direct.forces[0], rtol=0, atol=1e-10)

    step = 1e-4
    gradient = np.empty_like(positions)  # [A, 3] eV/Å
    for index in np.ndindex(*positions.shape):
        shifted = []
        for sign in (+1, -1):
            moved = positions.copy()
            moved[index] += sign * step
            atoms.positions = moved
            shifted.append(atoms.get_potential_energy())
        gradient[index] = (shifted[0] - shifted[1]) / (2 * step)
    np.testing.assert_allclose(direct.forces[0], -gradient, rtol=0, atol=1e-4)


def test_tblite_through_calculator_forces_equals_direct_calls():
    """GFN2-xTB via CalculatorForces (one reused calculator) = a fresh calculator per frame.

    The reused calculator starts each SCF from the previous frame's wavefunction, so the two
    agree to the SCF convergence (tight accuracy=0.01), not bit for bit.
    """
    tblite_ase = pytest.importorskip("tblite.ase")
    ethanol = molecule("CH3CH2OH")
    jitter = np.random.default_rng(0).normal(0.0, 0.05, (2, len(ethanol), 3))
    positions = ethanol.positions + jitter  # [2, 9, 3] Å

    def xtb():
        return tblite_ase.TBLite(method="GFN2-xTB", verbosity=0, accuracy=0.01)

    result = CalculatorForces(xtb()).compute(ethanol.numbers, positions)
    for frame, frame_positions in enumerate(positions):
        atoms = ethanol.copy()
        atoms.positions = frame_positions
        atoms.calc = xtb()
        assert result.energies[frame] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(result.forces[frame], atoms.get_forces(), rtol=0,
                                   atol=FORCE_TOL)


def test_calculator_forces_rebuilds_atoms_for_other_numbers_only():
    calc = CountingCalculator()
    source = CalculatorForces(calc)
    water = molecule("H2O")
    first = source.compute(water.numbers, water.positions)
    atoms = source._atoms
    source.compute(water.numbers, water.positions + 0.1)
    assert source._atoms is atoms
    methane = molecule("CH4")
    second = source.compute(methane.numbers, methane.positions)
    assert source._atoms is not atoms and source._atoms.calc is calc
    assert first.energies[0] == pytest.approx(0.5 * 0.7 * np.sum(water.positions**2))
    np.testing.assert_allclose(second.forces[0], -0.7 * methane.positions)


# ---------------------------------------------------------------------- failures and the cache
def test_non_finite_energy_raises_labeling_error_and_cache_resumes(tmp_path):
    positions = np.random.default_rng(1).normal(size=(10, 3, 3))  # [10, 3, 3] Å
    numbers = np.array([8, 1, 1])

    with pytest.raises(LabelingError, match="frame 2 of the batch"):
        CalculatorForces(CountingCalculator(poisoned=[positions[2]])).compute(numbers,
                                                                              positions[:4])

    cache = tmp_path / "labels.h5"
    failing = CountingCalculator(poisoned=[positions[6]])
    with pytest.raises(LabelingError, match=r"frame 6 \(of 10\).*resumes"):
        label_positions(CalculatorForces(failing), numbers, positions, cache=cache,
                        batch_size=4, progress=False)
    with h5py.File(cache, "r") as stored:
        np.testing.assert_array_equal(stored["done"][:], np.arange(10) < 6)
        np.testing.assert_allclose(stored["forces"][:6], -0.7 * positions[:6])

    fixed = CountingCalculator()
    result = label_positions(CalculatorForces(fixed), numbers, positions, cache=cache,
                             batch_size=4, progress=False)
    assert fixed.calls == 4  # only frames 6..9
    np.testing.assert_allclose(result.energies, 0.35 * np.sum(positions**2, axis=(1, 2)))
    np.testing.assert_allclose(result.forces, -0.7 * positions)
    assert not os.path.exists(str(cache) + ".tmp")


def test_engine_exception_becomes_labeling_error():
    class Broken(CountingCalculator):
        def calculate(self, *args, **kwargs):
            raise RuntimeError("SCF did not converge")

    with pytest.raises(LabelingError, match="frame 0 of the batch.*SCF did not converge"):
        CalculatorForces(Broken()).compute([1, 1], np.eye(2, 3)[None])


def test_cache_of_other_positions_is_refused(tmp_path):
    positions = np.random.default_rng(2).normal(size=(5, 3, 3))
    numbers = np.array([8, 1, 1])
    cache = tmp_path / "labels.h5"
    label_positions(CalculatorForces(CountingCalculator()), numbers, positions, cache=cache,
                    progress=False)
    with h5py.File(cache, "r") as stored:
        assert stored.attrs["units"] == "positions Å, energies eV, forces eV/Å"
        assert stored.attrs["n_frames"] == 5
    with pytest.raises(ValueError, match="belongs to other data.*positions"):
        label_positions(CalculatorForces(CountingCalculator()), numbers, positions + 1e-3,
                        cache=cache, progress=False)
    with pytest.raises(ValueError, match="belongs to other data.*atomic numbers"):
        label_positions(CalculatorForces(CountingCalculator()), [8, 1, 9], positions,
                        cache=cache, progress=False)


def test_openmm_refuses_wrong_species_order_or_count():
    water_masses = [15.999, 1.008, 1.008]  # O, H, H
    system = argon_system(3, masses=water_masses)
    positions = np.random.default_rng(0).normal(size=(3, 3)) * 3
    OpenMMForces(system).compute([8, 1, 1], positions)
    with pytest.raises(ValueError, match="atom 0 is H"):
        OpenMMForces(system).compute([1, 8, 1], positions)
    with pytest.raises(ValueError, match="4 atoms"):
        OpenMMForces(system).compute([8, 1, 1, 1], np.zeros((4, 3)))
    OpenMMForces(system, check_masses=False).compute([1, 8, 1], positions)


# ---------------------------------------------------------------------- stored labels
def test_label_forces_serves_stored_labels_and_refuses_unknown_frames():
    positions = np.random.default_rng(4).normal(size=(6, 3, 3))
    numbers = np.array([8, 1, 1])
    energies = np.arange(6.0)
    forces = -positions
    source = LabelForces(Conformations(numbers, positions, forces, energies))

    request = positions[[4, 1, 4]] + 1e-9  # below the 1e-6 Å matching grid
    result = source.compute(numbers, request)
    assert isinstance(result, ForceResult)
    np.testing.assert_array_equal(result.energies, [4.0, 1.0, 4.0])
    np.testing.assert_array_equal(result.forces, forces[[4, 1, 4]])
    with pytest.raises(KeyError, match="frame 1 of the batch"):
        source.compute(numbers, np.stack([positions[0], positions[0] + 0.01]))
    with pytest.raises(ValueError, match="no forces"):
        LabelForces(Conformations(numbers, positions, energies=energies))


def test_label_round_trip_through_cache(tmp_path):
    """label(data, source) returns data with the source's labels (temperature kept); the second
    call reads the cache."""
    positions = argon_cluster(5, seed=7)
    numbers = np.full(positions.shape[1], ARGON_Z)
    conformations = Conformations(numbers, positions, temperature_K=300.0)
    cache = tmp_path / "argon.h5"

    labelled = label(conformations, CalculatorForces(ase_lj()), cache=cache, batch_size=2,
                     progress=False)
    expected = CalculatorForces(ase_lj()).compute(numbers, positions)
    np.testing.assert_allclose(labelled.energies, expected.energies, rtol=0, atol=1e-12)
    np.testing.assert_allclose(labelled.forces, expected.forces, rtol=0, atol=1e-12)
    assert labelled.temperature_K == 300.0

    untouched = ase_lj()  # the same calculator again: served from the cache, never called
    untouched.calculate = lambda *args, **kwargs: pytest.fail("the cache was not used")
    again = label(conformations, CalculatorForces(untouched), cache=cache, progress=False)
    np.testing.assert_array_equal(again.forces, labelled.forces)
    served = LabelForces(again).compute(numbers, positions[::-1])
    np.testing.assert_array_equal(served.energies, labelled.energies[::-1])
