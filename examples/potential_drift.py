"""What the neural-potential examples share: a fitted potential as the force source of a drift
sampler (ethanol, 500 K).

``schnetpack_forces.py`` and ``mace_forces.py`` differ only in how they build, fit, save and
load their potential (with the builders of :mod:`ase_drift.potentials`). Everything around that
lives here:

- :func:`common_arguments`: the command-line options both examples take;
- :func:`prepare`: torch threads, the output directory, the bundled data set and the seeded
  split into the frames to fit on and the held-out reference frames;
- :func:`report_errors`: the potential's errors on the fit set and the held-out frames,
  printed as a markdown table;
- :func:`drift_with_potential`: strip the labels off the fit set, train a Force-Aligned-Kernel
  drift sampler in distance space whose energies and forces come from the calculator (through
  ``CalculatorForces`` and a label cache named after the model file), sample, write the samples
  and print the evaluation table against the reference;
- :func:`measure_and_drift`: both of the above, gathered in a :class:`RunSummary`.

Units are ASE's throughout: Å, eV, eV/Å, K. The examples import this module as their
neighbour: running an example as a script puts its directory on ``sys.path``. Nothing outside
``examples/`` imports it; reusable code lives in the package (:mod:`ase_drift.potentials`).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator

import ase_drift
from ase_drift import CalculatorForces, Conformations, DriftSampler
from ase_drift.datasets import load
from ase_drift.io import write_positions
from ase_drift.metrics import DistanceReport, evaluate, markdown_table, noise_floor
from ase_drift.potentials import Errors, potential_errors

DATASET = "ethanol-gfn2-500K"
TEMPERATURE_K = 500.0


@dataclass
class RunSummary:
    """What an example's ``main`` built and measured (energies eV, forces eV/Å)."""

    calculator: Calculator  # the package's ASE calculator around the fitted potential
    fit_set: Conformations  # labelled frames the potential was fitted on (the drift positives)
    held_out: Conformations  # labelled reference frames never seen in fitting
    fit_errors: Errors  # of the calculator on fit_set
    held_out_errors: Errors  # of the calculator on held_out
    label_cache: Path
    sampler: DriftSampler
    report: DistanceReport


