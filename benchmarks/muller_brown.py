"""Müller–Brown 2-D benchmark of energy-based diffusion (Plainer et al. 2025, the Müller–Brown
table; ScoreMD's setup): is the i.i.d. sampler consistent with Langevin simulation on the same
model's t → 0 force field, for plain diffusion, experts ("mixture"), the Fokker–Planck
regulariser, and both?

    python -m benchmarks.muller_brown                  # 3 seeds, writes docs/benchmarks.md
    python -m benchmarks.muller_brown --quick          # 1 seed, fewer steps and frames
    python -m benchmarks.muller_brown --steps 12000 --methods diffusion both \
        --results benchmarks/results/muller_brown-12k.json --marker muller-brown-12k

Data: the project's own BAOAB Langevin runs (:func:`ase_drift.simulate.baoab`) on ScoreMD's
unscaled Müller–Brown potential at kT = 23, mass 0.5, friction 1, time step 5·10⁻³, a frame
every 50 steps, replicas started from exact Boltzmann points (a fine grid; :func:`boltzmann_starts`) and
run 20 frames of burn-in before recording.
Training data and the reference are independent runs. Metrics against the reference: JS of
100 × 100 histograms on [−1.8, 1.1] × [−0.5, 2.0] plus an out-of-range bin, and the paper's
PMF error (:mod:`ase_drift.metrics.density2d`); i.i.d. samples by the reverse SDE, simulations
with the model's force kT·s(x, t_min) under the data's own Langevin protocol. The noise floor
is a third true-potential run of the same size, read against the reference like a sampler.

Each (method, seed) result is stored in ``--results`` as soon as it is computed, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ase_drift.diffusion.energy import (
    EnergyDiffusionConfig,
    sample_energy_model,
    train_energy_model,
)
from ase_drift.metrics.density2d import js_2d, pmf_error
from ase_drift.simulate import baoab
from benchmarks.common import store_results, write_section

KT, MASS, FRICTION, TIMESTEP, STRIDE = 23.0, 0.5, 1.0, 5e-3, 50
LIMITS = ((-1.8, 1.1), (-0.5, 2.0))
ALPHA = 5e-4  # ScoreMD's Müller–Brown regularisation strength ("beta" in its configs)
METHODS = {
    "diffusion": {},
    "mixture": {"experts": (0.1, 0.6)},
    "fokker-planck": {"fokker_planck": ALPHA},
    "both": {"experts": (0.1, 0.6), "fokker_planck": ALPHA},
}
#: The paper's Müller–Brown table: (iid JS, sim JS, iid PMF, sim PMF), mean ± std.
PAPER = {
    "reference": (None, (0.0119, 0.0004), None, (0.087, 0.002)),
    "diffusion": ((0.0122, 0.0013), (0.0448, 0.0125), (0.111, 0.006), (0.504, 0.150)),
    "mixture": ((0.0109, 0.0007), (0.0254, 0.0109), (0.097, 0.004), (0.247, 0.113)),
    "fokker-planck": ((0.0130, 0.0010), (0.0166, 0.0009), (0.122, 0.006), (0.163, 0.008)),
    "both": ((0.0110, 0.0007), (0.0108, 0.0008), (0.098, 0.003), (0.099, 0.004)),
}


def muller_brown_energy(x: torch.Tensor) -> torch.Tensor:
    """ScoreMD's unscaled Müller–Brown potential ``[B]`` of points ``[B, 2]``."""
    a, b = x[:, 0], x[:, 1]
    return (-200 * torch.exp(-(a - 1) ** 2 - 10 * b**2)
            - 100 * torch.exp(-a**2 - 10 * (b - 0.5) ** 2)
            - 170 * torch.exp(-6.5 * (0.5 + a) ** 2 + 11 * (a + 0.5) * (b - 1.5)
                              - 6.5 * (b - 1.5) ** 2)
            + 15 * torch.exp(0.7 * (1 + a) ** 2 + 0.6 * (a + 1) * (b - 1) + 0.7 * (b - 1) ** 2))


def muller_brown_force(x: torch.Tensor) -> torch.Tensor:
    """−∇U ``[B, 2]``, analytic."""
    a, b = x[:, 0], x[:, 1]
    force = torch.zeros_like(x)
    for amp, ca, cb, cab, a0, b0 in TERMS:
        da, db = a - a0, b - b0
        term = amp * torch.exp(ca * da**2 + cab * da * db + cb * db**2)
        force[:, 0] -= term * (2 * ca * da + cab * db)
        force[:, 1] -= term * (2 * cb * db + cab * da)
    return force


#: U = Σ A exp(a (x − x₀)² + c (x − x₀)(y − y₀) + b (y − y₀)²): (A, a, b, c, x₀, y₀).
TERMS = ((-200, -1, -10, 0, 1, 0), (-100, -1, -10, 0, 0, 0.5), (-170, -6.5, -6.5, 11, -0.5, 1.5),
         (15, 0.7, 0.7, 0.6, -1, 1))


