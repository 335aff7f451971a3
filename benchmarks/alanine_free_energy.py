"""Alanine dipeptide free-energy truth by umbrella sampling along φ + MBAR, against plain MD and
against reweighted one-step samples (drift sampler + NCE density + amber energies).

    OMP_NUM_THREADS=1 python -m benchmarks.alanine_free_energy          # 48 windows × 500 ps
    OMP_NUM_THREADS=1 python -m benchmarks.alanine_free_energy --quick  # 36 windows × 100 ps
    python -m benchmarks.alanine_free_energy --run k60                  # 36 windows × 1 ns
    python -m benchmarks.alanine_free_energy --skip-reweight --no-docs  # the truth only

The truth: :func:`ase_drift.free_energy.umbrella_sampling` (amber99sb-ildn, vacuum, 300 K, the
project's alanine protocol) and :func:`~ase_drift.free_energy.mbar_free_energies`: PMF along φ
and ΔF = F(αL/C7ax) − F(C7eq/β/αR), ΔF = F(C5/β) − F(C7eq/αR) (regions of
:func:`~ase_drift.free_energy.alanine_regions`) with bootstrap errors over decorrelated frames.
Plain MD: the bundled reference runs (block-bootstrap errors). Reweighting (docs/likelihoods.md,
Eq. 9): an FK drift sampler (distance space) trained on the bundled biased 1 ns set, an
:class:`~ase_drift.likelihood.NCEDensity` (internal coordinates, or ``--density distances``)
fitted to 20,000 of its samples, 10,000 fresh samples (mirror images folded) weighted with
OpenMM energies at 300 K. Windows are stored in ``bench_out/alanine_free_energy/<run>/`` as
they finish and the sampler, density and results beside them, so an interrupted run resumes.
The drift samplers, densities and their results (``reweighting.json``) are shared by the runs. Writes the PMF figure to ``docs/img`` and the
tables into ``docs/free-energies.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ase_drift import load as load_sampler
from ase_drift.annealing import (
    DEFAULT_POWER,
    DEFAULT_STEP_SIZE,
    FORCE_DRIFT_STEP_SIZE,
    anneal_sampler,
)
from ase_drift.data import Conformations
from ase_drift.datasets import data_path, load_npz
from ase_drift.datasets.alanine import make_system, starting_structure
from ase_drift.forces import OpenMMForces
from ase_drift.free_energy import (
    FreeEnergyResult,
    UmbrellaConfig,
    _save_atomic,
    alanine_regions,
    load_positions,
    mbar_free_energies,
    umbrella_sampling,
)
from ase_drift.likelihood import COORDINATES, NCEConfig, NCEDensity
from ase_drift.metrics import (
    basin_masks_phi,
    block_bootstrap,
    free_energy_difference,
    render_table,
)
from ase_drift.metrics.tables import Estimate
from ase_drift.peptides import backbone_dihedrals, topology_from_pdb
from ase_drift.reweighting import WeightedSamples, reweight_sampler
from ase_drift.training import ProgressBar, TrainConfig, Trainer
from benchmarks.common import PAPER_DISTANCES, ROOT, write_json, write_section

DATASET = "alanine-dipeptide-amber99sbildn-300K-small"
# name: (umbrella, bootstrap replicates, drift training steps). κ must exceed the PMF's curvature
# at the barrier tops (≈ 40 kT/rad² at φ = 0, ≈ 80 at φ ≈ 125°), or windows slide off them and
# leave gaps MBAR cannot bridge: "k60", the first full run, left the top of the 125° barrier
# thin (neighbour overlap 0.07); a 24-window κ = 30 quick run left both barrier tops empty and
# was 5 kT off.
RUNS = {
    "full": (UmbrellaConfig(), 100, 4000),
    "quick": (UmbrellaConfig(n_windows=36, force_constant=100.0, equilibration_ps=20.0,
                             production_ps=100.0), 50, 1000),
    "k60": (UmbrellaConfig(n_windows=36, force_constant=60.0, equilibration_ps=50.0,
                           production_ps=1000.0), 100, 4000),
}
BINS = 72  # PMF bins of 5°
N_FIT, N_EVAL = 20_000, 10_000
DENSITY = NCEConfig(hidden=128, depth=3, batch_size=512, steps=3000)


class SamplerKind(NamedTuple):
    """A kind of drift sampler the benchmark trains and reweights."""

    options: dict  # TrainConfig options besides space, steps and seed
    stem: str  # model file stem (the FK and default files came first)
    label: str  # short name for table rows
    description: str  # what it is and what it was trained on, for the note


SAMPLERS = {
    "fk": SamplerKind({"field": "fk", **PAPER_DISTANCES}, "drift-fk", "drift FK",
                      "the paper's FK drift sampler (distance space) on the biased 1 ns set"),
    "default": SamplerKind({}, "drift-canonical", "drift (default)",
                           "the default drift sampler (distance space, pairs weighted by "
                           "spread^0.5, canonical rotors) on the biased 1 ns set"),
    "umbrella": SamplerKind({}, "drift-umbrella", "drift (umbrella frames)",
                            "the default drift sampler on every frame of the run's umbrella "
                            "windows (φ covered from −180° to 180°, no MBAR weights)"),
    "basins": SamplerKind({}, "drift-basins", "drift (two starts)",
                          "the default drift sampler on the biased 1 ns set plus 1 ns of plain MD "
                          "started in αL/C7ax (at the lowest-energy umbrella frame there; no "
                          "umbrella weights)"),
}
ALPHA_L_PS = 1000.0  # the second start's run is as long as the biased set's


# AIS proposals: (label, MALA step ε in Å); "torsions": the exact drift plus a torsion move per
# level (ase_drift.torsions), which can carry chains across the φ and ψ barriers
DRIFTS = {"exact": ("exact drift", DEFAULT_STEP_SIZE),
          "force": ("F/kT drift", FORCE_DRIFT_STEP_SIZE),
          "torsions": ("exact drift + torsion moves", DEFAULT_STEP_SIZE)}


class Setup(NamedTuple):
    """What one reweighting row was made with (its key in reweighting.json)."""

    sampler: str  # a key of SAMPLERS
    steps: int  # drift training steps
    seed: int
    density: str  # NCEConfig.coordinates
    fit_samples: int
    fit_steps: int
    anneal_steps: int  # 0: plain reweighting (Eq. 9), else AIS levels (Eqs. 15-17)
    drift: str = "exact"  # a key of DRIFTS: the AIS proposals' drift

    @property
    def key(self) -> str:
        key = f"steps={self.steps} seed={self.seed} density={self.density}"
        if (self.sampler, self.fit_samples, self.fit_steps) != ("fk", N_FIT, DENSITY.steps):
            key = f"{self.sampler} {key} fit={self.fit_samples}/{self.fit_steps}"
        if not self.anneal_steps:
            return key
        step_size = DRIFTS[self.drift][1]
        return (key + f" anneal={self.anneal_steps} p={DEFAULT_POWER:g} eps={step_size:g}"
                + {"exact": " exact", "force": "", "torsions": " exact torsions"}[self.drift])
        # (force rows came first, without a suffix)

    @property
    def label(self) -> str:
        name = SAMPLERS[self.sampler].label
        how = (f"K = {self.anneal_steps}, {DRIFTS[self.drift][0]}" if self.anneal_steps
               else "plain")
        return f"{name}, seed {self.seed}, {how}"


def cached_truth(directory: Path, samples, n_boot: int) -> FreeEnergyResult:
    """:func:`mbar_free_energies` of the run's windows, stored beside them once computed."""
    path = directory / f"mbar-bins{BINS}-boot{n_boot}.npz"
    if path.exists():
        with np.load(path) as stored:
            names = [str(n) for n in stored["names"]]
            return FreeEnergyResult(
                stored["edges"], stored["pmf"], stored["pmf_error"],
                {n: Estimate(float(v), float(e)) for n, v, e in
                 zip(names, stored["delta_f"], stored["delta_f_error"])},
                stored["f_k"], stored["g"], stored["n_k"])
    truth = mbar_free_energies(samples, bins=BINS, n_boot=n_boot)
    _save_atomic(path, edges=truth.edges, pmf=truth.pmf, pmf_error=truth.pmf_error,
                 names=np.array(list(truth.delta_f)),
                 delta_f=[v for v, _ in truth.delta_f.values()],
                 delta_f_error=[e for _, e in truth.delta_f.values()], f_k=truth.f_k,
                 g=truth.statistical_inefficiency, n_k=truth.n_uncorrelated)
    return truth


