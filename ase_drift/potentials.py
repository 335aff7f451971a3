"""Small neural potentials fitted in a few lines: a SchNetPack PaiNN and a MACE model.

The builders shared by the examples (``examples/schnetpack_forces.py``,
``examples/mace_forces.py``), the tests and the force-speed benchmark. They fit a tiny potential
to labelled :class:`~ase_drift.data.Conformations` and load it into its package's ASE
calculator, which :class:`~ase_drift.forces.CalculatorForces` turns into a force source::

    from ase_drift.potentials import fit_potential
    calc = fit_potential("schnetpack", labelled, "painn.pt", hidden=32, epochs=10,
                         learning_rate=1e-3)
    sampler = ase_drift.train(positions_only, forces=CalculatorForces(calc), ...)

Units are ASE's throughout: Å, eV, eV/Å. Models train in float32 and their calculators evaluate
them in float64. Weights are initialised from a seed without touching torch's global random
state (:func:`torch.random.fork_rng`).

SchNetPack and MACE are optional (``make install-nn``) and are imported inside the functions
only: importing ``mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process
(``torch.load`` then unpickles anything), so ``import ase_drift`` must never import it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .data import ENERGIES, FORCES, Conformations
from .forces import CalculatorForces

if TYPE_CHECKING:  # pragma: no cover
    from ase.calculators.calculator import Calculator

#: The potentials :func:`fit_potential` knows, by the package that implements them.
KINDS = ("schnetpack", "mace")
#: Neighbour cutoff of the PaiNN model (Å).
PAINN_CUTOFF_ANGSTROM = 5.0
#: Radial cutoff r_max of the MACE model (Å).
MACE_R_MAX_ANGSTROM = 5.0
#: Batch keys of the reference labels in SchNetPack inputs. SchNetPack models write their
#: outputs into the input dict under "energy"/"forces", so labels stored under those keys
#: would be overwritten.
REFERENCE_ENERGY = "reference_energy"
REFERENCE_FORCES = "reference_forces"


class Errors(NamedTuple):
    """Mean absolute errors of a potential on labelled frames."""

    energy_mae: float  # eV
    force_mae: float  # eV/Å, per component
    zero_force_mae: float  # eV/Å, mean |F| of the labels: the error of predicting zero forces


def potential_errors(calc: Calculator, data: Conformations) -> Errors:
    """Energy and force errors of the ASE calculator ``calc`` on labelled ``data``."""
    data.require(ENERGIES, FORCES, why="measuring a potential's errors")
    predicted = CalculatorForces(calc).compute(data.numbers, data.positions)
    return Errors(float(np.abs(predicted.energies - data.energies).mean()),
                  float(np.abs(predicted.forces - data.forces).mean()),
                  float(np.abs(data.forces).mean()))


def fit_loop(model: torch.nn.Module, loader: Collection[Any], epochs: int, learning_rate: float,
             batch_loss: Callable[[Any], tuple[torch.Tensor, int]],
             progress: bool = True) -> list[float]:
    """Minimise ``batch_loss`` over ``epochs`` passes of ``loader`` with Adam and a cosine
    learning-rate decay (to zero after the last batch); returns the mean loss of each epoch
    (printed when ``progress``).

    ``batch_loss(batch)`` returns the loss of one batch and the number of frames in it. The
    model is in training mode while fitting (potentials build their differentiable forces only
    then) and in evaluation mode after.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model.train()
    losses = []
    for epoch in range(epochs):
        start, total, seen = time.perf_counter(), 0.0, 0
        for batch in loader:
            loss, frames = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * frames
            seen += frames
        losses.append(total / seen)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f} "
                  f"({time.perf_counter() - start:.1f} s)")
    model.eval()
    return losses


def _mean_energy_per_atom(data: Conformations) -> float:
    return float(data.energies.mean()) / data.n_atoms


# ----------------------------------------------------------------------------- SchNetPack PaiNN
def build_painn(hidden: int, interactions: int, mean_energy_per_atom: float, seed: int):
    """PaiNN (``spk.model.NeuralNetworkPotential``) with an atomwise energy head (eV) and forces
    as its negative gradient (eV/Å).

    The postprocessor adds ``mean_energy_per_atom`` × n_atoms (eV) to the energy, so the network
    only learns the fluctuation around the training mean. Weights are initialised from ``seed``.
    """
    import schnetpack as spk
    import schnetpack.transform as trn
    from schnetpack import properties

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        representation = spk.representation.PaiNN(
            n_atom_basis=hidden, n_interactions=interactions,
            radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=PAINN_CUTOFF_ANGSTROM),
            cutoff_fn=spk.nn.CosineCutoff(PAINN_CUTOFF_ANGSTROM))
        return spk.model.NeuralNetworkPotential(
            representation=representation,
            input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=[spk.atomistic.Atomwise(n_in=hidden, output_key=properties.energy),
                            spk.atomistic.Forces(energy_key=properties.energy,
                                                 force_key=properties.forces)],
            postprocessors=[trn.CastTo64(),
                            trn.AddOffsets(properties.energy, add_mean=True,
                                           property_mean=torch.tensor([mean_energy_per_atom]))])


