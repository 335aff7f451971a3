"""What bf16 sampling changes: speed and accuracy of the same drift sampler in fp32 and bf16.

    python -m benchmarks.precision [--steps 4000] [--docs]

Trains (or reuses, cached in bench_out/) a drift sampler on the bundled ethanol data, draws the
same 10,000 noise vectors through the generator in fp32 and with bfloat16 hidden layers, and
reports conformers/s, the largest and the RMS displacement between paired samples (Å), and
the distance metrics and GFN2-xTB energy W1 (first 1,000 samples) of each against the reference.
"""

from __future__ import annotations

import argparse

import numpy as np

import ase_drift
from ase_drift.datasets import load
from ase_drift.metrics import evaluate, render_table
from ase_drift.training import TrainConfig, Trainer, progress_hook
from benchmarks.common import PAPER_DISTANCES, ROOT, best_of, gfn2, write_section

N_SAMPLES = 10_000
N_ENERGIES = 1_000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    train_set, reference = load("ethanol-gfn2-500K")
    model = ROOT / "bench_out" / f"precision-drift-{args.steps}.pt"
    if model.exists():
        sampler = ase_drift.load(model)
    else:
        trainer = Trainer(train_set, TrainConfig(steps=args.steps, seed=0, **PAPER_DISTANCES))
        trainer.attach(progress_hook(args.steps, desc="drift (distance)"), 1)
        sampler = trainer.run()
        model.parent.mkdir(parents=True, exist_ok=True)
        sampler.save(model)
    source = gfn2()
    samples, rows = {}, []
    for precision in ("fp32", "bf16"):
        sampler.sample_positions(1000, seed=0, precision=precision)  # warm-up
        seconds = best_of(lambda p=precision: sampler.sample_positions(200_000, seed=0,
                                                                       precision=p), 3)
        samples[precision] = sampler.sample_positions(N_SAMPLES, seed=1, precision=precision)
        energies = source.compute(reference.numbers, samples[precision][:N_ENERGIES]).energies
        report = evaluate(samples[precision][:N_ENERGIES], reference.positions,
                          reference.numbers, energies=energies,
                          reference_energies=reference.energies,
                          temperature_K=reference.temperature_K)
        tvd = evaluate(samples[precision], reference.positions, reference.numbers).tvd
        rows.append([precision, 200_000 / seconds, tvd, report.tvd, report.pair_mae,
                     report.bond_stability, report.energy_w1])
    difference = np.linalg.norm(samples["bf16"] - samples["fp32"], axis=-1)  # [n, A] Å
    table = render_table(
        ["precision", "conformers/s", f"TVD ({N_SAMPLES:,})", f"TVD ({N_ENERGIES:,})",
         "Pair MAE (Å)", "Bond Stab", f"E W1 (kT, {N_ENERGIES:,})"],
        rows, digits=[0, 0, 4, 4, 4, 3, 2])
    text = (f"{table}\n\nSame noise through both: atoms move by {difference.mean():.4f} Å on "
            f"average and at most {difference.max():.4f} Å (RMS "
            f"{np.sqrt((difference ** 2).mean()):.4f} Å). Model: drift (distance), "
            f"{args.steps:,} steps, seed 0; `python -m benchmarks.precision`.")
    print(text)
    if args.docs:
        write_section("benchmarks.md", "precision", text)


if __name__ == "__main__":
    main()