def md_reference(topology_pdb: str, reference) -> dict:
    """Plain MD: ΔF of each region pair (block bootstrap over time; None when a region is never
    visited) and the φ histogram of the bundled reference runs."""
    phi, psi = backbone_dihedrals(reference.positions, topology_from_pdb(topology_pdb))
    series = np.stack([phi, psi], 1)  # [n, 2] in time order, run after run
    out = {"n_frames": len(phi)}
    for name, (in_a, in_b) in alanine_regions().items():
        a, b = in_a(phi, psi), in_b(phi, psi)
        out[name] = {"frames": [int(a.sum()), int(b.sum())], "delta_f": list(block_bootstrap(
            lambda s, in_a=in_a, in_b=in_b: free_energy_difference(
                s[:, 0], in_a(s[:, 0], s[:, 1]), in_b(s[:, 0], s[:, 1])), series))
            if a.any() and b.any() else None}
    out["phi"] = phi.tolist()
    return out


def long_md_reference(paths: list[Path]) -> dict:
    """ΔF of every region pair from long MD files (``python -m ase_drift.datasets.alanine``
    npz, e.g. the 120 ns of docs/benchmarks.md): the mean over independent runs and its
    standard error (None unless every run visits both regions)."""
    per_run, frames, n_runs, n_frames = {name: [] for name in alanine_regions()}, {}, 0, 0
    for path in paths:
        with np.load(path) as npz:
            topology = topology_from_pdb(str(npz["pdb"]))
            phi, psi = backbone_dihedrals(npz["reference_R"], topology)
            runs = npz["reference_run"]
        n_frames += len(runs)
        for run in np.unique(runs):
            n_runs += 1
            at = runs == run
            for name, (in_a, in_b) in alanine_regions().items():
                a, b = in_a(phi[at], psi[at]), in_b(phi[at], psi[at])
                counts = frames.setdefault(name, np.zeros(2, dtype=int))
                counts += [a.sum(), b.sum()]
                if a.any() and b.any():
                    per_run[name].append(free_energy_difference(phi[at], a, b))
    out = {"n_runs": n_runs, "n_frames": n_frames}
    for name, values in per_run.items():
        out[name] = {"frames": frames[name].tolist(), "delta_f": [
            float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))]
            if len(values) == n_runs > 1 else None}
    return out