def boltzmann_starts(n: int, seed: int, grid: int = 600) -> torch.Tensor:
    """``n`` exact Boltzmann points ``[n, 2]`` (grid cells ∝ exp(−U/kT), uniform inside a
    cell) on the limits, so that Langevin replicas start in equilibrium and the runs need no
    long burn-in to populate the basins."""
    (x0, x1), (y0, y1) = LIMITS
    xs, ys = np.linspace(x0, x1, grid + 1), np.linspace(y0, y1, grid + 1)
    centres = torch.as_tensor(np.stack(np.meshgrid((xs[1:] + xs[:-1]) / 2, (ys[1:] + ys[:-1]) / 2,
                                                   indexing="ij"), -1).reshape(-1, 2))
    log_w = -muller_brown_energy(centres) / KT
    rng = torch.Generator().manual_seed(seed)
    cells = torch.multinomial((log_w - log_w.max()).exp(), n, replacement=True, generator=rng)
    jitter = (torch.rand(n, 2, generator=rng, dtype=torch.float64) - 0.5) * torch.tensor(
        [(x1 - x0) / grid, (y1 - y0) / grid], dtype=torch.float64)
    return centres[cells] + jitter


def langevin_frames(force_fn, start: torch.Tensor, frames: int, burn_in: int,
                    seed: int) -> np.ndarray:
    """The data's Langevin protocol from ``start`` ``[R, 2]``: ``burn_in`` + ``frames``
    frames per replica, a frame every ``STRIDE`` BAOAB steps; returns ``[frames·R, 2]``."""
    run = baoab(force_fn, start, MASS, KT, TIMESTEP, FRICTION, (burn_in + frames) * STRIDE,
                torch.Generator().manual_seed(seed), record_every=STRIDE)
    return run.frames[burn_in:].reshape(-1, 2).numpy()


