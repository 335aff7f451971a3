"""Energy-based diffusion on a molecule: one model drawn from i.i.d. and simulated, against
the reference physics, plus the hybrid start from one-step drift samples.

    python -m benchmarks.energy_diffusion_molecules --quick          # 1 seed, shorter runs
    python -m benchmarks.energy_diffusion_molecules --seeds 0 1 2    # the full table

Data: the bundled ethanol (GFN2-xTB, 500 K). Models train on reference run 0 (unbiased, 5,000
frames) and are scored against run 1, so every error left is the model's:
- i.i.d.: 1,000 reverse-SDE samples: TVD of pooled pair distances, bond stability, W1 of
  GFN2-xTB energies (kT).
- simulation: ``--replicas`` BAOAB replicas on the model's force kT·s(x, t_min) (the data's
  Langevin protocol: 0.5 fs, friction 0.01/fs), started from training frames, ``--sim-steps``
  steps, a frame every ``--record-every``; the same metrics on the pooled frames after the first
  10 % (burn-in), the worst bond stability over recorded times and whether any replica diverged.
- time per independent sample: i.i.d. wall time per sample; simulation wall time per step and
  replica × the integrated autocorrelation time of the GFN2 energy (in steps); GFN2-xTB MD's
  own from a short ASE Langevin run of the same protocol; the drift sampler's per sample.
- hybrid: the same simulation started from one-step drift samples (a drift sampler trained on
  run 0) and, for contrast, from one training frame copied to every replica: TVD of the replica
  ensemble against run 1 at each recorded time (the warm start needs no burn-in when that curve
  is flat from its first point).

Methods: plain denoising score matching ('diffusion') and experts (0.1, 0.6) with the
Fokker–Planck regulariser on the smallest-t expert ('both'). Each (method, seed) result is stored
in ``--results`` as soon as it is computed, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ase_drift.datasets import load, reference_runs
from ase_drift.diffusion import EnergyDiffusion
from ase_drift.diffusion.energy import BEFORE_E8, EnergyDiffusionConfig
from ase_drift.forces import LabelingError
from ase_drift.metrics import evaluate, noise_floor
from ase_drift.metrics.distances import BOND_TOLERANCE, covalent_bonds, pair_distances
from ase_drift.metrics.timeseries import integrated_autocorrelation_time
from ase_drift.simulate import simulate
from ase_drift.training import TrainConfig, Trainer
from benchmarks.common import PAPER_DISTANCES, gfn2_energies, store_results, write_section

DATASET = "ethanol-gfn2-500K"
TIMESTEP_FS, FRICTION_PER_FS = 0.5, 0.01
METHODS = {
    "diffusion": {},
    "both": {"experts": (0.1, 0.6), "fokker_planck": 5e-4},
}


def intact(positions: np.ndarray, target) -> np.ndarray:
    """Frames [n] whose every covalent bond lies within 0.5 Å of the target's mean length (the
    frames bond stability counts): the ones worth a GFN2-xTB energy."""
    bonds = covalent_bonds(target.numbers, target.positions)
    mean = pair_distances(target.positions)[:, bonds].mean(axis=0)
    deviation = np.abs(pair_distances(positions)[:, bonds] - mean)  # [n, bonds]
    return (deviation <= BOND_TOLERANCE).all(axis=1)


def gfn2_or_nan(positions: np.ndarray, numbers) -> np.ndarray:
    """GFN2-xTB energies (eV) of ``positions`` [n, A, 3], NaN where xTB fails, so one bad
    frame does not void the batch."""
    try:
        return gfn2_energies(positions, numbers)
    except LabelingError:
        return np.array([_gfn2_or_nan_one(p, numbers) for p in positions])


def _gfn2_or_nan_one(positions: np.ndarray, numbers) -> float:
    try:
        return float(gfn2_energies(positions[None], numbers)[0])
    except LabelingError:
        return np.nan


def scores(positions: np.ndarray, target) -> dict:
    """TVD and bond stability of ``positions`` [n, A, 3] against ``target``; the energy W1 (kT)
    over the intact frames (bond stability's) that xTB converges on, and the fraction of intact
    frames xTB fails on; non-finite samples (a diverged sampler) are counted and left out."""
    finite = np.isfinite(positions).all(axis=(1, 2))
    positions = positions[finite]
    report = evaluate(positions, target.positions, target.numbers)
    kept = positions[intact(positions, target)]
    energies = gfn2_or_nan(kept, target.numbers)
    ok = np.isfinite(energies)
    w1 = evaluate(kept[ok], target.positions, target.numbers, energies=energies[ok],
                  reference_energies=target.energies,
                  temperature_K=target.temperature_K).energy_w1 if ok.any() else None
    return {"tvd": report.tvd, "bond_stability": report.bond_stability, "energy_w1": w1,
            "xtb_failed": float(1 - ok.mean()) if len(ok) else None,
            "non_finite": float(1 - finite.mean())}


def run_method(method: str, seed: int, args, run0, run1, drift_starts: np.ndarray) -> dict:
    start = time.perf_counter()
    model = EnergyDiffusion.train(run0, steps=args.steps, seed=seed, **METHODS[method],
                                  config=model_config(args))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    iid = model.sample_positions(1000, seed=seed)
    iid_s = (time.perf_counter() - start) / 1000
    picks = np.random.default_rng(seed).choice(len(run0), args.replicas, replace=False)
    thin = max(1, args.score_every // args.record_every)  # frames between scored frames
    sim = {}
    for name, starts in (("training frames", run0.positions[picks]),
                         ("drift samples", drift_starts[: args.replicas]),
                         ("one frame", np.repeat(run0.positions[picks[:1]], args.replicas, 0))):
        start = time.perf_counter()
        frames = simulate(model, model.numbers, starts, model.temperature_K, args.sim_steps,
                          timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
                          record_every=args.record_every, seed=seed)  # [T, R, A, 3]
        wall = time.perf_counter() - start
        finite = bool(np.isfinite(frames).all())
        scored = frames[thin - 1::thin]  # [T / thin, R, A, 3]
        # one report per scored time (the ensemble of replicas): the TVD curve and bond stability
        reports = [evaluate(f, run1.positions, run1.numbers) for f in scored] if finite else None
        entry = {"wall_s": wall, "finite": finite,
                 "tvd_curve": [r.tvd for r in reports] if finite else None}
        if name == "training frames" and finite:
            kept = scored[len(scored) // 10:]  # after 10 % burn-in
            entry.update(scores(kept.reshape(-1, *kept.shape[2:]), run1))
            entry["worst_bond_stability"] = min(r.bond_stability for r in reports)
            # τ of the potential energy the dynamics runs on (the model's), per replica
            tail = frames[len(frames) // 10:]  # [T', R, A, 3]
            energies = model.compute(model.numbers, tail.reshape(-1, *tail.shape[2:])).energies
            energies = energies.reshape(tail.shape[:2])  # [T', R]
            taus = [integrated_autocorrelation_time(energies[:, r]) for r in range(args.replicas)]
            entry["tau_steps"] = float(np.median(taus)) * args.record_every
            entry["s_per_step_replica"] = wall / (args.sim_steps * args.replicas)
        sim[name] = entry
    return {"train_s": train_s, "iid_s_per_sample": iid_s, "iid": scores(iid, run1), "sim": sim}


def gfn2_md_cost(run0, steps: int, seed: int) -> dict:
    """Wall time per step and energy autocorrelation time (steps) of GFN2-xTB Langevin MD."""
    from ase.md.langevin import Langevin
    from tblite.ase import TBLite

    from ase_drift import units

    atoms = run0[:1].to_atoms()[0]
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    dyn = Langevin(atoms, timestep=float(units.fs_to_ase_time(TIMESTEP_FS)),
                   temperature_K=run0.temperature_K,
                   friction=FRICTION_PER_FS / float(units.fs_to_ase_time(1.0)), fixcm=False,
                   rng=np.random.default_rng(seed))
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_potential_energy()), interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    return {"s_per_step": wall / steps,
            "tau_steps": integrated_autocorrelation_time(np.asarray(energies[steps // 10:]))}


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{np.mean(values):.3g} ± {np.std(values):.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def tables(groups: dict, args, floor, replica_floor, md: dict, drift: dict) -> str:
    lines = [(f"Noise floor at 1,000 frames: TVD {floor.mean.tvd:.4f}, energy W1 "
              f"{floor.mean.energy_w1:.2f} kT. Mean ± std over seeds. Energy W1 over the intact "
              "frames (every bond within 0.5 Å, as bond stability counts) that xTB converges "
              "on; xTB failed: the fraction of intact frames it does not converge on."), "",
             ("| method | seeds | i.i.d. TVD | i.i.d. E W1 (kT) | i.i.d. bond stab. | sim TVD | "
              "sim E W1 (kT) | sim/i.i.d. TVD | worst bond stab. | diverged | xTB failed "
              "(i.i.d., sim) | train (min) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, runs in groups.items():
        sims = [r["sim"]["training frames"] for r in runs]
        ok = [s for s in sims if s["finite"]]
        lines.append(
            f"| {method} | {len(runs)} | {_mean_std([r['iid']['tvd'] for r in runs])} | "
            f"{_mean_std([r['iid']['energy_w1'] for r in runs])} | "
            f"{_mean_std([r['iid']['bond_stability'] for r in runs])} | "
            f"{_mean_std([s['tvd'] for s in ok])} | {_mean_std([s['energy_w1'] for s in ok])} | "
            f"{_mean_std([s['tvd'] / r['iid']['tvd'] for s, r in zip(sims, runs, strict=True) if s['finite']])} | "
            f"{_mean_std([s['worst_bond_stability'] for s in ok])} | "
            f"{len(sims) - len(ok)} of {len(sims)} sims; i.i.d. non-finite "
            f"{_mean_std([r['iid'].get('non_finite') for r in runs])} | "
            f"{_mean_std([r['iid']['xtb_failed'] for r in runs])}, "
            f"{_mean_std([s['xtb_failed'] for s in ok])} | "
            f"{_mean_std([r['train_s'] / 60 for r in runs])} |")
    lines += ["", ("Time per independent sample (s; simulation: s per step and replica × τ, "
                   "the integrated autocorrelation time of the potential energy the dynamics "
                   "runs on, in steps):"), "",
              "| sampler | s per sample | τ (steps) |", "|---|---|---|"]
    for method, runs in groups.items():
        ok = [r["sim"]["training frames"] for r in runs if r["sim"]["training frames"]["finite"]]
        if runs:
            lines.append(f"| {method}, i.i.d. (reverse SDE) | "
                         f"{_mean_std([r['iid_s_per_sample'] for r in runs])} | — |")
        if ok:
            lines.append(f"| {method}, simulation ({args.replicas} replicas, batched) | "
                         f"{_mean_std([s['s_per_step_replica'] * s['tau_steps'] for s in ok])} | "
                         f"{_mean_std([s['tau_steps'] for s in ok])} |")
    lines.append(f"| GFN2-xTB MD (ASE Langevin, one replica) | "
                 f"{md['s_per_step'] * md['tau_steps']:.3g} | {md['tau_steps']:.3g} |")
    lines.append(f"| drift, one step (fp32) | {drift['s_per_sample']:.3g} | — |")
    lines += ["", (f"Hybrid: TVD of the {args.replicas}-replica ensemble against run 1 over "
                   f"time (scored every {args.score_every * TIMESTEP_FS:g} fs), first seed of "
                   "each method:"), "", "| method | start | first | 25 % | 50 % | end |",
              "|---|---|---|---|---|---|"]
    for method, runs in groups.items():
        for start, entry in runs[0]["sim"].items():
            curve = entry["tvd_curve"]
            if curve is None:
                lines.append(f"| {method} | {start} | diverged | | | |")
                continue
            picks = [curve[0], curve[len(curve) // 4], curve[len(curve) // 2], curve[-1]]
            lines.append(f"| {method} | {start} | " + " | ".join(f"{v:.3f}" for v in picks)
                         + " |")
    lines.append(f"\nNoise floor of an ensemble of {args.replicas} reference frames: TVD "
                 f"{replica_floor.mean.tvd:.3f} ± {replica_floor.std.tvd:.3f}. Drift starts: "
                 f"one-step samples of a drift sampler trained on run 0 "
                 f"({drift['steps']:,} steps), their own TVD {drift['tvd']:.3f}.")
    return "\n".join(lines)


def run_arguments(doc: str, quick_help: str, score_help: str) -> argparse.ArgumentParser:
    """The command line shared by the energy-diffusion benchmarks (seeds, training and
    simulation lengths, methods, results file)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--sim-steps", type=int, default=None)
    parser.add_argument("--record-every", type=int, default=10,
                        help="steps between recorded frames")
    parser.add_argument("--score-every", type=int, default=100, help=score_help)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--before-e8", action="store_true",
                        help="train and sample as before (E8) existed: no bonded prior, steps "
                        "uniform in t")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--results", type=Path, default=None)
    return parser


