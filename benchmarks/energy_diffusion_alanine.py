"""Energy-based diffusion on alanine dipeptide, coarse-grained to its 5 backbone beads or all-atom:
one model drawn from i.i.d. and simulated, against OpenMM MD and the drift sampler.

    python -m benchmarks.energy_diffusion_alanine --quick          # 1 seed, shorter, printed only
    python -m benchmarks.energy_diffusion_alanine --seeds 0 1 2    # the full table
    python -m benchmarks.energy_diffusion_alanine --all-atom       # all 22 atoms

Data: the bundled alanine dipeptide (amber99sb-ildn, vacuum, 300 K; two unbiased 20 ns runs,
a frame every 4 ps), reduced to the beads C(ACE), N, CA, C, N(NME)
(:func:`~ase_drift.peptides.backbone_beads`, ScoreMD's 5-bead coarse-graining), whose φ and ψ
are the all-atom ones. Models train on run 0 (5,000 frames) and are scored against run 1, so
every error left is the model's; ``--data`` (a file of ``ase_drift.datasets.alanine``, its run
0 for training) and ``--extra-reference`` (more such files) score against every other run, and
``--train-runs K`` trains on runs 0 to K − 1 (of the files in that order) and scores against
the rest (results and docs section "…more data"). The energy network sees the bead distances
and the signed volumes of beads 0–3 and 1–4 (mirror images have (φ, ψ) → (−φ, −ψ); distances
alone cannot tell them apart). With ``--all-atom`` it sees all 22 atoms: their distances and the signed
volumes about every branched atom (the default chirality features; the α-carbon's fixes the
L form, and with it the distances tell (φ, ψ) from (−φ, −ψ)); the dihedrals are read from the
same backbone atoms.

- i.i.d.: 20,000 reverse-SDE samples: Ramachandran JS (64 × 64 bins, nats), PMF RMSE (kT, bins
  with ≥ 10 frames in both sets), ΔF = F(C5/β) − F(C7eq/αR), TVD of bead distances, bond
  stability; JS also on as many as run 0 holds, to set against the run-to-run floor.
- simulation: ``--replicas`` BAOAB replicas on the model's force kT·s(x, t_min) with the beads'
  atomic masses, the data's Langevin protocol (1 fs, friction 1/ps), started from training
  frames, ``--sim-steps`` steps, a frame every ``--record-every``; the same metrics on the
  pooled frames after the first 10 % (burn-in), bond stability of the replica ensemble every
  ``--score-every`` steps (its minimum over time) and whether any replica diverged.
- time per independent sample: i.i.d. wall time per sample; simulation wall time per step and
  replica × τ, the integrated autocorrelation time of (cos φ, sin φ, cos ψ, sin ψ) (largest of
  the four, median over replicas); all-atom OpenMM MD's own (Reference platform, the data's
  integrator, one run of ``--md-steps``); a drift sampler's (Cartesian, trained on the same
  beads) per sample, with its i.i.d. scores.
- training cost with and without the regulariser: in 'both' the smallest-t expert trains with
  the Fokker–Planck term and the other two without, so their wall time per step is the cost of
  the same network with and without it.

Methods as in :mod:`benchmarks.energy_diffusion_molecules`. Each result is stored in
``--results`` as soon as it is computed, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ase_drift.data import Conformations
from ase_drift.datasets import load, reference_runs, topology_pdb
from ase_drift.diffusion import EnergyDiffusion
from ase_drift.diffusion.energy import VPSDE, expert_steps
from ase_drift.metrics import (
    basin_masks_psi,
    evaluate,
    free_energy_difference,
    js_divergence,
    plot_ramachandran,
    pmf_rmse,
    ramachandran_histogram,
)
from ase_drift.metrics.timeseries import integrated_autocorrelation_time
from ase_drift.peptides import backbone_beads, bead_dihedrals, topology_from_pdb
from ase_drift.simulate import simulate
from ase_drift.training import TrainConfig, Trainer
from benchmarks.alanine import load_reference
from benchmarks.common import ROOT, store_results, write_section
from benchmarks.energy_diffusion_molecules import (
    METHODS,
    _mean_std,
    method_groups,
    model_config,
    prior_option,
    prior_tag,
    run_arguments,
)

DATASET = "alanine-dipeptide-amber99sbildn-300K-small"
TIMESTEP_FS, FRICTION_PER_FS = 1.0, 1e-3  # the data's LangevinMiddle protocol: 1 fs, 1/ps
CHAIN_VOLUMES = [[0, 1, 2, 3], [1, 2, 3, 4]]  # signed volumes carrying the signs of φ and ψ
# Batch 512 rather than the default 128: at 20,000 steps (seed 0, DSM) i.i.d. JS 0.057 against
# 0.10 on 5,000 samples, for 2× the training time.
BATCH_SIZE = 512
N_IID = 20_000
N_PLOTTED = 10_000  # (φ, ψ) kept per panel for the plot, float16: a small results file
MIN_COUNT = 10


class Resolution(NamedTuple):
    """What the models see of the molecule: ``atoms`` (indices into the all-atom frames), where
    the 5 backbone atoms of φ and ψ sit among them, and the quadruples of the signed volumes
    (None: the default chirality features)."""

    name: str
    atoms: np.ndarray  # [A]
    backbone: np.ndarray  # [5], indices into atoms
    quadruples: list | None


def resolution(all_atom: bool, n_atoms: int) -> Resolution:
    beads = backbone_beads(topology_from_pdb(topology_pdb(DATASET)))
    if all_atom:
        return Resolution("all-atom", np.arange(n_atoms), beads, None)
    return Resolution("5-bead", beads, np.arange(5), CHAIN_VOLUMES)


def coarse_grain(data: Conformations, beads: np.ndarray) -> Conformations:
    """The frames of ``data`` reduced to the atoms ``beads`` (their positions and elements; the
    all-atom energies and forces are not the beads' and are dropped)."""
    return Conformations(data.numbers[beads], data.positions[:, beads],
                         temperature_K=data.temperature_K)


def angle_series(frames: np.ndarray, backbone: np.ndarray) -> np.ndarray:
    """(cos φ, sin φ, cos ψ, sin ψ) ``[..., 4]`` of frames ``[..., A, 3]`` whose atoms
    ``backbone`` are the 5 beads: continuous across the ±π seam, for autocorrelation times."""
    beads = frames[..., backbone, :]
    phi, psi = bead_dihedrals(beads.reshape(-1, 5, 3))
    series = np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], -1)
    return series.reshape(*beads.shape[:-2], 4)


