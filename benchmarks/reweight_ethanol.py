"""Importance reweighting of one-step ethanol samples with a learned likelihood (BoltzNCE
behind a drift sampler) and GFN2-xTB energies: ESS, distance TVD, mean energy and the
hydroxyl trans/gauche free energy, weighted against unweighted, beside the reference MD.

    OMP_NUM_THREADS=1 python -m benchmarks.reweight_ethanol          # ≈ 1 h, 3 seeds
    python -m benchmarks.reweight_ethanol --quick                    # seed 0 only
    python -m benchmarks.reweight_ethanol --seeds --unbiased 0 1 2 --results u.json  # run 0 → 1
    python -m benchmarks.reweight_ethanol --table-only --docs        # re-tabulate, write docs

Per seed s: a drift sampler (default field, the paper's distance map, 4,000 steps on the
bundled biased set; with ``--unbiased``, another trained 20,000 steps on reference run 0 and
scored against run 1; both kept in ``bench_out/``) draws 200,000 frames on which an
:class:`~ase_drift.likelihood.NCEDensity` is fitted (defaults but a 128-wide, 3-block net,
batches of 512 for 12,000 steps) on internal coordinates (the default, Eq. 14 of
docs/likelihoods.md) and another on pair distances (Eq. 7), then 10,000 fresh frames are
labelled with GFN2-xTB and weighted by each (Eq. 9). Sampling is cheap, so the density is fitted
on far more frames than are weighted: its tails must be right wherever a weighted frame lands
(20,000 frames and 3,000 steps gave the unbiased sampler's frames ESS 0.0013, 200,000 and 12,000
steps 0.083). Distance TVD
is the pooled pair-distance histogram's (100 bins on [0, 1.2 × the largest reference
distance]), weighted histograms for the weighted rows. The density check fits both kinds to
half of the reference MD and reads them on the other half. Results per seed go to
``benchmarks/results/reweight_ethanol.json`` as they finish.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase.geometry import get_dihedrals

from ase_drift import load as load_sampler
from ase_drift import units
from ase_drift.annealing import DEFAULT_STEP_SIZE, FORCE_DRIFT_STEP_SIZE, anneal_sampler
from ase_drift.datasets import load, reference_runs
from ase_drift.forces import label_positions
from ase_drift.likelihood import COORDINATES, NCEConfig, NCEDensity, log_volume_factor
from ase_drift.metrics import (
    block_bootstrap,
    noise_floor,
    normalised_histogram,
    pair_distances,
    reference_part,
    render_table,
)
from ase_drift.metrics.tables import Estimate
from ase_drift.reweighting import WeightedSamples, reweight, weighted_histogram
from ase_drift.training import ProgressBar, TrainConfig, Trainer
from benchmarks.common import PAPER_DISTANCES, ROOT, gfn2, write_json, write_section

DATASET = "ethanol-gfn2-500K"
SEEDS, TRAIN_STEPS, N_FIT, N_EVAL, BINS = (0, 1, 2), 4000, 200_000, 10_000, 100
N_FLOOR = 2000  # frames of the noise floor (≈ ESS × N_EVAL)
DENSITY = NCEConfig(hidden=128, depth=3, batch_size=512, steps=12_000)
ROW_NAMES = {"internal": "reweighted (internal coordinates)",
             "distances": "reweighted (pair distances)"}
RESULTS_PATH = ROOT / "benchmarks" / "results" / "reweight_ethanol.json"


#: Sampler kinds: file name stem and TrainConfig options. "biased": the bundled biased set, the
#: paper's distance map, 4,000 steps. "unbiased": reference run 0 (scored against run 1), the
#: default distance map without forces, 20,000 steps, as in the unbiased-floor ablation. "fk":
#: as "biased" with the paper's FK field (annealed only, ``--fk-seeds``).
SAMPLERS = {"biased": ("reweight-ethanol-drift", {"steps": TRAIN_STEPS, **PAPER_DISTANCES}),
            "unbiased": ("reweight-ethanol-unbiased-drift", {"field": "drift", "steps": 20_000}),
            "fk": ("reweight-ethanol-fk", {"field": "fk", "steps": TRAIN_STEPS,
                                            **PAPER_DISTANCES})}


def drift_sampler(train_set, seed: int, kind: str = "biased"):
    """The drift sampler of ``kind`` (:data:`SAMPLERS`) for ``seed``, trained once and kept on
    disk."""
    stem, options = SAMPLERS[kind]
    path = ROOT / "bench_out" / f"{stem}-seed{seed}.pt"
    if path.exists():
        return load_sampler(path)
    trainer = Trainer(train_set, TrainConfig(seed=seed, **options))
    trainer.attach(ProgressBar(options["steps"], desc=f"{kind} drift sampler, seed {seed}"), 1)
    sampler = trainer.run()
    path.parent.mkdir(parents=True, exist_ok=True)
    sampler.save(path)
    return sampler


def hydroxyl_torsion_atoms(reference) -> tuple[int, int, int, int]:
    """(H, O, C, C) of ethanol's hydroxyl torsion, by nearest neighbours in reference frame 0."""
    numbers, frame = reference.numbers, reference.positions[0]

    def closest(atom, element):
        others = [a for a in np.flatnonzero(numbers == element) if a != atom]
        return int(min(others, key=lambda a: np.linalg.norm(frame[a] - frame[atom])))

    oxygen = int(np.flatnonzero(numbers == 8)[0])
    carbon = closest(oxygen, 6)
    return closest(oxygen, 1), oxygen, carbon, closest(carbon, 6)


