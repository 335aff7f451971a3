"""Free-energy truths by umbrella sampling along a torsion and MBAR (Shirts & Chodera 2008).

**Windows (Eq. 1).** K harmonic restraints on a torsion θ (default φ of alanine dipeptide),
centred at θ_k = −π + 2πk/K, with the *periodic* difference so that a window near ±π pulls
across the cut instead of around the circle:

    b_k(θ)/kT = ½ κ d(θ, θ_k)²,    d(θ, θ_k) = min(|θ − θ_k|, 2π − |θ − θ_k|)        (Eq. 1)

κ is in kT/rad² in the public API (converted to OpenMM's kJ/mol/rad² by :func:`restraint_force`
through :mod:`ase_drift.units`). OpenMM runs each window as a ``CustomTorsionForce`` in its own
force group, so the potential energy saved per frame is the unbiased one.

**MBAR (Eqs. 2–3).** With N_k frames from window k and reduced potentials u_k(x) = b_k(θ(x))/kT
(the unbiased energy, common to every window, cancels and is left out), the free energies f_k
solve the self-consistent equations of Shirts & Chodera (2008)

    f_i = −ln Σ_n exp(−u_i(x_n)) / Σ_k N_k exp(f_k − u_k(x_n))                        (Eq. 2)

over all frames n of all windows (solved by :class:`pymbar.MBAR`). Every frame then carries the
normalised weight for the *unbiased* state (u = 0)

    w_n ∝ 1 / Σ_k N_k exp(f_k − u_k(x_n)),   Σ_n w_n = 1                              (Eq. 3)

from which the PMF along θ is F(bin) = −ln(Σ_{n∈bin} w_n / Δθ) (min 0) and the free energy
between regions a, b (boolean functions of (φ, ψ)) is ΔF_ab = F_b − F_a = −ln(P_b/P_a), P = Σ w
over the region: the convention of :func:`ase_drift.metrics.free_energy_difference`.

**Errors.** Each window's frames are first subsampled at its statistical inefficiency g (pymbar's
``timeseries``; the largest g of the window's own bias energy and of cos ψ, sin ψ: ψ is the slow
coordinate orthogonal to the restraint). Bootstrap replicates redraw the uncorrelated frames
with replacement within every window, re-solve Eq. 2 and recompute Eq. 3; errors are the
standard deviations over replicates.

Free energies are in kT (dimensionless), angles in radians, positions in Å, energies in eV.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from . import units
from .metrics.peptides import basin_masks_phi, basin_masks_psi
from .metrics.tables import Estimate
from .peptides import backbone_dihedrals

#: OpenMM force group of the umbrella restraint (the unbiased energy is every other group).
BIAS_GROUP = 31
#: Torsions the umbrella can restrain, by the mdtraj function that finds their atoms.
TORSIONS = ("phi", "psi")


@dataclass(frozen=True)
class UmbrellaConfig:
    """One umbrella-sampling run (Eq. 1): ``n_windows`` restraints of ``force_constant`` kT/rad²
    on ``torsion``; per window ``equilibration_ps`` then ``production_ps`` of Langevin dynamics
    (``openmm.LangevinMiddleIntegrator``), a frame every ``stride_ps``. Windows run one after the
    other around the circle from the one nearest the starting structure, each starting from the
    previous window's last frame. The dynamics match the project's alanine protocol
    (:class:`~ase_drift.datasets.alanine.AlanineProtocol`: 300 K, 1 fs, 1 ps⁻¹). κ must exceed
    the PMF's curvature at its barrier tops (alanine's φ: ≈ 40 kT/rad² at φ = 0, ≈ 80 at
    φ ≈ 125°), else windows slide off the tops and leave gaps MBAR cannot bridge; the spacing
    2π/K should stay below ~2 standard deviations 1/√κ of a window (here 7.5° against 5.2°)."""

    n_windows: int = 48
    force_constant: float = 120.0
    torsion: str = "phi"
    equilibration_ps: float = 50.0
    production_ps: float = 500.0
    stride_ps: float = 0.5
    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    platform: str = "Reference"
    seed: int = 0

    def __post_init__(self):
        if self.n_windows < 2:
            raise ValueError(f"n_windows must be at least 2, got {self.n_windows}")
        if self.torsion not in TORSIONS:
            raise ValueError(f"torsion must be one of {TORSIONS}, got {self.torsion!r}")
        for name in ("force_constant", "production_ps", "stride_ps", "temperature_K",
                     "timestep_fs", "friction_per_ps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.equilibration_ps < 0:
            raise ValueError(f"equilibration_ps must be ≥ 0, got {self.equilibration_ps}")
        if self.stride_steps < 1 or self.production_ps < self.stride_ps:
            raise ValueError("stride_ps must be at least one time step and at most production_ps")

    @property
    def centres(self) -> np.ndarray:
        """θ_k = −π + 2πk/K ``[K]`` (rad)."""
        return -np.pi + 2 * np.pi * np.arange(self.n_windows) / self.n_windows

    @property
    def stride_steps(self) -> int:
        return round(self.stride_ps * 1000 / self.timestep_fs)

    @property
    def n_frames(self) -> int:
        """Production frames per window."""
        return round(self.production_ps / self.stride_ps)


class UmbrellaSamples(NamedTuple):
    """The frames of every window (K windows, N frames each)."""

    centres: np.ndarray  # [K] rad
    force_constant: float  # kT/rad²
    torsion: str  # which of (phi, psi) was restrained
    phi: np.ndarray  # [K, N] rad
    psi: np.ndarray  # [K, N] rad
    energies: np.ndarray  # [K, N] eV, unbiased potential energy
    temperature_K: float

    @property
    def restrained(self) -> np.ndarray:
        """The restrained torsion ``[K, N]``."""
        return self.phi if self.torsion == "phi" else self.psi


class FreeEnergyResult(NamedTuple):
    """MBAR estimates with bootstrap errors (all in kT)."""

    edges: np.ndarray  # [bins + 1] rad, bin edges of the PMF
    pmf: np.ndarray  # [bins], min 0, NaN where no frame fell
    pmf_error: np.ndarray  # [bins], relative to the minimum bin of pmf
    delta_f: dict[str, Estimate]  # name "b − a" -> ΔF_ab
    f_k: np.ndarray  # [K] window free energies, f_0 = 0
    statistical_inefficiency: np.ndarray  # [K]
    n_uncorrelated: np.ndarray  # [K] frames kept per window

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])


# --------------------------------------------------------------------------- the bias (Eq. 1)


def periodic_difference(theta, centre) -> np.ndarray:
    """d(θ, θ₀) = min(|θ − θ₀|, 2π − |θ − θ₀|) in [0, π] (broadcasting), θ and θ₀ in radians."""
    delta = np.abs(np.asarray(theta, dtype=np.float64) - np.asarray(centre, dtype=np.float64))
    delta = np.mod(delta, 2 * np.pi)
    return np.minimum(delta, 2 * np.pi - delta)


def reduced_bias(theta, centres, force_constant: float) -> np.ndarray:
    """u_k(θ_n) = ½ κ d(θ_n, θ_k)² ``[K, n]`` (Eq. 1) for θ ``[n]``, centres ``[K]`` (rad) and
    κ in kT/rad²."""
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1)
    return 0.5 * force_constant * periodic_difference(theta[None, :], centres[:, None]) ** 2


def kj_per_mol(reduced: float, temperature_K: float) -> float:
    """A reduced energy (in kT) in kJ/mol, OpenMM's energy unit."""
    return reduced * units.kT(temperature_K) / units.energy_to_eV(1.0, "kJ/mol")


