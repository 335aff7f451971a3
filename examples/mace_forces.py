"""A MACE potential as the force source of a drift sampler (ethanol, 500 K).

1. Fit a small ``ScaleShiftMACE`` (built in code: a few channels of 0e + 1o, r_max 5 Å,
   2 interactions, correlation 2) to the GFN2-xTB labels of the bundled ethanol training set with
   a plain PyTorch loop over MACE's own data pipeline (``config_from_atoms``,
   ``AtomicData.from_config``, MACE's ``DataLoader``), and save it with ``torch.save``.
2. Load it into MACE's ASE calculator (``MACECalculator``, float64) and measure its force error
   on held-out frames of the equilibrium reference.
3. Strip the labels off the training frames and train a Force-Aligned-Kernel drift sampler in
   distance space whose energies and forces come from the calculator, through
   ``CalculatorForces`` and a resumable label cache; sample 1,000 conformers and compare them
   with the reference.

    python examples/mace_forces.py                    # a few minutes on 2 cores
    python examples/mace_forces.py --frames 64 --epochs 2 --drift-steps 5 --hidden 8

Units are ASE's throughout: Å, eV, eV/Å, K. Nothing is downloaded: no foundation model is used.
The model is trained in float32 and stored in float64, the precision the calculator runs at.
"""

from __future__ import annotations

import argparse
import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import mace  # noqa: F401  (before e3nn, as MACE requires)
import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.calculators import MACECalculator
from mace.tools import AtomicNumberTable
from mace.tools.torch_geometric.dataloader import DataLoader

import ase_drift
from ase_drift import CalculatorForces, Conformations, DriftSampler
from ase_drift.datasets import load
from ase_drift.io import write_positions
from ase_drift.metrics import DistanceReport, evaluate, markdown_table, noise_floor

DATASET = "ethanol-gfn2-500K"
TEMPERATURE_K = 500.0
R_MAX_ANGSTROM = 5.0
#: Where the labels travel on the ase.Atoms handed to ``config_from_atoms``; MACE's
#: ``KeySpecification`` maps them to its "energy" and "forces" fields (it maps nothing by default).
LABEL_KEYS = mace_data.KeySpecification(info_keys={"energy": "reference_energy"},
                                        arrays_keys={"forces": "reference_forces"})


class Errors(NamedTuple):
    """Mean absolute errors of a potential on labelled frames."""

    energy_mae: float  # eV
    force_mae: float  # eV/Å, per component
    zero_force_mae: float  # eV/Å, mean |F| of the labels: the error of predicting zero forces


@dataclass
class RunSummary:
    """What :func:`main` built and measured (energies eV, forces eV/Å)."""

    calculator: MACECalculator
    fit_set: Conformations  # labelled frames the potential was fitted on (the drift positives)
    held_out: Conformations  # labelled reference frames never seen in fitting
    fit_errors: Errors  # of the calculator on fit_set
    held_out_errors: Errors  # of the calculator on held_out
    label_cache: Path
    sampler: DriftSampler
    report: DistanceReport


# ----------------------------------------------------------------------------- the potential
def frame_graphs(data: Conformations, z_table: AtomicNumberTable) -> list[mace_data.AtomicData]:
    """One MACE graph per labelled frame (edges within r_max; energy eV, forces eV/Å), in
    torch's default dtype (float32)."""
    data.require("energies", "forces", why="fitting a potential")
    graphs = []
    for k in range(len(data)):
        atoms = Atoms(numbers=data.numbers, positions=data.positions[k],
                      info={"reference_energy": data.energies[k]})
        atoms.arrays["reference_forces"] = data.forces[k]
        config = mace_data.config_from_atoms(atoms, key_specification=LABEL_KEYS)
        graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table,
                                                       cutoff=R_MAX_ANGSTROM))
    return graphs


def build_mace(channels: int, z_table: AtomicNumberTable, mean_energy_per_atom: float,
               force_rms: float, avg_num_neighbors: float, seed: int) -> modules.ScaleShiftMACE:
    """ScaleShiftMACE with hidden irreps ``{channels}x0e + {channels}x1o``, 2 interactions,
    correlation 2, max_ell 2.

    Every element's isolated-atom energy is ``mean_energy_per_atom`` (eV): with one molecule the
    per-element energies cannot be told apart, and only the mean matters. The interaction
    energy is scaled by ``force_rms`` (eV/Å), MACE's "rms_forces" scaling. Weights are
    initialised from ``seed``.
    """
    torch.manual_seed(seed)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with warnings.catch_warnings():  # e3nn's code generation warns once per TorchScript module
        warnings.filterwarnings("ignore", message="The TorchScript type system")
        return modules.ScaleShiftMACE(
            r_max=R_MAX_ANGSTROM, num_bessel=8, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=interaction, interaction_cls_first=interaction, num_interactions=2,
            num_elements=len(z_table), hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"),
            MLP_irreps=o3.Irreps(f"{channels}x0e"),
            atomic_energies=np.full(len(z_table), mean_energy_per_atom),
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=z_table.zs, correlation=2,
            gate=torch.nn.functional.silu, atomic_inter_scale=force_rms, atomic_inter_shift=0.0)