def hydroxyl_trans(positions, atoms) -> np.ndarray:
    """H–O–C–C torsion within 60° of 180° ``[n]`` bool (ethanol's trans rotamer)."""
    h, o, c, c2 = atoms
    p = np.asarray(positions, dtype=float)
    torsion = get_dihedrals(p[:, o] - p[:, h], p[:, c] - p[:, o], p[:, c2] - p[:, c])  # [n] °
    return (torsion > 120) & (torsion < 240)


def reference_histogram(reference) -> tuple[np.ndarray, float]:
    """The reference's pooled pair-distance histogram ``[BINS]`` on [0, 1.2 × its largest
    distance], and that upper edge (Å)."""
    distances = pair_distances(reference.positions)
    max_distance = 1.2 * float(distances.max())
    return normalised_histogram(distances, BINS, (0, max_distance)), max_distance


def tvd(positions, reference_histogram, max_distance, weights=None) -> float:
    d = pair_distances(positions)
    weights = np.full(len(d), 1.0) if weights is None else weights
    p = weighted_histogram(d, weights, BINS, (0.0, max_distance))
    return 0.5 * float(np.abs(p - reference_histogram).sum())


def trans_free_energy(ws: WeightedSamples, atoms) -> list:
    """[ΔF, error] = F_gauche − F_trans (kT) of the hydroxyl rotamers; None when a rotamer is
    missing from the samples (ΔF infinite)."""
    try:
        return list(ws.free_energy_difference(lambda r: hydroxyl_trans(r, atoms),
                                              lambda r: ~hydroxyl_trans(r, atoms)))
    except ValueError:
        return [None, None]