def restraint_force(indices, centre: float, force_constant: float, temperature_K: float):
    """The window of Eq. 1 as an ``openmm.CustomTorsionForce`` on atoms ``indices`` (4) with
    global parameters ``theta0`` (rad) and ``k`` (kJ/mol/rad², from κ in kT/rad²), in force
    group :data:`BIAS_GROUP`."""
    import openmm

    if len(indices) != 4:
        raise ValueError(f"a torsion needs 4 atom indices, got {len(indices)}")
    force = openmm.CustomTorsionForce(
        "0.5*k*d^2; d=min(dtheta, 2*pi-dtheta); dtheta=abs(theta-theta0); "
        f"pi={np.pi!r}")
    force.addGlobalParameter("k", kj_per_mol(force_constant, temperature_K))
    force.addGlobalParameter("theta0", float(centre))
    force.addTorsion(*(int(i) for i in indices), [])
    force.setForceGroup(BIAS_GROUP)
    return force


# --------------------------------------------------------------------------- OpenMM windows


def torsion_indices(topology, torsion: str = "phi") -> np.ndarray:
    """Atom indices ``[4]`` of the first φ or ψ of an mdtraj topology (alanine dipeptide: ALA's)."""
    import mdtraj

    if torsion not in TORSIONS:
        raise ValueError(f"torsion must be one of {TORSIONS}, got {torsion!r}")
    probe = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    indices, _ = getattr(mdtraj, f"compute_{torsion}")(probe)
    if len(indices) == 0:
        raise ValueError(f"the topology has no {torsion} torsion")
    return indices[0]