def prior_tag(args) -> str:
    """The stored results' key suffix for the bonded-prior setting (rows stored before (E8)
    existed carry none: they were trained without it)."""
    return "" if args.before_e8 else "|bonded-prior"


def method_groups(stored: dict, tag: str) -> dict[str, list[dict]]:
    """The stored runs of each method under ``tag``; when ``tag`` is one with the bonded prior,
    also those stored before (E8) under the same settings, as "METHOD (before E8)"."""
    tags = {"": tag}
    if tag.endswith("|bonded-prior"):
        tags[" (before E8)"] = tag.removesuffix("|bonded-prior")
    groups = {}
    for suffix, wanted in tags.items():
        for method in METHODS:
            runs = [v for k, v in stored.items()
                    if k.startswith(f"{method}|") and k.split("|", 2)[2] == wanted]
            if runs:
                groups[method + suffix] = runs
    return groups


def model_config(args, **options) -> EnergyDiffusionConfig:
    """The benchmark's model settings: the defaults, or those before (E8) with ``--before-e8``."""
    return EnergyDiffusionConfig(**options, **(BEFORE_E8 if args.before_e8 else {}))


def prior_option(args) -> str:
    """The command-line switch to print beside a table."""
    return " --before-e8" if args.before_e8 else ""


def main():
    parser = run_arguments(__doc__, "1 seed, 4,000 training steps, 50 replicas × 4,000 steps",
                           "steps between frames scored against the reference (GFN2-xTB)")
    parser.add_argument("--drift-steps", type=int, default=4000,
                        help="training steps of the drift sampler whose samples start the hybrid")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.steps = args.steps or (4000 if quick else 20000)
    args.replicas = args.replicas or (50 if quick else 100)
    args.sim_steps = args.sim_steps or (4000 if quick else 10000)
    tag = f"steps={args.steps}|replicas={args.replicas}|sim={args.sim_steps}{prior_tag(args)}"
    results = args.results or Path(f"benchmarks/results/energy_diffusion_ethanol"
                                   f"{'-quick' if quick else ''}.json")
    stored = json.loads(results.read_text()) if results.exists() else {}

    def save():
        store_results(results, stored)

    _, reference = load(DATASET)
    runs = reference_runs(DATASET)
    run0, run1 = reference[runs == 0], reference[runs == 1]
    drift_steps = args.drift_steps
    if "drift" not in stored:
        drift = Trainer(run0, TrainConfig(field="drift", steps=drift_steps, seed=0,
                                          **PAPER_DISTANCES)).run()
        samples = drift.sample_positions(max(args.replicas, 1000), seed=1)
        start = time.perf_counter()
        drift.sample_positions(10000, seed=2)
        stored["drift"] = {"steps": drift_steps, "tvd": evaluate(samples, run1.positions,
                                                                  run1.numbers).tvd,
                           "s_per_sample": (time.perf_counter() - start) / 10000,
                           "starts": samples[:args.replicas].tolist()}
        save()
    if "gfn2_md" not in stored:
        stored["gfn2_md"] = gfn2_md_cost(run0, 4000, seed=0)
        save()
    drift_starts = np.asarray(stored["drift"]["starts"])
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}|seed={seed}|{tag}"
            if key in stored:
                continue
            stored[key] = run_method(method, seed, args, run0, run1, drift_starts)
            save()
    floor = noise_floor(reference.positions, reference.numbers, 1000, groups=runs,
                        reference_energies=reference.energies,
                        temperature_K=reference.temperature_K)
    replica_floor = noise_floor(reference.positions, reference.numbers, args.replicas,
                                groups=runs)
    text = tables(method_groups(stored, tag), args, floor, replica_floor, stored["gfn2_md"],
                  stored["drift"])
    print(text)
    if not args.no_docs:
        command = ("python -m benchmarks.energy_diffusion_molecules"
                   + (" --quick" if quick else f" --seeds {' '.join(map(str, args.seeds))}")
                   + prior_option(args))
        write_section("energy-diffusion.md", "ethanol-quick" if quick else "ethanol",
                      f"`{command}` ({args.steps:,} training steps, {args.replicas} replicas × "
                      f"{args.sim_steps:,} steps of {TIMESTEP_FS} fs)\n\n{text}")


if __name__ == "__main__":
    main()