def run_seed(seed: int, train_set, reference, source, kind: str = "biased") -> dict:
    numbers, temperature = reference.numbers, reference.temperature_K
    start = time.perf_counter()
    sampler = drift_sampler(train_set, seed, kind)
    trained = time.perf_counter()
    densities = {coordinates: NCEDensity.fit(sampler, n=N_FIT, config=DENSITY, seed=seed,
                                             coordinates=coordinates)
                 for coordinates in COORDINATES}
    fitted = time.perf_counter()
    positions = sampler.sample_positions(N_EVAL, seed=1000 + seed).astype(np.float64)
    log_q = {coordinates: density.log_prob(positions)
             for coordinates, density in densities.items()}
    energies = label_positions(source, numbers, positions, batch_size=256).energies
    labelled = time.perf_counter()
    weighted = {coordinates: reweight(positions, numbers, log_q[coordinates],
                                      energies=energies, temperature_K=temperature)
                for coordinates in COORDINATES}
    volume = log_volume_factor(positions, densities["distances"].scale.double().numpy())
    uniform = reweight(positions, numbers, -energies / units.kT(temperature),
                       energies=energies, temperature_K=temperature)  # log q = log π: w = 1/n
    ref_hist, max_distance = reference_histogram(reference)
    chirality = densities["internal"].chirality(positions)
    rows = {name: summary(ws, reference, ref_hist, max_distance) for name, ws in (("unweighted", uniform), *(
            (ROW_NAMES[coordinates], weighted[coordinates]) for coordinates in COORDINATES))}
    return {"rows": rows, "training_tvd": tvd(train_set.positions, ref_hist, max_distance),
            "reference_mean_energy_eV": float(reference.energies.mean()),
            "mirror_fraction": float(chirality.mirror.mean()),
            "inverted_fraction": float(chirality.inverted.mean()),
            "corr_logq_minus_E": {coordinates: float(np.corrcoef(log_q[coordinates],
                                                                 -energies)[0, 1])
                                  for coordinates in COORDINATES},
            "std_log_volume_factor": float(volume.std()),
            "std_reduced_energy": float(uniform.reduced_energies.std()),
            "seconds": {"train": trained - start, "fit": fitted - trained,
                        "label": labelled - fitted}}


def summary(ws: WeightedSamples, reference, ref_hist, max_distance: float) -> dict:
    """ESS, weighted distance TVD against ``reference`` (its :func:`reference_histogram`),
    mean energy and ΔF gauche − trans."""
    ev = units.kT(reference.temperature_K)
    return {"ess": ws.ess, "tvd": tvd(ws.positions, ref_hist, max_distance, ws.weights),
            "mean_energy_eV": list(ws.expectation(lambda r: ws.reduced_energies * ev)),
            "dF_gauche_trans": trans_free_energy(ws, hydroxyl_torsion_atoms(reference))}


def run_annealed(seed: int, train_set, reference, source, kind: str, steps: int, n: int,
                 drift: str, torsions: bool = False) -> dict:
    """``n`` fresh frames of the ``kind`` sampler annealed over ``steps`` levels (Eqs. 15–17)
    with its internal-coordinate density (fitted as in :func:`run_seed`, kept on disk),
    proposals drifting along the tempered target's gradient (``drift`` "exact") or F/kT
    ("force"), and with ``torsions`` a torsion move per level about each of ethanol's
    rotatable bonds (the methyl and the hydroxyl)."""
    sampler = drift_sampler(train_set, seed, kind)
    path = ROOT / "bench_out" / f"{SAMPLERS[kind][0]}-seed{seed}.internal.nce.pt"
    if path.exists():
        density = NCEDensity.load(path)
    else:
        density = NCEDensity.fit(sampler, n=N_FIT, config=DENSITY, seed=seed)
        density.save(path)
    start = time.perf_counter()
    result = anneal_sampler(sampler, density, n, forces=source, steps=steps, seed=1000 + seed,
                            temperature_K=reference.temperature_K,
                            step_size=DEFAULT_STEP_SIZE if drift == "exact" else FORCE_DRIFT_STEP_SIZE,
                            exact_drift=drift == "exact", torsion_moves=torsions)
    return {"row": summary(result.samples, reference, *reference_histogram(reference)),
            "reference_mean_energy_eV": float(reference.energies.mean()),
            "acceptance": float(result.acceptance.mean()), "n": n, "steps": steps,
            "drift": drift, "step_size": result.step_size, "torsion_moves": torsions,
            "torsion_acceptance": (float(np.mean(result.torsion_acceptance)) if torsions
                                   else None),
            "trans_fraction": float(np.sum(result.samples.weights * hydroxyl_trans(
                result.samples.positions, hydroxyl_torsion_atoms(reference)))),
            "seconds": time.perf_counter() - start}


