"""Which parts of (E8) help: energy diffusion on the 5-bead alanine dipeptide with each of the
bonded prior, the dihedral features and the log-SNR sampler grid switched off in turn.

    python -m benchmarks.energy_diffusion_ablation [--steps 5000] [--seeds 0]

Trained on run 0 of the bundled data, scored against run 1 (as
:mod:`benchmarks.energy_diffusion_alanine`): Ramachandran JS of 3,000 i.i.d. samples and of
100 replicas × 4,000 steps of Langevin dynamics on the model (the data's protocol, a frame
every 20 steps after the first 400), and the i.i.d. samples' bond stability. Each result is
stored in ``--results`` as soon as it is computed, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ase_drift.datasets import load, reference_runs
from ase_drift.diffusion import EnergyDiffusion
from ase_drift.diffusion.energy import BEFORE_E8, EnergyDiffusionConfig
from ase_drift.simulate import simulate
from benchmarks.common import ROOT, write_json, write_section
from benchmarks.energy_diffusion_alanine import (
    BATCH_SIZE,
    CHAIN_VOLUMES,
    DATASET,
    FRICTION_PER_FS,
    TIMESTEP_FS,
    coarse_grain,
    resolution,
    scores,
)
from benchmarks.energy_diffusion_molecules import _mean_std

VARIANTS = {
    "defaults (E8: bonded prior, log-SNR grid)": {},
    "+ dihedral features": {"dihedrals": True},
    "− bonded prior": {"bonded_prior": False},
    "− log-SNR grid (uniform in t)": {"sampler_grid": "uniform"},
    "before E8 (neither)": BEFORE_E8,
}
N_IID, REPLICAS, SIM_STEPS, RECORD_EVERY = 3000, 100, 4000, 20


def run_variant(options: dict, steps: int, seed: int, run0, run1, backbone) -> dict:
    model = EnergyDiffusion.train(run0, steps=steps, seed=seed, quadruples=CHAIN_VOLUMES,
                                  config=EnergyDiffusionConfig(batch_size=BATCH_SIZE, **options),
                                  progress=False)
    iid = scores(model.sample_positions(N_IID, seed=seed), run1, backbone, len(run0))
    picks = np.random.default_rng(seed).choice(len(run0), REPLICAS, replace=False)
    frames = simulate(model, model.numbers, run0.positions[picks], model.temperature_K,
                      SIM_STEPS, timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
                      record_every=RECORD_EVERY, seed=seed, progress=False)
    kept = frames[len(frames) // 10:].reshape(-1, *frames.shape[2:])
    sim = scores(kept, run1, backbone, len(run0))
    return {"iid_js": iid["js"], "sim_js": sim["js"], "iid_bond_stability": iid["bond_stability"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "energy_diffusion_ablation.json")
    args = parser.parse_args()
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    _, reference = load(DATASET)
    level = resolution(False, len(reference.numbers))
    runs = reference_runs(DATASET)
    run0, run1 = (coarse_grain(reference[runs == k], level.atoms) for k in (0, 1))
    for seed in args.seeds:
        for name, options in VARIANTS.items():
            key = f"{name}|seed={seed}|steps={args.steps}"
            if key not in stored:
                stored[key] = run_variant(options, args.steps, seed, run0, run1, level.backbone)
                write_json(args.results, stored)
    lines = [(f"{args.steps:,} training steps of batch {BATCH_SIZE}, seeds "
              f"{', '.join(map(str, args.seeds))}; mean ± std over seeds."), "",
             "| variant | i.i.d. JS | simulation JS | i.i.d. bond stability |", "|---|---|---|---|"]
    for name in VARIANTS:
        rows = [stored[f"{name}|seed={s}|steps={args.steps}"] for s in args.seeds]
        lines.append(f"| {name} | {_mean_std([r['iid_js'] for r in rows])} | "
                     f"{_mean_std([r['sim_js'] for r in rows])} | "
                     f"{_mean_std([r['iid_bond_stability'] for r in rows])} |")
    text = "\n".join(lines)
    print(text)
    command = ("python -m benchmarks.energy_diffusion_ablation"
               + (f" --steps {args.steps}" if args.steps != 5000 else "")
               + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else ""))
    write_section("energy-diffusion.md", "ablation-e8", f"`{command}`: {text}")


if __name__ == "__main__":
    main()
