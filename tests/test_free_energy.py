"""Umbrella sampling along a torsion + MBAR (ase_drift.free_energy, Eqs. 1–3)."""

from __future__ import annotations

import numpy as np
import pytest

from ase_drift.datasets import data_path
from ase_drift.free_energy import (
    BIAS_GROUP,
    UmbrellaConfig,
    UmbrellaSamples,
    kj_per_mol,
    load_positions,
    mbar_free_energies,
    periodic_difference,
    reduced_bias,
    restraint_force,
    torsion_indices,
    umbrella_sampling,
)
from ase_drift.metrics import free_energy_difference
from ase_drift.peptides import backbone_dihedrals, topology_from_pdb

T = 300.0


def test_periodic_difference_takes_the_short_way_round():
    # 3.0 and −3.0 rad are 2π − 6 ≈ 0.283 rad apart across the cut, not 6 rad.
    assert periodic_difference(3.0, -3.0) == pytest.approx(2 * np.pi - 6.0)
    assert periodic_difference(-np.pi, np.pi) == pytest.approx(0.0, abs=1e-12)
    assert periodic_difference(0.5, -0.25) == pytest.approx(0.75)
    assert periodic_difference(np.pi / 2, -np.pi / 2) == pytest.approx(np.pi)
    bias = reduced_bias([3.0, 0.0], [-3.0, 0.5, np.pi], force_constant=10.0)  # [K=3, n=2]
    expected = 0.5 * 10.0 * np.array([[(2 * np.pi - 6) ** 2, 3.0 ** 2],
                                      [2.5 ** 2, 0.5 ** 2],
                                      [(np.pi - 3.0) ** 2, np.pi ** 2]])
    np.testing.assert_allclose(bias, expected, rtol=1e-12)


def test_kj_per_mol_is_kT_in_openmm_units():
    # R·T at 300 K = 8.314462618e-3 kJ/mol/K × 300 K = 2.4943 kJ/mol (CODATA 2014 within 1e-5).
    assert kj_per_mol(1.0, T) == pytest.approx(8.314462618e-3 * T, rel=1e-5)


def test_phi_indices_are_the_alanine_backbone_torsion():
    import mdtraj

    from ase_drift.datasets.alanine import starting_structure

    md_topology = mdtraj.Topology.from_openmm(starting_structure()[0])
    names = [md_topology.atom(int(i)).name for i in torsion_indices(md_topology, "phi")]
    assert names == ["C", "N", "CA", "C"]
    names = [md_topology.atom(int(i)).name for i in torsion_indices(md_topology, "psi")]
    assert names == ["N", "CA", "C", "N"]


def test_restraint_force_energy_matches_eq1_across_the_cut():
    """OpenMM's CustomTorsionForce at a torsion of −1.1 rad (measured by mdtraj, as φ is) gives
    ½κd² with the periodic difference, for centres on either side, across ±π and at the mirror
    value +1.1 (which a sign error would mistake for the torsion itself)."""
    import mdtraj
    import openmm
    import openmm.unit as u

    angle = -1.1
    xyz = np.array([[0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.15, 0.0],
                    [0.1 * np.cos(angle), 0.15, 0.1 * np.sin(angle)]])  # [4, 3] nm
    topology = mdtraj.Topology()
    residue = topology.add_residue("X", topology.add_chain())
    for _ in range(4):
        topology.add_atom("C", mdtraj.element.carbon, residue)
    phi0 = mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz[None], topology), [[0, 1, 2, 3]])[0, 0]
    assert abs(abs(phi0) - 1.1) < 1e-6
    kappa = 25.0  # kT/rad²
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    system.addForce(restraint_force([0, 1, 2, 3], 0.0, kappa, T))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(xyz)
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi
    cases = [(wrap(phi0 - 0.5), 0.5), (wrap(phi0 + 1.2), 1.2),
             (wrap(phi0 + np.pi - 0.1), np.pi - 0.1), (wrap(phi0 - np.pi + 0.2), np.pi - 0.2),
             (-phi0, 2.2)]
    for centre, distance in cases:
        context.setParameter("theta0", centre)
        energy = context.getState(getEnergy=True, groups={BIAS_GROUP}).getPotentialEnergy()
        reduced = energy.value_in_unit(u.kilojoule_per_mole) / kj_per_mol(1.0, T)
        assert reduced == pytest.approx(0.5 * kappa * distance ** 2, rel=1e-6), centre
        assert reduced == pytest.approx(reduced_bias(phi0, [centre], kappa)[0, 0], rel=1e-6)


