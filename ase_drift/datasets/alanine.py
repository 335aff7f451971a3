"""Regenerate the alanine dipeptide data set (amber99sb-ildn, vacuum, 300 K) from a seed.

Physics: OpenMM, ``amber99sbildn.xml``, no cutoff, no constraints, LangevinMiddle integrator at
300 K with 1 fs steps and 1 ps⁻¹ friction, Reference platform (the fastest for 22 atoms). The
starting structure is openmmtools' 22-atom alanine dipeptide (ACE-ALA-NME), energy-minimised.

- ``train``: a biased set, the first ``train_ps`` of a run from the minimised structure, every
  0.5 ps: it stays near the starting (φ < 0) basin.
- ``reference``: ``n_runs`` independent runs of ``run_ns`` each after 100 ps equilibration, every
  1 ps, with energies and forces (the full set is ≥ 1 µs: 8 × 125 ns).

Stored in ASE units (Å, eV, eV/Å) as float32 arrays plus the PDB text of the topology.
``python -m ase_drift.datasets.alanine -o ala2.npz [--run-ns 125 --runs 8]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from dataclasses import dataclass, replace

import numpy as np

from .. import units


@dataclass(frozen=True)
class AlanineProtocol:
    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    friction_per_ps: float = 1.0
    train_ps: float = 1000.0
    train_stride_ps: float = 0.5
    n_runs: int = 8
    run_ns: float = 125.0
    equilibration_ps: float = 100.0
    stride_ps: float = 1.0
    seed: int = 2026


def starting_structure():
    """(topology, positions in nm) of openmmtools' alanine dipeptide."""
    from importlib import resources

    from openmm import app

    path = resources.files("openmmtools") / "data" / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb"
    pdb = app.PDBFile(str(path))
    return pdb.topology, pdb.positions


def make_system(topology):
    """amber99sb-ildn in vacuum: no cutoff, no constraints."""
    from openmm import app

    forcefield = app.ForceField("amber99sbildn.xml")
    return forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None,
                                   rigidWater=False)


