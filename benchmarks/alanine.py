"""Alanine dipeptide (amber99sb-ildn, vacuum, 300 K): drift samplers against long MD.

    python -m benchmarks.alanine --quick                  # bundled subset, 3 samplers, 2,000 steps
    python -m benchmarks.alanine --extra-reference a.npz  # + more reference runs, 4,000 steps
    python -m benchmarks.alanine --steps 20000 --samplers "Drifting (distance)" --no-docs

Trains FK, FI and plain drift samplers in distance and Cartesian space on (a) the biased 1 ns
training set and (b) an unbiased subset: 2,000 frames spread evenly over the reference runs,
labelled here with the same OpenMM force field (:class:`~ase_drift.forces.OpenMMForces`) and
left out of the reference they are scored against. Each sampler draws 20,000 conformers, scored
by:

- Ramachandran Jensen–Shannon divergence (64 × 64 bins, nats) and PMF RMSE in kT over the bins
  holding ≥ 10 frames in both sets;
- ΔF = F(C5/β) − F(C7eq/αR) in kT (the basins the reference resolves; block-bootstrap error),
  and the αL/C7ax population;
- bond stability and energy W1 (E/kT, amber energies of the samples);
- the fraction of mirror-image (D) samples, before and after :func:`restore_chirality` (a
  reflection; the scores above are after it).

``--refine-steps K …`` adds rows for each sampler's draws after K exact MALA steps
(``--torsion-refine-steps K …``: K MALA steps each followed by a torsion move,
:mod:`ase_drift.torsions`) with the amber force field (:func:`ase_drift.refine.mala`, default
step size; acceptance and cost in the last columns): the one-step samples as a warm start of an exact sampler. A sampler's raw draws
are kept in ``benchmarks/results/samples`` under the digest of its training set, so runs
against another reference (``--data`` with the same training set, ``--extra-reference``)
re-score them without training.

``--train-run R`` trains on reference run R instead (all of its frames, unbiased and far more
than 2,000) and scores against the other runs: whether the generator follows when the data
allow more. Beside every training set, its frames smoothed in (φ, ψ) by a Gaussian of the width
that scores best against the reference (chosen with the reference, so a bound, not a method): the
Ramachandran JS that the training frames themselves support at the samples' size.

``--extra-reference`` appends the reference runs of more files written by
``python -m ase_drift.datasets.alanine`` with the same protocol (other seeds). Every result is
stored in ``--results`` as soon as it is computed; an interrupted run resumes. Writes a markdown
table into ``docs/benchmarks.md`` and Ramachandran plots into ``docs/img``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ase_drift.data import Conformations
from ase_drift.datasets import data_path, load, load_npz
from ase_drift.datasets.alanine import make_system, starting_structure
from ase_drift.drift import force_scale_ratio
from ase_drift.features import make_representation
from ase_drift.forces import OpenMMForces
from ase_drift.forces import label as label_frames
from ase_drift.kernels import median_distance
from ase_drift.metrics import (
    Estimate,
    basin_masks_phi,
    basin_masks_psi,
    block_bootstrap,
    evaluate,
    free_energy_difference,
    js_divergence,
    noise_floor_subsets,
    plot_ramachandran,
    pmf_rmse,
    ramachandran_histogram,
    reference_part,
    render_table,
)
from ase_drift.peptides import (
    backbone_dihedrals,
    mirrored_fraction,
    restore_chirality,
    topology_from_pdb,
)
from ase_drift.refine import mala
from ase_drift.torsions import TorsionMoves
from ase_drift.training import TrainConfig, Trainer, progress_hook
from ase_drift.units import kT
from benchmarks.common import PAPER_DISTANCES, ROOT, write_json, write_section

DATASET = "alanine-dipeptide-amber99sbildn-300K-small"
# (row name, field, space, TrainConfig options); plain drifting is the control without forces.
# The FI defaults (ω = 0.1 distance, 0.02 Cartesian) are tuned on ethanol, where the force term's
# typical size relative to the data term, ρ = median‖τ² s‖ / median‖y − x‖ (Eq. 33), is 3.5–5;
# on alanine dipeptide ρ is 64–90 and the force term swamps the data term. The smaller ω restore
# ethanol's ω·ρ at a fixed ω, which keeps the Drifting Force Identity intact (unlike dividing by
# ρ at every step, Eq. 34).
SAMPLERS = [("FK β=0.5", "fk", "distance", {}), ("FI ω=0.1", "fi", "distance", {}),
            ("FK β=0.5", "fk", "cartesian", {}), ("FI ω=0.02", "fi", "cartesian", {}),
            ("FI ω=0.005", "fi", "distance", {"omega": 0.005}),
            ("FI ω=0.001", "fi", "cartesian", {"omega": 0.001}),
            ("Drifting", "drift", "distance", {}), ("Drifting", "drift", "cartesian", {}),
            ("FK β=0.5, τ = (0.05, 0.1, 0.25) × median", "fk", "distance",
             {"bandwidths": (0.05, 0.1, 0.25)}),
            ("Drifting, pairs weighted by spread^0.5", "drift", "distance",
             {"pair_scale_exponent": 0.5}),
            ("Drifting, pairs weighted by spread^0.75", "drift", "distance",
             {"pair_scale_exponent": 0.75}),
            ("Drifting, pairs weighted by spread^1", "drift", "distance",
             {"pair_scale_exponent": 1.0}),
            ("Drifting, blocks weighted by spread^0.5 and ^1", "drift", "distance",
             {"pair_scale_exponent": (0.5, 1.0)}),
            ("Drifting, raw + spread-whitened distances", "drift", "distance",
             {"pair_scale_exponent": (0.0, 1.0)}),
            ("FK β=0.5, pairs weighted by spread^0.5", "fk", "distance",
             {"pair_scale_exponent": 0.5}),
            ("Drifting, pairs weighted by spread^0.5, canonical rotors", "drift", "distance",
             {"pair_scale_exponent": 0.5, "canonical_rotors": True})]
QUICK_SAMPLERS = ("Drifting (distance)", "FK β=0.5 (distance)", "FI ω=0.005 (distance)")
TRAINING_SETS = ("biased 1 ns", "unbiased subset")
N_SAMPLES = 20_000
N_TRAIN = 2_000  # frames in each training set (the bundled biased set has 2,000 too)
MIN_COUNT = 10


def load_reference(paths: list[Path]) -> tuple[Conformations, Conformations, np.ndarray, str]:
    """(biased training set, reference, run label per reference frame, PDB text); the reference
    runs of every file, the training set and topology of the first."""
    train_set, reference = load_npz(paths[0])
    references, runs = [reference], [np.load(paths[0])["reference_run"]]
    pdb = str(np.load(paths[0])["pdb"])
    for path in paths[1:]:
        _, more = load_npz(path)
        if not np.array_equal(more.numbers, reference.numbers) or \
                more.temperature_K != reference.temperature_K:
            raise ValueError(f"{path}: not the same molecule and temperature as {paths[0]}")
        references.append(more)
        runs.append(np.load(path)["reference_run"] + runs[-1].max() + 1)
    return train_set, Conformations.concatenate(references), np.concatenate(runs), pdb


def force_term_ratio(data: Conformations, space: str, bandwidth: float = 0.25) -> float:
    """ρ of Eq. 33 with the training set's even frames as generated samples and its odd frames as
    positives: how large FI's force term τ² s is against the data term y − x before training."""
    representation = make_representation(space, len(data.numbers))
    prepared = representation.prepare(data, data.temperature_K)
    x, y = prepared.features[::2], prepared.features[1::2]
    tau = bandwidth * median_distance(x, y)
    return float(force_scale_ratio(x, y, prepared.scores[1::2], tau))


