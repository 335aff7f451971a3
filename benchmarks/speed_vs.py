"""One-step drift sampling against DSM diffusion and GFN2-xTB molecular dynamics, on ethanol.

    python -m benchmarks.speed_vs            # full: DSM sampled with all 2,000 evaluations
    python -m benchmarks.speed_vs --quick    # DSM timed over 100 evaluations, scaled linearly

Everything is measured in this one run on this machine (2 CPU threads, fp32):

- wall time per 1,000 samples of the drift sampler (one network evaluation each) and of the DSM
  predictor–corrector sampler (2 evaluations per noise level; its cost is linear in the number of
  evaluations, so ``--quick`` times a few levels and scales them — stated in the table);
- cost per *independent* Boltzmann sample of Langevin MD with the reference physics (GFN2-xTB via
  tblite's ASE calculator, the data set's 500 K protocol): MD steps/s times the integrated
  autocorrelation time of the slowest observable (every pair distance and the cos/sin of every
  heavy-atom-anchored torsion) in the bundled reference runs;
- training time of each method (steps/s measured here, times the step counts of
  ``benchmarks/ethanol.py``), and the number of independent samples after which training the
  drift sampler has paid for itself against MD.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from ase_drift.datasets import data_path, load, reference_runs
from ase_drift.datasets.ethanol import EthanolProtocol, relaxed_ethanol
from ase_drift.diffusion import DiffusionConfig, DiffusionSampler, train_diffusion
from ase_drift.metrics import integrated_autocorrelation_time, pair_distances
from ase_drift.training import TrainConfig, Trainer
from benchmarks.common import best_of, write_section

DATASET = "ethanol-gfn2-500K"
BENCHMARK_STEPS = {"drift": (4000, 20000), "DSM": (3000, 20000)}  # ethanol.py quick, full


def torsions(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Every X–A–B–Y torsion over the bonded heavy-atom pairs A–B (radians) ``[n, k]``.

    Bonds: ASE natural cutoffs × 1.2 (covalent radii) on the first frame; angles by mdtraj.
    """
    import mdtraj
    from ase import Atoms
    from ase.neighborlist import natural_cutoffs, neighbor_list

    first, second = neighbor_list("ij", Atoms(numbers, positions[0]),
                                  natural_cutoffs(Atoms(numbers, positions[0]), mult=1.2))
    neighbours = {a: set(second[first == a]) for a in range(len(numbers))}
    quadruples = [(x, a, b, y) for a in range(len(numbers)) for b in neighbours[a]
                  if numbers[a] > 1 and numbers[b] > 1 and a < b
                  for x in neighbours[a] - {b} for y in neighbours[b] - {a}]
    topology = mdtraj.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    for z in numbers:
        element = mdtraj.element.Element.getByAtomicNumber(int(z))
        topology.add_atom(element.symbol, element, residue)
    traj = mdtraj.Trajectory(positions / 10.0, topology)  # Å → nm for mdtraj
    return mdtraj.compute_dihedrals(traj, np.array(quadruples))


def slowest_autocorrelation_time(numbers, positions, runs) -> tuple[float, str]:
    """Largest integrated autocorrelation time (frames) over observables and runs."""
    best = (0.0, "")
    for run in np.unique(runs):
        frames = positions[runs == run]
        angles = torsions(numbers, frames)
        observables = {"pair distance": pair_distances(frames),
                       "torsion (cos, sin)": np.concatenate([np.cos(angles), np.sin(angles)], 1)}
        for name, series in observables.items():
            tau = integrated_autocorrelation_time(series)
            if tau > best[0]:
                best = (tau, name)
    return best