def reference_row(train_set, reference) -> dict:
    """Training set and reference: TVD, mean energy (block-bootstrap error) and ΔF."""
    numbers, temperature = reference.numbers, reference.temperature_K
    ref_hist, max_distance = reference_histogram(reference)
    atoms, out = hydroxyl_torsion_atoms(reference), {}
    for name, data in (("training set", train_set), ("reference MD", reference)):
        trans = hydroxyl_trans(data.positions, atoms)
        dF = (block_bootstrap(lambda m: -np.log((1 - m.mean()) / m.mean()), trans)
              if 0 < trans.mean() < 1 else [None, None])  # one rotamer only: infinite
        out[name] = {"tvd": tvd(data.positions, ref_hist, max_distance),
                     "mean_energy_eV": list(block_bootstrap(np.mean, data.energies)),
                     "trans_fraction": float(trans.mean()), "dF_gauche_trans": list(dF)}
    floor = noise_floor(reference.positions, numbers, N_FLOOR, groups=reference_runs(DATASET),
                        n_repeats=2)
    out["noise floor"] = {"tvd": [float(np.mean([r.tvd for r in floor.reports])),
                                  float(np.std([r.tvd for r in floor.reports], ddof=1))]}
    out["temperature_K"] = temperature
    return out


def density_check(reference, coordinates: str) -> dict:
    """The density model alone: fitted to one half of the reference MD (alternate runs), whose
    frames are draws from π itself, and read on the other half. There log q̄ should equal
    −E/kT + const, and weights π/q̄ of those frames should be uniform (ESS 1): what remains is
    the model's error in 3A − 6 = 21 dimensions."""
    first = reference_part(len(reference.positions), reference_runs(DATASET))
    density = NCEDensity.fit(reference.positions[first], reference.numbers, config=DENSITY,
                             coordinates=coordinates)
    held_out = reference.positions[~first]
    energies = reference.energies[~first]
    log_q = density.log_prob(held_out)
    ws = reweight(held_out, reference.numbers, log_q, energies=energies,
                  temperature_K=reference.temperature_K)
    reduced = energies / units.kT(reference.temperature_K)
    return {"frames_fit": int(first.sum()), "frames_read": int((~first).sum()),
            "corr_logq_minus_E": float(np.corrcoef(log_q, -reduced)[0, 1]),
            "std_logq_plus_E_over_kT": float(np.std(log_q + reduced)),
            "std_E_over_kT": float(reduced.std()), "ess": ws.ess}


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def unbiased_table(results: dict) -> str:
    """The sampler trained on reference run 0, scored against run 1 (``--unbiased``)."""
    keys = sorted(k for k in results if k.startswith("unbiased seed "))
    if not keys:
        return ""
    header = ["samples (trained on run 0, scored on run 1)", "seeds", "ESS (fraction)",
              "distance TVD", "mean E − run 1 (meV)", "ΔF gauche−trans (kT)"]
    rows = []
    for name in ("unweighted", *ROW_NAMES.values()):
        runs = [results[k] for k in keys]
        rows.append([f"drift, {name}", len(runs), [r["rows"][name]["ess"] for r in runs],
                     [r["rows"][name]["tvd"] for r in runs],
                     [1000 * (r["rows"][name]["mean_energy_eV"][0]
                              - r["reference_mean_energy_eV"]) for r in runs],
                     [r["rows"][name]["dF_gauche_trans"][0] for r in runs]])
    annealed, timing = annealed_rows(results, "unbiased")
    rows += annealed
    rows.append(["run 0 itself", "—", "—", results[keys[0]]["training_tvd"], "—", "—"])
    minutes = " / ".join(f"{np.mean([results[k]['seconds'][s] for k in keys]) / 60:.1f}"
                         for s in ("train", "fit", "label"))
    return (render_table(header, rows, digits=[0, 0, 5, 3, 1, 2])
            + f"\n\nMinutes per seed (train / fit / label): {minutes}.{timing}")