def delta_f(phi, psi) -> float:
    """ΔF = F(C5/β) − F(C7eq/αR) in kT."""
    return free_energy_difference(phi, *basin_masks_psi(phi, psi))


def shared_pmf_rmse(phi, psi, ref_phi, ref_psi) -> float:
    """PMF RMSE (kT) over the bins with ≥ ``MIN_COUNT`` frames in both sets; NaN when no bin
    has (samples that miss the reference's basins altogether)."""
    try:
        return pmf_rmse(np.stack([phi, psi], 1), np.stack([ref_phi, ref_psi], 1),
                        min_count=MIN_COUNT)
    except ValueError:  # no shared bin
        return float("nan")


def scores(positions: np.ndarray, target: Conformations, backbone: np.ndarray,
           n_small: int) -> dict:
    """Ramachandran and distance scores of frames ``positions`` [n, A, 3] (the 5 beads at
    ``backbone``) against ``target``, the JS also on ``n_small`` of them (the training run's
    size, to set against the run-to-run floor); non-finite frames (a diverged sampler) are
    counted and left out."""
    finite = np.isfinite(positions).all(axis=(1, 2))
    positions = positions[finite]
    phi, psi = bead_dihedrals(positions[:, backbone])
    ref_phi, ref_psi = bead_dihedrals(target.positions[:, backbone])
    reference = ramachandran_histogram(ref_phi, ref_psi)
    few = np.linspace(0, len(phi) - 1, min(len(phi), n_small)).round().astype(int)
    report = evaluate(positions, target.positions, target.numbers)
    return {"js": js_divergence(ramachandran_histogram(phi, psi), reference),
            "js_at_reference_size": js_divergence(ramachandran_histogram(phi[few], psi[few]),
                                                  reference),
            "pmf_rmse": shared_pmf_rmse(phi, psi, ref_phi, ref_psi),
            "delta_f": delta_f(phi, psi), "tvd": report.tvd,
            "bond_stability": report.bond_stability, "non_finite": float(1 - finite.mean())}