def file_digest(path: Path) -> str:
    """First 12 hex digits of the SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def common_arguments(parser: argparse.ArgumentParser, default_out: Path, *, epochs: int,
                     learning_rate: float) -> None:
    """Add the options every example takes: the data split, the fit (``--epochs`` and
    ``--learning-rate`` with the example's defaults, batch size, energy weight), the drift
    sampler's steps and samples, the seed, torch threads and the output directory (default
    ``default_out``). The options of the model itself are the example's."""
    parser.add_argument("--frames", type=int, default=3000,
                        help="training-set frames to fit on and to train the sampler on "
                             "(a seeded random subset; default: all 3,000)")
    parser.add_argument("--held-out", type=int, default=500,
                        help="reference frames to measure the force error on")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--energy-weight", type=float, default=0.1,
                        help="weight of the energy term (eV⁻²·(eV/Å)²) in the loss")
    parser.add_argument("--drift-steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=default_out)


def prepare(args: argparse.Namespace
            ) -> tuple[Conformations, Conformations, Conformations, Conformations]:
    """Set torch's threads, create ``args.out`` and load :data:`DATASET`.

    Returns ``(train_set, reference, fit_set, held_out)``: the labelled training set, the
    equilibrium reference, ``args.frames`` training frames to fit on and ``args.held_out``
    reference frames to measure errors on (seeded random subsets, in their original order).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, reference = load(DATASET)
    rng = np.random.default_rng(args.seed)
    fit_set = train_set[np.sort(rng.permutation(len(train_set))[:args.frames])]
    held_out = reference[np.sort(rng.permutation(len(reference))[:args.held_out])]
    print(f"fit set {fit_set!r}\nheld out {held_out!r}")
    return train_set, reference, fit_set, held_out


def report_errors(name: str, calc: Calculator, fit_set: Conformations,
                  held_out: Conformations) -> tuple[Errors, Errors]:
    """Errors of potential ``name`` (its calculator ``calc``) on the fit set and on the held-out
    frames, printed as a markdown table (energy meV, forces eV/Å). Returns both."""
    fit_errors, held_out_errors = potential_errors(calc, fit_set), potential_errors(calc, held_out)
    print(f"| {name} MAE | energy (meV) | forces (eV/Å) | predicting zero forces (eV/Å) |\n"
          "|---|---|---|---|")
    for what, err in ((f"fit set ({len(fit_set)} training frames)", fit_errors),
                      (f"held-out reference ({len(held_out)} frames)", held_out_errors)):
        print(f"| {what} | {1000 * err.energy_mae:.1f} | {err.force_mae:.4f} | "
              f"{err.zero_force_mae:.4f} |")
    return fit_errors, held_out_errors


def drift_with_potential(name: str, calc: Calculator, model_path: Path, fit_set: Conformations,
                         train_set: Conformations, reference: Conformations,
                         args: argparse.Namespace
                         ) -> tuple[Path, DriftSampler, DistanceReport]:
    """Train a drift sampler on the positions of ``fit_set`` with every label from ``calc``.

    FK field in distance space, ``args.drift_steps`` steps, seeded by ``args.seed``. The labels
    are cached in ``args.out/labels-{name.lower()}-{digest of model_path}.h5``; the sampler is
    saved to ``args.out/sampler.pt`` and ``args.samples`` samples to
    ``args.out/samples.extxyz``. Prints the evaluation table of the samples, the (biased)
    training set and the reference's noise floor against ``reference``.

    Returns ``(label_cache, sampler, report)``, ``report`` being the samples' evaluation.
    """
    positions_only = Conformations(fit_set.numbers, fit_set.positions,
                                   temperature_K=TEMPERATURE_K)
    # The cache refuses the labels of another model (it fingerprints the calculator's weights):
    # naming it after the model file keeps one cache per fitted potential instead.
    label_cache = args.out / f"labels-{name.lower()}-{file_digest(model_path)}.h5"
    start = time.perf_counter()
    sampler = ase_drift.train(positions_only, temperature_K=TEMPERATURE_K, field="fk",
                              space="distance", steps=args.drift_steps, seed=args.seed,
                              forces=CalculatorForces(calc), label_cache=label_cache)
    sampler.save(args.out / "sampler.pt")
    print(f"labelled and trained the sampler in {time.perf_counter() - start:.1f} s")

    samples = sampler.sample_positions(args.samples, seed=args.seed)
    write_positions(args.out / "samples.extxyz", fit_set.numbers, samples)
    report = evaluate(samples, reference.positions, reference.numbers)
    print(markdown_table({
        "training set (biased)": evaluate(train_set.positions, reference.positions,
                                          reference.numbers),
        f"FK-distance, {name} forces, {args.samples} samples": report,
        "reference noise floor (half vs half)": noise_floor(
            reference.positions, reference.numbers, min(args.samples, len(reference) // 2)),
    }))
    return label_cache, sampler, report


def measure_and_drift(name: str, calc: Calculator, model_path: Path, train_set: Conformations,
                      reference: Conformations, fit_set: Conformations, held_out: Conformations,
                      args: argparse.Namespace) -> RunSummary:
    """:func:`report_errors`, then :func:`drift_with_potential`, for the potential ``name``
    saved at ``model_path`` and loaded into ``calc``; the data as :func:`prepare` returns it."""
    fit_errors, held_out_errors = report_errors(name, calc, fit_set, held_out)
    label_cache, sampler, report = drift_with_potential(name, calc, model_path, fit_set,
                                                        train_set, reference, args)
    return RunSummary(calc, fit_set, held_out, fit_errors, held_out_errors, label_cache, sampler,
                      report)