def annealed_rows(results: dict, kind: str, sampler: str = "drift") -> tuple[list, str]:
    """Table rows of the ``kind`` sampler's annealed runs, one per setup (levels, drift,
    torsion moves) with its seeds, and a sentence of their wall times."""
    annealed = sorted(k for k in results if k.startswith(f"annealed {kind} "))

    def setup(r: dict) -> tuple:
        return r["steps"], r.get("drift", "force"), r.get("torsion_moves", False)

    rows = []
    for levels, drift, torsions in sorted({setup(results[k]) for k in annealed}):
        runs = [results[k] for k in annealed if setup(results[k]) == (levels, drift, torsions)]
        how = "∇log γ_k, ε 0.03 Å" if drift == "exact" else "F/kT, ε 0.02 Å"
        turns = (f", torsion moves accepted {np.mean([r['torsion_acceptance'] for r in runs]):.2f}"
                 if torsions else "")
        name = (f"{sampler}, annealed over {levels} levels ({how}; {runs[0]['n']:,} frames, "
                f"acceptance {np.mean([r['acceptance'] for r in runs]):.2f}{turns})")
        rows.append([name, len(runs),
                     [r["row"]["ess"] for r in runs], [r["row"]["tvd"] for r in runs],
                     [1000 * (r["row"]["mean_energy_eV"][0] - r["reference_mean_energy_eV"])
                      for r in runs], [r["row"]["dF_gauche_trans"][0] for r in runs]])
    timing = "".join(
        f" Annealing over {results[k]['steps']} levels "
        f"({results[k].get('drift', 'force')} drift"
        f"{', torsion moves' if results[k].get('torsion_moves') else ''}), seed "
        f"{k.split()[-1]}: {results[k]['seconds'] / 60:.1f} min." for k in annealed)
    return rows, timing