def true_run(n_frames: int, replicas: int, seed: int) -> np.ndarray:
    """A true-potential Langevin run from Boltzmann starts, 20 frames of burn-in."""
    return langevin_frames(muller_brown_force, boltzmann_starts(replicas, seed),
                           n_frames // replicas, 20, seed)


def metrics(samples: np.ndarray, reference: np.ndarray) -> dict:
    return {"js": js_2d(samples, reference, LIMITS), "pmf": pmf_error(samples, reference, LIMITS)}


def run(method: str, seed: int, data: np.ndarray, reference: np.ndarray, steps: int,
        n_samples: int, replicas: int) -> dict:
    """Train one model, sample i.i.d., simulate, and score both against the reference."""
    # the uniform grid in t, as ScoreMD samples and as the recorded table was made (Müller–Brown
    # has no stiff modes for the log-SNR grid to resolve)
    config = EnergyDiffusionConfig(steps=steps, seed=seed, learning_rate=1e-3, batch_size=512,
                                   sampler_steps=500, sampler_grid="uniform", **METHODS[method])
    start = time.perf_counter()
    trained = train_energy_model(torch.as_tensor(data, dtype=torch.float32), config,
                                 progress=False)
    train_seconds = time.perf_counter() - start
    model = trained.model
    start = time.perf_counter()
    iid = sample_energy_model(model, n_samples, (2,), config,
                              torch.Generator().manual_seed(seed + 1000)).numpy()
    iid_seconds = time.perf_counter() - start

    def force(x: torch.Tensor) -> torch.Tensor:  # kT·s(x, t_min)
        return KT * model.score(x, x.new_full((len(x),), config.t_min))

    rng = np.random.default_rng(seed)
    start_points = torch.as_tensor(data[rng.choice(len(data), replicas)], dtype=torch.float32)
    start = time.perf_counter()
    simulated = langevin_frames(force, start_points, n_samples // replicas, 20, seed + 2000)
    sim_seconds = time.perf_counter() - start
    finite = np.isfinite(simulated).all(axis=1)
    return {"iid": metrics(iid, reference), "sim": metrics(simulated[finite], reference),
            "sim_finite_fraction": float(finite.mean()), "train_seconds": train_seconds,
            "expert_seconds": list(trained.seconds), "iid_seconds": iid_seconds,
            "sim_seconds": sim_seconds, "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["diffusion", "fokker-planck", "both"],
                        choices=list(METHODS), help="'mixture' (experts alone) is opt-in")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=4000, help="training steps per model")
    parser.add_argument("--frames", type=int, default=20000,
                        help="i.i.d. samples and simulated frames per model, noise-floor size")
    parser.add_argument("--data-frames", type=int, default=50000,
                        help="training frames and reference frames")
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 2,000 steps, 5,000 frames (a smoke run, not for the docs)")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                        help="write the table into docs/benchmarks.md (default: unless --quick)")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--marker", default="muller-brown",
                        help="the docs/benchmarks.md section to write (one per setup)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.frames, args.data_frames = [0], 2000, 5000, 20000
    docs = not args.quick if args.docs is None else args.docs
    results = args.results or Path("benchmarks/results") / (
        "muller_brown-quick.json" if args.quick else "muller_brown.json")
    stored = json.loads(results.read_text()) if results.exists() else {}
    setup = {"steps": args.steps, "frames": args.frames, "data_frames": args.data_frames,
             "replicas": args.replicas}
    if stored.get("setup", setup) != setup:
        raise SystemExit(f"{results} holds results of another setup ({stored['setup']}); "
                         f"pass another --results")
    stored["setup"] = setup
    stored.setdefault("runs", {})

    def save():
        store_results(results, stored)

    start = time.perf_counter()
    data = true_run(args.data_frames, args.replicas, seed=1)
    reference = true_run(args.data_frames, args.replicas, seed=2)
    stored["data_seconds"] = time.perf_counter() - start
    if "noise_floor" not in stored:
        floor = true_run(args.frames, args.replicas, seed=3)
        stored["noise_floor"] = {"sim": metrics(floor, reference),
                                 "training_set": metrics(data, reference)}
        save()
    for seed in args.seeds:
        for method in args.methods:
            key = f"{method}/{seed}"
            if key in stored["runs"]:
                continue
            print(f"{key} ...", flush=True)
            stored["runs"][key] = run(method, seed, data, reference, args.steps, args.frames,
                                      args.replicas)
            stored["runs"][key]["machine"] = f"{platform.machine()}, {torch.get_num_threads()} " \
                                             f"thread(s)"
            save()
            print(json.dumps(stored["runs"][key]), flush=True)
    text = table(stored, args.methods)
    print(text)
    if docs:
        write_section("benchmarks.md", args.marker, text)


def _cell(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _paper(value) -> str:
    return "–" if value is None else f"{value[0]} ± {value[1]}"


def _cost(stored: dict) -> str:
    """Training cost with and without the regulariser, measured inside each "both" run (its
    regularised small-t expert against its two plain experts: same process, same load)."""
    ratios = []
    for key, r in stored["runs"].items():
        if key.startswith("both/"):
            small, *plain = r["expert_seconds"]
            n_small = round(2 / 3 * r["steps"])
            ratios.append((small / n_small) / (sum(plain) / (r["steps"] - n_small)))
    if not ratios:
        return ""
    return (f"Training cost: a step with the Fokker–Planck term costs {np.mean(ratios):.1f}× a "
            f"plain DSM step (range {min(ratios):.1f}–{max(ratios):.1f}×, measured within each "
            f"'both' run, whose experts share process and load; the paper reports ~6×). Whole "
            f"runs: the 'train (s)' column, on 2 cores shared with other jobs.")


def table(stored: dict, methods) -> str:
    """Markdown: ours (mean ± std over seeds) beside the paper's figures, plus costs."""
    setup = stored["setup"]
    floor = stored["noise_floor"]
    lines = [("| method | seeds | i.i.d. JS | sim JS | sim/i.i.d. | i.i.d. PMF | sim PMF | "
              "train (s) | paper i.i.d. JS | paper sim JS | paper i.i.d. PMF | paper sim PMF |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| reference (true-potential MD) | – | – | {floor['sim']['js']:.4f} | – | – | "
             f"{floor['sim']['pmf']:.4f} | – | " + " | ".join(_paper(v) for v in PAPER["reference"])
             + " |"]
    for method in methods:
        runs = [v for k, v in stored["runs"].items() if k.split("/")[0] == method]
        if not runs:
            continue
        get = {(phase, metric): [r[phase][metric] for r in runs]
               for phase in ("iid", "sim") for metric in ("js", "pmf")}
        ratio = [r["sim"]["js"] / r["iid"]["js"] for r in runs]
        train = np.mean([r["train_seconds"] for r in runs])
        lines.append(f"| {method} | {len(runs)} | {_cell(get['iid', 'js'])} | "
                     f"{_cell(get['sim', 'js'])} | {np.mean(ratio):.2f} | "
                     f"{_cell(get['iid', 'pmf'])} | {_cell(get['sim', 'pmf'])} | {train:.0f} | "
                     + " | ".join(_paper(v) for v in PAPER[method]) + " |")
    finite = min(r["sim_finite_fraction"] for r in stored["runs"].values())
    lines += ["", _cost(stored)]
    lines += ["", (f"{setup['steps']:,} training steps per model (batch 512, learning rate "
              f"10⁻³ cosine; with experts 2/3 of them on the smallest-t expert), α = {ALPHA}; "
              f"{setup['data_frames']:,} training frames and an independent reference of as "
              f"many; {setup['frames']:,} i.i.d. samples (reverse SDE, 500 steps) and "
              f"{setup['frames']:,} simulated frames ({setup['replicas']} replicas) per model; "
              f"the reference row is a third true-potential run of {setup['frames']:,} frames "
              f"(the noise floor of every column at this sample size; the training set itself "
              f"scores JS {floor['training_set']['js']:.4f}, PMF "
              f"{floor['training_set']['pmf']:.4f}). Smallest fraction of finite simulated "
              f"frames over all runs: {finite:.3f}. The paper's figures come from 100,000 "
              f"frames, 180 epochs of 100,000 samples, a single trajectory; JS and PMF depend "
              f"on sample size, so compare each column with its reference row.")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
