"""Units: kT in eV, and every conversion is the inverse of its partner (round trips).

Reference values are written out (CODATA 2014, as ASE uses) rather than taken from units.py:
k_B = 8.617330e-5 eV/K, 1 kcal/mol = 0.0433641 eV, 1 kJ/mol = 0.01036427 eV, 1 nm = 10 Å.
"""

import math

import numpy as np
import pytest

from ase_drift import units

KCAL_MOL_EV = 0.0433641
KJ_MOL_EV = 0.01036427


def test_kT_at_300K_in_eV():
    """k_B·300 K = 0.025852 eV."""
    assert units.kT(300.0) == pytest.approx(0.025852, abs=1e-6)
    assert units.kT(600.0) == pytest.approx(2 * units.kT(300.0))


@pytest.mark.parametrize("bad", [0.0, -10.0, float("nan")])
def test_kT_rejects_non_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        units.kT(bad)


def test_energy_factors():
    """eV per unit for the units MD17, OpenMM and quantum chemistry use."""
    assert units.energy_to_eV(1.0, "kcal/mol") == pytest.approx(KCAL_MOL_EV, rel=1e-6)
    assert units.energy_to_eV(1.0, "kJ/mol") == pytest.approx(KJ_MOL_EV, rel=1e-6)
    assert units.energy_to_eV(1.0, "Hartree") == pytest.approx(27.211386, rel=1e-6)
    assert units.energy_to_eV(2.5, "eV") == 2.5
    assert units.energy_to_eV(1000.0, "meV") == pytest.approx(1.0)
    # 1 kcal = 4.184 kJ (thermochemical calorie)
    assert units.energy_to_eV(1.0, "kcal/mol") / units.energy_to_eV(1.0, "kJ/mol") == \
        pytest.approx(4.184, rel=1e-9)


def test_unknown_energy_unit_raises_and_lists_known_units():
    with pytest.raises(ValueError, match="unknown energy unit 'kcal'.*kJ/mol"):
        units.energy_to_eV(1.0, "kcal")


def test_nm_angstrom_round_trip():
    """x Å → nm → Å is the identity; 1 nm = 10 Å."""
    x = np.random.default_rng(0).normal(size=(4, 5, 3))
    assert units.nm_to_angstrom(1.0) == pytest.approx(10.0)
    assert units.angstrom_to_nm(10.0) == pytest.approx(1.0)
    np.testing.assert_allclose(units.nm_to_angstrom(units.angstrom_to_nm(x)), x, rtol=1e-15)


def test_kj_per_mol_ev_round_trip():
    """kJ/mol → eV → kJ/mol, and kJ/mol/nm → eV/Å carries the extra 1/10."""
    e = np.random.default_rng(1).normal(size=7) * 100
    ev = units.kj_per_mol_to_ev(e)
    np.testing.assert_allclose(ev, e * KJ_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(ev / units.energy_to_eV(1.0, "kJ/mol"), e, rtol=1e-14)
    np.testing.assert_allclose(units.kj_per_mol_nm_to_ev_per_angstrom(e), e * KJ_MOL_EV / 10,
                               rtol=1e-6)


def test_kcal_per_mol_round_trip():
    e = np.array([-97195.01189948035, 0.0, 1.0])
    ev = units.energy_to_eV(e, "kcal/mol")
    np.testing.assert_allclose(ev, e * KCAL_MOL_EV, rtol=1e-6)
    np.testing.assert_allclose(ev / units.energy_to_eV(1.0, "kcal/mol"), e, rtol=1e-14)


def test_reduced_forces_are_F_over_kT():
    """F/kT in Å⁻¹: 1 eV/Å at 300 K is 1/0.025852 Å⁻¹."""
    assert units.reduced_forces(1.0, 300.0) == pytest.approx(1 / 0.025852, rel=1e-4)


def test_kT_accepts_any_positive_temperature():
    """Only T ≤ 0 is rejected: a fraction of a kelvin is a valid temperature."""
    assert units.kT(0.5) == pytest.approx(0.5 * 8.617330e-5, rel=1e-6)


def test_femtoseconds_in_ase_time_units():
    """ASE's time unit is Å·√(amu/eV) ≈ 10.18 fs: 1 fs is 0.0982 of it (CODATA 2014 constants)."""
    from ase_drift.units import fs_to_ase_time

    amu_kg, ev_j = 1.66053904e-27, 1.6021766208e-19
    ase_time_s = 1e-10 * math.sqrt(amu_kg / ev_j)
    assert float(fs_to_ase_time(1.0)) == pytest.approx(1e-15 / ase_time_s, rel=1e-8)
    np.testing.assert_allclose(fs_to_ase_time([0.5, 2.0]), [0.5 * 1e-15 / ase_time_s,
                                                             2e-15 / ase_time_s], rtol=1e-8)
