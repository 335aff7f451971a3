"""What limits the one-step generator's fidelity: an ablation on the unbiased floor.

    python -m benchmarks.ablation --molecules ethanol butane-gfn2-500K --seeds 0 1 2

Each variant of plain drifting (distance space, no forces) is trained on reference run 0 of a
bundled molecule and scored against run 1 with 1,000 samples: TVD of pooled pair distances, its
ratio to the noise floor at 1,000 frames (two independent parts of the reference; the issue's
target is ≤ 1.5×), and the W1 of GFN2-xTB energies (kT) beside the floor's. The training data is
unbiased, so every error left is the generator's. One option changes per row against the
baseline (the defaults of :class:`ase_drift.training.TrainConfig` at ``--steps`` on the
paper's unweighted distances, :data:`benchmarks.common.PAPER_DISTANCES`); a row wins when
its mean beats the baseline's by more than both standard deviations over seeds (a verdict each for
TVD and energy W1).

Each (molecule, variant, seed) result goes into ``--results`` as soon as it is computed, so an
interrupted run resumes and later invocations add variants or seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ase_drift.metrics import evaluate, noise_floor
from ase_drift.refine import mala
from ase_drift.training import TrainConfig, Trainer, progress_hook
from benchmarks.common import PAPER_DISTANCES, gfn2, write_json, write_section
from benchmarks.fk_study import molecule_data, reference_groups

# name → TrainConfig options changed against the baseline (all plain drifting, distance space).
VARIANTS = {
    "baseline (6×512 MLP, batch 256, 512 positives)": {},
    "EMA of weights (0.999)": {"ema_decay": 0.999},
    "residual MLP (6×512, pre-norm blocks)": {"residual": True},
    "wider, shallower MLP (4×1024)": {"hidden": 1024, "depth": 4},
    "batch 512, 1024 positives": {"batch_size": 512, "n_positives": 1024},
    "multi-scale bandwidths (0.1, 0.25, 0.5)": {"bandwidths": (0.1, 0.25, 0.5)},
    "3× longer (×3 steps)": {"steps_factor": 3},
    "pair distances weighted by spread^0.5": {"pair_scale_exponent": 0.5},
    "pair distances weighted by spread^0.25": {"pair_scale_exponent": 0.25},
    "pair distances weighted by spread^1": {"pair_scale_exponent": 1.0},
    "spread^0.5 weights, 3× longer": {"pair_scale_exponent": 0.5, "steps_factor": 3},
    "raw + spread-whitened distances (blocks α = 0, 1)": {"pair_scale_exponent": (0.0, 1.0)},
    "spread^0.5 weights + 20 MALA steps (GFN2-xTB)": {"pair_scale_exponent": 0.5,
                                                      "refine_steps": 20},
    "spread^0.5 weights, canonical rotors": {"pair_scale_exponent": 0.5,
                                             "canonical_rotors": True},
    "spread^0.5 weights, canonical rotors, 5× longer (20,000 steps)": {
        "pair_scale_exponent": 0.5, "canonical_rotors": True, "steps_factor": 5},
}


def run(run0, run1, options: dict, seed: int, steps: int, desc: str) -> dict:
    """Train one variant on ``run0``, draw 1,000 samples, refine them by the variant's MALA
    steps with GFN2-xTB at the data's temperature (:func:`ase_drift.refine.mala`, default step
    size; 0 steps only labels them) and score them against ``run1``."""
    options = dict(options)
    steps *= options.pop("steps_factor", 1)
    refine_steps = options.pop("refine_steps", 0)
    start = time.perf_counter()
    trainer = Trainer(run0, TrainConfig(field="drift", space="distance", steps=steps, seed=seed,
                                        **{**PAPER_DISTANCES, **options}))
    trainer.attach(progress_hook(steps, desc=desc), 1)
    samples = trainer.run().sample_positions(1000, seed=seed)
    train_s = time.perf_counter() - start
    chains = mala(gfn2(), run1.numbers, samples, run1.temperature_K, refine_steps, seed=seed)
    report = evaluate(chains.positions, run1.positions, run1.numbers, energies=chains.energies,
                      reference_energies=run1.energies, temperature_K=run1.temperature_K)
    return {"tvd": report.tvd, "energy_w1": report.energy_w1, "train_s": train_s,
            "acceptance": chains.acceptance_rate}


def floors(molecule: str) -> dict:
    """Noise floor at 1,000 frames between the reference's two parts: TVD and energy W1."""
    _, reference = molecule_data(molecule)
    floor = noise_floor(reference.positions, reference.numbers, 1000,
                        groups=reference_groups(molecule), reference_energies=reference.energies,
                        temperature_K=reference.temperature_K)
    mean, std = floor.mean, floor.std
    return {"tvd": mean.tvd, "tvd_std": std.tvd,
            "energy_w1": mean.energy_w1, "energy_w1_std": std.energy_w1}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _verdict(ours: tuple[float, float], baseline: tuple[float, float]) -> str:
    """'better'/'worse' when the means (lower is better) differ by more than the two standard
    deviations added, else 'within noise'; with one seed only the direction."""
    if ours[1] == 0 or baseline[1] == 0:  # one seed: no spread to compare with
        return ("lower" if ours[0] < baseline[0] else "higher") + " (one seed)"
    margin = baseline[1] + ours[1]
    return ("better" if ours[0] < baseline[0] - margin else
            "worse" if ours[0] > baseline[0] + margin else "within noise")


