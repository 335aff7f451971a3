"""Accuracy of every field of the paper's Tables 3–4 on the bundled ethanol data (GFN2-xTB, 500 K).

    python -m benchmarks.ethanol --quick        # < 1 hour on 2 cores: 1 seed, 4,000 steps, key rows
    python -m benchmarks.ethanol                # the full table: 3 seeds × 20,000 steps (hours)
    python -m benchmarks.ethanol --steps 4000 --dsm-steps 3000 --rows FK --seeds 1 2  # a part

Every (row, seed) result is stored in ``--results`` as soon as it is computed, so an interrupted
run resumes where it stopped. Prints a markdown table (mean ± std over seeds) whose first rows are
the biased training set itself and the reference noise floor at the samples' size (1,000 frames
of run 1 scored against run 0, mean ± std over 5 disjoint subsets), writes it into
``docs/benchmarks.md`` between the ethanol markers, and plots distance histograms per pair type.
Energies of 1,000 generated samples come from the GFN2-xTB calculator (energy W1 in kT).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ase_drift.datasets import load, reference_runs
from ase_drift.diffusion import DiffusionConfig, train_diffusion
from ase_drift.metrics import evaluate, markdown_table, noise_floor, plot_distance_histograms
from ase_drift.training import TrainConfig, Trainer, progress_hook
from benchmarks.common import PAPER_DISTANCES, ROOT, gfn2_energies, write_json, write_section

DATASET = "ethanol-gfn2-500K"
N_SAMPLES = 1000  # generated samples scored per (row, seed), and the noise floor's sample size


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # "drift" or "dsm"
    options: dict = field(default_factory=dict)
    quick: bool = False  # part of --quick
    # Trained on reference run 0 (unbiased) and scored against run 1: the sampler's own error,
    # to read against the noise floor (run 0 vs run 1) rather than against the training set.
    unbiased: bool = False


ROWS = [
    Row("Drifting (Cartesian)", "drift", {"field": "drift", "space": "cartesian"}, True),
    Row("FI ω=0.02 (Cartesian)", "drift", {"field": "fi", "space": "cartesian", "omega": 0.02},
        True),
    Row("FI ω=0.1 (Cartesian)", "drift", {"field": "fi", "space": "cartesian", "omega": 0.1}),
    Row("FK β=0.5 (Cartesian)", "drift", {"field": "fk", "space": "cartesian", "beta": 0.5}),
    Row("FI+FK (Cartesian)", "drift", {"field": "fi+fk", "space": "cartesian"}),
    Row("Drifting (distance)", "drift", {"field": "drift", "space": "distance"}, True),
    Row("FI ω=0.1 (distance, exact force term)", "drift",
        {"field": "fi", "space": "distance", "omega": 0.1}, True),
    Row("FI ω=0.1 (distance, ρ-normalised, Eq. 34)", "drift",
        {"field": "fi", "space": "distance", "omega": 0.1, "normalize_force_scale": True}, True),
    Row("FI ω=0.3 (distance, exact force term)", "drift",
        {"field": "fi", "space": "distance", "omega": 0.3}),
    Row("FK β=0.25 (distance)", "drift", {"field": "fk", "space": "distance", "beta": 0.25}),
    Row("FK β=0.5 (distance)", "drift", {"field": "fk", "space": "distance", "beta": 0.5}, True),
    Row("FK β=1 (distance)", "drift", {"field": "fk", "space": "distance", "beta": 1.0}),
    Row("FK energy form, standardised, β=0.5 (distance)", "drift",
        {"field": "fk-energy", "space": "distance", "beta": 0.5}, True),
    Row("FK energy β=1, unstandardised (distance)", "drift",
        {"field": "fk-energy", "space": "distance", "beta": 1.0, "standardize": False}),
    Row("FK energy β=1 + density correction (distance)", "drift",
        {"field": "fk-energy", "space": "distance", "beta": 1.0, "density_correction": True},
        True),
    Row("FI+FK (distance)", "drift", {"field": "fi+fk", "space": "distance"}),
    Row("Deng field (distance)", "drift", {"field": "deng", "space": "distance"}, True),
    Row("FI ω=0.02 (Cartesian), τ = (0.1, 0.25, 0.5) × median", "drift",
        {"field": "fi", "space": "cartesian", "omega": 0.02, "bandwidths": (0.1, 0.25, 0.5)}),
    Row("FK β=0.5 (distance), τ = (0.1, 0.25, 0.5) × median", "drift",
        {"field": "fk", "space": "distance", "beta": 0.5, "bandwidths": (0.1, 0.25, 0.5)}),
    Row("Drifting (distance), unbiased: trained on run 0, scored vs run 1", "drift",
        {"field": "drift", "space": "distance"}, unbiased=True),
    Row("FI ω=0.02 (Cartesian), unbiased: trained on run 0, scored vs run 1", "drift",
        {"field": "fi", "space": "cartesian", "omega": 0.02}, unbiased=True),
    Row("DSM (Cartesian, PC 2,000 NFE)", "dsm", {}, True),
    Row("DSM + force targets (Cartesian)", "dsm", {"force_sigma": 0.05}),
]
# Rows whose seed-0 distance histograms are drawn beside the training set's and the reference's.
PLOTTED = ("Drifting (distance)", "FI ω=0.02 (Cartesian)", "FK β=0.5 (distance)",
           "DSM (Cartesian, PC 2,000 NFE)")


def run_row(row: Row, seed: int, steps: int, dsm_steps: int, sampler_steps: int,
            train_set, reference, samples_path: Path) -> dict:
    """Train, draw 1,000 samples (saved to ``samples_path``) and score them."""
    start = time.perf_counter()
    if row.kind == "drift":
        trainer = Trainer(train_set, TrainConfig(steps=steps, seed=seed,
                                                 **{**PAPER_DISTANCES, **row.options}))
        trainer.attach(progress_hook(steps, desc=f"{row.name} seed {seed}"), 1)
        sampler = trainer.run()
    else:
        config = DiffusionConfig(steps=dsm_steps, sampler_steps=sampler_steps, seed=seed,
                                 **row.options)
        sampler = train_diffusion(train_set, config)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = sampler.sample_positions(N_SAMPLES, seed=seed)
    sample_s = time.perf_counter() - start
    energies = gfn2_energies(samples, reference.numbers)
    report = evaluate(samples, reference.positions, reference.numbers, energies=energies,
                      reference_energies=reference.energies, temperature_K=reference.temperature_K)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(samples_path, samples)
    return dict(report.as_dict(), train_s=train_s, sample_1000_s=sample_s)


def baseline_rows(train_set, reference) -> dict:
    """The training set itself and the noise floor at the samples' size (N_SAMPLES frames of
    reference run 1 scored against run 0, 5 disjoint subsets)."""
    numbers = reference.numbers
    kw = {"reference_energies": reference.energies, "temperature_K": reference.temperature_K}
    train = evaluate(train_set.positions, reference.positions, numbers,
                     energies=train_set.energies, **kw)
    runs = reference_runs(DATASET)
    floor = noise_floor(reference.positions, numbers, N_SAMPLES, groups=runs, **kw)
    return {"training set (biased, 3,000 frames)": [train.as_dict()],
            f"noise floor ({N_SAMPLES:,} frames of reference run 1 vs run 0)":
                [r.as_dict() for r in floor.reports]}


def summary_table(results: dict) -> str:
    """Mean ± std over the stored runs of each row (the noise floor's: over its subsets)."""
    return markdown_table(results, first="method", count="seeds",
                          extra=[("train (s)", "train_s"), ("1,000 samples (s)", "sample_1000_s")])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--dsm-steps", type=int)
    parser.add_argument("--rows", nargs="+",
                        help="run these rows: a full row name, or text that selects every "
                             "row containing it (any row, also with --quick)")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    steps = args.steps or (4000 if quick else 20000)
    dsm_steps = args.dsm_steps or (3000 if quick else 20000)
    sampler_steps = 1000
    results_path = args.results or ROOT / "benchmarks" / "results" / (
        "ethanol-quick.json" if quick else "ethanol.json")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}

    train_set, reference = load(DATASET)
    runs = reference_runs(DATASET)
    run0, run1 = reference[runs == 0], reference[runs == 1]
    if args.rows:  # a full row name selects that row, any other text every row containing it
        names = {r.name for r in ROWS}
        rows = [r for r in ROWS if any(r.name == s or (s not in names and s in r.name)
                                       for s in args.rows)]
    else:
        rows = [r for r in ROWS if r.quick or not quick]

    def result_key(row: Row, seed: int) -> str:
        return f"{row.name}|seed={seed}|steps={steps if row.kind == 'drift' else dsm_steps}"

    def samples_path(row: Row, seed: int) -> Path:
        slug = "".join(c if c.isalnum() else "_" for c in result_key(row, seed))
        return results_path.parent / "samples" / f"ethanol_{slug}.npy"

    started, computed = time.perf_counter(), 0
    for row in rows:
        for seed in seeds:
            key = result_key(row, seed)
            if key in stored:
                continue
            data, target = (run0, run1) if row.unbiased else (train_set, reference)
            stored[key] = run_row(row, seed, steps, dsm_steps, sampler_steps, data, target,
                                  samples_path(row, seed))
            computed += 1
            write_json(results_path, stored)
    elapsed = time.perf_counter() - started

    results = baseline_rows(train_set, reference)
    for row in ROWS:  # every row with stored results at these step counts, any seed
        prefix, steps_tag = result_key(row, 0).split("|seed=0|")
        runs = [v for k, v in stored.items()
                if k.startswith(prefix + "|seed=") and k.endswith("|" + steps_tag)]
        if runs:
            results[row.name] = runs
    table = summary_table(results)
    print(table)
    command = "python -m benchmarks.ethanol" + (" --quick" if quick else "") + (
        f" --steps {args.steps}" if args.steps else "") + (
        f" --dsm-steps {args.dsm_steps}" if args.dsm_steps else "")
    shown = results_path.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    note = (f"`{command}`: {steps:,} drift steps, DSM {dsm_steps:,} steps with a "
            f"{sampler_steps:,}-level predictor–corrector sampler; mean ± std over the seeds in "
            f"the second column (the runs of every invocation, any `--seeds`/`--rows`, "
            f"accumulate in `{shown}`; this one trained {computed} new runs in "
            f"{elapsed / 60:.0f} min).")
    if args.no_docs:
        return
    marker = "ethanol-quick" if quick else "ethanol"
    plotted = [row for row in ROWS if row.name in PLOTTED]
    figure_path = ROOT / "docs" / "img" / f"{marker}_histograms.png"
    if all(samples_path(row, seeds[0]).exists() for row in plotted):
        shown_samples = {row.name: np.load(samples_path(row, seeds[0])) for row in plotted}
        shown_samples["training set"] = train_set.positions
        plot_distance_histograms(figure_path, reference.numbers, reference.positions,
                                 shown_samples)
    else:  # samples are not kept in git: a fresh clone rewrites the table, not the figure
        print(f"kept {figure_path.name}: seed {seeds[0]} samples of {', '.join(PLOTTED)} "
              f"are not all in {samples_path(plotted[0], seeds[0]).parent}")
    figure = (f"![distance histograms per pair type: seed {seeds[0]} of four samplers, the "
              f"training set and the reference](img/{marker}_histograms.png)")
    write_section("benchmarks.md", marker, f"{note}\n\n{table}\n\n{figure}")

if __name__ == "__main__":
    main()
