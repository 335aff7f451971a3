"""A MACE potential as the force source of a drift sampler (ethanol, 500 K).

What is not about the package's own potential (the measuring and sampling of steps 2 and 3, the
training loop, the options other than the model's) is shared with ``schnetpack_forces.py`` and
lives in ``potential_drift.py`` next to this file.

1. Fit a small ``ScaleShiftMACE`` (built in code: a few channels of 0e + 1o, r_max 5 Å,
   2 interactions, correlation 2) to the GFN2-xTB labels of the bundled ethanol training set with
   a plain PyTorch loop over MACE's own data pipeline (``config_from_atoms``,
   ``AtomicData.from_config``, MACE's ``DataLoader``), and save it with ``torch.save``.
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
import sys
import time
import warnings
from pathlib import Path

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

from ase_drift import Conformations

# The shared steps, next to this file: running it as a script puts its directory on sys.path,
# importing it by file path (as the tests and benchmarks do) does not.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import potential_drift

R_MAX_ANGSTROM = 5.0
#: Where the labels travel on the ase.Atoms handed to ``config_from_atoms``; MACE's
#: ``KeySpecification`` maps them to its "energy" and "forces" fields (it maps nothing by default).
LABEL_KEYS = mace_data.KeySpecification(info_keys={"energy": "reference_energy"},
                                        arrays_keys={"forces": "reference_forces"})


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
    """Fit ``model`` (Adam, cosine learning-rate decay: ``potential_drift.fit_loop``) on
    ``energy_weight · mean (ΔE)² [eV²] + mean (ΔF)² [(eV/Å)², per component]``."""
    def batch_loss(batch) -> tuple[torch.Tensor, int]:
        prediction = model(batch.to_dict(), training=True)  # differentiable forces
        loss = (energy_weight * (prediction["energy"] - batch.energy).square().mean()
                + (prediction["forces"] - batch.forces).square().mean())
        return loss, batch.num_graphs

    potential_drift.fit_loop(model, loader, epochs, learning_rate, batch_loss)


# ----------------------------------------------------------------------------- the run
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
    return potential_drift.measure_and_drift("MACE", calc, model_path, train_set, reference,
                                             fit_set, held_out, args)


if __name__ == "__main__":
    main()
