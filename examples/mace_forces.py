"""A MACE potential as the force source of a drift sampler (ethanol, 500 K).

What is not about the package's own potential (the measuring and sampling of steps 2 and 3, the
options other than the model's) is shared with ``schnetpack_forces.py`` and lives in
``potential_drift.py`` next to this file; the model itself is built and fitted by
:mod:`ase_drift.potentials`.

1. Fit a small ``ScaleShiftMACE`` (``ase_drift.potentials.build_mace``: a few channels of
   0e + 1o, r_max 5 Å, 2 interactions, correlation 2) to the GFN2-xTB labels of the bundled
   ethanol training set with a plain PyTorch loop over MACE's own data pipeline
   (``config_from_atoms``, ``AtomicData.from_config``, MACE's ``DataLoader``), and save it with
   ``torch.save``.
2. Load it into MACE's ASE calculator (``MACECalculator``, float64) and measure its force error
   on held-out frames of the equilibrium reference.
3. Train a Force-Aligned-Kernel drift sampler in distance space on the training frames stripped
   of their labels, every label from the calculator (``CalculatorForces``, a resumable label
   cache); sample 1,000 conformers and compare them with the reference.

    python examples/mace_forces.py                    # a few minutes on 2 cores
    python examples/mace_forces.py --frames 64 --epochs 2 --drift-steps 5 --hidden 8

Units are ASE's throughout: Å, eV, eV/Å, K. Nothing is downloaded: no foundation model is used.
The model is trained in float32 and stored in float64, the precision the calculator runs at.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mace  # noqa: F401  (before e3nn, as MACE requires)
import numpy as np
import potential_drift  # next to this file
import torch
from mace import modules
from mace.calculators import MACECalculator

from ase_drift.potentials import atomic_number_table, build_mace, fit_mace, mace_loader


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    potential_drift.common_arguments(parser, Path("examples_out/mace"), epochs=4,
                                     learning_rate=5e-3)
    parser.add_argument("--hidden", type=int, default=16,
                        help="channels per irrep of the hidden features (Nx0e + Nx1o)")
    return parser.parse_args(argv)


def main(argv=None) -> potential_drift.RunSummary:
    args = parse_args(argv)
    train_set, reference, fit_set, held_out = potential_drift.prepare(args)

    start = time.perf_counter()
    z_table = atomic_number_table(fit_set)
    loader = mace_loader(fit_set, z_table, args.batch_size, args.seed)
    model = build_mace(args.hidden, z_table, float(fit_set.energies.mean()) / fit_set.n_atoms,
                       float(np.sqrt(np.mean(fit_set.forces ** 2))),
                       modules.compute_avg_num_neighbors(loader), args.seed)
    fit_mace(model, loader, args.epochs, args.learning_rate, args.energy_weight)
    model_path = args.out / "mace.model"
    torch.save(model.double(), model_path)
    print(f"fitted MACE in {time.perf_counter() - start:.1f} s -> {model_path}")

    calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    return potential_drift.measure_and_drift("MACE", calc, model_path, train_set, reference,
                                             fit_set, held_out, args)


if __name__ == "__main__":
    main()