def table(results: dict) -> str:
    seeds = sorted(k for k in results if k.startswith("seed "))
    header = ["samples", "seeds", "ESS (fraction)", "distance TVD", "mean E − ref (meV)",
              "ΔF gauche−trans (kT)"]
    rows = []
    ref = results["reference"]
    ref_energy = ref["reference MD"]["mean_energy_eV"][0]
    for name in ("unweighted", *ROW_NAMES.values()):
        runs = [results[s]["rows"][name] for s in seeds]
        rows.append([f"drift, {name}", len(runs), [r["ess"] for r in runs],
                     [r["tvd"] for r in runs],
                     [1000 * (r["mean_energy_eV"][0] - ref_energy) for r in runs],
                     [r["dF_gauche_trans"][0] for r in runs]])
    annealed, timing = annealed_rows(results, "biased")
    rows += annealed
    annealed, fk_timing = annealed_rows(results, "fk", "FK sampler")
    rows += annealed
    timing += fk_timing
    for name in ("training set", "reference MD"):
        r = ref[name]
        rows.append([name, "—", "—", r["tvd"],
                     Estimate(1000 * (r["mean_energy_eV"][0] - ref_energy),
                              1000 * r["mean_energy_eV"][1]),
                     Estimate(*r["dF_gauche_trans"])])
    rows.append([f"noise floor ({N_FLOOR:,} frames)", "—", "—",
                 Estimate(*ref["noise floor"]["tvd"]), "—", "—"])
    text = render_table(header, rows, digits=[0, 0, 5, 3, 1, 2])
    per_seed = [results[s] for s in seeds]
    errors = [1000 * results[s]["rows"][ROW_NAMES["internal"]]["mean_energy_eV"][1]
              for s in seeds]
    corr = {c: np.mean([r["corr_logq_minus_E"][c] for r in per_seed]) for c in COORDINATES}
    notes = (f"\n\nBootstrap error of one seed's mean energy reweighted with internal "
             f"coordinates: {np.mean(errors):.1f} meV (mean over seeds); "
             f"mirror images among the samples: "
             f"{np.mean([r['mirror_fraction'] for r in per_seed]):.3f}, inverted centres: "
             f"{np.mean([r['inverted_fraction'] for r in per_seed]):.4f}; corr(log q, −E): "
             f"{corr['internal']:.2f} (internal), {corr['distances']:.2f} (distances); std of "
             f"Eq. 7's volume factor {np.mean([r['std_log_volume_factor'] for r in per_seed]):.2f} against "
             f"std(E/kT) {np.mean([r['std_reduced_energy'] for r in per_seed]):.2f}; minutes per "
             f"seed (train / fit / label): " + " / ".join(
                 f"{np.mean([r['seconds'][k] for r in per_seed]) / 60:.1f}"
                 for k in ("train", "fit", "label")) + "." + timing)
    for coordinates in COORDINATES:
        check = results.get(f"density check ({coordinates})")
        if check is None:
            continue
        notes += (f"\n\nThe density model on {coordinates} alone, fitted to "
                  f"{check['frames_fit']:,} reference frames (draws from π) and read on the "
                  f"other {check['frames_read']:,}: corr(log q̄, −E/kT) "
                  f"{check['corr_logq_minus_E']:.3f}, std(log q̄ + E/kT) "
                  f"{check['std_logq_plus_E_over_kT']:.2f} against std(E/kT) "
                  f"{check['std_E_over_kT']:.2f}, ESS of those frames {check['ess']:.5f} "
                  f"(1 for an exact density).")
    return text + notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS),
                        help="seeds of the biased-set sampler")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    parser.add_argument("--unbiased", type=int, nargs="*", default=[], metavar="SEED",
                        help="also a sampler trained on reference run 0 and scored on run 1, "
                             "for these seeds")
    parser.add_argument("--anneal-steps", type=int, default=0, metavar="K",
                        help="also anneal fresh frames of every sampler run over K levels")
    parser.add_argument("--anneal-n", type=int, default=2000, help="frames to anneal")
    parser.add_argument("--fk-seeds", type=int, nargs="*", default=[], metavar="SEED",
                        help="with --anneal-steps: also anneal an FK sampler on the biased set")
    parser.add_argument("--anneal-drift", choices=("exact", "force"), default="exact",
                        help="AIS proposals along ∇log γ_k (ε 0.03 Å) or F/kT (ε 0.02 Å)")
    parser.add_argument("--torsion-moves", action="store_true",
                        help="AIS: a torsion move per level after the MALA step")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--docs", action="store_true", help="write the table into the docs")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not args.table_only:
        train_set, reference = load(DATASET)
        source = gfn2()
        if "reference" not in results:
            results["reference"] = reference_row(train_set, reference)
            write_json(args.results, results)
        for coordinates in COORDINATES:
            if f"density check ({coordinates})" not in results:
                results[f"density check ({coordinates})"] = density_check(reference, coordinates)
                write_json(args.results, results)
        runs = reference_runs(DATASET)
        samplers = [("biased", seed, train_set, reference)
                    for seed in (args.seeds[:1] if args.quick else args.seeds)]
        samplers += [("unbiased", seed, reference[runs == 0], reference[runs == 1])
                     for seed in args.unbiased]
        samplers += [("fk", seed, train_set, reference) for seed in args.fk_seeds]
        for kind, seed, data, scored_on in samplers:
            name = f"seed {seed}" if kind == "biased" else f"{kind} seed {seed}"
            if name not in results and kind != "fk":  # the FK sampler is only annealed
                results[name] = run_seed(seed, data, scored_on, source, kind)
                print(json.dumps(results[name], indent=1), flush=True)
                write_json(args.results, results)
            # the F/kT-drift rows came first, without a drift in their key
            key = (f"annealed {kind} K={args.anneal_steps}"
                   f"{' exact-drift' if args.anneal_drift == 'exact' else ''}"
                   f"{' torsions' if args.torsion_moves else ''} seed {seed}")
            if args.anneal_steps and key not in results:
                results[key] = run_annealed(seed, data, scored_on, source, kind,
                                            args.anneal_steps, args.anneal_n, args.anneal_drift,
                                            args.torsion_moves)
                print(json.dumps(results[key], indent=1), flush=True)
                write_json(args.results, results)
    text = table(results)
    unbiased = unbiased_table(results)
    if unbiased:
        text += f"\n\n{unbiased}"
    print(text)
    if args.docs:
        write_section("benchmarks.md", "reweight-ethanol", text)


if __name__ == "__main__":
    main()
