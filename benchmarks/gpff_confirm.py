"""A confirmation run of one GPFF sampler setting on the QM9 benchmark's formulas: fresh seeds,
resumable chunks, and a verdict by a rule fixed before the run.

A setting chosen on the held-out formulas (``gpff_qm9 --tune``, ``--diagnose``) is confirmed here
on the benchmark's own formulas with seeds no earlier run used. Each chunk is what
``python -m benchmarks.gpff_qm9 --quick -n 2P --seed S --configs … --nfe K --options …`` makes
for one seed S (P molecules of each formula, formula k seeded S + 1000 k), so a chunk can be
re-run by the benchmark script itself. Chunks go to a JSON-lines file per worker under
``benchmarks/results/gpff_confirm/`` (tracked: commit them as they come and a run resumes on a
fresh checkout too); an interrupted run resumes where it stopped, and several workers (one thread
each) split the seeds.

    python -m benchmarks.gpff_confirm run --tag A --shape gmm --first-seed 100 \\
        --options '{"step_size": 1.6, "max_overshoot": 0.2, "max_step_ratio": 3.0}' \\
        --until 2026-12-02T18:05 --worker 0 --workers 2
    python -m benchmarks.gpff_confirm summary --tag A --level 0.975 --write

``summary`` counts whole seeds only (both formulas), so the formulas weigh equally whenever the
run was stopped, and states the Wilson interval at ``--level`` (two-sided): the target is met
beyond chance when its lower end is at least ``--target``. Comparing m settings, use the
Bonferroni level 1 − 0.05/m.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import datetime
from pathlib import Path

from benchmarks.common import ROOT, write_json

CHUNKS = ROOT / "benchmarks" / "results" / "gpff_confirm"
RESULTS = ROOT / "benchmarks" / "results" / "gpff_qm9_confirmations.json"
#: what every chunk of one tag must share
SETTINGS = ("sampler", "shape", "nfe", "options", "per_formula")


def chunk_files(tag: str, directory: Path = CHUNKS) -> list[Path]:
    return sorted(Path(directory).glob(f"{tag}_w*.jsonl"))


def differing_settings(row: dict, reference: dict) -> list[str]:
    """The :data:`SETTINGS` in which chunk ``row`` differs from ``reference``."""
    return [name for name in SETTINGS if row[name] != reference[name]]


def benchmark_formulas() -> list[tuple]:
    """The QM9 benchmark's formulas, as :func:`benchmarks.gpff_qm9.pick_formulas` gives them."""
    from ase_drift.datasets.qm9 import load_qm9, split
    from benchmarks.gpff_qm9 import pick_formulas

    qm9 = load_qm9()
    _, _, test = split(len(qm9), seed=0)
    return pick_formulas(qm9, test, 2)


def read_chunks(tag: str, directory: Path = CHUNKS) -> list[dict]:
    """Every chunk of ``tag`` (all workers); ValueError if they disagree on a setting."""
    rows = [json.loads(line) for path in chunk_files(tag, directory)
            for line in path.read_text().splitlines() if line.strip()]
    for row in rows[1:]:
        differing = differing_settings(row, rows[0])
        if differing:
            raise ValueError(f"chunks of {tag!r} differ in {', '.join(differing)} (seed "
                             f"{row['seed']}): one tag is one setting")
    return rows