def _save_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _window_order(centres: np.ndarray, start_angle: float) -> list[int]:
    """Window indices around the circle upwards from the one nearest ``start_angle``."""
    first = int(np.argmin(periodic_difference(start_angle, centres)))
    return [(first + j) % len(centres) for j in range(len(centres))]


def umbrella_sampling(config: UmbrellaConfig, directory: str | Path, system=None,
                      topology=None, positions_nm=None, progress: bool = True
                      ) -> UmbrellaSamples:
    """Run (or resume) the windows of ``config``; each finished window is written atomically to
    ``directory/window_KKK.npz`` (φ, ψ, unbiased energies, positions in Å, the last frame) and
    read back instead of rerun when its configuration matches.

    ``system`` (``openmm.System``), ``topology`` (``openmm.app.Topology``) and ``positions_nm``
    default to the project's alanine dipeptide (amber99sb-ildn, vacuum, energy-minimised:
    :mod:`ase_drift.datasets.alanine`).
    """
    import mdtraj
    import openmm
    import openmm.unit as u
    from tqdm.auto import tqdm

    if system is None:
        from .datasets.alanine import make_system, minimised_start

        topology, positions_nm = minimised_start()
        system = make_system(topology)
    elif topology is None or positions_nm is None:
        raise ValueError("with a system, pass its topology and positions_nm too")
    md_topology = mdtraj.Topology.from_openmm(topology)
    indices = torsion_indices(md_topology, config.torsion)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps(asdict(config), sort_keys=True)
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))  # a copy
    if any(f.getForceGroup() == BIAS_GROUP for f in system.getForces()):
        raise ValueError(f"force group {BIAS_GROUP} is reserved for the umbrella restraint")
    system.addForce(restraint_force(indices, 0.0, config.force_constant, config.temperature_K))
    unbiased_groups = set(range(32)) - {BIAS_GROUP}
    platform = openmm.Platform.getPlatformByName(config.platform)
    start = np.asarray(positions_nm.value_in_unit(u.nanometer) if hasattr(positions_nm, "unit")
                       else positions_nm, dtype=np.float64)  # [A, 3] nm
    start_angle = backbone_dihedrals(units.nm_to_angstrom(start)[None], md_topology)[
        TORSIONS.index(config.torsion)][0]
    equilibration = round(config.equilibration_ps * 1000 / config.timestep_fs)
    total = config.n_windows * (equilibration + config.n_frames * config.stride_steps)
    windows = {}
    with tqdm(total=total, desc="umbrella windows", unit="step", unit_scale=True,
              disable=not progress, mininterval=2) as bar:
        for k in _window_order(config.centres, start_angle):
            path = directory / f"window_{k:03d}.npz"
            if path.exists():
                with np.load(path) as stored:
                    if str(stored["config"]) != stamp:
                        raise ValueError(f"{path} was written with another configuration; "
                                         "use another directory")
                    windows[k] = dict(stored)
                start = windows[k]["last_positions_nm"]
                bar.update(total // config.n_windows)
                continue
            integrator = openmm.LangevinMiddleIntegrator(
                config.temperature_K * u.kelvin, config.friction_per_ps / u.picosecond,
                config.timestep_fs * u.femtosecond)
            integrator.setRandomNumberSeed(config.seed * 1000 + k + 1)
            context = openmm.Context(system, integrator, platform)
            context.setParameter("theta0", float(config.centres[k]))
            context.setPositions(start)
            context.setVelocitiesToTemperature(config.temperature_K * u.kelvin,
                                               config.seed * 1000 + k + 1)
            integrator.step(equilibration)
            bar.update(equilibration)
            positions = np.empty((config.n_frames, system.getNumParticles(), 3), np.float32)
            energies = np.empty(config.n_frames)
            for n in range(config.n_frames):
                integrator.step(config.stride_steps)
                state = context.getState(getPositions=True, getEnergy=True,
                                         groups=unbiased_groups)
                positions[n] = units.nm_to_angstrom(state.getPositions(asNumpy=True)._value)
                energies[n] = units.kj_per_mol_to_ev(state.getPotentialEnergy()._value)
                bar.update(config.stride_steps)
            start = context.getState(getPositions=True).getPositions(asNumpy=True)._value
            phi, psi = backbone_dihedrals(positions, md_topology)
            windows[k] = {"centre": config.centres[k], "phi": phi, "psi": psi,
                          "energies": energies, "positions": positions,
                          "last_positions_nm": start, "config": stamp}
            _save_atomic(path, **windows[k])
            del context, integrator
    order = range(config.n_windows)
    return UmbrellaSamples(
        config.centres, config.force_constant, config.torsion,
        np.stack([windows[k]["phi"] for k in order]), np.stack([windows[k]["psi"] for k in order]),
        np.stack([windows[k]["energies"] for k in order]), config.temperature_K)


def load_positions(directory: str | Path, n_windows: int) -> np.ndarray:
    """The stored positions ``[K, N, A, 3]`` (Å) of a run written by :func:`umbrella_sampling`."""
    return np.stack([np.load(Path(directory) / f"window_{k:03d}.npz")["positions"]
                     for k in range(n_windows)])


# --------------------------------------------------------------------------- MBAR (Eqs. 2–3)


def statistical_inefficiency(series) -> float:
    """pymbar's statistical inefficiency g ≥ 1 of a time series ``[N]`` (1 if it is constant)."""
    from pymbar import timeseries

    series = np.asarray(series, dtype=np.float64)
    if np.ptp(series) == 0:
        return 1.0
    return float(timeseries.statistical_inefficiency(series))


def solve_mbar(u_kn: np.ndarray, n_k: np.ndarray, initial_f_k=None) -> np.ndarray:
    """Window free energies f_k ``[K]`` (f_0 = 0) of Eq. 2 from reduced potentials ``[K, n]``
    evaluated at all frames (grouped by window, ``n_k`` ``[K]`` frames each)."""
    import pymbar

    mbar = pymbar.MBAR(u_kn, n_k, initial_f_k=initial_f_k)
    return np.asarray(mbar.f_k)


def unbiased_log_weights(u_kn: np.ndarray, n_k: np.ndarray, f_k: np.ndarray) -> np.ndarray:
    """log w_n ``[n]`` of Eq. 3 (logsumexp = 0): each frame's weight in the unbiased state."""
    log_w = -logsumexp(f_k[:, None] - u_kn, b=np.asarray(n_k, dtype=np.float64)[:, None], axis=0)
    return log_w - logsumexp(log_w)


def pmf(theta, log_weights, edges) -> np.ndarray:
    """F(bin) = −ln(Σ_{n∈bin} w_n / Δθ) ``[bins]`` in kT, min 0, NaN for empty bins."""
    theta = np.asarray(theta, dtype=np.float64)
    weights = np.exp(log_weights)
    probability, _ = np.histogram(theta, bins=edges, weights=weights)  # [bins]
    with np.errstate(divide="ignore"):
        free = -np.log(probability / np.diff(edges))
    free[~np.isfinite(free)] = np.nan
    return free - np.nanmin(free)


def region_delta_f(log_weights, in_a, in_b) -> float:
    """ΔF_ab = −ln(P_b/P_a) in kT, P = Σ w over the boolean mask; NaN when a region is empty."""
    if not (np.any(in_a) and np.any(in_b)):
        return np.nan
    return float(logsumexp(log_weights[in_a]) - logsumexp(log_weights[in_b]))


Region = Callable[[np.ndarray, np.ndarray], np.ndarray]


def alanine_regions() -> dict[str, tuple[Region, Region]]:
    """The ΔF_ab the issue asks for, as (a, b) pairs of masks of (φ, ψ): F(αL/C7ax) −
    F(C7eq/β/αR) with αL/C7ax = 0 < φ < 2.2 rad (:func:`~ase_drift.metrics.basin_masks_phi`: a
    plain φ > 0 would count the β basin wrapped to φ ≈ +π as αL), and F(C5/β) − F(C7eq/αR) on
    the φ < 0 side (:func:`~ase_drift.metrics.basin_masks_psi`, ψ ≥ 1.8 rad is C5/β)."""
    return {
        "αL/C7ax − C7eq/β/αR": (lambda phi, psi: basin_masks_phi(phi)[0],
                                lambda phi, psi: basin_masks_phi(phi)[1]),
        "C5/β − C7eq/αR": (lambda phi, psi: basin_masks_psi(phi, psi)[0],
                           lambda phi, psi: basin_masks_psi(phi, psi)[1]),
    }


def mbar_free_energies(samples: UmbrellaSamples, regions: dict[str, tuple[Region, Region]]
                       | None = None, bins: int = 72, n_boot: int = 100, seed: int = 0,
                       progress: bool = True) -> FreeEnergyResult:
    """PMF along the restrained torsion and ΔF between regions (default
    :func:`alanine_regions`) by MBAR (Eqs. 2–3) on the decorrelated frames of every window,
    with bootstrap errors (frames redrawn within windows, ``n_boot`` replicates, seeded)."""
    from tqdm.auto import trange

    theta = np.asarray(samples.restrained, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[0] != len(samples.centres):
        raise ValueError(f"samples must hold [K, N] angles for {len(samples.centres)} windows, "
                         f"got {theta.shape}")
    if np.any(np.abs(theta) > np.pi + 1e-6):
        raise ValueError("torsion angles must be in radians, within [−π, π]")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    regions = alanine_regions() if regions is None else regions
    centres, kappa = np.asarray(samples.centres), samples.force_constant
    g = np.array([max(statistical_inefficiency(reduced_bias(theta[k], centres[k:k + 1], kappa)[0]),
                      statistical_inefficiency(np.cos(samples.psi[k])),
                      statistical_inefficiency(np.sin(samples.psi[k])))
                  for k in range(len(centres))])  # [K]
    keep = [np.unique(np.floor(np.arange(0, theta.shape[1], gk)).astype(int)) for gk in g]
    n_k = np.array([len(idx) for idx in keep])  # [K]
    phi = [samples.phi[k, idx] for k, idx in enumerate(keep)]  # K arrays [N_k]
    psi = [samples.psi[k, idx] for k, idx in enumerate(keep)]
    edges = np.linspace(-np.pi, np.pi, bins + 1)

    def estimate(picks, initial_f_k=None):
        p, s = np.concatenate([phi[k][i] for k, i in enumerate(picks)]), \
            np.concatenate([psi[k][i] for k, i in enumerate(picks)])  # [n]
        t = p if samples.torsion == "phi" else s
        u_kn = reduced_bias(t, centres, kappa)  # [K, n]
        f_k = solve_mbar(u_kn, n_k, initial_f_k)
        log_w = unbiased_log_weights(u_kn, n_k, f_k)  # [n]
        deltas = [region_delta_f(log_w, np.asarray(a(p, s), bool), np.asarray(b(p, s), bool))
                  for a, b in regions.values()]
        return f_k, pmf(t, log_w, edges), np.array(deltas)

    f_k, profile, deltas = estimate([np.arange(n) for n in n_k])
    rng = np.random.default_rng(seed)
    reference_bin = int(np.nanargmin(profile))
    boot_pmf, boot_delta = [], []
    for _ in trange(n_boot, desc="MBAR bootstrap", disable=not progress, mininterval=1):
        _, b_pmf, b_delta = estimate([rng.integers(0, n, n) for n in n_k], f_k)
        boot_pmf.append(b_pmf - b_pmf[reference_bin])
        boot_delta.append(b_delta)
    boot_pmf, boot_delta = np.array(boot_pmf), np.array(boot_delta)  # [B, bins], [B, R]
    with warnings.catch_warnings():  # bins or regions empty in < 2 replicates: NaN error
        warnings.simplefilter("ignore", RuntimeWarning)
        pmf_error = np.nanstd(boot_pmf, axis=0, ddof=1)
        delta_error = np.nanstd(boot_delta, axis=0, ddof=1)
    delta_f = {name: Estimate(float(v), float(e))
               for name, v, e in zip(regions, deltas, delta_error)}
    return FreeEnergyResult(edges, profile, pmf_error, delta_f, f_k, g, n_k)