def with_alpha_l_run(train_set: Conformations, directory: Path, samples, topology,
                     n_windows: int) -> Conformations:
    """``train_set`` plus :data:`ALPHA_L_PS` of plain MD started at the lowest-energy frame of
    the umbrella windows inside αL/C7ax (the data a chemist with two starting structures would
    have; the MD is cached in ``directory``)."""
    from ase_drift.datasets.alanine import run_from

    path = directory / "alphaL-run.npz"
    if not path.exists():
        positions = load_positions(directory, n_windows)
        positions = positions.reshape(-1, *positions.shape[2:])
        in_alpha_l = basin_masks_phi(samples.phi.reshape(-1))[1]
        start = positions[np.argmin(np.where(in_alpha_l, samples.energies.reshape(-1), np.inf))]
        run = run_from(start, ALPHA_L_PS, seed=7, desc="MD from αL/C7ax")
        _save_atomic(path, R=run[0], F=run[1], E=run[2])
    with np.load(path) as run:
        positions, forces, energies = run["R"], run["F"], run["E"]
    phi, _ = backbone_dihedrals(positions, topology)
    print(f"MD from αL/C7ax: {len(phi):,} frames, {basin_masks_phi(phi)[1].mean():.0%} in "
          "αL/C7ax")
    return Conformations(
        train_set.numbers, np.concatenate([train_set.positions, positions]),
        np.concatenate([train_set.forces, forces]) if train_set.forces is not None else None,
        np.concatenate([train_set.energies, energies]) if train_set.energies is not None
        else None, train_set.temperature_K)