def _simulate(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Langevin run: (positions Å, forces eV/Å, energies eV) every stride."""
    protocol, start_nm, skip_steps, n_frames, stride_steps, seed, desc, position = args
    import openmm
    import openmm.unit as u
    from tqdm.auto import tqdm

    topology, _ = starting_structure()
    system = make_system(topology)
    integrator = openmm.LangevinMiddleIntegrator(
        protocol.temperature_K * u.kelvin, protocol.friction_per_ps / u.picosecond,
        protocol.timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(start_nm)
    context.setVelocitiesToTemperature(protocol.temperature_K * u.kelvin, seed)
    n_atoms = system.getNumParticles()
    positions = np.empty((n_frames, n_atoms, 3), dtype=np.float32)
    forces = np.empty_like(positions)
    energies = np.empty(n_frames)
    with tqdm(total=skip_steps + n_frames * stride_steps, desc=desc, position=position,
              unit="step", unit_scale=True, mininterval=2) as bar:
        if skip_steps:
            integrator.step(skip_steps)
            bar.update(skip_steps)
        for k in range(n_frames):
            integrator.step(stride_steps)
            bar.update(stride_steps)
            state = context.getState(getPositions=True, getForces=True, getEnergy=True)
            positions[k] = units.nm_to_angstrom(state.getPositions(asNumpy=True)._value)
            forces[k] = units.kj_per_mol_nm_to_ev_per_angstrom(state.getForces(asNumpy=True)._value)
            energies[k] = units.kj_per_mol_to_ev(state.getPotentialEnergy()._value)
    return positions, forces, energies


def run_from(start_angstrom: np.ndarray, ps: float, seed: int,
             protocol: AlanineProtocol = AlanineProtocol(), desc: str = "alanine MD"):
    """A plain (unbiased) Langevin run of ``ps`` picoseconds from ``start_angstrom`` ``[A, 3]``
    (the topology's atom order), frames every ``protocol.train_stride_ps`` as the biased
    training run's: ``(positions [N, A, 3] Å, forces eV/Å, energies [N] eV)``. A run started in
    another basin gives the training data a chemist would collect from several starting
    structures."""
    start = np.asarray(start_angstrom, dtype=float)
    n_atoms = starting_structure()[0].getNumAtoms()
    if start.shape != (n_atoms, 3) or not np.isfinite(start).all():
        raise ValueError(f"start_angstrom must be finite positions [{n_atoms}, 3] of alanine "
                         f"dipeptide, got shape {start.shape}")
    stride_steps = round(protocol.train_stride_ps * 1000 / protocol.timestep_fs)
    n_frames = round(ps / protocol.train_stride_ps)
    if n_frames < 1:
        raise ValueError(f"ps={ps} is shorter than one frame ({protocol.train_stride_ps} ps)")
    return _simulate((protocol, units.angstrom_to_nm(start), 0, n_frames, stride_steps, seed,
                      desc, 0))


def minimised_start():
    """(topology, minimised positions in nm)."""
    import openmm
    import openmm.unit as u

    topology, positions = starting_structure()
    context = openmm.Context(make_system(topology), openmm.VerletIntegrator(1 * u.femtosecond),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3)
    return topology, context.getState(getPositions=True).getPositions(asNumpy=True)._value


def pdb_text(topology, positions_nm) -> str:
    import io

    import openmm.unit as u
    from openmm import app

    buffer = io.StringIO()
    app.PDBFile.writeFile(topology, positions_nm * u.nanometer, buffer)
    return buffer.getvalue()


def generate(protocol: AlanineProtocol = AlanineProtocol(), processes: int | None = None) -> dict:
    """Run the biased and reference simulations; return the npz payload."""
    topology, start = minimised_start()
    per_fs = 1.0 / protocol.timestep_fs
    train_job = (protocol, start, 0, round(protocol.train_ps / protocol.train_stride_ps),
                 round(protocol.train_stride_ps * 1000 * per_fs), protocol.seed,
                 "biased training run", 0)
    run_jobs = [(protocol, start, round(protocol.equilibration_ps * 1000 * per_fs),
                 round(protocol.run_ns * 1000 / protocol.stride_ps),
                 round(protocol.stride_ps * 1000 * per_fs), protocol.seed + 1 + run,
                 f"reference run {run}", run + 1) for run in range(protocol.n_runs)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes or os.cpu_count()) as pool:
        results = pool.map(_simulate, [train_job] + run_jobs)
    train, runs = results[0], results[1:]
    ref = [np.concatenate(parts) for parts in zip(*runs)]
    numbers = [atom.element.atomic_number for atom in topology.atoms()]
    return {
        "z": np.array(numbers),
        "pdb": np.array(pdb_text(topology, start)),
        "train_R": train[0], "train_F": train[1], "train_E": train[2],
        "reference_R": ref[0], "reference_F": ref[1], "reference_E": ref[2],
        "reference_run": np.repeat(np.arange(len(runs)), len(runs[0][2])),
        "temperature_K": np.float64(protocol.temperature_K),
        "protocol": np.array(repr(protocol)),
    }


def subset(payload: dict, n_reference: int, with_reference_forces: bool = False) -> dict:
    """A small copy for bundling: every k-th reference frame, reference forces optional."""
    stride = max(1, len(payload["reference_E"]) // n_reference)
    small = {k: v for k, v in payload.items() if not k.startswith("reference_")}
    for key in ("reference_R", "reference_E", "reference_run") + (
            ("reference_F",) if with_reference_forces else ()):
        small[key] = payload[key][::stride][:n_reference]
    return small


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--runs", type=int, default=AlanineProtocol.n_runs)
    parser.add_argument("--run-ns", type=float, default=AlanineProtocol.run_ns)
    parser.add_argument("--seed", type=int, default=AlanineProtocol.seed)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--small", type=int, metavar="N",
                        help="also write OUTPUT with '-small' holding N reference frames")
    args = parser.parse_args(argv)
    protocol = replace(AlanineProtocol(), n_runs=args.runs, run_ns=args.run_ns, seed=args.seed)
    payload = generate(protocol, args.processes)
    _save(args.output, payload)
    if args.small:
        _save(args.output.replace(".npz", "-small.npz"), subset(payload, args.small))


def _save(path: str, payload: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **payload)
    os.replace(tmp, path)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