def basin_delta_f(phi, psi) -> float:
    """ΔF = F(C5/β) − F(C7eq/αR) in kT."""
    return free_energy_difference(phi, *basin_masks_psi(phi, psi))


def scores(positions, reference: Conformations, ref_angles, topology, energies) -> dict:
    """Every column of the table for one sample set (positions already chirality-restored)."""
    phi, psi = backbone_dihedrals(positions, topology)
    ref_phi, ref_psi = ref_angles
    stride = max(1, len(reference) // 50_000)  # distance metrics on ≤ 50,000 reference frames
    report = evaluate(positions, reference.positions[::stride], reference.numbers,
                      energies=energies, reference_energies=reference.energies[::stride],
                      temperature_K=reference.temperature_K)
    reference_histogram = ramachandran_histogram(ref_phi, ref_psi)
    # JS grows with sampling noise: at the training sets' size it compares like with like.
    few = np.linspace(0, len(phi) - 1, min(len(phi), N_TRAIN)).round().astype(int)
    return {
        "js": js_divergence(ramachandran_histogram(phi, psi), reference_histogram),
        "js_2000": js_divergence(ramachandran_histogram(phi[few], psi[few]),
                                 reference_histogram),
        "pmf_rmse": pmf_rmse(np.stack([phi, psi], 1), np.stack([ref_phi, ref_psi], 1),
                             min_count=MIN_COUNT),
        "delta_f": basin_delta_f(phi, psi),
        "p_alpha_l": float(basin_masks_phi(phi)[1].mean()),
        "bond_stability": report.bond_stability,
        "tvd": report.tvd,
        "energy_w1": report.energy_w1,
    }


def smoothed_training_js(angles, reference_histogram: np.ndarray, n: int,
                         widths=(0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2), seed: int = 0) -> dict:
    """The lowest Ramachandran JS that ``n`` draws of the training frames' (φ, ψ) ``angles``,
    each blurred by a Gaussian of one of ``widths`` (rad), score against the reference:
    ``{"js": …, "width": …}``. The width is chosen with the reference itself, so this bounds
    what any isotropic smoothing of these frames gets at this sample size."""
    rng = np.random.default_rng(seed)
    phi, psi = angles
    best = {"js": np.inf, "width": None}
    for width in widths:
        picked = rng.integers(0, len(phi), n)
        blurred = [np.angle(np.exp(1j * (a[picked] + width * rng.standard_normal(n))))
                   for a in (phi, psi)]
        js = js_divergence(ramachandran_histogram(*blurred), reference_histogram)
        if js < best["js"]:
            best = {"js": js, "width": width}
    return best


def train(train_set: Conformations, config: TrainConfig, desc: str) -> tuple[np.ndarray, float]:
    """The raw draws (before any chirality repair) of a sampler trained with ``config``, and the
    training time in s."""
    start = time.perf_counter()
    trainer = Trainer(train_set, config)
    trainer.attach(progress_hook(config.steps, desc=desc), 1)
    sampler = trainer.run()
    train_s = time.perf_counter() - start
    return sampler.sample_positions(N_SAMPLES, seed=config.seed), train_s


def score_draws(positions: np.ndarray, reference: Conformations, ref_angles, topology,
                forces: OpenMMForces, refine_steps: int = 0, seed: int = 0,
                torsion_moves: TorsionMoves | None = None) -> dict:
    """Scores of a sampler's draws, mirror images already reflected back
    (:func:`restore_chirality`), after ``refine_steps`` MALA steps with the amber force field at
    the reference's temperature (:func:`ase_drift.refine.mala`, default step size, proposals
    seeded by ``seed``), the acceptance and cost among them."""
    start = time.perf_counter()
    chains = mala(forces, reference.numbers, positions, reference.temperature_K, refine_steps,
                  seed=seed, torsion_moves=torsion_moves)
    refined = {"refine_steps": refine_steps, "refine_s": time.perf_counter() - start,
               "acceptance": chains.acceptance_rate,
               "torsion_acceptance": float(np.mean(chains.torsion_acceptance))
               if refine_steps and torsion_moves is not None else None}
    return dict(scores(chains.positions, reference, ref_angles, topology, chains.energies),
                **refined, **strain(chains.energies, chains.forces, reference, topology))


def strain(energies: np.ndarray, forces: np.ndarray, reference: Conformations,
           topology) -> dict:
    """Where the energy error sits: quantiles 0.5, 0.9 and 0.99 of E/kT above the reference's
    median (the reference's own beside them), and the atoms whose mean force ``[n, A, 3]`` in the
    highest-energy tenth of the frames most exceeds their mean over the reference, named
    residue+atom, with that excess in eV/Å."""
    beta = 1.0 / kT(reference.temperature_K)
    median = np.median(reference.energies) * beta
    quantiles = (0.5, 0.9, 0.99)
    magnitude = np.linalg.norm(forces, axis=-1)  # [n, A]
    tail = energies >= np.quantile(energies, 0.9)
    excess = magnitude[tail].mean(0) - np.linalg.norm(reference.forces, axis=-1).mean(0)  # [A]
    worst = np.argsort(-excess)[:3]
    names = [f"{atom.residue.name}-{atom.name}" for atom in topology.atoms]
    return {"energy_quantiles": (np.quantile(energies * beta, quantiles) - median).tolist(),
            "reference_energy_quantiles": (np.quantile(reference.energies * beta, quantiles)
                                           - median).tolist(),
            "strained_atoms": [[names[i], float(excess[i])] for i in worst]}


def strain_table(rows: dict) -> str:
    """The energy tails of the scored rows (first seed; rows scored before :func:`strain`
    existed have none): where the energy W1 comes from."""
    lines = [("Energy tails (first seed): E/kT above the reference's median at quantiles 0.5 / "
             "0.9 / 0.99, and the atoms whose mean force in the highest-energy tenth most "
             "exceeds the reference's (eV/Å)."), "",
             ("| method | trained on | E − median(ref), q 0.5 / 0.9 / 0.99 (kT) | "
             "reference's | most strained atoms |"), "|---|---|---|---|---|"]
    for key, runs in rows.items():
        first = runs[0] if isinstance(runs, list) else runs
        if "energy_quantiles" not in first:
            continue
        name, data = key.split("|")[:2]
        lines.append(f"| {name} | {data} | "
                     + " / ".join(f"{q:.1f}" for q in first["energy_quantiles"]) + " | "
                     + " / ".join(f"{q:.1f}" for q in first["reference_energy_quantiles"])
                     + " | " + ", ".join(f"{atom} (+{excess:.1f})"
                                         for atom, excess in first["strained_atoms"]) + " |")
    return "\n".join(lines) if len(lines) > 4 else ""


def table(results: dict, reference_delta_f: tuple[float, float]) -> str:
    head = ["method", "trained on", "JS (nats)", "JS, 2,000 frames", "PMF RMSE (kT)",
            "ΔF C5−C7eq (kT)", "P(αL)", "Bond Stab", "TVD", "E W1 (kT)", "D-enantiomers",
            "train (s)", "MALA acceptance", "MALA (s)"]
    keys = ("js", "js_2000", "pmf_rmse", "delta_f", "p_alpha_l", "bond_stability", "tvd",
            "energy_w1", "mirrored", "train_s", "acceptance", "refine_s")
    rows = [["long MD reference", "—", "—", "—", "—", Estimate(*reference_delta_f)] + ["—"] * 8]
    for key, r in results.items():
        name, data = key.split("|")[:2]
        runs = r if isinstance(r, list) else [r]  # a list: seeds, or the noise floor's subsets
        if len(runs) > 1 and not name.startswith("noise floor"):
            name += f", {len(runs)} seeds"
        rows.append([name, data] + [[run.get(k) for run in runs] for k in keys])
    return render_table(head, rows, digits=[0, 0, 4, 3, 2, 2, 4, 3, 3, 2, 3, 0, 2, 0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, help="npz of ase_drift.datasets.alanine "
                        f"(default: the bundled {DATASET})")
    parser.add_argument("--extra-reference", type=Path, nargs="*", default=[])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train each sampler with these seeds (table: mean ± std)")
    parser.add_argument("--samplers", nargs="+",
                        help="run only the samplers whose 'name (space)' contains one of these")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--training-sets", nargs="+", choices=TRAINING_SETS,
                        default=list(TRAINING_SETS), help="train on these sets only")
    parser.add_argument("--torsion-refine-steps", type=int, nargs="*", default=[],
                        metavar="K", help="also rows after K MALA steps each followed by a "
                                          "torsion move")
    parser.add_argument("--refine-steps", type=int, nargs="*", default=[],
                        help="also score each sampler's draws after these numbers of MALA "
                             "steps with the amber force field")
    parser.add_argument("--section", help="marker of the docs/benchmarks.md section written "
                        "(default: alanine-quick with --quick, else alanine)")
    parser.add_argument("--train-run", type=int, metavar="R",
                        help="train on reference run R (all frames) and score against the "
                             "others, instead of the biased set and the unbiased subset")
    parser.add_argument("--no-training", action="store_true",
                        help="train nothing: score only the samplers and seeds whose draws are "
                             "on disk")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (2000 if args.quick else 4000)
    if args.samplers:
        samplers = [s for s in SAMPLERS if any(t in f"{s[0]} ({s[2]})" for t in args.samplers)]
    else:
        samplers = [s for s in SAMPLERS if f"{s[0]} ({s[2]})" in QUICK_SAMPLERS or not args.quick]
    paths = [args.data or data_path(DATASET)] + list(args.extra_reference)
    train_set, reference, runs, pdb = load_reference(paths)
    topology = topology_from_pdb(pdb)
    forces = OpenMMForces(make_system(starting_structure()[0]))

    if args.train_run is None:
        # Unbiased subset: evenly spread over all runs, held out of the reference.
        picked = np.linspace(0, len(reference) - 1, N_TRAIN).round().astype(int)
        training_sets = {}
        if "biased 1 ns" in args.training_sets:
            training_sets["biased 1 ns"] = train_set
        if "unbiased subset" in args.training_sets:  # labelled only when it is trained on
            training_sets["unbiased subset"] = label_frames(reference[picked], forces,
                                                            progress=False)
    else:
        if args.train_run not in runs:
            raise SystemExit(f"--train-run {args.train_run}: the reference has runs "
                             f"{np.unique(runs).tolist()}")
        picked = np.flatnonzero(runs == args.train_run)
        training_sets = {f"MD run {args.train_run} ({len(picked):,} frames)": reference[picked]}
    held_out = np.setdiff1d(np.arange(len(reference)), picked)
    reference, runs = reference[held_out], runs[held_out]
    ref_angles = backbone_dihedrals(reference.positions, topology)
    moves = (TorsionMoves.from_frames(reference.numbers, reference.positions)
             if args.torsion_refine_steps else None)
    refinements = ([(0, None)] + [(k, None) for k in args.refine_steps]
                   + [(k, moves) for k in args.torsion_refine_steps])  # (steps, torsion moves)
    series = np.stack(ref_angles, axis=1)  # [R, 2] in time order, run after run
    reference_delta_f = block_bootstrap(lambda s: basin_delta_f(s[:, 0], s[:, 1]), series)

    results_path = args.results or ROOT / "benchmarks" / "results" / (
        f"alanine-{'quick' if args.quick else 'full'}.json")
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}
    baselines = {}
    reference_histogram = ramachandran_histogram(*ref_angles)
    for label, data in training_sets.items():
        baselines[f"training set|{label}"] = scores(data.positions, reference, ref_angles,
                                                    topology, data.energies)
        smoothed = smoothed_training_js(backbone_dihedrals(data.positions, topology),
                                        reference_histogram, N_SAMPLES)
        baselines[f"training set smoothed in (φ, ψ), best width {smoothed['width']:g} rad, "
                  f"{N_SAMPLES:,} draws|{label}"] = {"js": smoothed["js"]}
    # Noise floor at the samples' size (or all frames of the odd runs, if fewer): disjoint
    # subsets of the odd runs, each scored against the even runs.
    n_floor = min(N_SAMPLES, int((~reference_part(len(reference), runs)).sum()))
    floor_reference, floor_subsets = noise_floor_subsets(len(reference), n_floor, groups=runs,
                                                         n_repeats=3)
    floor_angles = (ref_angles[0][floor_reference], ref_angles[1][floor_reference])
    baselines[f"noise floor: {n_floor:,} frames of odd vs even runs|—"] = [
        scores(reference.positions[subset], reference[floor_reference], floor_angles, topology,
               reference.energies[subset]) for subset in floor_subsets]

    samples = {}  # row key -> scored positions of the unrefined draws, for the plots
    scored = {}  # "method|training set" -> its scores, one per seed, in the table's order
    started = time.perf_counter()
    for label, data in training_sets.items():
        # The draws depend on the training set only: named by its positions' digest, they are
        # reused by runs against other references.
        digest = hashlib.sha1(np.ascontiguousarray(data.positions).tobytes()).hexdigest()[:10]
        for (name, field, space, options), seed in itertools.product(samplers, args.seeds):
            run = f"{label}|steps={steps}|seed={seed}"
            key = f"{name} ({space})|{run}"
            draws_file = ROOT / "benchmarks" / "results" / "samples" / (
                f"ala2_{digest}_" + "".join(c if c.isalnum() else "_" for c in key) + ".npy")
            train_s = None
            if not draws_file.exists() and args.no_training:
                continue
            if not draws_file.exists():
                config = TrainConfig(field=field, space=space, steps=steps, seed=seed,
                                     **{**PAPER_DISTANCES, **options})
                raw, train_s = train(data, config, desc=f"{name} {space}, {label}, seed {seed}")
                draws_file.parent.mkdir(parents=True, exist_ok=True)
                np.save(draws_file, raw)
                for stale in [row for row in stored  # rows scored from earlier draws
                              if row.startswith(f"{name} ({space})") and row.endswith(run)]:
                    del stored[stale]
            raw = np.load(draws_file)
            mirrored = mirrored_fraction(raw, reference.positions[:1000], topology)
            positions = restore_chirality(raw, reference.positions[:1000], topology)[0]
            for k, turns in refinements:
                method = f"{name} ({space})" + (f" + {k} MALA steps" if k else "") + (
                    " and torsion moves" if k and turns is not None else "")
                row = f"{method}|{run}"
                if row not in stored:
                    stored[row] = dict(score_draws(positions, reference, ref_angles, topology,
                                                   forces, refine_steps=k, seed=seed,
                                                   torsion_moves=turns),
                                       mirrored=mirrored, train_s=train_s)
                    write_json(results_path, stored)
                scored.setdefault(f"{method}|{label}", []).append(stored[row])
            if seed == args.seeds[0]:
                samples[key] = positions
    elapsed = time.perf_counter() - started

    rows = {}  # each training set, then what was trained on it, then the noise floor
    for label in training_sets:
        rows.update({row: value for row, value in baselines.items()
                     if row.split("|")[1] == label})
        rows.update({row: runs for row, runs in scored.items() if row.split("|")[1] == label})
    baselines = {row: value for row, value in baselines.items() if row not in rows}
    rows.update(baselines)
    text = table(rows, reference_delta_f)
    # The command line that reproduces the table (file arguments by name).
    argv = [a if not Path(a).is_file() else Path(a).name for a in sys.argv[1:]
            if a not in ("--no-docs",)]
    options = "".join(" " + shlex.quote(a) for a in argv)
    note = (f"Run: `python -m benchmarks.alanine{options}` — "
            f"{len(reference):,} held-out reference frames from {len(np.unique(runs))} runs "
            f"(training sets: " + ", ".join(f"{label}, {len(data):,} frames" for label, data
                                            in training_sets.items()) + f"), {steps:,} "
            f"steps, seeds {', '.join(map(str, args.seeds))}, {N_SAMPLES:,} samples per "
            f"sampler; this invocation computed for {elapsed / 60:.0f} min (rows already "
            f"stored were reused).")
    ethanol = load("ethanol-gfn2-500K")[0]
    note += " FI's force-to-data ratio ρ (Eq. 33) before training, distance / Cartesian: " + \
        ", ".join(f"{what} {force_term_ratio(d, 'distance'):.1f} / "
                  f"{force_term_ratio(d, 'cartesian'):.1f}"
                  for what, d in (("this training set", train_set), ("bundled ethanol", ethanol)))
    text += "\n\n" + strain_table(rows)
    print(note + "\n\n" + text)
    if args.no_docs:
        return
    marker = args.section or ("alanine-quick" if args.quick else "alanine")
    figures = []
    for label, data in training_sets.items():
        panels = {"reference MD": ref_angles,
                  f"training set ({label})": backbone_dihedrals(data.positions, topology)}
        for key, positions in samples.items():
            if key.split("|")[1] == label:
                panels[key.split("|")[0]] = backbone_dihedrals(positions, topology)
        image = f"{marker}_{label.split()[0]}.png"
        plot_ramachandran(ROOT / "docs" / "img" / image, panels)
        figures.append(f"![Ramachandran, trained on the {label} set](img/{image})")
    figures = "\n".join(figures)
    write_section("benchmarks.md", marker, f"{note}\n\n{text}\n\n{figures}")


if __name__ == "__main__":
    main()
