"""The only place with unit conversions.

ase_drift speaks ASE units at every boundary (Å, eV, eV/Å, K, fs). Inside the drift code forces
appear as F/kT in Å⁻¹ (:func:`reduced_forces`). OpenMM's nm and kJ/mol, mdtraj's nm and MD17's
kcal/mol are converted here and nowhere else; constants come from :mod:`ase.units` (CODATA 2014).
"""

from __future__ import annotations

import numpy as np
from ase import units as _ase

#: Energy units accepted by :func:`energy_to_eV`, as eV per unit.
ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _ase.kcal / _ase.mol,
    "kJ/mol": _ase.kJ / _ase.mol,
    "Hartree": _ase.Hartree,
}

ANGSTROM_PER_NM = 10.0


def kT(temperature_K: float) -> float:
    """Thermal energy k_B·T in eV."""
    if not temperature_K > 0:
        raise ValueError(f"temperature must be positive, got {temperature_K} K")
    return _ase.kB * float(temperature_K)


def energy_to_eV(value, unit: str):
    """Convert an energy (or force per Å) from ``unit`` to eV."""
    try:
        return value * ENERGY_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown energy unit {unit!r}; use one of {sorted(ENERGY_UNITS)}") from None


def fs_to_ase_time(value):
    """Femtoseconds to ASE's time unit Å·√(amu/eV) (what ASE's integrators and
    :func:`ase_drift.simulate.baoab` with Å, amu and eV take); friction per fs divides by it."""
    return np.asarray(value) * _ase.fs


def nm_to_angstrom(value):
    return np.asarray(value) * ANGSTROM_PER_NM


def angstrom_to_nm(value):
    return np.asarray(value) / ANGSTROM_PER_NM


def kj_per_mol_to_ev(value):
    """kJ/mol (OpenMM energies) to eV."""
    return np.asarray(value) * ENERGY_UNITS["kJ/mol"]


def kj_per_mol_nm_to_ev_per_angstrom(value):
    """kJ/mol/nm (OpenMM forces) to eV/Å."""
    return np.asarray(value) * ENERGY_UNITS["kJ/mol"] / ANGSTROM_PER_NM


def reduced_forces(forces, temperature_K: float):
    """F/kT in Å⁻¹: the Boltzmann score ∇log π (paper Eq. 3), from forces in eV/Å."""
    return forces / kT(temperature_K)