def autocorrelation_steps(frames: np.ndarray, record_every: int, backbone: np.ndarray) -> float:
    """Median over replicas of τ (steps) of the dihedral series of frames ``[T, R, A, 3]``."""
    series = angle_series(frames, backbone)  # [T, R, 4]
    taus = [integrated_autocorrelation_time(series[:, r]) for r in range(series.shape[1])]
    return float(np.median(taus)) * record_every


def config_options(args) -> dict:
    """The model settings given on the command line (none: the defaults)."""
    given = {"hidden": args.hidden, "small_t_share": args.small_t_share}
    return {name: value for name, value in given.items() if value is not None}


def run_method(method: str, seed: int, args, run0, run1, level: Resolution) -> tuple[dict, dict]:
    """Scores of one (method, seed), and the (φ, ψ) of its i.i.d. and simulated frames."""
    start = time.perf_counter()
    model = EnergyDiffusion.train(run0, steps=args.steps, seed=seed, quadruples=level.quadruples,
                                  config=model_config(args, batch_size=BATCH_SIZE,
                                                      **config_options(args)),
                                  **METHODS[method])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    iid = model.sample_positions(N_IID, seed=seed)
    iid_s = (time.perf_counter() - start) / N_IID
    picks = np.random.default_rng(seed).choice(len(run0), args.replicas, replace=False)
    start = time.perf_counter()
    frames = simulate(model, model.numbers, run0.positions[picks], model.temperature_K,
                      args.sim_steps, timestep_fs=TIMESTEP_FS, friction_per_fs=FRICTION_PER_FS,
                      record_every=args.record_every, seed=seed, progress=True)  # [T, R, A, 3]
    wall = time.perf_counter() - start
    finite = np.isfinite(frames).all(axis=(2, 3))  # [T, R]
    thin = max(1, args.score_every // args.record_every)
    stability = [evaluate(f[ok], run1.positions, run1.numbers).bond_stability if ok.any()
                 else 0.0 for f, ok in zip(frames[thin - 1::thin], finite[thin - 1::thin])]
    kept = frames[len(frames) // 10:]  # after 10 % burn-in
    n_atoms = len(level.atoms)
    sim = scores(kept.reshape(-1, n_atoms, 3), run1, level.backbone, len(run0))
    diverged = int((~finite.all(axis=0)).sum())
    sim.update(wall_s=wall, s_per_step_replica=wall / (args.sim_steps * args.replicas),
               diverged_replicas=diverged, bond_stability_curve=stability,
               worst_bond_stability=min(stability),
               tau_steps=autocorrelation_steps(kept, args.record_every, level.backbone)
               if not diverged else None)
    seconds = model.metadata["training_seconds"]
    result = {"train_s": train_s, "expert_seconds": seconds,
              "expert_steps": expert_steps(model.config), "iid_s_per_sample": iid_s,
              "iid": scores(iid, run1, level.backbone, len(run0)), "sim": sim,
              "path": path_diagnosis(model, run1, level.backbone, seed)}
    pooled = kept.reshape(-1, n_atoms, 3)
    pooled = pooled[np.isfinite(pooled).all(axis=(1, 2))]
    return result, {name: bead_dihedrals(frames[np.linspace(0, len(frames) - 1, N_PLOTTED)
                                                .astype(int)][:, level.backbone])
                    for name, frames in (("iid", iid), ("simulation", pooled))}


PATH_TIMES = (0.01, 0.03, 0.1, 0.2, 0.4, 1.0)
PATH_FRAMES = 1000


def path_diagnosis(model: EnergyDiffusion, target: Conformations, backbone: np.ndarray,
                   seed: int) -> list[dict]:
    """Where the reverse diffusion decides the torsions: ``PATH_FRAMES`` reference frames
    noised to each of ``PATH_TIMES`` and brought back (:meth:`EnergyDiffusion.denoise`); per
    start time, σ in Å, the share of frames with φ > 0 (the reference: almost none), the median
    |Δφ| from the start frame (rad) and the Ramachandran JS against the reference."""
    frames = target.positions[np.linspace(0, len(target) - 1, PATH_FRAMES).astype(int)]
    phi0, _ = bead_dihedrals(frames[:, backbone])
    reference = ramachandran_histogram(*bead_dihedrals(target.positions[:, backbone]))
    sde = VPSDE(model.config.beta_min, model.config.beta_max)
    rows = []
    for t_start in PATH_TIMES:
        out = model.denoise(frames, t_start, seed=seed)
        out = out[np.isfinite(out).all(axis=(1, 2))]
        phi, psi = bead_dihedrals(out[:, backbone])
        sigma = float(sde.marginal(torch.tensor(t_start))[1]) * model.scale
        turned = np.abs(np.angle(np.exp(1j * (phi - phi0[:len(phi)]))))
        rows.append({"t_start": t_start, "sigma_angstrom": sigma,
                     "phi_positive": float(np.mean(phi > 0)),
                     "median_dphi": float(np.median(turned)),
                     "js": js_divergence(ramachandran_histogram(phi, psi), reference)})
    return rows


def openmm_md_cost(start_angstrom: np.ndarray, steps: int, seed: int,
                   record_every: int = 100) -> dict:
    """Wall time per step and τ (steps) of the backbone dihedrals of all-atom OpenMM MD (the
    data's integrator, Reference platform) from one reference frame, a frame every
    ``record_every`` steps (0.1 ps: far below τ, and rare enough to cost little)."""
    import openmm
    import openmm.unit as u
    from tqdm.auto import trange

    from ase_drift.datasets.alanine import AlanineProtocol, make_system, starting_structure

    protocol = AlanineProtocol()
    topology, _ = starting_structure()
    integrator = openmm.LangevinMiddleIntegrator(
        protocol.temperature_K * u.kelvin, protocol.friction_per_ps / u.picosecond,
        protocol.timestep_fs * u.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(make_system(topology), integrator,
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(start_angstrom, dtype=np.float64) * 0.1)  # Å -> nm
    context.setVelocitiesToTemperature(protocol.temperature_K * u.kelvin, seed + 1)
    beads = backbone_beads(topology_from_pdb(topology_pdb(DATASET)))
    frames = []
    start = time.perf_counter()
    for _ in trange(steps // record_every, desc="OpenMM MD", mininterval=2):
        integrator.step(record_every)
        state = context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True)._value[beads] * 10.0)  # nm -> Å
    wall = time.perf_counter() - start
    series = angle_series(np.array(frames), np.arange(5))  # [T, 4]
    return {"s_per_step": wall / steps, "steps": steps,
            "tau_steps": integrated_autocorrelation_time(series[len(series) // 10:])
            * record_every}


def drift_cost(run0, run1, steps: int, backbone: np.ndarray) -> dict:
    """A drift sampler (Cartesian) trained on the same atoms: its i.i.d. scores and wall time
    per sample."""
    start = time.perf_counter()
    drift = Trainer(run0, TrainConfig(field="drift", space="cartesian", steps=steps,
                                      seed=0)).run()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = drift.sample_positions(N_IID, seed=1)
    return {"steps": steps, "train_s": train_s,
            "s_per_sample": (time.perf_counter() - start) / N_IID,
            "iid": scores(samples, run1, backbone, len(run0))}


def tables(runs_of: dict, args, floor: dict, md: dict, drift: dict) -> str:
    small = f"{min(floor['frames'], floor['reference_frames']):,}"
    training = floor.get("training_name", "run 0")
    lines = [(f"Run-to-run floor (all {floor['frames']:,} frames of {training} against the "
              f"{floor['reference_frames']:,} of {floor['reference_name']}): JS "
              f"{floor['js']:.3f}, PMF RMSE {floor['pmf_rmse']:.2f} kT, ΔF C5−C7eq "
              f"{floor['delta_f']:.2f} kT in {training}, {floor['reference_delta_f']:.2f} kT in "
              f"{floor['reference_name']}. Mean ± std over seeds; JS ({small}): on {small} of the "
              f"frames, as the floor."), "",
             (f"| method | seeds | i.i.d. JS | i.i.d. JS ({small}) | i.i.d. PMF RMSE (kT) | "
              f"i.i.d. ΔF (kT) | sim JS | sim JS ({small}) | sim PMF RMSE (kT) | sim ΔF (kT) | "
              "sim/i.i.d. JS | i.i.d. bond stab. | worst sim bond stab. | diverged replicas |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, runs in runs_of.items():
        if not runs:
            continue
        iid, sim = [r["iid"] for r in runs], [r["sim"] for r in runs]

        def col(rows, key):
            return _mean_std([r[key] for r in rows])

        lines.append(
            f"| {method} | {len(runs)} | {col(iid, 'js')} | {col(iid, 'js_at_reference_size')} | "
            f"{col(iid, 'pmf_rmse')} | {col(iid, 'delta_f')} | {col(sim, 'js')} | "
            f"{col(sim, 'js_at_reference_size')} | {col(sim, 'pmf_rmse')} | "
            f"{col(sim, 'delta_f')} | "
            f"{_mean_std([s['js'] / i['js'] for s, i in zip(sim, iid, strict=True)])} | "
            f"{col(iid, 'bond_stability')} | {col(sim, 'worst_bond_stability')} | "
            f"{sum(s['diverged_replicas'] for s in sim)} of {len(sim) * args.replicas} |")
    d = drift["iid"]
    lines.append(f"| drift sampler (Cartesian, {drift['steps']:,} steps) | 1 | {d['js']:.3g} | "
                 f"{d['js_at_reference_size']:.3g} | {d['pmf_rmse']:.3g} | {d['delta_f']:.3g} | "
                 f"— | — | — | — | — | {d['bond_stability']:.3g} | — | — |")
    lines += ["", ("Time per independent sample (s; simulation: s per step and replica × τ, "
                   "the integrated autocorrelation time of the backbone dihedrals in steps of "
                   f"{TIMESTEP_FS:g} fs):"), "",
              "| sampler | s per sample | s per step | τ (steps) |", "|---|---|---|---|"]
    for method, runs in runs_of.items():
        if not runs:
            continue
        sims = [r["sim"] for r in runs if r["sim"]["tau_steps"] is not None]
        lines.append(f"| {method}, i.i.d. (reverse SDE, 1,000 steps) | "
                     f"{_mean_std([r['iid_s_per_sample'] for r in runs])} | — | — |")
        lines.append(f"| {method}, simulation ({args.replicas} replicas, batched) | "
                     f"{_mean_std([s['s_per_step_replica'] * s['tau_steps'] for s in sims])} | "
                     f"{_mean_std([s['s_per_step_replica'] for s in sims])} per replica | "
                     f"{_mean_std([s['tau_steps'] for s in sims])} |")
    lines.append(f"| OpenMM MD, all-atom (Reference platform, one run of {md['steps']:,} "
                 f"steps) | {md['s_per_step'] * md['tau_steps']:.3g} | {md['s_per_step']:.3g} | "
                 f"{md['tau_steps']:.3g} |")
    lines.append(f"| drift sampler, one step | {drift['s_per_sample']:.3g} | — | — |")
    with_path = [(m, runs[0]) for m, runs in runs_of.items() if runs and "path" in runs[0]]
    for method, run in with_path:
        lines += ["", (f"Where {method} (first seed) decides the torsions: {PATH_FRAMES:,} "
                       f"reference frames noised to t and brought back by the reverse diffusion "
                       f"(`EnergyDiffusion.denoise`; the reference has φ > 0 in "
                       f"{floor['reference_phi_positive']:.3f} of its frames):"), "",
                  "| t | σ (Å) | φ > 0 | median \\|Δφ\\| (rad) | JS |", "|---|---|---|---|---|"]
        lines += [f"| {r['t_start']:g} | {r['sigma_angstrom']:.2f} | {r['phi_positive']:.3f} | "
                  f"{r['median_dphi']:.2f} | {r['js']:.3f} |" for r in run["path"]]
    both = runs_of.get("both")
    if both:
        # 'both': expert 0 trains with the regulariser, experts 1 and 2 without (same network)
        with_fp = [r["expert_seconds"][0] / r["expert_steps"][0] for r in both]
        without = [sum(r["expert_seconds"][1:]) / sum(r["expert_steps"][1:]) for r in both]
        lines += ["", (f"Training cost per step of the same expert network, with the "
                       f"Fokker–Planck term / without: {_mean_std(with_fp)} s / "
                       f"{_mean_std(without)} s = "
                       f"{_mean_std([a / b for a, b in zip(with_fp, without, strict=True)])}×. "
                       f"Whole training ({args.steps:,} steps): "
                       + ", ".join(f"{m} {_mean_std([r['train_s'] / 60 for r in runs])} min"
                                   for m, runs in runs_of.items() if runs) + ".")]
    return "\n".join(lines)


def main():
    parser = run_arguments(__doc__, "1 seed, 2,000 training steps, 20 replicas × 2,000 steps",
                           "steps between bond-stability scores of the replica ensemble")
    parser.add_argument("--md-steps", type=int, default=None,
                        help="steps of the OpenMM run that measures MD's cost")
    parser.add_argument("--drift-steps", type=int, default=None)
    parser.add_argument("--all-atom", action="store_true",
                        help="all 22 atoms instead of the 5 backbone beads")
    parser.add_argument("--data", type=Path, help="npz of ase_drift.datasets.alanine to train "
                        "on (its run 0) and score against (its other runs) instead of the "
                        "bundled set")
    parser.add_argument("--extra-reference", type=Path, nargs="*", default=[],
                        help="more such files whose runs join the reference")
    parser.add_argument("--hidden", type=int, default=None,
                        help="width of the energy networks (EnergyDiffusionConfig's by default)")
    parser.add_argument("--small-t-share", type=float, default=None,
                        help="with experts, the smallest-t expert's share of the steps "
                        "(EnergyDiffusionConfig's by default)")
    parser.add_argument("--train-runs", type=int, default=1,
                        help="train on the first this many runs, score against the others")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.steps = args.steps or (2000 if quick else 20000)
    args.replicas = args.replicas or (20 if quick else 100)
    args.sim_steps = args.sim_steps or (2000 if quick else 10000)
    args.md_steps = args.md_steps or (20000 if quick else 2_000_000)
    args.drift_steps = args.drift_steps or (500 if quick else 4000)
    tag = (f"steps={args.steps}|batch={BATCH_SIZE}|replicas={args.replicas}|"
           f"sim={args.sim_steps}{prior_tag(args)}"
           + "".join(f"|{name}={value}" for name, value in config_options(args).items())
           + "".join(f"|{p.stem}" for p in ([args.data] if args.data else [])
                     + args.extra_reference)
           + (f"|train-runs={args.train_runs}" if args.train_runs != 1 else ""))
    if args.data:
        _, reference, runs, _ = load_reference([args.data, *args.extra_reference])
    else:
        _, reference = load(DATASET)
        runs = reference_runs(DATASET)
    if not 1 <= args.train_runs < len(np.unique(runs)):
        raise SystemExit(f"--train-runs {args.train_runs}: the data hold "
                         f"{len(np.unique(runs))} runs, and at least one must be left to score")
    level = resolution(args.all_atom, len(reference.numbers))
    more_data = args.data is not None or args.train_runs != 1
    suffix = (("_allatom" if args.all_atom else "") + ("_more_data" if more_data else "")
              + ("-quick" if quick else ""))
    results = args.results or ROOT / "benchmarks" / "results" / (
        f"energy_diffusion_alanine{suffix}.json")
    stored = json.loads(results.read_text()) if results.exists() else {}
    angles_path = results.with_name(results.stem + "_angles.npz")

    def save():
        store_results(results, stored)

    # "run0" and "run1": the training runs and the reference runs (run 1, or all others)
    run0 = coarse_grain(reference[runs < args.train_runs], level.atoms)
    run1 = coarse_grain(reference[runs >= args.train_runs], level.atoms)
    floor = scores(run0.positions, run1, level.backbone, len(run0))
    ref_phi, ref_psi = bead_dihedrals(run1.positions[:, level.backbone])
    floor.update(reference_delta_f=delta_f(ref_phi, ref_psi),
                 reference_phi_positive=float(np.mean(ref_phi > 0)),
                 frames=len(run0), reference_frames=len(run1),
                 training_name=("run 0" if args.train_runs == 1
                                else f"runs 0–{args.train_runs - 1}"),
                 reference_name=(f"run {runs.max()}" if runs.max() == args.train_runs
                                 else f"runs {args.train_runs}–{runs.max()}"))
    if "openmm_md" not in stored:
        stored["openmm_md"] = openmm_md_cost(reference.positions[runs == 0][0], args.md_steps,
                                             seed=0)
        save()
    if f"drift|steps={args.drift_steps}" not in stored:
        stored[f"drift|steps={args.drift_steps}"] = drift_cost(run0, run1, args.drift_steps,
                                                               level.backbone)
        save()
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}|seed={seed}|{tag}"
            if key in stored:
                continue
            stored[key], angles = run_method(method, seed, args, run0, run1, level)
            save()
            if seed == args.seeds[0]:  # the Ramachandran plot shows a run's first seed
                kept = dict(np.load(angles_path)) if angles_path.exists() else {}
                label = (method + (" (before E8)" if args.before_e8 else "")
                         + f", {args.steps:,} steps"
                         + "".join(f", {name} {value}"
                                   for name, value in config_options(args).items())
                         + f" (seed {seed})")
                kept.update({f"{label}|{name}": np.stack(a).astype(np.float16)
                             for name, a in angles.items()})
                np.savez_compressed(angles_path, **kept)
    text = tables(method_groups(stored, tag), args, floor, stored["openmm_md"],
                  stored[f"drift|steps={args.drift_steps}"])
    print(text)
    if args.no_docs or quick:  # a quick run is a smoke test: printed, not documented
        return
    marker = "alanine" + ("-allatom" if args.all_atom else "") + ("-more-data" if more_data else "")
    figure = ""
    if angles_path.exists():
        kept = np.load(angles_path)
        panels = {f"reference MD ({floor['reference_name']})":
                  bead_dihedrals(run1.positions[:, level.backbone]),
                  f"training set ({floor['training_name']})":
                  bead_dihedrals(run0.positions[:, level.backbone])}
        panels.update({textwrap.fill(key.replace("|", ", "), 44):
                       tuple(kept[key].astype(np.float64)) for key in kept.files})
        name = f"energy_diffusion_{marker.replace('-', '_')}.png"
        plot_ramachandran(ROOT / "docs" / "img" / name, panels, columns=3)
        figure = f"\n\n![Ramachandran free energies, {level.name} alanine dipeptide](img/{name})"
    command = ("python -m benchmarks.energy_diffusion_alanine"
               + (" --all-atom" if args.all_atom else "")
               + (" --quick" if quick else f" --seeds {' '.join(map(str, args.seeds))}")
               + (f" --steps {args.steps}" if args.steps != 20000 else "")
               + (f" --replicas {args.replicas}" if args.replicas != 100 else "")
               + (f" --sim-steps {args.sim_steps}" if args.sim_steps != 10000 else "")
               + (f" --data {args.data}" if args.data else "")
               + (" --extra-reference " + " ".join(map(str, args.extra_reference))
                  if args.extra_reference else "")
               + (f" --train-runs {args.train_runs}" if args.train_runs != 1 else "")
               + "".join(f" --{name.replace('_', '-')} {value}"
                         for name, value in config_options(args).items())
               + (f" --methods {' '.join(args.methods)}" if args.methods != list(METHODS)
                  else "") + prior_option(args))
    write_section("energy-diffusion.md", marker,
                  f"`{command}` ({args.steps:,} training steps of batch {BATCH_SIZE}, "
                  f"{args.replicas} replicas × {args.sim_steps:,} steps of {TIMESTEP_FS:g} fs)"
                  f"\n\n{text}{figure}")


if __name__ == "__main__":
    main()