def drift_sampler(path: Path, train_set, setup: Setup):
    """A drift sampler of ``setup``'s kind in distance space on ``train_set``, trained once and
    kept at ``path``."""
    if path.exists():
        return load_sampler(path)
    config = TrainConfig(space="distance", steps=setup.steps, seed=setup.seed,
                         **SAMPLERS[setup.sampler].options)
    trainer = Trainer(train_set, config)
    trainer.attach(ProgressBar(setup.steps, desc=f"{setup.label}: training"), 1)
    sampler = trainer.run()
    sampler.save(path)
    return sampler


def reweighted(directory: Path, train_set, topology, setup: Setup) -> dict:
    """ESS and ΔF of every region pair, unweighted and reweighted (plain or annealed)."""
    started = time.perf_counter()
    model = directory / f"{SAMPLERS[setup.sampler].stem}-steps{setup.steps}-seed{setup.seed}.pt"
    sampler = drift_sampler(model, train_set, setup)
    trained = time.perf_counter()
    config = NCEConfig.from_dict(dict(DENSITY.as_dict(), coordinates=setup.density,
                                      steps=setup.fit_steps))
    fit = "" if (setup.fit_samples, setup.fit_steps) == (N_FIT, DENSITY.steps) else (
        f".fit{setup.fit_samples}-{setup.fit_steps}")
    density_path = model.with_name(f"{model.name}{fit}.{setup.density}.nce.pt")
    if density_path.exists():
        density = NCEDensity.load(density_path)
    else:
        density = NCEDensity.fit(sampler, n=setup.fit_samples, config=config, seed=setup.seed)
        density.save(density_path)
    fitted = time.perf_counter()
    forces = OpenMMForces(make_system(starting_structure()[0]))
    out = {}
    if setup.anneal_steps:
        annealed = anneal_sampler(sampler, density, N_EVAL, forces=forces,
                                  steps=setup.anneal_steps, seed=1000 + setup.seed,
                                  step_size=DRIFTS[setup.drift][1],
                                  exact_drift=setup.drift != "force",
                                  torsion_moves=setup.drift == "torsions",
                                  temperature_K=train_set.temperature_K)
        ws = annealed.samples
        out["ess_by_level"] = annealed.ess.tolist()
        out["acceptance"] = float(annealed.acceptance.mean())
        if setup.drift == "torsions":
            out["torsion_acceptance"] = float(annealed.torsion_acceptance.mean())
    else:
        ws = reweight_sampler(sampler, density, N_EVAL, forces=forces, seed=1000 + setup.seed,
                              temperature_K=train_set.temperature_K)
    phi, psi = backbone_dihedrals(ws.positions, topology)
    uniform = WeightedSamples(ws.positions, np.full(len(phi), -np.log(len(phi))),
                              ws.reduced_energies, ws.log_q)
    out.update({"ess": ws.ess, "max_weight": float(ws.weights.max()),
                "seconds": {"train": trained - started, "fit": fitted - trained,
                            "reweight": time.perf_counter() - fitted}})
    for name, (in_a, in_b) in alanine_regions().items():
        a, b = in_a(phi, psi), in_b(phi, psi)
        out[name] = {"frames": [int(a.sum()), int(b.sum())]}
        for label, w in (("unweighted", uniform), ("reweighted", ws)):
            out[name][label] = list(w.free_energy_difference(
                lambda r, a=a: a, lambda r, b=b: b)) if a.any() and b.any() else None
    out["phi"], out["log_weights"] = phi.tolist(), ws.log_weights.tolist()
    return out