def wilson(valid: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion at confidence ``level`` (two-sided)."""
    from scipy.stats import binomtest

    interval = binomtest(valid, n).proportion_ci(level, method="wilson")
    return float(interval.low), float(interval.high)


def summarise(rows: list[dict], formulas: list[str], level: float, target: float) -> dict:
    """Validity over the seeds that have a chunk of every one of ``formulas``."""
    by_seed: dict[int, dict[str, dict]] = {}
    for row in rows:
        if row["formula"] in by_seed.setdefault(row["seed"], {}):
            raise ValueError(f"seed {row['seed']} has two chunks of {row['formula']}")
        by_seed[row["seed"]][row["formula"]] = row
    seeds = sorted(seed for seed, chunks in by_seed.items() if set(chunks) == set(formulas))
    if not seeds:
        raise ValueError(f"no seed has a chunk of every formula ({', '.join(formulas)}) yet")
    counts, seconds = Counter(), 0.0
    per_formula = {formula: Counter() for formula in formulas}
    for seed in seeds:
        for formula, row in by_seed[seed].items():
            counts.update(row["counts"])
            per_formula[formula].update(row["counts"])
            seconds += row["seconds"]
    n, valid = sum(counts.values()), counts["valid"]
    low, high = wilson(valid, n, level)
    settings = {name: rows[0][name] for name in SETTINGS}
    return {**settings, "seeds": seeds, "n": n, "valid": valid, "validity": valid / n,
            "level": level, "wilson": [low, high], "target": target,
            "met_beyond_chance": low >= target, "counts": dict(counts),
            "per_formula": {formula: {"n": sum(c.values()), "valid": c["valid"],
                                      "validity": c["valid"] / sum(c.values())}
                            for formula, c in per_formula.items()},
            "incomplete_seeds": sorted(set(by_seed) - set(seeds)),
            "molecules_per_s_one_thread": n / seconds}


def summary_markdown(tag: str, summary: dict) -> str:
    low, high = summary["wilson"]
    header = (f"| {tag}: {summary['sampler']} @ {summary['nfe']}, shape {summary['shape']}, "
              f"`{json.dumps(summary['options'])}` | molecules | validity | "
              f"{100 * summary['level']:g} % interval (Wilson) |")
    lines = [header, "|---|---:|---:|---|"]
    for formula, row in summary["per_formula"].items():
        lines.append(f"| {formula} | {row['n']:,} | {row['validity']:.3f} | |")
    verdict = "met" if summary["met_beyond_chance"] else "not met"
    lines.append(f"| **all** (seeds {summary['seeds'][0]}–{summary['seeds'][-1]}, "
                 f"{len(summary['seeds'])}) | **{summary['n']:,}** | "
                 f"**{summary['validity']:.3f}** | **{low:.3f}–{high:.3f}** |")
    return "\n".join(lines) + (f"\n\n≥ {summary['target']:.2f} beyond chance: {verdict}; "
                               f"failures {json.dumps(summary['counts'])}")


def run(args) -> None:
    from ase_drift.diffusion.pseudoforce import PseudoForceField
    from ase_drift.metrics.chemistry import validity_counts
    from benchmarks.gpff_qm9 import run_point

    until = datetime.fromisoformat(args.until) if args.until else None
    path = Path(args.chunks) / f"{args.tag}_w{args.worker}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"sampler": args.sampler, "shape": args.shape, "nfe": args.nfe,
                "options": args.options, "per_formula": args.per_formula}
    done = set()
    for row in read_chunks(args.tag, args.chunks):
        differing = differing_settings(row, settings)
        if differing:
            raise ValueError(f"{args.tag!r} already holds chunks of another {', '.join(differing)}"
                             f" ({', '.join(repr(row[name]) for name in differing)}): resume it "
                             f"with the same settings or use another tag")
        done.add((row["seed"], row["formula"]))
    formulas = benchmark_formulas()
    model = PseudoForceField.load_pretrained("qm9")
    seed = args.first_seed + args.worker
    for _ in range(args.seeds):
        for k, entry in enumerate(formulas):
            formula = entry[0]
            if until is not None and datetime.now() >= until:
                return
            if (seed, formula) in done:
                continue
            # formula k of the benchmark's seed S is seeded S + 1000 k, as in gpff_qm9
            frames, seconds, _ = run_point(model, [entry], args.per_formula, args.sampler,
                                           args.nfe, False, args.shape, seed + 1000 * k,
                                           args.options)
            row = {**settings, "seed": seed, "formula": formula, "n": len(frames),
                   "counts": validity_counts(frames), "seconds": seconds}
            with path.open("a") as stream:  # one whole line per chunk: resumable
                stream.write(json.dumps(row) + "\n")
            print(f"seed {seed} {formula}: {row['counts']['valid']}/{row['n']} valid "
                  f"({row['seconds']:.0f} s)", flush=True)
        seed += args.workers


def summary(args) -> None:
    formulas = [formula for formula, _, _ in benchmark_formulas()]
    result = summarise(read_chunks(args.tag, args.chunks), formulas, args.level, args.target)
    print(summary_markdown(args.tag, result))
    if args.write:
        stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        stored[args.tag] = result
        write_json(RESULTS, stored)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "summary"):
        command = commands.add_parser(name)
        command.add_argument("--tag", required=True, help="one name per setting")
        command.add_argument("--chunks", default=str(CHUNKS), help="directory of the chunks")
    go = commands.choices["run"]
    go.add_argument("--sampler", default="sdd")
    go.add_argument("--shape", default=None)
    go.add_argument("--nfe", type=int, default=256)
    go.add_argument("--options", type=json.loads, default={})
    go.add_argument("--per-formula", type=int, default=100)
    go.add_argument("--first-seed", type=int, required=True, help="seeds no earlier run used")
    go.add_argument("--seeds", type=int, default=10**6, help="seeds per worker at most")
    go.add_argument("--until", help="local ISO time to stop at (fixed before the run)")
    go.add_argument("--worker", type=int, default=0)
    go.add_argument("--workers", type=int, default=1)
    report = commands.choices["summary"]
    report.add_argument("--level", type=float, default=0.95)
    report.add_argument("--target", type=float, default=0.90)
    report.add_argument("--write", action="store_true", help=f"store in {RESULTS.name}")
    args = parser.parse_args(argv)
    (run if args.command == "run" else summary)(args)


if __name__ == "__main__":
    main()