def table(stored: dict, molecules: list[str], steps: int) -> str:
    lines = []
    for molecule in molecules:
        floor = floors(molecule)
        name = Path(molecule).stem
        lines += [(f"**{name}**: noise floor at 1,000 frames TVD {floor['tvd']:.4f} ± "
                   f"{floor['tvd_std']:.4f}, energy W1 {floor['energy_w1']:.2f} ± "
                   f"{floor['energy_w1_std']:.2f} kT"), "",
                  ("| variant | seeds | TVD | ÷ floor | energy W1 (kT) | train (s) | "
                   "verdict (TVD, energy) |"),
                  "|---|---|---|---|---|---|---|"]
        baseline = None
        for variant in VARIANTS:
            runs = [v for k, v in stored.items()
                    if k.startswith(f"{name}|{variant}|seed=") and k.endswith(f"|steps={steps}")]
            if not runs:
                continue
            tvd = _mean_std([r["tvd"] for r in runs])
            w1 = _mean_std([r["energy_w1"] for r in runs])
            if baseline is None:
                baseline, verdict = (tvd, w1), "—"
            else:
                verdict = ", ".join(_verdict(ours, theirs)
                                    for ours, theirs in zip((tvd, w1), baseline, strict=True))
            lines.append(f"| {variant} | {len(runs)} | {tvd[0]:.4f} ± {tvd[1]:.4f} | "
                         f"{tvd[0] / floor['tvd']:.2f}× | {w1[0]:.2f} ± {w1[1]:.2f} | "
                         f"{np.mean([r['train_s'] for r in runs]):.0f} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "butane-gfn2-500K"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--docs", action="store_true",
                        help="write the table into docs/benchmarks.md")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: tabulate the stored results")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ablation.json"))
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    stored = json.loads(args.results.read_text()) if args.results.exists() else {}
    for seed in args.seeds:  # seeds outermost: every variant gets a first seed early
        for molecule in args.molecules:
            if args.table_only:
                break
            _, reference = molecule_data(molecule)
            runs = reference_groups(molecule)
            run0, run1 = reference[runs == 0], reference[runs == 1]
            for variant in args.variants:
                key = f"{Path(molecule).stem}|{variant}|seed={seed}|steps={args.steps}"
                if key in stored:
                    continue
                stored[key] = run(run0, run1, VARIANTS[variant], seed, args.steps, desc=key)
                write_json(args.results, stored)
    text = table(stored, args.molecules, args.steps)
    print(text)
    if args.docs:
        command = (f"python -m benchmarks.ablation --steps {args.steps} --seeds "
                   + " ".join(map(str, args.seeds)) + " --molecules " + " ".join(args.molecules))
        write_section("benchmarks.md", "ablation", f"`{command}`\n\n{text}")


if __name__ == "__main__":
    main()