def painn_inputs(data: Conformations) -> list[dict[str, torch.Tensor]]:
    """One SchNetPack input dict per labelled frame (float32, neighbour list within the cutoff).

    The same fields as ``spk.interfaces.AtomsConverter`` builds for the calculator, plus the
    labels under :data:`REFERENCE_ENERGY` (``[1]`` eV) and :data:`REFERENCE_FORCES`
    (``[A, 3]`` eV/Å). ``spk.data.AtomsLoader`` collates them into batches.
    """
    import schnetpack.transform as trn
    from schnetpack import properties

    data.require(ENERGIES, FORCES, why="fitting a potential")
    transforms = [trn.ASENeighborList(cutoff=PAINN_CUTOFF_ANGSTROM), trn.CastTo32()]
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


def fit_painn(model, data: Conformations, epochs: int, learning_rate: float,
              batch_size: int = 32, energy_weight: float = 0.1, seed: int = 0,
              progress: bool = True) -> list[float]:
    """Fit a :func:`build_painn` model to ``data`` (:func:`fit_loop`, batches shuffled from
    ``seed``) on ``energy_weight · mean (ΔE)² [eV²] + mean (ΔF)² [(eV/Å)², per component]``."""
    import schnetpack as spk
    from schnetpack import properties

    loader = spk.data.AtomsLoader(painn_inputs(data), batch_size=batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(seed))

    def batch_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        prediction = model(batch)  # Forces builds a differentiable graph only in training mode
        loss = (energy_weight * (prediction[properties.energy]
                                 - batch[REFERENCE_ENERGY]).square().mean()
                + (prediction[properties.forces] - batch[REFERENCE_FORCES]).square().mean())
        return loss, len(batch[REFERENCE_ENERGY])

    return fit_loop(model, loader, epochs, learning_rate, batch_loss, progress)


def painn_calculator(model_path: str | Path, dtype: torch.dtype = torch.float64) -> Calculator:
    """SchNetPack's ``SpkCalculator`` for a model saved with ``torch.save(model, path)``,
    evaluated in ``dtype``. ``SpkCalculator`` assumes kcal/mol unless told otherwise, so the
    units (eV, Å) are passed explicitly."""
    import schnetpack.transform as trn
    from schnetpack import properties
    from schnetpack.interfaces import SpkCalculator

    return SpkCalculator(model=str(model_path),  # a str; a Path would be taken for a module
                         neighbor_list=trn.ASENeighborList(cutoff=PAINN_CUTOFF_ANGSTROM),
                         energy_key=properties.energy, force_key=properties.forces,
                         energy_unit="eV", position_unit="Ang", dtype=dtype)


# ----------------------------------------------------------------------------- MACE
def _label_keys():
    """Where the labels travel on the ase.Atoms handed to MACE's ``config_from_atoms``; its
    ``KeySpecification`` maps them to MACE's "energy" and "forces" fields (it maps nothing by
    default)."""
    from mace import data as mace_data

    return mace_data.KeySpecification(info_keys={"energy": REFERENCE_ENERGY},
                                      arrays_keys={"forces": REFERENCE_FORCES})


def atomic_number_table(data: Conformations):
    """MACE's ``AtomicNumberTable`` of the elements of ``data``."""
    from mace.tools import AtomicNumberTable

    return AtomicNumberTable(sorted(set(data.numbers.tolist())))


def mace_graphs(data: Conformations, z_table) -> list:
    """One MACE ``AtomicData`` graph per labelled frame (edges within r_max; energy eV, forces
    eV/Å), in torch's default dtype (float32)."""
    from ase import Atoms
    from mace import data as mace_data

    data.require(ENERGIES, FORCES, why="fitting a potential")
    keys = _label_keys()
    graphs = []
    for k in range(len(data)):
        atoms = Atoms(numbers=data.numbers, positions=data.positions[k],
                      info={REFERENCE_ENERGY: data.energies[k]})
        atoms.arrays[REFERENCE_FORCES] = data.forces[k]
        config = mace_data.config_from_atoms(atoms, key_specification=keys)
        graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table,
                                                       cutoff=MACE_R_MAX_ANGSTROM))
    return graphs


