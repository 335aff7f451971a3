"""Exact MALA refinement of one-step ethanol samples with GFN2-xTB: acceptance, energy W1,
distance TVD and cost against the number of steps k.

    python -m benchmarks.refine            # ≈ 8 min on one thread, training included
    python -m benchmarks.refine --docs     # also writes the tables into docs/benchmarks.md
    python -m benchmarks.refine --table-only --docs   # re-tabulate the stored results

The drift sampler is the ethanol quick row's plain drifting (default field, 4,000 steps, seed 0),
trained once and kept in ``bench_out/refine-sampler.pt``. Its 1,000 samples are refined by MALA
(:func:`ase_drift.refine.mala`, default step size) with GFN2-xTB at the data's 500 K, and scored
after k = 0, 1, 3, 10, 30, 100 steps of the same chains (continued, not restarted) against the
reference MD, beside the biased training set and the noise floor at 1,000 frames. A step-size
scan on the first 200 samples (20 steps) measures acceptance and how far the chains move, with
and without the mass preconditioner, at 500 K and 300 K. Results go to
``benchmarks/results/refine.json``; the figure to ``docs/img/refine.png``.

    python -m benchmarks.refine --pair-scale-exponent 0.5 --docs   # the default pair weights

refines a sampler trained with pair weights instead (``bench_out/refine-pairs0.5.pt``,
``benchmarks/results/refine-pairs0.5.json``, its own section in docs/benchmarks.md; no scan).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ase_drift import load as load_sampler
from ase_drift import units
from ase_drift.datasets import load, reference_runs
from ase_drift.metrics import evaluate, noise_floor, pair_distances, render_table
from ase_drift.refine import DEFAULT_STEP_SIZE, REFERENCE_MASS_AMU, MALAResult, mala
from ase_drift.training import ProgressBar, TrainConfig, Trainer
from benchmarks.common import PAPER_DISTANCES, ROOT, gfn2, write_json, write_section

DATASET = "ethanol-gfn2-500K"
N_SAMPLES = 1000
TRAIN_STEPS = 4000
SEED = 0
STEPS = (0, 1, 3, 10, 30, 100)  # k at which the chains are scored (cumulative)
SCAN_CHAINS, SCAN_STEPS = 200, 20
# (temperature K, mass-preconditioned, step sizes Å) of the step-size scan
SCAN = ((500.0, True, (0.01, 0.02, 0.03, 0.04, 0.05)),
        (500.0, False, (0.01, 0.02, 0.03)),
        (300.0, True, (0.02, 0.03, 0.04)))


def variant_paths(pair_scale_exponent: float) -> tuple[str, Path, Path, Path]:
    """(name, sampler, results, figure) of a run: the stored table's sampler on the paper's
    unweighted distances keeps the plain names, a pair-weighted one gets its own."""
    name = "refine" if pair_scale_exponent == 0 else f"refine-pairs{pair_scale_exponent:g}"
    suffix = "-sampler" if pair_scale_exponent == 0 else ""
    return (name, ROOT / "bench_out" / f"{name}{suffix}.pt",
            ROOT / "benchmarks" / "results" / f"{name}.json",
            ROOT / "docs" / "img" / f"{name}.png")


def drift_sampler(train_set, path: Path, pair_scale_exponent: float):
    """The plain drifting sampler of the ethanol quick row (with the given pair weights),
    trained once and kept on disk."""
    if path.exists():
        return load_sampler(path)
    config = TrainConfig(steps=TRAIN_STEPS, seed=SEED, **{
        **PAPER_DISTANCES, "pair_scale_exponent": pair_scale_exponent})
    trainer = Trainer(train_set, config)
    trainer.attach(ProgressBar(TRAIN_STEPS, desc="drift sampler"), 1)
    sampler = trainer.run()
    path.parent.mkdir(parents=True, exist_ok=True)
    sampler.save(path)
    return sampler


def hydroxyl_trans(positions, reference) -> np.ndarray:
    """Which frames ``[n, A, 3]`` have their H–O–C–C torsion trans (120°–240°), ``[n]`` bool;
    the atoms are ethanol's O, the H and the C nearest to it, and the other C (in the first
    reference frame)."""
    from ase.geometry import get_dihedrals

    numbers, first = reference.numbers, reference.positions[0]
    oxygen = int(np.flatnonzero(numbers == 8)[0])
    to_oxygen = np.linalg.norm(first - first[oxygen], axis=-1)  # [A] Å
    hydrogen, carbon = (int(np.flatnonzero(numbers == z)[np.argmin(to_oxygen[numbers == z])])
                        for z in (1, 6))
    other_carbon = int(next(a for a in np.flatnonzero(numbers == 6) if a != carbon))
    p = np.asarray(positions)
    torsion = get_dihedrals(p[:, oxygen] - p[:, hydrogen], p[:, carbon] - p[:, oxygen],
                            p[:, other_carbon] - p[:, carbon])  # [n] degrees in [0, 360)
    return (torsion > 120) & (torsion < 240)


def score(positions, energies, reference) -> dict:
    report = evaluate(positions, reference.positions, reference.numbers, energies=energies,
                      reference_energies=reference.energies,
                      temperature_K=reference.temperature_K)
    kT = units.kT(reference.temperature_K)
    return {"energy_w1": report.energy_w1, "tvd": report.tvd, "pair_mae": report.pair_mae,
            "bond_stability": report.bond_stability,
            "energy_shift": float(np.mean(energies) - np.mean(reference.energies)) / kT,
            "trans": float(hydroxyl_trans(positions, reference).mean()), "n": len(positions)}


def refinement_rows(samples: np.ndarray, reference) -> list[dict]:
    """Scores and cost after each k in :data:`STEPS` of one set of chains ``[N_SAMPLES, A, 3]``."""
    numbers, temperature = reference.numbers, reference.temperature_K
    start = time.perf_counter()
    labelled = mala(gfn2(), numbers, samples, temperature, 0)
    rows = [{"k": 0, "acceptance": None, "acceptance_at_k": None,
             "force_evaluations": labelled.force_evaluations,
             "seconds": time.perf_counter() - start,
             **score(labelled.positions, labelled.energies, reference)}]

    def record(k: int, state: MALAResult) -> None:
        if k in STEPS:
            seconds = time.perf_counter() - start
            rows.append({"k": k, "acceptance": state.acceptance_rate,
                         "acceptance_at_k": float(state.acceptance[-1]),
                         "force_evaluations": state.force_evaluations, "seconds": seconds,
                         **score(state.positions, state.energies, reference)})
            print(f"k = {k}: {rows[-1]}", flush=True)

    start = time.perf_counter()
    mala(gfn2(), numbers, samples, temperature, max(STEPS), seed=SEED, callback=record)
    return rows


def scan_rows(samples: np.ndarray, reference) -> list[dict]:
    """Acceptance and mobility of :data:`SCAN_CHAINS` chains over :data:`SCAN_STEPS` steps."""
    numbers = reference.numbers
    samples = samples[:SCAN_CHAINS]
    start_distances = pair_distances(samples)  # [n, M] Å
    rows = []
    for temperature, preconditioned, step_sizes in SCAN:
        masses = None if preconditioned else np.full(len(numbers), REFERENCE_MASS_AMU)
        for step_size in step_sizes:
            result = mala(gfn2(), numbers, samples, temperature, SCAN_STEPS,
                          step_size=step_size, seed=SEED, masses=masses)
            moved = np.square(pair_distances(result.positions) - start_distances).sum(-1)
            at_reference_temperature = temperature == reference.temperature_K
            rows.append({
                "temperature_K": temperature, "preconditioned": preconditioned,
                "step_size": step_size,
                "acceptance": float(result.acceptance[SCAN_STEPS // 2:].mean()),
                "distance_msd": float(moved.mean()),
                "energy_w1": (score(result.positions, result.energies, reference)["energy_w1"]
                              if at_reference_temperature else None)})
            print(rows[-1], flush=True)
    return rows


def baseline_rows(train_set, reference) -> dict:
    """Scores of the reference, of its trans frames alone (what exact chains that never leave
    the trans basin approach), of the training set, and the noise floor's (1,000 frames of run 1
    vs run 0). No force calls."""
    kw = {"reference_energies": reference.energies, "temperature_K": reference.temperature_K}
    floor = noise_floor(reference.positions, reference.numbers, N_SAMPLES,
                        groups=reference_runs(DATASET), **kw)
    trans = hydroxyl_trans(reference.positions, reference)  # [R]
    return {"reference": score(reference.positions, reference.energies, reference),
            "reference, trans frames only": score(reference.positions[trans],
                                                  reference.energies[trans], reference),
            "training set": score(train_set.positions, train_set.energies, reference),
            "noise floor": [{"energy_w1": r.energy_w1, "tvd": r.tvd, "pair_mae": r.pair_mae,
                             "bond_stability": r.bond_stability} for r in floor.reports]}


def refinement_table(results: dict, baseline: dict) -> str:
    header = ["k (MALA steps)", "acceptance (mean to k)", "acceptance at step k", "E W1 (kT)",
              "mean E − reference (kT)", "TVD", "Pair MAE (Å)", "Bond Stab", "H–O–C–C trans",
              "GFN2-xTB evaluations", "wall time (s)"]
    metrics = ("energy_w1", "energy_shift", "tvd", "pair_mae", "bond_stability", "trans")
    trans_only = baseline["reference, trans frames only"]
    body = []
    for name, value in ((f"reference MD ({baseline['reference']['n']:,} frames)",
                         {"trans": baseline["reference"]["trans"]}),
                        (f"reference MD, trans frames only ({trans_only['n']:,})", trans_only),
                        (f"training set (biased, {baseline['training set']['n']:,} frames)",
                         baseline["training set"]),
                        (f"noise floor ({N_SAMPLES:,} frames, run 1 vs run 0)",
                         baseline["noise floor"])):
        runs = value if isinstance(value, list) else [value]
        body.append([name, None, None] + [[r.get(m) for r in runs] for m in metrics]
                    + [None, None])
    for row in results["refine"]:
        body.append([str(row["k"]), row["acceptance"], row["acceptance_at_k"]]
                    + [row[m] for m in metrics] + [f"{row['force_evaluations']:,}",
                                                   row["seconds"]])
    return render_table(header, body, digits=[0, 3, 3, 2, 2, 3, 3, 3, 3, 0, 1])


def scan_table(results: dict) -> str:
    header = ["T (K)", "proposal", "ε (Å)", f"acceptance (steps {SCAN_STEPS // 2 + 1}–{SCAN_STEPS})",
              f"mean ‖Δd‖² after {SCAN_STEPS} steps (Å²)", f"E W1 after {SCAN_STEPS} steps (kT)"]
    body = [[f"{r['temperature_K']:.0f}", "mass-preconditioned" if r["preconditioned"]
             else "unpreconditioned", r["step_size"], r["acceptance"], r["distance_msd"],
             r["energy_w1"]] for r in results["scan"]]
    return render_table(header, body, digits=[0, 0, 2, 3, 3, 2])


def plot(results: dict, baseline: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = results["refine"]
    k = np.array([r["k"] for r in rows])
    fig = Figure(figsize=(8, 3), layout="constrained")
    for ax, key, label in zip(fig.subplots(1, 2), ("energy_w1", "tvd"),
                              ("energy W1 (kT)", "distance TVD")):
        ax.plot(k, [r[key] for r in rows], marker="o", label="refined samples")
        floor = np.mean([r[key] for r in baseline["noise floor"]])
        ax.axhline(floor, color="k", linestyle="--", label="noise floor")
        ax.axhline(baseline["training set"][key], color="grey", linestyle=":",
                   label="training set")
        ax.axhline(baseline["reference, trans frames only"][key], color="tab:red",
                   linestyle="-.", label="reference, trans frames only")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(k, labels=[str(v) for v in k])
        ax.set_xlim(-0.3, 1.3 * k.max())
        ax.set_xlabel("MALA steps k")
        ax.set_ylabel(label)
    ax.legend()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true",
                        help="write the tables into docs/benchmarks.md and the figure into docs/img")
    parser.add_argument("--table-only", action="store_true",
                        help="compute nothing: tabulate the stored results")
    parser.add_argument("--pair-scale-exponent", type=float, default=0.0,
                        help="pair weights of the sampler (0: the stored main table's; other "
                             "values get their own files and section, without the scan)")
    args = parser.parse_args()
    exponent = args.pair_scale_exponent
    name, sampler_path, results_path, figure_path = variant_paths(exponent)
    train_set, reference = load(DATASET)
    baseline = baseline_rows(train_set, reference)
    if args.table_only:
        results = json.loads(results_path.read_text())
    else:
        sampler = drift_sampler(train_set, sampler_path, exponent)
        samples = sampler.sample_positions(N_SAMPLES, seed=SEED)  # [N, A, 3] Å
        started = time.perf_counter()
        results = {"refine": refinement_rows(samples, reference)}
        results["scan"] = scan_rows(samples, reference) if exponent == 0 else None
        results.update(step_size=DEFAULT_STEP_SIZE, minutes=(time.perf_counter() - started) / 60)
        write_json(results_path, results)
    options = "" if exponent == 0 else f" --pair-scale-exponent {exponent:g}"
    weights = ("unweighted distances" if exponent == 0 else
               f"pair distances weighted by spread^{exponent:g}")
    note = (f"`python -m benchmarks.refine{options}` (one thread; the chains"
            f"{' and the scan' if results['scan'] else ''} took {results['minutes']:.0f} min, "
            f"training not counted): {N_SAMPLES:,} samples of plain drifting (distance space, "
            f"{weights}, {TRAIN_STEPS:,} steps, seed {SEED}) refined by MALA with GFN2-xTB at "
            f"500 K, ε = {results['step_size']:g} Å (mass-preconditioned); k counts the steps "
            f"of the same chains. Evaluations include labelling the start; k = 0 is the "
            f"one-step sampler, labelled to score its energies.")
    text = f"{note}\n\n{refinement_table(results, baseline)}"
    if results["scan"]:
        text += (f"\n\nStep sizes ({SCAN_CHAINS} of the samples, {SCAN_STEPS} steps; Δd: change "
                 f"of the pair distances of a chain):\n\n{scan_table(results)}")
    print(text)
    if args.docs:
        plot(results, baseline, figure_path)
        figure = (f"![energy W1 and distance TVD against the MALA steps k]"
                  f"(img/{figure_path.name})")
        write_section("benchmarks.md", name, f"{text}\n\n{figure}")


if __name__ == "__main__":
    main()
