"""What FK in distance space does: the force form against the energy form, and the generator
choices that interact with them, over seeds and molecules.

    python -m benchmarks.fk_study --steps 6000 --seeds 0 1 2 --molecules ethanol butane.npz

First it decomposes the force-form alignment on the data (no training): for reference frames x
and training positives y_i, how much of the spread of a_i(x) = s_i·(y_i − x) over i is the
energy difference −ΔE_i/kT and how much the curvature remainder (−½(y_i − x)ᵀH(y_i − x)/kT on
a quadratic potential), and the Boltzmann exponent β/std_i(a_i) that standardisation leaves.

Each (molecule, variant, seed) result goes into ``--results`` as soon as it is computed, so an
interrupted run resumes. Prints, per molecule, TVD of pooled pair distances against the reference
and its ratio to the biased training set's own TVD (below 1: the sampler debiases), plus the W1 of
GFN2-xTB energies of 1,000 samples (kT), mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ase_drift.datasets import DATASETS, load, load_npz, reference_runs
from ase_drift.drift import force_alignment
from ase_drift.features import PairwiseDistances
from ase_drift.metrics import evaluate, noise_floor
from ase_drift.training import TrainConfig, Trainer, progress_hook
from benchmarks.common import PAPER_DISTANCES, gfn2_energies, write_json, write_section

# name → TrainConfig options (all in distance space).
VARIANTS = {
    "drift": {"field": "drift"},
    "drift, pair weights^0.5": {"field": "drift", "pair_scale_exponent": 0.5},
    "drift, pair weights^0.5, canonical rotors (the default)": {
        "field": "drift", "pair_scale_exponent": 0.5, "canonical_rotors": True},
    "FK energy form": {"field": "fk-energy"},
    "FK force form": {"field": "fk"},
    "FI+FK": {"field": "fi+fk"},  # FI's ω chosen from the data's ρ
    "FK force, plain MLP (no init, skip, warm-up; noise 3A)": {
        "field": "fk", "initialize_from_data": False, "noise_dim": "3A", "affine_skip": False,
        "warmup_steps": 0},
}


def molecule_data(spec: str):
    """'ethanol' (bundled), a data set name (e.g. butane-gfn2-500K, bundled)
    or an npz file written by ase_drift.datasets.molecule."""
    if spec == "ethanol":
        return load("ethanol-gfn2-500K")
    return load(spec) if spec in DATASETS else load_npz(spec)


def alignment_decomposition(train_set, reference, beta: float = 0.5, seed: int = 0) -> dict:
    """Spread over 512 positives of the force-form alignment for 256 reference frames x,
    split into its energy part and the remainder (mean over x)."""
    representation = PairwiseDistances(train_set.n_atoms)
    prepared = representation.prepare(train_set, train_set.temperature_K)
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:512]
    y, s = prepared.features[pick], prepared.scores[pick]
    energy = -prepared.reduced_energies[pick]  # −E_i/kT (its mean cancels below)
    frames = reference.positions[:: max(1, len(reference) // 256)][:256]
    frames = frames - frames.mean(axis=1, keepdims=True)
    x = representation.features(torch.as_tensor(frames / prepared.scale, dtype=torch.float32))
    align = force_alignment(x, y, s)  # [B, N]
    align = align - align.mean(-1, keepdim=True)
    energy = (energy - energy.mean())[None, :]
    cosine = (align * energy).sum(-1) / (align.norm(dim=-1) * energy.norm(dim=-1))
    spread = align.std(-1).mean().item()
    return {"std_a": spread, "std_energy": energy.std().item(),
            "std_remainder": (align - energy).std(-1).mean().item(),
            "correlation": cosine.mean().item(), "effective_exponent": beta / spread}


def run(train_set, reference, options: dict, seed: int, steps: int, desc: str) -> dict:
    options = {k: (3 * train_set.n_atoms if v == "3A" else v) for k, v in options.items()}
    start = time.perf_counter()
    trainer = Trainer(train_set, TrainConfig(space="distance", steps=steps, seed=seed,
                                             **{**PAPER_DISTANCES, **options}))
    trainer.attach(progress_hook(steps, desc=desc), 1)
    samples = trainer.run().sample_positions(1000, seed=seed)
    train_s = time.perf_counter() - start
    report = evaluate(samples, reference.positions, reference.numbers,
                      energies=gfn2_energies(samples, reference.numbers),
                      reference_energies=reference.energies,
                      temperature_K=reference.temperature_K)
    return {"tvd": report.tvd, "energy_w1": report.energy_w1, "train_s": train_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--docs", action="store_true",
                        help="write the tables into docs/benchmarks.md")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the stored results")
    parser.add_argument("--decompose-only", action="store_true",
                        help="only the alignment decomposition (seconds, no training)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/fk_study.json"))
    args = parser.parse_args()
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    data = {m: molecule_data(m) for m in args.molecules}
    if args.decompose_only:
        print(decomposition_table(data))
        return
    for seed in args.seeds:  # seeds outermost: every variant gets a first seed early
        for molecule, (train_set, reference) in data.items():
            for variant in args.variants:
                key = f"{Path(molecule).stem}|{variant}|seed={seed}|steps={args.steps}"
                if key in stored or args.table_only:
                    continue
                stored[key] = run(train_set, reference, VARIANTS[variant], seed, args.steps,
                                  desc=key)
                write_json(args.results, stored)
    text = f"{decomposition_table(data)}\n\n{table(stored, data, args.steps)}"
    print(text)
    if args.docs:
        command = ("python -m benchmarks.fk_study --steps " f"{args.steps} --seeds "
                   + " ".join(map(str, args.seeds)) + " --molecules " + " ".join(args.molecules))
        write_section("benchmarks.md", "fk-study", f"`{command}`\n\n{text}")


def decomposition_table(data: dict) -> str:
    lines = [("| molecule | std_i a_i(x) | std_i(−E_i/kT) | std_i(remainder) | corr(a, −E/kT) "
             "| β/std(a) at β = 0.5 |"), "|---|---|---|---|---|---|"]
    for molecule, (train_set, reference) in data.items():
        d = alignment_decomposition(train_set, reference)
        lines.append(f"| {Path(molecule).stem} | {d['std_a']:.1f} | {d['std_energy']:.1f} | "
                     f"{d['std_remainder']:.1f} | {d['correlation']:.2f} | "
                     f"{d['effective_exponent']:.3f} |")
    return "\n".join(lines)


def table(stored: dict, data: dict, steps: int) -> str:
    lines = [(f"{steps:,} steps, 1,000 samples per run; ratio = TVD / training set's TVD (mean ± "
             "std over seeds); noise floor: 1,000 frames of reference run 1 against run 0 "
             "(mean ± std over disjoint subsets)"), "",
             "| molecule | variant | seeds | TVD | ratio | E W1 (kT) |", "|---|---|---|---|---|---|"]

    def fmt(v):
        v = np.asarray(v, dtype=float)
        return f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")

    for molecule, (train_set, reference) in data.items():
        name = Path(molecule).stem
        kw = {"reference_energies": reference.energies, "temperature_K": reference.temperature_K}
        base = evaluate(train_set.positions, reference.positions, reference.numbers,
                        energies=train_set.energies, **kw)
        floor = noise_floor(reference.positions, reference.numbers, 1000,
                            groups=reference_groups(molecule), **kw)
        floor_tvd = [r.tvd for r in floor.reports]
        lines.append(f"| {name} | training set (biased, 3,000 frames) | – | {base.tvd:.3f} | 1 | "
                     f"{base.energy_w1:.3f} |")
        lines.append(f"| {name} | noise floor | – | {fmt(floor_tvd)} | "
                     f"{fmt(np.array(floor_tvd) / base.tvd)} | "
                     f"{fmt([r.energy_w1 for r in floor.reports])} |")
        for variant in VARIANTS:
            runs = [v for k, v in stored.items()
                    if k.startswith(f"{name}|{variant}|seed=") and k.endswith(f"|steps={steps}")]
            if not runs:
                continue
            tvd = np.array([r["tvd"] for r in runs])
            lines.append(f"| {name} | {variant} | {len(runs)} | {fmt(tvd)} | "
                         f"{fmt(tvd / base.tvd)} | {fmt([r['energy_w1'] for r in runs])} |")
    return "\n".join(lines)


def reference_groups(spec: str):
    """Independent-run label of every reference frame, for the noise floor."""
    if spec == "ethanol":
        return reference_runs("ethanol-gfn2-500K")
    if spec in DATASETS:
        return reference_runs(spec)
    with np.load(spec) as npz:
        return npz["reference_run"]


if __name__ == "__main__":
    main()
