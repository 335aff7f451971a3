"""A SchNetPack PaiNN potential as the force source of a drift sampler (ethanol, 500 K).

What is not about the package's own potential (the measuring and sampling of steps 2 and 3, the
training loop, the options other than the model's) is shared with ``mace_forces.py`` and lives
in ``potential_drift.py`` next to this file.

1. Fit a small PaiNN (energy and forces, ``spk.atomistic.Forces``) to the GFN2-xTB labels of the
   bundled ethanol training set with a plain PyTorch loop, and save it the way SchNetPack saves
   models (the whole module, ``torch.save(model, path)``).
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
import sys
import time
from pathlib import Path

import schnetpack as spk
import schnetpack.transform as trn
import torch
from schnetpack import properties
from schnetpack.interfaces import SpkCalculator

from ase_drift import Conformations

# The shared steps, next to this file: running it as a script puts its directory on sys.path,
# importing it by file path (as the tests and benchmarks do) does not.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import potential_drift

CUTOFF_ANGSTROM = 5.0
#: Batch keys of the reference labels. SchNetPack models write their outputs into the input
#: dict under "energy"/"forces", so labels stored under those keys would be overwritten.
REFERENCE_ENERGY = "reference_energy"
REFERENCE_FORCES = "reference_forces"


# ----------------------------------------------------------------------------- the potential
def build_painn(hidden: int, interactions: int, mean_energy_per_atom: float,
                seed: int) -> spk.model.NeuralNetworkPotential:
    """PaiNN with an atomwise energy head (eV) and forces as its negative gradient (eV/Å).

    The postprocessor adds ``mean_energy_per_atom`` × n_atoms (eV) to the energy, so the network
    only learns the fluctuation around the training mean. Weights are initialised from ``seed``.
    """
    torch.manual_seed(seed)
    representation = spk.representation.PaiNN(
        n_atom_basis=hidden, n_interactions=interactions,
        radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=CUTOFF_ANGSTROM),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF_ANGSTROM))
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=hidden, output_key=properties.energy),
                        spk.atomistic.Forces(energy_key=properties.energy,
                                             force_key=properties.forces)],
        postprocessors=[trn.CastTo64(),
                        trn.AddOffsets(properties.energy, add_mean=True,
                                       property_mean=torch.tensor([mean_energy_per_atom]))])


def frame_inputs(data: Conformations) -> list[dict[str, torch.Tensor]]:
    """One SchNetPack input dict per labelled frame (float32, neighbour list within the cutoff).

    The same fields as ``spk.interfaces.AtomsConverter`` builds for the calculator, plus the
    labels under :data:`REFERENCE_ENERGY` (``[1]`` eV) and :data:`REFERENCE_FORCES`
    (``[A, 3]`` eV/Å). ``spk.data.AtomsLoader`` collates them into batches.
    """
    data.require("energies", "forces", why="fitting a potential")
    transforms = [trn.ASENeighborList(cutoff=CUTOFF_ANGSTROM), trn.CastTo32()]
    numbers = torch.from_numpy(data.numbers)
    frames = []
    for k in range(len(data)):
        inputs = {
            properties.n_atoms: torch.tensor([data.n_atoms]),
            properties.Z: numbers,
            properties.R: torch.from_numpy(data.positions[k]),
            properties.cell: torch.zeros(1, 3, 3, dtype=torch.float64),
            properties.pbc: torch.zeros(1, 3, dtype=torch.bool),
            properties.idx: torch.tensor([k]),
            REFERENCE_ENERGY: torch.tensor([data.energies[k]]),
            REFERENCE_FORCES: torch.from_numpy(data.forces[k]),
        }
        for transform in transforms:
            inputs = transform(inputs)
        frames.append(inputs)
    return frames


def fit(model: spk.model.NeuralNetworkPotential, loader: spk.data.AtomsLoader, epochs: int,
        learning_rate: float, energy_weight: float) -> None:
    """Fit ``model`` (Adam, cosine learning-rate decay: ``potential_drift.fit_loop``) on
    ``energy_weight · mean (ΔE)² [eV²] + mean (ΔF)² [(eV/Å)², per component]``."""
    def batch_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        prediction = model(batch)  # Forces builds a differentiable graph only in training mode
        loss = (energy_weight * (prediction[properties.energy]
                                 - batch[REFERENCE_ENERGY]).square().mean()
                + (prediction[properties.forces] - batch[REFERENCE_FORCES]).square().mean())
        return loss, len(batch[REFERENCE_ENERGY])

    potential_drift.fit_loop(model, loader, epochs, learning_rate, batch_loss)


# ----------------------------------------------------------------------------- the run
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
    loader = spk.data.AtomsLoader(frame_inputs(fit_set), batch_size=args.batch_size,
                                  shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    fit(model, loader, args.epochs, args.learning_rate, args.energy_weight)
    model_path = args.out / "painn.pt"
    torch.save(model, model_path)
    print(f"fitted PaiNN in {time.perf_counter() - start:.1f} s -> {model_path}")

    calc = SpkCalculator(model=str(model_path),  # a str; a Path would be taken for a module
                         neighbor_list=trn.ASENeighborList(cutoff=CUTOFF_ANGSTROM),
                         energy_key=properties.energy, force_key=properties.forces,
                         energy_unit="eV", position_unit="Ang", dtype=torch.float64)
    return potential_drift.measure_and_drift("PaiNN", calc, model_path, train_set, reference,
                                             fit_set, held_out, args)


if __name__ == "__main__":
    main()