def md_steps_per_second(steps: int) -> float:
    """Langevin MD with GFN2-xTB on ethanol at the data set's protocol (ASE + tblite)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tblite.ase import TBLite

    protocol = EthanolProtocol()
    atoms = relaxed_ethanol()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=protocol.temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep=protocol.timestep_fs * units.fs,
                   temperature_K=protocol.temperature_K,
                   friction=protocol.friction_per_fs / units.fs, fixcm=False, rng=rng)
    dyn.run(50)  # warm-up
    return steps / best_of(lambda: dyn.run(steps), 1)


def training_rate(step, n_steps: int) -> float:
    """Steps/s of ``step()`` after a short warm-up."""
    for _ in range(5):
        step()
    return n_steps / best_of(lambda: [step() for _ in range(n_steps)], 1)


def dsm_training_rate(train_set, config: DiffusionConfig, n_steps: int):
    """(steps/s, sampler) of score matching: the time of 2n steps minus that of n steps, so the
    one-off setup (alignment, model construction) cancels."""
    times = {}
    for steps in (n_steps, 2 * n_steps):
        start = time.perf_counter()
        sampler = train_diffusion(train_set, replace(config, steps=steps), progress=False)
        times[steps] = time.perf_counter() - start
    return n_steps / (times[2 * n_steps] - times[n_steps]), sampler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--md-steps", type=int, default=2000)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_set, reference = load(DATASET)
    rows = []

    # --- drift sampler: training rate and one-step sampling
    trainer = Trainer(train_set, TrainConfig(field="fk", space="distance", steps=4000))
    drift_rate = training_rate(trainer.step, 100 if args.quick else 300)
    drift = trainer.sampler()
    drift_1000 = best_of(lambda: drift.sample_positions(1000, seed=0), 5)

    # --- DSM: training rate and predictor–corrector sampling (cost ∝ network evaluations)
    config = DiffusionConfig()
    dsm_rate, dsm = dsm_training_rate(train_set, config, 20 if args.quick else 50)
    levels = 50 if args.quick else config.sampler_steps
    timed = DiffusionSampler(dsm.model, dsm.numbers, dsm.scale,
                             replace(config, sampler_steps=levels), dsm.metadata)
    dsm_timed = best_of(lambda: timed.sample_positions(1000, seed=0), 1)
    dsm_1000 = dsm_timed * config.sampler_steps / levels
    how = "measured" if levels == config.sampler_steps else \
        f"{2 * levels} evaluations measured, ×{config.sampler_steps // levels}"
    rows += [
        ("drift sampler, 1,000 samples (s)", f"{drift_1000:.4f}", "1 network evaluation"),
        ("DSM sampler, 1,000 samples (s)", f"{dsm_1000:.1f}",
         f"{dsm.network_evaluations:,} evaluations ({how})"),
        ("**DSM / drift, time per sample**", f"**{dsm_1000 / drift_1000:,.0f}×**", "goal ≥ 1,000×"),
    ]

    # --- MD with the reference calculator, per independent sample
    tau_frames, observable = slowest_autocorrelation_time(
        reference.numbers, reference.positions, reference_runs(DATASET))
    with np.load(data_path(DATASET)) as npz:
        stride_fs = float(npz["reference_stride_fs"])
    tau_steps = tau_frames * stride_fs / EthanolProtocol().timestep_fs
    md_rate = md_steps_per_second(args.md_steps // (4 if args.quick else 1))
    md_per_sample = tau_steps / md_rate
    drift_per_sample = drift_1000 / 1000
    rows += [
        ("GFN2-xTB Langevin MD (steps/s)", f"{md_rate:,.0f}", "ASE Langevin + tblite, 500 K, 0.5 fs"),
        ("slowest τ_int in the reference runs",
         f"{tau_frames * stride_fs / 1000:.2f} ps = {tau_steps:,.0f} steps", observable),
        ("MD, per independent sample (s)", f"{md_per_sample:.2f}", "τ_int / (steps/s)"),
        ("drift, per independent sample (s)", f"{drift_per_sample:.1e}", "samples are i.i.d."),
        ("**MD / drift, per independent sample**",
         f"**{md_per_sample / drift_per_sample:,.0f}×**", "goal ≥ 10⁴×"),
    ]

    # --- training cost
    for name, rate in (("drift (FK, distance)", drift_rate), ("DSM", dsm_rate)):
        quick_steps, full_steps = BENCHMARK_STEPS[name.split()[0]]
        rows.append((f"training {name} (steps/s)", f"{rate:.1f}",
                     (f"{quick_steps:,} steps: {quick_steps / rate / 60:.1f} min; "
                      f"{full_steps:,} steps: {full_steps / rate / 60:.0f} min")))
    drift_train_s = BENCHMARK_STEPS["drift"][0] / drift_rate
    rows.append(("drift training pays for itself after",
                 f"{drift_train_s / (md_per_sample - drift_per_sample):,.0f} independent samples",
                 f"{BENCHMARK_STEPS['drift'][0]:,} steps of training vs MD"))

    header = (f"`python -m benchmarks.speed_vs{' --quick' if args.quick else ''}` (torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads, ethanol):")
    table = ["| quantity | value | how |", "|---|---:|---|"]
    text = "\n".join([header, ""] + table + ["| " + " | ".join(r) + " |" for r in rows])
    print(text)
    if not args.no_docs:
        write_section("benchmarks.md", "speed-vs-quick" if args.quick else "speed-vs", text)


if __name__ == "__main__":
    main()