def fit(model: modules.ScaleShiftMACE, loader: DataLoader, epochs: int, learning_rate: float,
        energy_weight: float) -> None:
    """Adam with a cosine learning-rate decay on
    ``energy_weight · mean (ΔE)² [eV²] + mean (ΔF)² [(eV/Å)², per component]``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model.train()
    for epoch in range(epochs):
        start, total, seen = time.perf_counter(), 0.0, 0
        for batch in loader:
            prediction = model(batch.to_dict(), training=True)  # differentiable forces
            loss = (energy_weight * (prediction["energy"] - batch.energy).square().mean()
                    + (prediction["forces"] - batch.forces).square().mean())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * batch.num_graphs
            seen += batch.num_graphs
        print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f} "
              f"({time.perf_counter() - start:.1f} s)")
    model.eval()


def errors(calc, data: Conformations) -> Errors:
    """Energy and force errors of the ASE calculator ``calc`` on labelled ``data``."""
    predicted = CalculatorForces(calc).compute(data.numbers, data.positions)
    return Errors(float(np.abs(predicted.energies - data.energies).mean()),
                  float(np.abs(predicted.forces - data.forces).mean()),
                  float(np.abs(data.forces).mean()))


def file_digest(path: Path) -> str:
    """First 12 hex digits of the SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# ----------------------------------------------------------------------------- the run
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000,
                        help="training-set frames to fit on and to train the sampler on "
                             "(a seeded random subset; default: all 3,000)")
    parser.add_argument("--held-out", type=int, default=500,
                        help="reference frames to measure the force error on")
    parser.add_argument("--hidden", type=int, default=16,
                        help="channels per irrep of the hidden features (Nx0e + Nx1o)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--energy-weight", type=float, default=0.1,
                        help="weight of the energy term (eV⁻²·(eV/Å)²) in the loss")
    parser.add_argument("--drift-steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("examples_out/mace"))
    return parser.parse_args(argv)


def main(argv=None) -> RunSummary:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train_set, reference = load(DATASET)
    rng = np.random.default_rng(args.seed)
    fit_set = train_set[np.sort(rng.permutation(len(train_set))[:args.frames])]
    held_out = reference[np.sort(rng.permutation(len(reference))[:args.held_out])]
    print(f"fit set {fit_set!r}\nheld out {held_out!r}")

    start = time.perf_counter()
    z_table = AtomicNumberTable(sorted(set(fit_set.numbers.tolist())))
    loader = DataLoader(frame_graphs(fit_set, z_table), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model = build_mace(args.hidden, z_table, float(fit_set.energies.mean()) / fit_set.n_atoms,
                       float(np.sqrt(np.mean(fit_set.forces ** 2))),
                       modules.compute_avg_num_neighbors(loader), args.seed)
    fit(model, loader, args.epochs, args.learning_rate, args.energy_weight)
    model_path = args.out / "mace.model"
    torch.save(model.double(), model_path)
    print(f"fitted MACE in {time.perf_counter() - start:.1f} s -> {model_path}")

    calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    fit_errors, held_out_errors = errors(calc, fit_set), errors(calc, held_out)
    print("| MACE MAE | energy (meV) | forces (eV/Å) | predicting zero forces (eV/Å) |\n"
          "|---|---|---|---|")
    for what, err in ((f"fit set ({len(fit_set)} training frames)", fit_errors),
                      (f"held-out reference ({len(held_out)} frames)", held_out_errors)):
        print(f"| {what} | {1000 * err.energy_mae:.1f} | {err.force_mae:.4f} | "
              f"{err.zero_force_mae:.4f} |")

    positions_only = Conformations(fit_set.numbers, fit_set.positions,
                                   temperature_K=TEMPERATURE_K)
    # The cache recognises frames by their positions only: naming it after the model file
    # keeps a refitted potential from being served the labels of the previous one.
    label_cache = args.out / f"labels-mace-{file_digest(model_path)}.h5"
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
        f"FK-distance, MACE forces, {args.samples} samples": report,
        "reference noise floor (half vs half)": noise_floor(reference.positions,
                                                            reference.numbers),
    }))
    return RunSummary(calc, fit_set, held_out, fit_errors, held_out_errors, label_cache, sampler,
                      report)


if __name__ == "__main__":
    main()