def build_mace(channels: int, z_table, mean_energy_per_atom: float, force_rms: float,
               avg_num_neighbors: float, seed: int):
    """``ScaleShiftMACE`` with hidden irreps ``{channels}x0e + {channels}x1o``, 2 interactions,
    correlation 2, max_ell 2, r_max :data:`MACE_R_MAX_ANGSTROM`.

    Every element's isolated-atom energy is ``mean_energy_per_atom`` (eV): with one molecule the
    per-element energies cannot be told apart, and only the mean matters. The interaction
    energy is scaled by ``force_rms`` (eV/Å), MACE's "rms_forces" scaling. Weights are
    initialised from ``seed``.
    """
    import mace  # noqa: F401  (before e3nn, as MACE requires)
    from e3nn import o3
    from mace import modules

    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # e3nn's code generation warns once per TorchScript module
        warnings.filterwarnings("ignore", message="The TorchScript type system")
        torch.manual_seed(seed)
        return modules.ScaleShiftMACE(
            r_max=MACE_R_MAX_ANGSTROM, num_bessel=8, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=interaction, interaction_cls_first=interaction, num_interactions=2,
            num_elements=len(z_table), hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"),
            MLP_irreps=o3.Irreps(f"{channels}x0e"),
            atomic_energies=np.full(len(z_table), mean_energy_per_atom),
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=z_table.zs, correlation=2,
            gate=torch.nn.functional.silu, atomic_inter_scale=force_rms, atomic_inter_shift=0.0)


def mace_loader(data: Conformations, z_table, batch_size: int = 32, seed: int = 0):
    """MACE's ``DataLoader`` over :func:`mace_graphs` of ``data``, shuffled from ``seed``."""
    from mace.tools.torch_geometric.dataloader import DataLoader

    return DataLoader(mace_graphs(data, z_table), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def fit_mace(model, loader, epochs: int, learning_rate: float, energy_weight: float = 0.1,
             progress: bool = True) -> list[float]:
    """Fit a :func:`build_mace` model on the batches of :func:`mace_loader` (:func:`fit_loop`)
    on ``energy_weight · mean (ΔE)² [eV²] + mean (ΔF)² [(eV/Å)², per component]``."""
    def batch_loss(batch) -> tuple[torch.Tensor, int]:
        prediction = model(batch.to_dict(), training=True)  # differentiable forces
        loss = (energy_weight * (prediction["energy"] - batch.energy).square().mean()
                + (prediction["forces"] - batch.forces).square().mean())
        return loss, batch.num_graphs

    return fit_loop(model, loader, epochs, learning_rate, batch_loss, progress)


def mace_calculator(model_path: str | Path, dtype: torch.dtype = torch.float64) -> Calculator:
    """MACE's ``MACECalculator`` for a model saved with ``torch.save``, in ``dtype`` (float64 or
    float32) on the CPU.

    The model is unpickled here with ``weights_only=False`` said explicitly (a MACE model file is
    a pickled module: load only files you trust), not by MACECalculator's bare ``torch.load``,
    which works only while importing mace's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set."""
    from mace.calculators import MACECalculator

    model = torch.load(model_path, map_location="cpu", weights_only=False)
    return MACECalculator(models=model, device="cpu",
                          default_dtype=str(dtype).removeprefix("torch."))


# ----------------------------------------------------------------------------- either
def fit_potential(kind: str, data: Conformations, model_path: str | Path, *, hidden: int,
                  epochs: int, learning_rate: float, batch_size: int = 32,
                  energy_weight: float = 0.1, interactions: int = 3, seed: int = 0,
                  progress: bool = True) -> Calculator:
    """Fit a small potential of ``kind`` (:data:`KINDS`) to labelled ``data``, save it to
    ``model_path`` and return its ASE calculator (float64).

    - ``"schnetpack"``: :func:`build_painn` with ``hidden`` features and ``interactions``
      interaction blocks, saved the way SchNetPack saves models (``torch.save(model, path)``),
      loaded by :func:`painn_calculator`;
    - ``"mace"``: :func:`build_mace` with ``hidden`` channels per irrep (``interactions`` is
      not used: 2), saved in float64, loaded by :func:`mace_calculator`.

    Both fit ``energy_weight · mean (ΔE)² + mean (ΔF)²`` with Adam and a cosine decay over
    ``epochs`` passes in batches of ``batch_size``; weights and batch order follow ``seed``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown potential kind {kind!r}; choose one of {KINDS}")
    data.require(ENERGIES, FORCES, why="fitting a potential")
    model_path = Path(model_path)
    if kind == "schnetpack":
        model = build_painn(hidden, interactions, _mean_energy_per_atom(data), seed)
        fit_painn(model, data, epochs, learning_rate, batch_size, energy_weight, seed, progress)
        torch.save(model, model_path)
        return painn_calculator(model_path)
    from mace import modules

    z_table = atomic_number_table(data)
    loader = mace_loader(data, z_table, batch_size, seed)
    model = build_mace(hidden, z_table, _mean_energy_per_atom(data),
                       float(np.sqrt(np.mean(data.forces ** 2))),
                       modules.compute_avg_num_neighbors(loader), seed)
    fit_mace(model, loader, epochs, learning_rate, energy_weight, progress)
    torch.save(model.double(), model_path)
    return mace_calculator(model_path)
