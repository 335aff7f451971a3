"""The DSM baseline's exact likelihood (probability-flow ODE, exact and Hutchinson divergence)
against an NCE density fitted on its samples: log q correlation, ESS of GFN2-xTB reweighting at
500 K and cost per sample (docs/likelihoods.md, "Exact likelihoods from the probability-flow
ODE").

    OMP_NUM_THREADS=1 python -m benchmarks.likelihood_cost --quick   # see QUICK for the cuts
    python -m benchmarks.likelihood_cost --table-only --docs         # re-tabulate, write docs

A DSM (default network, 3,000 training steps, seed 0; kept in ``bench_out/``) draws frames with
its predictor–corrector sampler; an :class:`~ase_drift.likelihood.NCEDensity` (128 × 3 net) is
fitted on ``n_fit`` of them and ``n_eval`` fresh ones are read by the NCE density, the ODE with
Hutchinson's divergence (one Rademacher probe) and, on the first ``n_exact``, the ODE with the
exact divergence (rtol = atol = 1e-5, dopri5). Costs are wall times in this run, per 10,000
samples. Results go to ``benchmarks/results/likelihood_cost.json`` stage by stage.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from ase_drift import load as load_sampler
from ase_drift import units
from ase_drift.datasets import load
from ase_drift.likelihood import NCEConfig, NCEDensity
from ase_drift.metrics import render_table
from ase_drift.reweighting import reweight
from benchmarks.common import ROOT, gfn2, write_section

DATASET = "ethanol-gfn2-500K"
DSM_STEPS = 3000
FULL = {"sampler_steps": 1000, "n_fit": 20_000, "n_eval": 2000, "n_exact": 500,
        "nce_steps": 3000}
QUICK = {"sampler_steps": 100, "n_fit": 2000, "n_eval": 400, "n_exact": 200, "nce_steps": 1500}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
RESULTS_PATH = ROOT / "benchmarks" / "results" / "likelihood_cost.json"
MODEL_PATH = ROOT / "bench_out" / "likelihood-cost-dsm.pt"
SAMPLES_PATH = ROOT / "bench_out" / "likelihood-cost-samples.npz"


def dsm_sampler(train_set):
    """The DSM of this benchmark, trained once and kept on disk."""
    from ase_drift.diffusion import DiffusionConfig, train_diffusion

    if MODEL_PATH.exists():
        return load_sampler(MODEL_PATH)
    start = time.perf_counter()
    sampler = train_diffusion(train_set, DiffusionConfig(steps=DSM_STEPS, seed=0))
    sampler.metadata["training_seconds"] = time.perf_counter() - start
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    sampler.save(MODEL_PATH)
    return sampler


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(plan: dict, results: dict) -> dict:
    def save():
        RESULTS_PATH.write_text(json.dumps(results, indent=1))

    train_set, _ = load(DATASET)
    numbers, temperature = train_set.numbers, train_set.temperature_K
    sampler = dsm_sampler(train_set)
    sampler.config = replace(sampler.config, sampler_steps=plan["sampler_steps"])
    results["plan"] = plan
    if SAMPLES_PATH.exists():
        stored = dict(np.load(SAMPLES_PATH))
    else:
        n = plan["n_fit"] + plan["n_eval"]
        positions, seconds = timed(lambda: sampler.sample_positions(n, seed=1))
        from ase_drift.forces import label_positions

        source = gfn2()
        evaluation = positions[plan["n_fit"]:].astype(np.float64)
        energies = label_positions(source, numbers, evaluation, batch_size=64).energies
        stored = {"fit": positions[:plan["n_fit"]], "eval": evaluation, "energies": energies}
        np.savez(SAMPLES_PATH, **stored)
        results["seconds"] = {"sampling": seconds, "per": n}
        save()
    evaluation, energies = stored["eval"], stored["energies"]
    if "nce" not in results:
        config = NCEConfig(hidden=128, depth=3, batch_size=512, steps=plan["nce_steps"])
        density, fit = timed(lambda: NCEDensity.fit(stored["fit"], numbers, config=config))
        tiled = np.resize(evaluation, (10_000, *evaluation.shape[1:]))
        _, read = timed(lambda: density.log_prob(tiled))
        results["nce"] = {"log_q": density.log_prob(evaluation).tolist(), "fit_seconds": fit,
                          "seconds_per_10k": read}
        save()
    if "hutchinson" not in results:
        values, seconds = timed(lambda: sampler.log_prob(evaluation, divergence="hutchinson",
                                                         seed=0, **TOLERANCE))
        results["hutchinson"] = {"log_q": values.tolist(),
                                 "seconds_per_10k": seconds * 10_000 / len(evaluation)}
        save()
    if "exact" not in results:
        subset = evaluation[:plan["n_exact"]]
        values, seconds = timed(lambda: sampler.log_prob(subset, **TOLERANCE))
        results["exact"] = {"log_q": values.tolist(),
                            "seconds_per_10k": seconds * 10_000 / len(subset)}
        save()
    results["energies"] = np.asarray(energies).tolist()
    results["temperature_K"] = temperature
    save()
    return results


def table(results: dict) -> str:
    energies = np.asarray(results["energies"])
    n_exact = len(results["exact"]["log_q"])
    reduced = energies / units.kT(results["temperature_K"])
    numbers = load(DATASET)[0].numbers
    frames = np.zeros((len(energies), len(numbers), 3))  # weights need no positions

    def ess(log_q, n):
        return reweight(frames[:n], numbers, log_q[:n], energies=energies[:n],
                        temperature_K=results["temperature_K"]).ess

    exact = np.asarray(results["exact"]["log_q"])
    nce_cost = results["nce"]["seconds_per_10k"]
    rows = []
    for name, label in (("exact", "ODE, exact divergence"),
                        ("hutchinson", "ODE, Hutchinson (1 probe)"),
                        ("nce", "NCE density (128 × 3)")):
        log_q = np.asarray(results[name]["log_q"])
        corr = np.corrcoef(log_q[:n_exact], exact)[0, 1]
        rows.append([label, corr, np.corrcoef(log_q, -reduced[:len(log_q)])[0, 1],
                     ess(log_q, n_exact), ess(log_q, len(log_q)) if len(log_q) > n_exact else None,
                     results[name]["seconds_per_10k"],
                     results[name]["seconds_per_10k"] / nce_cost])
    header = ["log q", "corr with exact ODE", "corr with −E/kT", f"ESS ({n_exact} frames)",
              f"ESS ({len(energies)} frames)", "s per 10,000 samples", "cost / NCE"]
    plan = results["plan"]
    text = render_table(header, rows, digits=[0, 3, 3, 4, 4, 1, 0])
    std_hutch = float(np.std(np.asarray(results["hutchinson"]["log_q"])[:n_exact] - exact))
    return text + (
        f"\n\nDSM: {DSM_STEPS:,} training steps, {plan['sampler_steps']}-level predictor–corrector"
        f" sampler ({2 * plan['sampler_steps'] - 1} evaluations); NCE fitted on "
        f"{plan['n_fit']:,} of its samples ({plan['nce_steps']:,} steps, "
        f"{results['nce']['fit_seconds'] / 60:.1f} min, not in the cost column); the ODE at "
        f"rtol = atol = 1e-5. Hutchinson − exact log q: std {std_hutch:.2f} nats. Drawing the "
        f"samples cost {results['seconds']['sampling'] * 10_000 / results['seconds']['per']:.0f} "
        f"s per 10,000. Wall times on 2 cores shared with other jobs.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the cuts of QUICK")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--docs", action="store_true", help="write the table into the docs")
    args = parser.parse_args(argv)
    results = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.exists() else {}
    if not args.table_only:
        results = run(QUICK if args.quick else FULL, results)
    text = table(results)
    print(text)
    if args.docs:
        write_section("likelihoods.md", "likelihood-cost", text)


if __name__ == "__main__":
    main()