# --------------------------------------------------------------------------- MBAR on a toy


def _toy_energy(theta):
    """U(θ)/kT of a periodic double well: wells near ±π/2, the θ > 0 one lower by ~1.6 kT."""
    return 2.5 * np.cos(2 * theta) - 0.8 * np.sin(theta)


def _exact_window_samples(centres, kappa, n, seed):
    """i.i.d. draws θ ~ exp(−U(θ) − ½κd(θ, θ_k)²) per window by inverse CDF on a fine grid."""
    grid = np.linspace(-np.pi, np.pi, 200_001)
    rng = np.random.default_rng(seed)
    draws = []
    for centre in centres:
        density = np.exp(-_toy_energy(grid) - reduced_bias(grid, [centre], kappa)[0])
        cdf = np.cumsum(density)
        cdf /= cdf[-1]
        draws.append(np.interp(rng.random(n), cdf, grid))
    return np.array(draws)  # [K, n]


def _toy_samples(kappa, n_windows=16, n=400, seed=0):
    centres = UmbrellaConfig(n_windows=n_windows).centres
    theta = _exact_window_samples(centres, kappa, n, seed)
    psi = np.random.default_rng(seed + 1).uniform(-np.pi, np.pi, theta.shape)
    return UmbrellaSamples(centres, kappa, "phi", theta, psi, np.zeros_like(theta), T)


def test_mbar_recovers_the_exact_free_energy_of_a_periodic_double_well():
    """ΔF = F(θ > 0) − F(θ < 0) = −ln(∫₀^π e^−U / ∫_−π^0 e^−U) by quadrature; MBAR over 12
    windows (κ = 8 kT/rad², 600 exact draws each, including the window at −π that only the
    periodic difference treats right) must match it within 4 bootstrap errors, the error must be
    small (< 0.15 kT; 0.08–0.12 over seeds 0–3), and the PMF (36 bins, bootstrap errors ≈ 0.2 kT
    at the barriers) must match −ln ∫_bin e^−U within 0.2 kT RMS (0.09–0.11 measured). Pooling
    the windows' frames without weights is far off (> 1 kT), so the weights matter."""
    samples = _toy_samples(kappa=8.0, n_windows=12, n=600)
    regions = {"b − a": (lambda phi, psi: phi < 0, lambda phi, psi: phi >= 0)}
    result = mbar_free_energies(samples, regions, bins=36, n_boot=20, progress=False)
    grid = np.linspace(-np.pi, np.pi, 360_001)
    p = np.exp(-_toy_energy(grid))
    exact = -np.log(p[grid >= 0].sum() / p[grid < 0].sum())
    estimate = result.delta_f["b − a"]
    assert 0 < estimate.error < 0.15
    assert abs(estimate.value - exact) < 4 * estimate.error, (estimate, exact)
    pooled = samples.phi.ravel()
    assert abs(free_energy_difference(pooled, pooled < 0, pooled >= 0) - exact) > 1.0
    bins = np.digitize(grid, result.edges[1:-1])
    exact_pmf = -np.log(np.bincount(bins, weights=p, minlength=36))
    exact_pmf -= exact_pmf.min()
    assert np.all(np.isfinite(result.pmf))
    difference = (result.pmf - result.pmf.mean()) - (exact_pmf - exact_pmf.mean())
    assert np.sqrt(np.mean(difference ** 2)) < 0.2
    assert np.all(result.statistical_inefficiency < 2.5)  # i.i.d. draws: g ≈ 1 (noisy)


