"""GFN2-xTB Langevin data sets for any small molecule (the protocol of the bundled ethanol set).

Physics: GFN2-xTB through tblite's ASE calculator, Langevin dynamics with a 0.5 fs step and a weak
friction (0.002 fs⁻¹, a 500 fs thermostat time), ``fixcm=False``.

- ``train``: the first ``n_train`` consecutive frames (every 0.5 fs step) of a run started at the
  relaxed geometry with Maxwell–Boltzmann velocities: MD17's biased protocol. The run starts with
  no potential energy, so the early frames are colder and less spread than equilibrium.
- ``reference``: several independent runs, each equilibrated and then sampled every
  ``reference_stride_fs``; frames are concatenated run after run (``reference_run`` tells which).

Everything is stored in ASE units (Å, eV, eV/Å) as float64 energies and float32 arrays.

    python -m ase_drift.datasets.molecule trans-butane --production-ps 60 \
        --no-reference-forces -o butane-gfn2-500K.npz     # the bundled butane set, ~1 core-hour

takes any name of ASE's g2 collection (``ase.build.molecule``) or a structure file ase.io reads.
One process per reference run, ``OMP_NUM_THREADS=1``, so the result is deterministic.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from dataclasses import dataclass, replace

import numpy as np

from ..units import fs_to_ase_time


@dataclass(frozen=True)
class MDProtocol:
    """Settings of the generating runs (ASE units: K, fs)."""

    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.002
    n_train: int = 3000
    n_reference_runs: int = 2
    equilibration_ps: float = 10.0
    production_ps: float = 100.0
    reference_stride_fs: float = 20.0
    seed: int = 2026


def gfn2():
    """tblite's GFN2-xTB ASE calculator, silent."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def relaxed(atoms, fmax: float = 1e-4):
    """A copy of ``atoms`` relaxed with GFN2-xTB (BFGS), without a calculator."""
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = gfn2()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=500)
    atoms.calc = None
    return atoms


def langevin_frames(atoms, protocol: MDProtocol, n_skip_steps: int, n_frames: int,
                    stride_steps: int, seed: int, desc: str, position: int = 0):
    """Run Langevin MD from ``atoms``; return (positions, forces, energies) of ``n_frames``
    frames taken every ``stride_steps`` after ``n_skip_steps`` steps."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tqdm.auto import tqdm

    atoms = atoms.copy()
    atoms.calc = gfn2()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=protocol.temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep=float(fs_to_ase_time(protocol.timestep_fs)),
                   temperature_K=protocol.temperature_K,
                   friction=protocol.friction_per_fs / float(fs_to_ase_time(1.0)), fixcm=False,
                   rng=rng)
    positions = np.empty((n_frames, len(atoms), 3))
    forces = np.empty_like(positions)
    energies = np.empty(n_frames)
    total = n_skip_steps + (n_frames - 1) * stride_steps
    with tqdm(total=total, desc=desc, position=position, unit="step", mininterval=2) as bar:
        if n_skip_steps:
            dyn.run(n_skip_steps)
            bar.update(n_skip_steps)
        for k in range(n_frames):
            if k:
                dyn.run(stride_steps)
                bar.update(stride_steps)
            positions[k] = atoms.positions
            forces[k] = atoms.get_forces()  # cached from the last MD step
            energies[k] = atoms.get_potential_energy()
    return positions, forces, energies


def _reference_run(args):
    atoms, protocol, run = args
    steps_per_fs = 1.0 / protocol.timestep_fs
    stride = round(protocol.reference_stride_fs * steps_per_fs)
    n_frames = round(protocol.production_ps * 1000 / protocol.reference_stride_fs)
    return langevin_frames(atoms, protocol, round(protocol.equilibration_ps * 1000 * steps_per_fs),
                           n_frames, stride, seed=protocol.seed + 1 + run,
                           desc=f"reference run {run}", position=run)


def generate(atoms, protocol: MDProtocol = MDProtocol(), processes: int = 2) -> dict:
    """Run the biased and the reference trajectories from relaxed ``atoms``; the npz payload."""
    train = langevin_frames(atoms, protocol, 0, protocol.n_train, 1, seed=protocol.seed,
                            desc="biased training run")
    ctx = multiprocessing.get_context("spawn")
    jobs = [(atoms, protocol, run) for run in range(protocol.n_reference_runs)]
    with ctx.Pool(processes) as pool:
        runs = pool.map(_reference_run, jobs)
    ref = [np.concatenate(parts) for parts in zip(*runs)]
    return {
        "z": atoms.numbers,
        "relaxed_R": atoms.positions,
        "train_R": train[0].astype(np.float32),
        "train_F": train[1].astype(np.float32),
        "train_E": train[2],
        "reference_R": ref[0].astype(np.float32),
        "reference_F": ref[1].astype(np.float32),
        "reference_E": ref[2],
        "reference_run": np.repeat(np.arange(len(runs)), len(runs[0][2])),
        "temperature_K": np.float64(protocol.temperature_K),
        "reference_stride_fs": np.float64(protocol.reference_stride_fs),
        "protocol": np.array(repr(protocol)),
    }


def save(payload: dict, output: str) -> None:
    """Write ``payload`` to ``output`` atomically (a half-written file never replaces a good one)."""
    tmp = output + ".tmp.npz"
    np.savez_compressed(tmp, **payload)
    os.replace(tmp, output)


def structure(spec: str):
    """An ``ase.build.molecule`` name (g2 collection) or a structure file."""
    from ase.build import molecule
    from ase.collections import g2

    if spec in g2.names:
        return molecule(spec)
    if os.path.exists(spec):
        from ase.io import read

        return read(spec)
    raise ValueError(f"{spec!r} is neither a molecule of ASE's g2 collection nor a file")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecule", help="g2 name (e.g. trans-butane) or structure file")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--temperature", type=float, default=MDProtocol.temperature_K)
    parser.add_argument("--production-ps", type=float, default=MDProtocol.production_ps)
    parser.add_argument("--seed", type=int, default=MDProtocol.seed)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-reference-forces", action="store_true",
                        help="store the reference's positions and energies only (a third "
                             "smaller: how the bundled butane set is stored)")
    args = parser.parse_args(argv)
    protocol = replace(MDProtocol(), temperature_K=args.temperature,
                       production_ps=args.production_ps, seed=args.seed)
    payload = generate(relaxed(structure(args.molecule)), protocol, processes=args.processes)
    if args.no_reference_forces:
        del payload["reference_F"]
    save(payload, args.output)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