def pmf_table(result) -> str:
    rows = [[f"{np.degrees(c):.0f}", Estimate(f, e)]
            for c, f, e in zip(result.centres[1::3], result.pmf[1::3], result.pmf_error[1::3])]
    return render_table(["φ (°)", "PMF (kT)"], rows, digits=[0, 2])


def plot(path: Path, result, md_phi, samples: dict) -> None:
    """Umbrella PMF (band: bootstrap error) with plain MD's and the samples' −ln p(φ)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    x = np.degrees(result.centres)
    ax.plot(x, result.pmf, color="k", label="umbrella sampling + MBAR")
    ax.fill_between(x, result.pmf - result.pmf_error, result.pmf + result.pmf_error,
                    color="k", alpha=0.2)
    anchor = int(np.nanargmin(result.pmf))
    for (name, (phi, log_w)), style in zip({"plain MD (bundled)": (md_phi, None),
                                            **samples}.items(), ("C0", "C1--", "C2:")):
        weights = None if log_w is None else np.exp(log_w)
        hist, _ = np.histogram(phi, bins=result.edges, weights=weights)
        with np.errstate(divide="ignore"):
            f = -np.log(hist / hist.sum())
        f = np.where(np.isfinite(f), f, np.nan)
        ax.plot(x, f - f[anchor] if np.isfinite(f[anchor]) else f - np.nanmin(f), style,
                label=name)
    ax.axvspan(0, np.degrees(2.2), color="C3", alpha=0.08, label="αL/C7ax region")
    ax.set(xlabel="φ (°)", ylabel="free energy (kT)", xlim=(-180, 180),
           ylim=(0, np.nanmax(result.pmf) + 1))
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=sorted(RUNS), default="full")
    parser.add_argument("--quick", action="store_true", help="the same as --run quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="drift sampler seeds for the reweighting comparison")
    parser.add_argument("--density", choices=COORDINATES, default=DENSITY.coordinates,
                        help="what the NCE density is fitted on (docs/likelihoods.md)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="fk",
                        help="fk: the paper's FK drift sampler; default: today's default drift "
                             "sampler; umbrella: it on the umbrella frames; basins: it on the "
                             "biased set plus MD started in αL/C7ax")
    parser.add_argument("--drift-steps", type=int, help="training steps (default: the run's)")
    parser.add_argument("--fit-samples", type=int, default=N_FIT,
                        help="sampler frames the density is fitted on")
    parser.add_argument("--fit-steps", type=int, default=DENSITY.steps)
    parser.add_argument("--anneal-steps", type=int, nargs="+", default=[0],
                        help="AIS levels from the density to π (0: plain reweighting); one row "
                             "per value")
    parser.add_argument("--anneal-drift", choices=sorted(DRIFTS), nargs="+", default=["exact"],
                        help="AIS proposals drift along the tempered target's gradient (exact, "
                             "ε = 0.03 Å) or the force alone (force, ε = 0.02 Å), or exact plus "
                             "a torsion move per level (torsions); one row each")
    parser.add_argument("--md", type=Path, nargs="+", default=[],
                        help="long MD npz files (independent runs) for a third truth column")
    parser.add_argument("--skip-reweight", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    run = "quick" if args.quick else args.run
    config, n_boot, drift_steps = RUNS[run]
    shared = ROOT / "bench_out" / "alanine_free_energy"
    directory = shared / run
    results_path, reweighting_path = directory / "results.json", shared / "reweighting.json"
    directory.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    samplers = (json.loads(reweighting_path.read_text()) if reweighting_path.exists() else {})

    started = time.perf_counter()
    samples = umbrella_sampling(config, directory)
    simulated = time.perf_counter()
    truth = cached_truth(directory, samples, n_boot)
    analysed = time.perf_counter()
    results["umbrella"] = {
        "config": repr(config),
        "delta_f": {k: list(v) for k, v in truth.delta_f.items()},
        "g": [float(truth.statistical_inefficiency.min()),
              float(np.median(truth.statistical_inefficiency)),
              float(truth.statistical_inefficiency.max())],
        "n_uncorrelated": int(truth.n_uncorrelated.sum()),
        "seconds_this_invocation": {"simulate": simulated - started,
                                    "mbar": analysed - simulated}}
    write_json(results_path, results)

    path = data_path(DATASET)
    train_set, reference = load_npz(path)
    pdb = str(np.load(path)["pdb"])
    topology = topology_from_pdb(pdb)
    if "md" not in results:
        results["md"] = md_reference(pdb, reference)
        write_json(results_path, results)
    if args.sampler == "umbrella":  # the windows' frames, flattened
        positions = load_positions(directory, config.n_windows)
        train_set = Conformations(train_set.numbers, positions.reshape(-1, *positions.shape[2:]),
                                  energies=samples.energies.reshape(-1),
                                  temperature_K=config.temperature_K)
        shared = directory  # its sampler belongs to this run's windows
    if args.sampler == "basins":
        train_set = with_alpha_l_run(train_set, directory, samples, topology, config.n_windows)
        shared = directory  # its start came from this run's windows
    steps = drift_steps if args.drift_steps is None else args.drift_steps
    setups = [Setup(args.sampler, steps, seed, args.density, args.fit_samples, args.fit_steps, k,
                    drift)
              for seed in args.seeds for k in args.anneal_steps
              for drift in (args.anneal_drift if k else ["exact"])]
    if not args.skip_reweight:
        for setup in setups:
            if setup.key not in samplers:
                row = reweighted(shared, train_set, topology, setup)
                # re-read first: runs with other seeds may share the file
                samplers = json.loads(reweighting_path.read_text()) if (
                    reweighting_path.exists()) else {}
                samplers[setup.key] = row
                write_json(reweighting_path, samplers)

    long_md = long_md_reference(args.md) if args.md else None
    setups = [setup for setup in setups if setup.key in samplers]

    def cell(entry: dict, estimate) -> Estimate | str:
        return (Estimate(*estimate) if estimate else
                f"∞ (frames {entry['frames'][0]:,} / {entry['frames'][1]:,})")

    header = ["ΔF (kT)", "umbrella + MBAR", "plain MD (bundled)"]
    if long_md:
        header.append(f"plain MD ({long_md['n_runs']} runs, {long_md['n_frames']:,} frames)")
    rows = []
    for name in truth.delta_f:
        row = [name, truth.delta_f[name], cell(results["md"][name], results["md"][name]["delta_f"])]
        if long_md:
            row.append(cell(long_md[name], long_md[name]["delta_f"]))
        rows.append(row)
    truth_table = render_table(header, rows, digits=[0] + [2] * (len(header) - 1))
    # one row per sampler setup: weights, then every region pair unweighted and reweighted
    header = ["samples", "ESS", "largest weight", "minutes (fit / weight)"]
    header += [f"{name}, {label}" for name in truth.delta_f for label in ("unweighted",
                                                                           "reweighted")]
    rows = []
    for setup in setups:
        r = samplers[setup.key]
        rows.append([setup.label, f"{r['ess']:.2e}", f"{r['max_weight']:.2f}",
                     f"{r['seconds']['fit'] / 60:.1f} / {r['seconds']['reweight'] / 60:.1f}"]
                    + [cell(r[name], r[name][label]) for name in truth.delta_f
                       for label in ("unweighted", "reweighted")])
    # across seeds: the spread of the samplers and their densities, which a bootstrap over
    # one seed's frames does not see (each basin's weight rests on its density's basin mass)
    groups: dict = {}
    for setup in setups:
        groups.setdefault(setup._replace(seed=-1), []).append(samplers[setup.key])
    for group, runs in groups.items():
        if len(runs) < 2:
            continue

        def across_seeds(name: str, label: str, runs=runs) -> Estimate | str:
            values = [r[name][label][0] for r in runs if r[name][label]]
            if len(values) < len(runs):
                return "–"
            return Estimate(float(np.mean(values)),
                            float(np.std(values, ddof=1) / np.sqrt(len(values))))

        rows.append([group.label.replace("seed -1", f"mean ± s.e. of {len(runs)} seeds"),
                     f"{np.mean([r['ess'] for r in runs]):.2e}",
                     f"{max(r['max_weight'] for r in runs):.2f}", "—"]
                    + [across_seeds(name, label) for name in truth.delta_f
                       for label in ("unweighted", "reweighted")])
    u = results["umbrella"]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    note = (f"Run: `python -m benchmarks.alanine_free_energy {command}`"
            f" — {config.n_windows} windows, κ = {config.force_constant:g} kT/rad², "
            f"{config.equilibration_ps:g} ps equilibration + {config.production_ps:g} ps "
            f"production each (frames every {config.stride_ps:g} ps); statistical inefficiency "
            f"g min / median / max {u['g'][0]:.1f} / {u['g'][1]:.1f} / {u['g'][2]:.1f}, "
            f"{u['n_uncorrelated']:,} uncorrelated frames, {n_boot} bootstrap replicates. "
            f"Plain MD: {results['md']['n_frames']:,} bundled reference frames"
            + (f"; the long MD's error is the standard error over its {long_md['n_runs']} "
               "independent runs." if long_md else "."))
    if setups:
        setup = setups[0]
        note += (f" Samples: {SAMPLERS[setup.sampler].description}, {setup.steps:,} training "
                 f"steps; NCE density on {setup.density} coordinates fitted to "
                 f"{setup.fit_samples:,} of its samples ({setup.fit_steps:,} steps); "
                 f"{N_EVAL:,} fresh samples weighted with amber energies at 300 K, plain "
                 f"(Eq. 9) or after K annealing levels (Eqs. 15–17; linear schedule; MALA "
                 "drifting along ∇log γ_k (exact drift, ε = "
                 f"{DRIFTS['exact'][1]:g} Å) or F/kT ({DRIFTS['force'][1]:g} Å), with torsion "
                 "moves where named; acceptance "
                 + ", ".join(f"{samplers[s.key]['acceptance']:.2f}" for s in setups
                             if s.anneal_steps) + ").")
    text = f"{note}\n\n{truth_table}\n\n{render_table(header, rows, digits=2)}"
    if args.sampler == "fk":  # the truth's own section; the others refer to it
        text += f"\n\nPMF along φ (every third 5° bin):\n\n{pmf_table(truth)}"
    print(text)
    # the first seed's most annealed row: the figure shows what the weights can do
    shown = [max(setups, key=lambda s: (s.seed == setups[0].seed, s.anneal_steps))] if (
        setups) else []
    curves = {f"{setup.label}, {label}": (np.array(samplers[setup.key]["phi"]), log_w)
              for setup in shown for label, log_w in
              (("unweighted", None),
               ("reweighted", np.array(samplers[setup.key]["log_weights"])))}
    name = run if args.sampler == "fk" else f"{run}-{args.sampler}"  # the FK runs came first
    figure = f"alanine_free_energy_{name}.png"
    plot(ROOT / "bench_out" / figure, truth, np.array(results["md"]["phi"]), curves)
    if not args.no_docs:
        plot(ROOT / "docs" / "img" / figure, truth, np.array(results["md"]["phi"]), curves)
        write_section("free-energies.md", f"alanine-fe-{name}",
                      f"{text}\n\n![PMF along φ](img/{figure})")


if __name__ == "__main__":
    main()