def test_unbiased_windows_reproduce_the_plain_histogram():
    """With κ = 0 every window is the unbiased state: MBAR's weights are uniform, so the PMF is
    −ln(histogram / Δθ) (min 0) and ΔF the plain population ratio, exactly."""
    rng = np.random.default_rng(3)
    phi = np.clip(rng.normal(-1.5, 0.8, (4, 300)), -np.pi, np.pi)  # [K, N]
    psi = rng.uniform(-np.pi, np.pi, phi.shape)
    samples = UmbrellaSamples(UmbrellaConfig(n_windows=4).centres, 0.0, "phi", phi, psi,
                              np.zeros_like(phi), T)
    regions = {"b − a": (lambda p, s: p < -1.5, lambda p, s: p >= -1.5)}
    result = mbar_free_energies(samples, regions, bins=24, n_boot=5, progress=False)
    kept = np.concatenate([phi[k, np.unique(np.floor(np.arange(0, 300, g)).astype(int))]
                           for k, g in enumerate(result.statistical_inefficiency)])
    counts, _ = np.histogram(kept, bins=result.edges)
    with np.errstate(divide="ignore"):
        expected = -np.log(counts / counts.sum() / np.diff(result.edges))
    expected -= expected[np.isfinite(expected)].min()
    np.testing.assert_allclose(result.pmf[counts > 0], expected[counts > 0], atol=1e-8)
    assert np.all(np.isnan(result.pmf[counts == 0]))
    np.testing.assert_allclose(result.f_k, 0.0, atol=1e-8)
    assert result.delta_f["b − a"].value == pytest.approx(
        free_energy_difference(kept, kept < -1.5, kept >= -1.5), abs=1e-8)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="n_windows"):
        UmbrellaConfig(n_windows=1)
    with pytest.raises(ValueError, match="torsion"):
        UmbrellaConfig(torsion="omega")
    with pytest.raises(ValueError, match="force_constant"):
        UmbrellaConfig(force_constant=0)
    samples = _toy_samples(kappa=8.0, n_windows=4, n=20)
    with pytest.raises(ValueError, match="radians"):
        mbar_free_energies(samples._replace(phi=np.degrees(samples.phi)), progress=False)
    with pytest.raises(ValueError, match="windows"):
        mbar_free_energies(samples._replace(phi=samples.phi[:3]), progress=False)


def test_umbrella_sampling_runs_resumes_and_guards_its_directory(tmp_path):
    """A tiny OpenMM run: each window's φ stays near its centre (κ = 120 kT/rad², σ ≈ 0.09 rad),
    the energies are the unbiased ones (finite, tens of kT at most above the minimum), and a
    second call reads the windows back instead of rerunning; another config is refused."""
    config = UmbrellaConfig(n_windows=3, equilibration_ps=1.0, production_ps=2.0, stride_ps=0.1)
    first = umbrella_sampling(config, tmp_path, progress=False)
    assert first.phi.shape == first.psi.shape == first.energies.shape == (3, 20)
    assert np.all(np.median(periodic_difference(first.phi, config.centres[:, None]), axis=1)
                  < 0.5)
    assert np.all(np.isfinite(first.energies))
    again = umbrella_sampling(config, tmp_path, progress=False)
    np.testing.assert_array_equal(again.phi, first.phi)
    positions = load_positions(tmp_path, 3)  # [K, N, A, 3] Å: the stored frames are φ's frames
    assert positions.shape == (3, 20, 22, 3)
    topology = topology_from_pdb(str(np.load(data_path(
        "alanine-dipeptide-amber99sbildn-300K-small"))["pdb"]))
    phi, _ = backbone_dihedrals(positions.reshape(-1, 22, 3), topology)
    np.testing.assert_allclose(phi.reshape(3, 20), first.phi, atol=1e-5)
    with pytest.raises(ValueError, match="another configuration"):
        umbrella_sampling(UmbrellaConfig(n_windows=3, equilibration_ps=1.0, production_ps=2.0,
                                         stride_ps=0.1, seed=1), tmp_path, progress=False)
