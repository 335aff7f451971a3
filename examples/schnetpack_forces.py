"""A SchNetPack PaiNN potential as the force source of a drift sampler (ethanol, 500 K).

What is not about the package's own potential (the measuring and sampling of steps 2 and 3, the
options other than the model's) is shared with ``mace_forces.py`` and lives in
``potential_drift.py`` next to this file; the model itself is built and fitted by
:mod:`ase_drift.potentials`.

1. Fit a small PaiNN (energy and forces, ``spk.atomistic.Forces``;
   ``ase_drift.potentials.build_painn``) to the GFN2-xTB labels of the bundled ethanol training
   set with a plain PyTorch loop, and save it the way SchNetPack saves models (the whole
   module, ``torch.save(model, path)``).
2. Load it into SchNetPack's ASE calculator (``SpkCalculator``) and measure its force error on
   held-out frames of the equilibrium reference.
3. Train a Force-Aligned-Kernel drift sampler in distance space on the training frames stripped
   of their labels, every label from the calculator (``CalculatorForces``, a resumable label
   cache); sample 1,000 conformers and compare them with the reference.

    python examples/schnetpack_forces.py                    # a few minutes on 2 cores
    python examples/schnetpack_forces.py --frames 64 --epochs 2 --drift-steps 5 --hidden 16

Units are ASE's throughout: Å, eV, eV/Å, K. ``SpkCalculator`` assumes kcal/mol unless told
otherwise, so the units are always passed explicitly. The model is trained in float32; the
calculator evaluates it in float64.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import potential_drift  # next to this file
import schnetpack.transform as trn
import torch
from schnetpack import properties
from schnetpack.interfaces import SpkCalculator

from ase_drift.potentials import PAINN_CUTOFF_ANGSTROM, build_painn, fit_painn


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    potential_drift.common_arguments(parser, Path("examples_out/schnetpack"), epochs=10,
                                     learning_rate=1e-3)
    parser.add_argument("--hidden", type=int, default=32, help="PaiNN n_atom_basis")
    parser.add_argument("--interactions", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None) -> potential_drift.RunSummary:
    args = parse_args(argv)
    train_set, reference, fit_set, held_out = potential_drift.prepare(args)

    start = time.perf_counter()
    model = build_painn(args.hidden, args.interactions,
                        float(fit_set.energies.mean()) / fit_set.n_atoms, args.seed)
    fit_painn(model, fit_set, args.epochs, args.learning_rate, args.batch_size,
              args.energy_weight, args.seed)
    model_path = args.out / "painn.pt"
    torch.save(model, model_path)
    print(f"fitted PaiNN in {time.perf_counter() - start:.1f} s -> {model_path}")

    calc = SpkCalculator(model=str(model_path),  # a str; a Path would be taken for a module
                         neighbor_list=trn.ASENeighborList(cutoff=PAINN_CUTOFF_ANGSTROM),
                         energy_key=properties.energy, force_key=properties.forces,
                         energy_unit="eV", position_unit="Ang", dtype=torch.float64)
    return potential_drift.measure_and_drift("PaiNN", calc, model_path, train_set, reference,
                                             fit_set, held_out, args)


if __name__ == "__main__":
    main()
