"""Generative pseudo-force fields on QM9: validity against network evaluations for every sampler,
GPFF against the time-conditioned EDM baseline, adaptive against fixed schedules, the
max-pair-distance bias of direct denoising and its removal by the shape prior, GFN2-xTB energies,
and generation speed.

    python -m benchmarks.gpff_qm9 --quick     # 64 molecules per point, NFE 4 … 256 (< 30 min)
    python -m benchmarks.gpff_qm9             # 1,000 molecules per point, all NFE (hours)
    python -m benchmarks.gpff_qm9 --quick -n 96 --tune 6 256   # sampler settings at 6, 256 NFE
    python -m benchmarks.gpff_qm9 --quick -n 96 --tune 6 --tune-n 960 \
        --results benchmarks/results/gpff_qm9_tune960.json   # 960 molecules per setting
    python -m benchmarks.gpff_qm9 --quick -n 480 --configs "GPFF SDD+shape" --nfe 256 \
        --options '{"step_size": 1.6}'    # one configuration with other settings

Molecules: the ``--formulas`` most frequent formulas of QM9's test split (the split of
:mod:`ase_drift.datasets.qm9`; the models never saw these molecules; default 2: C7H10O2 and
C7H11NO, 581 and 570 test molecules), ``n / formulas`` molecules each, one formula per batch (a batch of
one formula lets the adaptive samplers drop finished molecules; few formulas keep the batches
large on a CPU). The QM9 reference for the distribution metrics is every test molecule with one
of those formulas. Validity: :func:`ase_drift.metrics.chemistry.validity`
(RDKit: bonds from geometry, sanitisable, one fragment, no radicals). Every (model, sampler,
NFE) point is stored in ``--results`` as soon as it is measured, so an interrupted run resumes.
Speed is molecules per second on one thread, the whole batch of a formula at once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, write_json, write_section

NFE_FULL = (4, 6, 8, 16, 32, 64, 128, 256)
NFE_QUICK = (4, 6, 8, 16, 32, 64, 256)
#: (label, model, sampler, adaptive, shape)
CONFIGS = [  # in the order they run: the key comparisons first
    ("GPFF DD", "qm9", "dd", False, None),
    ("GPFF SDD", "qm9", "sdd", False, None),
    ("GPFF stochastic Heun", "qm9", "stochastic-heun", False, None),
    ("EDM baseline stochastic Heun", "qm9-baseline", "stochastic-heun", False, None),
    ("GPFF ancestral", "qm9", "ancestral", False, None),
    ("EDM baseline ancestral", "qm9-baseline", "ancestral", False, None),
    ("GPFF SDD+shape", "qm9", "sdd", False, "gmm"),
    ("GPFF DD (stop at σ̂ < 0.005 Å)", "qm9", "dd", True, None),
    ("GPFF ancestral AS", "qm9", "ancestral", True, None),
    ("GPFF stochastic Heun AS", "qm9", "stochastic-heun", True, None),
    ("GPFF Heun", "qm9", "heun", False, None),
    ("EDM baseline Heun", "qm9-baseline", "heun", False, None),
    ("GPFF Heun AS", "qm9", "heun", True, None),
]
#: Configurations whose max-pair-distance and energy distributions are compared with QM9.
DISTRIBUTION_CONFIGS = ("GPFF DD", "GPFF SDD", "GPFF SDD+shape", "GPFF stochastic Heun",
                        "EDM baseline stochastic Heun")
#: Sampler settings searched by ``--tune`` (options of :meth:`PseudoForceField.generate`; the
#: first of each grid is the default): (label, model, sampler, shape, grid at few NFE, grid at
#: ``LARGE_BUDGET`` NFE or more, or None to skip those budgets). A point costs ~2.5 min at 256
#: NFE, so large budgets try the step size λ alone and, for the isotropic prior, also with the
#: narrowest prior or applied only below σ̂ = ``STEP_SIZE_BELOW`` (λ > 1 from the wide default
#: prior throws atoms out; see the docs).
PRIOR_SIGMAS = (5.0, 3.0, 2.0, 1.5)
NOISE_SCALES = (0.0, 0.2, 0.4)
STEP_SIZES = (1.3, 1.6)
#: DD+shape (η = 0, strictness 1) at few NFE: longer steps with each atom's overshoot past x̂₀
#: capped (``max_overshoot``, Å), against the atoms λ > 1.6 throws out.
OVERSHOOT_STEP_SIZES = (1.6, 1.7, 1.8)
MAX_OVERSHOOTS = (0.1, 0.2, 0.3)
STEP_SIZE_BELOW = (1.0, 0.3)
LARGE_BUDGET = 64


def with_step_sizes(grid: list[dict]) -> list[dict]:
    """``grid`` followed by each of its settings with each of :data:`STEP_SIZES`."""
    return [*grid, *({**options, "step_size": step} for step in STEP_SIZES for options in grid)]


EDM_GRID = [{}, *({"sigma_max": s, "rho": r} for s in PRIOR_SIGMAS for r in (3.0, 7.0))]
STEP_GRID = with_step_sizes([{}])
ISOTROPIC_STEP_GRID = [*with_step_sizes([{}, {"prior_sigma": PRIOR_SIGMAS[-1]}]),
                       *({"step_size": step, "step_size_below": below}
                         for below in STEP_SIZE_BELOW for step in STEP_SIZES)]
TUNING = [
    ("GPFF DD", "qm9", "dd", None,
     with_step_sizes([{}, *({"prior_sigma": s} for s in PRIOR_SIGMAS)]), ISOTROPIC_STEP_GRID),
    ("GPFF SDD", "qm9", "sdd", None,
     with_step_sizes([{}, *({"noise_scale": e} for e in NOISE_SCALES),
                      *({"prior_sigma": s, "noise_scale": e}
                        for s in PRIOR_SIGMAS for e in (0.1, *NOISE_SCALES))]),
     ISOTROPIC_STEP_GRID),
    ("GPFF SDD+shape", "qm9", "sdd", "gmm",
     [*with_step_sizes([{}, *({"noise_scale": e, "strictness": c}
                            for e in (0.1, *NOISE_SCALES) for c in (0.5, 1.0)
                            if (e, c) != (0.1, 1.0))]),
      *({"noise_scale": 0.0, "strictness": 1.0, "step_size": step, "max_overshoot": cap}
        for step in OVERSHOOT_STEP_SIZES for cap in MAX_OVERSHOOTS)], STEP_GRID),
    ("GPFF ancestral", "qm9", "ancestral", None, EDM_GRID, None),
    ("EDM baseline ancestral", "qm9-baseline", "ancestral", None, EDM_GRID, None),
]
#: Histogram bins of the JS divergences (the paper's 100 bins would be mostly empty with the
#: quick run's few molecules).
BINS = 20


def pick_formulas(qm9, test: np.ndarray, count: int) -> list[tuple]:
    """The ``count`` most frequent formulas of QM9's test split, each with its test molecules
    and the atomic numbers to generate (QM9's atom order, from the first of them):
    [(formula, [molecule index, ...], numbers)]."""
    from ase.symbols import Symbols

    by_formula: dict[str, list[int]] = {}
    for m in test:
        by_formula.setdefault(Symbols(qm9[m][0]).get_chemical_formula(), []).append(int(m))
    chosen = sorted(by_formula, key=lambda f: (-len(by_formula[f]), f))[:count]
    return [(f, by_formula[f], qm9[by_formula[f][0]][0]) for f in chosen]


def held_out_formulas(qm9, test: np.ndarray, count: int) -> list[tuple]:
    """The ``count`` formulas that follow the benchmark's ``count`` in :func:`pick_formulas`'s
    order: training stages (``--diagnose``) and sampler settings (``--tune``) are chosen on
    these, so the benchmark's figures are not what the choice was fitted to."""
    return pick_formulas(qm9, test, 2 * count)[count:]


def xtb_energies(frames) -> np.ndarray:
    """GFN2-xTB energies (eV) of molecules (tblite)."""
    from ase.calculators.calculator import CalculationFailed, InputError
    from tblite.ase import TBLite

    energies = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        try:
            energies.append(atoms.get_potential_energy())
        except (CalculationFailed, InputError):  # SCF failure on a broken geometry
            energies.append(np.nan)
    return np.array(energies)


def run_point(model, formulas, per_formula: int, sampler: str, nfe: int, adaptive: bool,
              shape, seed: int, options: dict | None = None):
    """Generate ``per_formula`` molecules of each formula (``options`` go to
    :meth:`PseudoForceField.generate`); (frames, seconds, mean NFE)."""
    from ase import Atoms

    frames, seconds = [], 0.0
    for k, (_, _, numbers) in enumerate(formulas):
        start = time.perf_counter()
        frames += model.generate(Atoms(numbers=numbers), per_formula, sampler=sampler, nfe=nfe,
                                 adaptive=adaptive, shape=shape, seed=seed + 1000 * k,
                                 **(options or {}))
        seconds += time.perf_counter() - start
    return frames, seconds, float(np.mean([a.info["nfe"] for a in frames]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, help="molecules per point (quick 64, full 1000)")
    parser.add_argument("--formulas", type=int, default=2,
                        help="the most frequent formulas of the test split to generate")
    parser.add_argument("--xtb", type=int, default=48, help="molecules per side for xTB energies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "bench_out" / "gpff_qm9.json"))
    parser.add_argument("--configs", nargs="*", help="labels to run (default all)")
    parser.add_argument("--nfe", type=int, nargs="*",
                        help="budgets to run (default: all of the mode's; a later run with "
                             "other budgets adds to the same results)")
    parser.add_argument("--options", type=json.loads, default={},
                        help="sampler settings for every configuration run, as JSON options of "
                             "generate (e.g. '{\"step_size\": 1.3}'); stored as points of their "
                             "own, labelled with them")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--ethanol", action="store_true",
                        help="only the single-molecule part: the QM9 GPFF fine-tuned on the "
                             "bundled ethanol training set, scored like benchmarks/ethanol.py")
    parser.add_argument("--ethanol-steps", type=int, default=600)
    parser.add_argument("--diagnose", nargs="+", metavar="LABEL=MODEL.pt",
                        help="only the diagnosis of GPFF checkpoints (pseudo-force error against "
                             "σ, DD from real QM9 geometries, failure classes at 256 NFE, "
                             "validity on the held-out formulas that training stages are "
                             "chosen on)")
    parser.add_argument("--tune", type=int, nargs="+", metavar="NFE",
                        help="only the search of sampler settings (prior width, SDD noise, EDM "
                             "schedule) at these budgets: chosen on the next two most frequent "
                             "test formulas, then measured on the benchmark's")
    parser.add_argument("--tune-n", type=int,
                        help=f"molecules per setting of --tune below {LARGE_BUDGET} NFE, where "
                             "a point costs seconds (default: -n)")
    args = parser.parse_args(argv)
    if args.ethanol:
        return ethanol(args)
    if args.diagnose:
        return diagnose(args)

    from ase_drift.datasets.qm9 import load_qm9, split
    from ase_drift.diffusion.pseudoforce import PseudoForceField
    from ase_drift.metrics.chemistry import max_pair_distance, validity, validity_fraction

    n = args.n or (64 if args.quick else 1000)
    nfes = NFE_QUICK if args.quick else NFE_FULL
    run_nfes = args.nfe or nfes
    qm9 = load_qm9()
    _, _, test = split(len(qm9), seed=0)
    formulas = pick_formulas(qm9, test, args.formulas)
    per_formula = max(1, n // len(formulas))
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("points", {})
    results["setup"] = {"molecules_per_point": per_formula * len(formulas),
                        "formulas": [f for f, _, _ in formulas], "nfe": list(nfes),
                        "quick": args.quick}
    models = {}

    def save():
        write_json(results_path, results)

    reference = [qm9.atoms(m) for _, members, _ in formulas for m in members]
    results["reference"] = {"molecules": len(reference),
                            "validity": validity_fraction(reference)}
    if args.tune:
        few_nfe_per_formula = max(1, (args.tune_n or n) // len(formulas))
        tune(args, results, models, formulas, held_out_formulas(qm9, test, len(formulas)),
             {"few_nfe": few_nfe_per_formula * len(formulas),
              "large_budget": per_formula * len(formulas)}, save)
        table = tuning_markdown(results)
        print(table)
        if not args.no_docs:
            write_section("pseudo-force-fields.md", "gpff-tuning", table)
        return
    for label, name, sampler, adaptive, shape in CONFIGS:
        if args.configs and label not in args.configs:
            continue
        if name not in models:
            models[name] = PseudoForceField.load_pretrained(name)
        point_label = f"{label} {json.dumps(args.options, sort_keys=True)}" if args.options \
            else label
        for nfe in run_nfes:
            key = f"{point_label} @ {nfe}"
            if key in results["points"]:
                continue
            frames, seconds, spent = run_point(models[name], formulas, per_formula, sampler,
                                               nfe, adaptive, shape, args.seed, args.options)
            point = {"label": point_label, "nfe_budget": nfe, "nfe_mean": spent,
                     "validity": validity_fraction(frames),
                     "molecules_per_s": len(frames) / seconds, "options": args.options}
            if point_label in DISTRIBUTION_CONFIGS and nfe == max(nfes):
                point["mpd"] = max_pair_distance(frames).tolist()
                valid = [a for a in frames if validity(a).valid][:args.xtb]
                point["xtb"] = {"formula": [a.get_chemical_formula() for a in valid],
                                "energy": xtb_energies(valid).tolist()}
            results["points"][key] = point
            save()
            print(f"{key}: validity {point['validity']:.3f}, {point['molecules_per_s']:.1f} "
                  f"mol/s", flush=True)
    if args.options:  # the tables show the default settings; these points are printed above
        save()
        return
    distributions(results, reference, args)
    save()
    table = markdown(results)
    print(table)
    if not args.no_docs:
        write_section("pseudo-force-fields.md", "gpff-qm9", table)
        write_section("pseudo-force-fields.md", "gpff-training", training_table())


def best_setting(scores: list[tuple[dict, float]]) -> tuple[dict, float]:
    """The (options, validity) of highest validity; ties go to the earlier (the grid's default
    comes first)."""
    return max(scores, key=lambda item: item[1])


def tune(args, results: dict, models: dict, formulas, tuning_formulas, molecules: dict,
         save) -> None:
    """``--tune``: each grid of :data:`TUNING` at each budget on ``tuning_formulas``
    (:func:`held_out_formulas`), then the best setting and the default on the benchmark's
    ``formulas`` with the benchmark's seeds; stored in ``results["tuning"]`` as measured (a
    rerun resumes). ``molecules``: per setting, ``{"few_nfe": below LARGE_BUDGET,
    "large_budget": at it and above}``; a results file keeps the counts it was tuned with."""
    from ase_drift.diffusion.pseudoforce import PseudoForceField
    from ase_drift.metrics.chemistry import validity_fraction

    tuning = results.setdefault("tuning", {"formulas": [f for f, _, _ in tuning_formulas],
                                           "search": {}, "chosen": {}})
    stored = tuning.setdefault("molecules", molecules)
    if stored != molecules:
        raise SystemExit(f"{args.results} was tuned with {stored} molecules per setting, not "
                         f"{molecules}: pass another --results")
    for nfe in args.tune:
        for label, name, sampler, shape, few_nfe_grid, large_budget_grid in TUNING:
            few_nfe = nfe < LARGE_BUDGET
            grid = few_nfe_grid if few_nfe else large_budget_grid
            if grid is None or (args.configs and label not in args.configs):
                continue
            per_formula = molecules["few_nfe" if few_nfe else "large_budget"] // len(formulas)
            if name not in models:
                models[name] = PseudoForceField.load_pretrained(name)
            model = models[name]
            scores = []
            for options in grid:
                key = f"{label} @ {nfe} {json.dumps(options, sort_keys=True)}"
                if key not in tuning["search"]:
                    frames, _, _ = run_point(model, tuning_formulas, per_formula, sampler, nfe,
                                             False, shape, args.seed, options)
                    tuning["search"][key] = validity_fraction(frames)
                    save()
                scores.append((options, tuning["search"][key]))
            options, score = best_setting(scores)
            key = f"{label} @ {nfe}"
            if tuning["chosen"].get(key, {}).get("options") != options:
                frames, seconds, _ = run_point(model, formulas, per_formula, sampler, nfe, False,
                                               shape, args.seed, options)
                validity = validity_fraction(frames)
                default_validity = validity if options == grid[0] else validity_fraction(
                    run_point(model, formulas, per_formula, sampler, nfe, False, shape,
                              args.seed, grid[0])[0])
                tuning["chosen"][key] = {"label": label, "nfe": nfe, "options": options,
                                         "tuning_validity": score,
                                         "default_tuning_validity": scores[0][1],
                                         "validity": validity,
                                         "default_validity": default_validity,
                                         "molecules_per_s": len(frames) / seconds}
                save()
            chosen = tuning["chosen"][key]
            print(f"{key}: {options or 'default'} {score:.3f} on the tuning formulas, "
                  f"{chosen['validity']:.3f} on the benchmark's", flush=True)


def tuning_markdown(results: dict) -> str:
    """The ``--tune`` results: per sampler and budget the chosen setting, its validity on the
    tuning formulas against the default's, and on the benchmark formulas against the default
    measured beside it (or, in results from before it was, the benchmark's default point)."""
    tuning = results["tuning"]
    size = results["setup"]["molecules_per_point"]
    molecules = tuning.get("molecules", {"few_nfe": size, "large_budget": size})
    counts = (f"{molecules['few_nfe']} molecules per setting" if len(set(molecules.values())) == 1
              else f"{molecules['few_nfe']} molecules per setting below {LARGE_BUDGET} NFE, "
                   f"{molecules['large_budget']} from {LARGE_BUDGET} on")
    lines = [(f"Settings chosen on {', '.join(tuning['formulas'])} ({counts}), then measured "
              f"on the benchmark's {', '.join(results['setup']['formulas'])} with its seeds:"), "",
             ("| sampler | NFE | chosen setting | tuning: chosen (default) | benchmark: chosen "
              "(default) |"), "|---|---:|---|---:|---:|"]
    for key, chosen in tuning["chosen"].items():
        default = chosen.get("default_validity",
                             results["points"].get(key, {}).get("validity"))
        setting = ", ".join(f"{k} {v:g}" for k, v in chosen["options"].items()) or "default"
        lines.append(f"| {chosen['label']} | {chosen['nfe']} | {setting} | "
                     f"{chosen['tuning_validity']:.2f} ({chosen['default_tuning_validity']:.2f}) "
                     f"| {chosen['validity']:.2f} "
                     f"({'–' if default is None else f'{default:.2f}'}) |")
    return "\n".join(lines)


def validation_summary(record: dict) -> str:
    """First → last validation loss of each run of training stages with the same noise
    distribution (the loss is an average over that distribution: across distributions it is
    not comparable)."""
    history, model = record["history"], record["model"]
    stages = record.get("stages") or [{"from_step": 0, "steps": record["steps"]}]
    segments: list[tuple[tuple, list]] = []
    for step, loss in zip(history["validation_step"], history["validation_loss"]):
        stage = next((s for s in stages if s["from_step"] < step <= s["from_step"] + s["steps"]),
                     stages[-1])
        noise = stage.get("noise", model)
        key = (noise["p_mean"], noise["p_std"])
        if not segments or segments[-1][0] != key:
            segments.append((key, []))
        segments[-1][1].append((step, loss))
    return "; ".join(
        f"{points[0][1]:.2f} (step {points[0][0]:,}) → {points[-1][1]:.2f} (step "
        f"{points[-1][0]:,})" + (f", ln σ ~ N({mean:g}, {std:g}²)" if len(segments) > 1 else "")
        for (mean, std), points in segments)


def training_table() -> str:
    """The shipped models' training records (the JSON files ``make_gpff_qm9`` writes beside
    them) as a markdown table."""
    from ase_drift.datasets import bundled_path

    lines = [("| model | steps (batch 32) | wall time | training loss, first → last 50 steps | "
              "validation loss (EMA), first → last checkpoint |"), "|---|---:|---:|---|---|"]
    for label, name in (("GPFF", "gpff-qm9.pt"), ("EDM baseline", "gpff-qm9-baseline.pt")):
        path = bundled_path(name)
        record = json.loads(path.with_suffix(".json").read_text())
        history = record["history"]
        lines.append(
            f"| {label} (`{name}`, {path.stat().st_size / 1000:.0f} kB) | {record['steps']:,} | "
            f"{record['wall_time_s'] / 60:.1f} min | {history['loss'][0]:,.1f} → "
            f"{history['loss'][-1]:.1f} | {validation_summary(record)} |")
    return "\n".join(lines)


def distributions(results: dict, reference, args) -> None:
    """Max-pair-distance JS against QM9 (all generated molecules) and GFN2-xTB energy JS (valid
    ones, energies relative to each formula's mean QM9 energy) of the configurations of
    :data:`DISTRIBUTION_CONFIGS` at the largest NFE.

    The bins span the QM9 reference's range and values beyond it count in the edge bins: on the
    pooled range one molecule that lost an atom to 10⁴ Å would put every other one in a single
    bin and the JS would read ≈ 0."""
    from ase_drift.metrics.chemistry import histogram_js, max_pair_distance, sample_range

    nfe = max(results["setup"]["nfe"])
    reference_mpd = max_pair_distance(reference)
    mpd_range = sample_range(reference_mpd)
    if "reference_energies" not in results:
        pick = np.random.default_rng(args.seed).choice(len(reference),
                                                       min(args.xtb, len(reference)),
                                                       replace=False)
        results["reference_energies"] = {
            "formula": [reference[i].get_chemical_formula() for i in pick],
            "energy": xtb_energies([reference[i] for i in pick]).tolist()}

    def relative(xtb: dict) -> np.ndarray:
        ref = results["reference_energies"]
        mean = {f: np.nanmean([e for g, e in zip(ref["formula"], ref["energy"]) if g == f])
                for f in set(ref["formula"])}
        values = np.array([e - mean[f] for f, e in zip(xtb["formula"], xtb["energy"])
                           if f in mean])
        return values[np.isfinite(values)]

    reference_relative = relative(results["reference_energies"])
    # noise floor: as many QM9 molecules as a point generates (at most half of them), against
    # the other ones
    size = min(results["setup"]["molecules_per_point"], len(reference) // 2)
    part = np.random.default_rng(args.seed).permutation(len(reference))
    stats = {"QM9 reference": {"mpd_median": float(np.median(reference_mpd)),
                               "molecules": len(reference)},
             f"QM9 noise floor ({size} vs the other test molecules)": {
                 "mpd_js": histogram_js(reference_mpd[part[:size]], reference_mpd[part[size:]],
                                        bins=BINS, range=mpd_range),
                 "mpd_median": float(np.median(reference_mpd[part[:size]]))}}
    for label in DISTRIBUTION_CONFIGS:
        point = results["points"].get(f"{label} @ {nfe}")
        if point is None or "mpd" not in point:
            continue
        mpd = np.array(point["mpd"])
        entry = {"mpd_js": histogram_js(mpd, reference_mpd, bins=BINS, range=mpd_range),
                 "mpd_median": float(np.median(mpd))}
        energies = relative(point["xtb"])
        if len(energies) >= 5:
            entry.update(energy_js=histogram_js(energies, reference_relative, bins=BINS,
                                                range=sample_range(reference_relative)),
                         energy_median_eV=float(np.median(energies)),
                         energy_molecules=len(energies))
        stats[label] = entry
    results["distributions"] = stats


DIAGNOSIS_SIGMAS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
DIAGNOSIS_DD_STEPS = (1, 3, 10, 30)


def kabsch_rmsd(x, y) -> float:
    """RMSD (Å) between two conformations ``[A, 3]`` after optimal superposition (rotation,
    reflection excluded)."""
    x, y = x - x.mean(0), y - y.mean(0)
    u, _, vt = np.linalg.svd(x.T @ y)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return float(np.sqrt(((x @ (u @ flip @ vt) - y) ** 2).sum(1).mean()))


def diagnose_model(model, qm9, test, formula, seed: int = 0, n: int = 64) -> dict:
    """Where a GPFF fails, on ``n`` random test molecules of QM9 and 32 generated molecules of
    ``formula`` (QM9 atom order) at 256 NFE:

    * pseudo-force error against σ: RMS per coordinate (Å) of F_θ(x₀ + σε) − F (aligned
      targets, Eq. 8) and its norm relative to ‖F‖;
    * linear response against σ: the fraction a = −⟨F_θ(x₀ + δ) − F_θ(x₀), δ⟩ / ‖δ‖² of a
      displacement δ = σε (centred) that the field undoes (an exact one: 1 at small σ; DD's
      step size λ contracts the error fastest near 1/a);
    * DD started at the real geometries (σ = 0): validity and Kabsch RMSD to the start after
      1, 3, 10, 30 steps (an exact field keeps them; a biased one drifts to its own fixed
      points);
    * DD and SDD at 256 NFE: outcome counts of :func:`validity` and the final σ̂ (Eq. 18), which
      says whether DD converged.
    """
    import torch
    from ase import Atoms

    from ase_drift.diffusion.pseudoforce import pseudo_force_targets
    from ase_drift.metrics.chemistry import validity, validity_counts

    rng = np.random.default_rng(seed)
    chosen = rng.choice(test, n, replace=False)
    force = {}
    at_minimum = {}  # molecule -> F_θ(x₀) [A, 3]
    for sigma in DIAGNOSIS_SIGMAS:
        rms, relative, response = [], [], []
        for m in chosen:
            numbers, x0 = qm9[m]
            x0 = x0 - x0.mean(0)
            eps = rng.normal(size=x0.shape)
            displacement = sigma * (eps - eps.mean(0))  # [A, 3]
            noisy = x0 + displacement
            predicted = model.pseudo_forces(numbers, noisy)
            target = pseudo_force_targets(torch.as_tensor(x0), torch.as_tensor(noisy),
                                          torch.as_tensor(numbers),
                                          torch.zeros(len(numbers), dtype=torch.long)).numpy()
            rms.append(np.sqrt(((predicted - target) ** 2).mean()))
            if sigma > 0:
                relative.append(np.linalg.norm(predicted - target) / np.linalg.norm(target))
                if m not in at_minimum:
                    at_minimum[m] = model.pseudo_forces(numbers, x0)
                response.append(-np.sum((predicted - at_minimum[m]) * displacement)
                                / np.sum(displacement**2))
        force[str(sigma)] = {"rms": float(np.median(rms)),
                             "relative": float(np.median(relative)) if relative else None,
                             "response": float(np.median(response)) if response else None}
    drift = {str(k): {"valid": 0, "rmsd": []} for k in DIAGNOSIS_DD_STEPS}
    for m in chosen:
        numbers, x0 = qm9[m]
        x = x0.copy()
        for step in range(1, max(DIAGNOSIS_DD_STEPS) + 1):
            x = x + model.pseudo_forces(numbers, x)
            if step in DIAGNOSIS_DD_STEPS:
                drift[str(step)]["valid"] += int(validity((numbers, x)).valid)
                drift[str(step)]["rmsd"].append(kabsch_rmsd(x, x0))
    for entry in drift.values():
        entry["rmsd"] = float(np.median(entry["rmsd"]))
    generated = {}
    for sampler in ("dd", "sdd"):
        frames = model.generate(Atoms(numbers=formula), 32, sampler=sampler, nfe=256, seed=seed)
        sigma_hat = np.array([a.info["sigma_hat"] for a in frames])
        generated[sampler] = {"counts": validity_counts(frames),
                              "sigma_hat_median": float(np.median(sigma_hat)),
                              "sigma_hat_max": float(sigma_hat.max())}
    return {"molecules": n, "force_error": force, "dd_from_qm9": drift, "generated": generated}


#: (sampler, shape, NFE) of the model choice between training stages (:func:`selection_validity`)
SELECTION_POINTS = (("sdd", "gmm", 6), ("sdd", None, 16), ("sdd", None, 256), ("dd", None, 256))
SELECTION_PER_FORMULA = 48


def selection_validity(model, formulas, seed: int,
                       per_formula: int = SELECTION_PER_FORMULA) -> dict:
    """Validity at :data:`SELECTION_POINTS` on ``formulas`` (:func:`held_out_formulas`; pass
    other seeds than the benchmark's)."""
    from ase_drift.metrics.chemistry import validity_fraction

    result = {}
    for sampler, shape, nfe in SELECTION_POINTS:
        frames, _, _ = run_point(model, formulas, per_formula, sampler, nfe, False, shape, seed)
        result[f"{sampler.upper()}{'+shape' if shape else ''} @ {nfe}"] = validity_fraction(frames)
    return result


def diagnose(args) -> None:
    """``--diagnose LABEL=MODEL.pt …``: :func:`diagnose_model` and :func:`selection_validity`
    for each checkpoint, stored in ``benchmarks/results/gpff_diagnosis.json`` and written to
    the docs."""
    from ase_drift.datasets.qm9 import load_qm9, split
    from ase_drift.diffusion.pseudoforce import PseudoForceField

    qm9 = load_qm9()
    _, _, test = split(len(qm9), seed=0)
    (formula_name, _, formula), = pick_formulas(qm9, test, 1)
    selection_formulas = held_out_formulas(qm9, test, args.formulas)
    path = ROOT / "benchmarks" / "results" / "gpff_diagnosis.json"
    for item in args.diagnose:
        label, _, model_path = item.partition("=")
        if not model_path:
            raise SystemExit(f"--diagnose takes LABEL=MODEL.pt, got {item!r}")
        model = PseudoForceField.load(model_path)
        entry = dict(diagnose_model(model, qm9, test, formula, args.seed),
                     steps=model.metadata.get("training", {}).get("steps"), formula=formula_name,
                     selection=selection_validity(model, selection_formulas, args.seed + 100),
                     selection_formulas=[f for f, _, _ in selection_formulas],
                     selection_molecules=SELECTION_PER_FORMULA * len(selection_formulas))
        # read just before writing: diagnoses of several models may run side by side
        results = json.loads(path.read_text()) if path.exists() else {}
        results[label] = entry
        write_json(path, results)
    table = diagnosis_markdown(results)
    print(table)
    if not args.no_docs:
        write_section("pseudo-force-fields.md", "gpff-diagnosis", table)


def diagnosis_markdown(results: dict) -> str:
    labels = list(results)
    lines = ["| | " + " | ".join(f"{k} ({results[k]['steps']:,} steps)" for k in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    first = results[labels[0]]
    for sigma in first["force_error"]:
        cells = []
        for k in labels:
            error = results[k]["force_error"][sigma]
            cells.append(f"{error['rms']:.4f} Å" + (f" ({error['relative']:.2f})"
                                                     if error["relative"] is not None else ""))
        lines.append(f"| pseudo-force error at σ = {sigma} Å, RMS per coordinate (relative) | "
                     + " | ".join(cells) + " |")
    for sigma in first["force_error"]:
        cells = [f"{results[k]['force_error'][sigma]['response']:.2f}"
                 if results[k]["force_error"][sigma].get("response") is not None else "–"
                 for k in labels]
        if any(cell != "–" for cell in cells):
            lines.append(f"| fraction of a displacement of σ = {sigma} Å undone (linear "
                         f"response; an exact field: 1 at small σ) | " + " | ".join(cells) + " |")
    for steps in first["dd_from_qm9"]:
        cells = [f"{results[k]['dd_from_qm9'][steps]['valid']}/{results[k]['molecules']}, "
                 f"{results[k]['dd_from_qm9'][steps]['rmsd']:.3f} Å" for k in labels]
        lines.append(f"| DD from real QM9 geometries, {steps} steps: valid, RMSD to start | "
                     + " | ".join(cells) + " |")
    for sampler in first["generated"]:
        cells = []
        for k in labels:
            run = results[k]["generated"][sampler]
            failures = ", ".join(f"{n} {reason}" for reason, n in run["counts"].items()
                                 if n and reason != "valid")
            cells.append(f"{run['counts']['valid']}/32 valid ({failures}); σ̂ "
                         f"{run['sigma_hat_median']:.4f} Å (max {run['sigma_hat_max']:.4f})")
        lines.append(f"| {sampler.upper()}, 256 NFE, 32 × {first['formula']}: outcome, final σ̂ "
                     f"median | " + " | ".join(cells) + " |")
    selected = [results[k] for k in labels if "selection" in results[k]]
    for point in selected[0]["selection"] if selected else ():
        cells = [f"{results[k]['selection'][point]:.2f}" if "selection" in results[k] else "–"
                 for k in labels]
        lines.append(f"| validity, {point.replace('@', 'at')} NFE, "
                     f"{selected[0]['selection_molecules']} × "
                     f"{' and '.join(selected[0]['selection_formulas'])} (the model choice) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


ETHANOL_SAMPLERS = (("stochastic-heun", 64), ("sdd", 64))


def ethanol(args) -> None:
    """Single-molecule use (:meth:`PseudoForceField.train_conformers`): the shipped QM9 GPFF
    fine-tuned on ethanol's biased training set (3,000 frames, GFN2-xTB 500 K), 1,000 samples
    per sampler scored against the reference with :func:`ase_drift.metrics.evaluate` (pair
    distance TVD, energy W1 in kT from GFN2-xTB) as benchmarks/ethanol.py does."""
    from ase import Atoms

    from ase_drift.datasets import load
    from ase_drift.diffusion.pseudoforce import PseudoForceField, TrainingConfig
    from ase_drift.metrics import evaluate
    from benchmarks.ethanol import DATASET, N_SAMPLES

    train_set, reference = load(DATASET)
    kw = {"reference_energies": reference.energies, "temperature_K": reference.temperature_K}
    results_path = Path(args.results).with_name("gpff_ethanol.json")
    start = time.perf_counter()
    sampler = PseudoForceField.train_conformers(
        train_set, TrainingConfig(steps=args.ethanol_steps, minutes=None, seed=args.seed),
        base=PseudoForceField.load_pretrained("qm9"))
    rows = {"training": {"steps": args.ethanol_steps,
                         "seconds": round(time.perf_counter() - start, 1)},
            "training set (biased, 3,000 frames)": evaluate(
                train_set.positions, reference.positions, reference.numbers,
                energies=train_set.energies, **kw).as_dict()}
    for name, nfe in ETHANOL_SAMPLERS:
        start = time.perf_counter()
        samples = sampler.sample_positions(N_SAMPLES, seed=args.seed, sampler=name, nfe=nfe)
        seconds = time.perf_counter() - start
        report = evaluate(samples, reference.positions, reference.numbers)
        # GFN2-xTB fails to converge on a few broken samples: energy W1 over the others
        energies = xtb_energies([Atoms(numbers=reference.numbers, positions=x)
                                 for x in samples])
        ok = np.isfinite(energies)
        energy_w1 = evaluate(samples[ok], reference.positions, reference.numbers,
                             energies=energies[ok], **kw).energy_w1
        rows[f"GPFF {name} {nfe} NFE"] = dict(report.as_dict(), energy_w1=energy_w1,
                                              xtb_failed=int((~ok).sum()),
                                              sample_1000_s=seconds)
        results_path.write_text(json.dumps(rows, indent=1))
        print(f"{name}: TVD {report.tvd:.3f}, energy W1 {energy_w1:.2f} kT", flush=True)
    lines = [("| ethanol (GFN2-xTB, 500 K) | TVD | energy W1 (kT) | bond stability | s / 1,000 "
             "| xTB failures |"), "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        if name != "training":
            seconds = f"{row['sample_1000_s']:.1f}" if "sample_1000_s" in row else "–"
            lines.append(f"| {name} | {row['tvd']:.3f} | {row['energy_w1']:.2f} | "
                         f"{row['bond_stability']:.3f} | {seconds} | "
                         f"{row.get('xtb_failed', 0)} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        write_section("pseudo-force-fields.md", "gpff-ethanol", table)


def fixed_validity_at(points: dict, label: str, nfe: float) -> float | None:
    """Validity of the fixed-schedule sampler ``label`` at ``nfe`` evaluations spent, linear
    between its two measured points around it (None outside them)."""
    curve = sorted((p["nfe_mean"], p["validity"]) for p in points.values() if p["label"] == label)
    spent = [c[0] for c in curve]
    if not curve or not spent[0] <= nfe <= spent[-1]:
        return None
    return float(np.interp(nfe, spent, [c[1] for c in curve]))


def matched_nfe_lines(points: dict) -> list[str]:
    """Each adaptive point against its fixed sampler at the same mean NFE spent (the paper's
    Fig. 4 plots validity against NFE spent: an adaptive run that stops early at a budget is
    compared with a fixed run of as many evaluations)."""
    rows = []
    for label, *_ in CONFIGS:
        fixed = label.removesuffix(" AS")
        if fixed == label:
            continue
        for point in sorted((p for p in points.values() if p["label"] == label),
                            key=lambda p: p["nfe_budget"]):
            reference = fixed_validity_at(points, fixed, point["nfe_mean"])
            if reference is not None:
                rows.append(f"| {label} | {point['nfe_budget']} | {point['nfe_mean']:.1f} | "
                            f"{point['validity']:.2f} | {reference:.2f} |")
    if not rows:
        return []
    return ["", ("Adaptive against fixed at the same NFE spent (fixed: linear between its two "
                 "measured points around it):"), "",
            "| adaptive sampler | budget | mean NFE spent | validity | fixed, same NFE |",
            "|---|---:|---:|---:|---:|", *rows]


def markdown(results: dict) -> str:
    nfes = results["setup"]["nfe"]
    points = results["points"]
    lines = [(f"Molecules per point: {results['setup']['molecules_per_point']} "
             f"({len(results['setup']['formulas'])} formulas of QM9's test split: "
             f"{', '.join(results['setup']['formulas'])}); QM9's own validity under the same "
             f"check: {results['reference']['validity']:.3f} "
             f"({results['reference']['molecules']} test molecules of these formulas)."), "",
             ("Validity against the NFE budget (in brackets: mean NFE spent, when below the budget: "
             "adaptive runs stop early, Heun-type samplers spend 2N − 1):"), "",
             "| sampler | " + " | ".join(str(k) for k in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for label, *_ in CONFIGS:
        cells = []
        for nfe in nfes:
            point = points.get(f"{label} @ {nfe}")
            if point is None:
                cells.append("–")
                continue
            spent = (f" ({point['nfe_mean']:.1f})" if point["nfe_mean"] < nfe - 0.05 else "")
            cells.append(f"{point['validity']:.2f}{spent}")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += matched_nfe_lines(points)
    lines += ["", "Generation speed (molecules/s, one thread):", "",
              "| sampler | " + " | ".join(str(k) for k in nfes) + " |",
              "|---|" + "---:|" * len(nfes)]
    for label, *_ in CONFIGS:
        cells = [f"{points[f'{label} @ {k}']['molecules_per_s']:.1f}"
                 if f"{label} @ {k}" in points else "–" for k in nfes]
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    stats = results.get("distributions", {})
    if stats:
        ref = stats.get("QM9 reference", {})
        lines += ["", (f"Distributions at {max(nfes)} NFE against QM9 (JS divergence, natural log, "
                      f"{BINS} bins; max pair distance of all generated molecules, GFN2-xTB "
                      f"energy of valid ones relative to each formula's mean QM9 energy; QM9's "
                      f"median max pair distance {ref.get('mpd_median', float('nan')):.2f} Å):"), "",
                  ("| sampler | MPD JS | median MPD (Å) | energy JS | median ΔE (eV) | molecules "
                  "(xTB) |"), "|---|---:|---:|---:|---:|---:|"]
        for label in (*(k for k in stats if k.startswith("QM9 noise")), *DISTRIBUTION_CONFIGS):
            if label in stats:
                s = stats[label]
                energy = (f"{s['energy_js']:.3f} | {s['energy_median_eV']:.2f} | "
                          f"{s['energy_molecules']}" if "energy_js" in s else "– | – | –")
                lines.append(f"| {label} | {s['mpd_js']:.3f} | {s['mpd_median']:.2f} | "
                             f"{energy} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
