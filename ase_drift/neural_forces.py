"""Batched force sources for neural potentials: a MACE or SchNetPack model evaluated on many
frames of one molecule per model call.

:class:`~ase_drift.forces.CalculatorForces` around ``MACECalculator`` or ``SpkCalculator``
labels one frame per call, and for these small models the cost of a call (the ASE round
trip, a neighbour list and an input graph per frame, hundreds of small tensor operations on a
9-atom graph, MACE's stress) is several times that of the arithmetic. :class:`MACEForces` and :class:`SchNetPackForces` build one graph of
``batch_size`` disconnected copies of the molecule, one per frame, and run the model once on
it; forces are the model's own output (−dE/dR by autograd, as the model computes them). They
agree with the per-frame calculators to rounding (≈ 1e-15 eV/Å in float64 here; the tests
require 1e-5 eV/Å and 1e-5 eV).

Units: positions in Å in, energies in eV and forces in eV/Å out, with no conversion — the
models must predict eV from Å, which the models of :mod:`ase_drift.potentials` do (they are
trained on eV and Å labels) and which MACE models do by convention. A SchNetPack model trained
in other units (``SpkCalculator``'s default is kcal/mol) belongs in ``SpkCalculator`` with its
``energy_unit=`` and :class:`~ase_drift.forces.CalculatorForces`.

Fingerprints differ from those of the per-frame calculators on purpose: a label cache made
with ``CalculatorForces(MACECalculator(...))`` is refused by :class:`MACEForces` of the same
model (and the other way round). The labels agree to rounding, but not bit for bit (the batched
sums run in another order), and a fingerprint shared with the calculator would have to
reproduce the calculator's parameter dict, which belongs to MACE and SchNetPack and changes
with their versions. The cost is one relabelling of an old cache, which the batched source
does 9–14 times faster in float64 than the calculator made it (docs/benchmarks.md). A
fingerprint here holds the model's weights digest (and its file's, when loaded from one), the
dtype and the settings that change the labels (SchNetPack's cutoff, MACE's head); not the
device or ``batch_size``.

This module is separate from :mod:`ase_drift.potentials`, which builds and fits the small
models of the examples and tests: these sources evaluate any saved MACE or SchNetPack model.
Like it, it imports MACE and SchNetPack inside the classes only (importing ``mace`` sets
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process).
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from .forces import (
    ForceResult,
    LabelingError,
    _as_batch,
    _frame_ranges,
    _module_sha256,
    file_sha256,
)
from .potentials import PAINN_CUTOFF_ANGSTROM

#: Frames per model call unless told otherwise, as in label()'s batches: on ethanol within 6 %
#: of the best rate of 16, 64 and 256 frames per call for both models in float64 (15 % in
#: float32), with memory growing with it (``python -m benchmarks.forces --batched``).
DEFAULT_BATCH_SIZE = 64


class _BatchedPotential(ABC):
    """What :class:`MACEForces` and :class:`SchNetPackForces` share: the model (loaded, or a
    copy of the module given), input checks, chunks of ``batch_size`` frames, the finite check
    and the fingerprint. A subclass loads its package's model files, checks the elements and
    evaluates one chunk."""

    #: The package whose models the subclass evaluates, for messages.
    package: ClassVar[str]

    def __init__(self, model: str | os.PathLike | torch.nn.Module, device: str | torch.device,
                 dtype: torch.dtype, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        if isinstance(model, torch.nn.Module):
            self.model_file, self._model_file_sha256 = None, None
            model = copy.deepcopy(model)  # converted and frozen below, not the caller's module
        else:
            self.model_file = os.fspath(model)
            self._model_file_sha256 = file_sha256(self.model_file)  # of what was loaded
            model = self._load(self.model_file)
        self.model = model.to(self.device, self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # autograd for the positions only

    @abstractmethod
    def _load(self, path: str) -> torch.nn.Module:
        """The model saved at ``path``."""

    @abstractmethod
    def _check_elements(self, numbers: np.ndarray) -> None:
        """ValueError if the model cannot evaluate atoms ``numbers`` ``[A]``."""

    @abstractmethod
    def _evaluate(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``[b]`` (eV) and forces ``[b, A, 3]`` (eV/Å) of the finite frames
        ``positions`` ``[b, A, 3]`` (Å), in one model call."""

    @abstractmethod
    def _label_settings(self) -> dict:
        """The settings besides the model and dtype that change the labels."""

    def compute(self, numbers: np.ndarray, positions: np.ndarray) -> ForceResult:
        """Energies ``[B]`` (eV) and forces ``[B, A, 3]`` (eV/Å) of ``positions`` ``[B, A, 3]``
        (or one frame ``[A, 3]``) in Å of atoms ``numbers`` ``[A]``, one model call per
        ``batch_size`` frames.

        Raises ValueError for positions of another shape or elements the model does not know,
        and :class:`~ase_drift.forces.LabelingError` naming the frame for non-finite positions
        or labels, or naming the chunk's frames when the model raises.
        """
        numbers, positions = _as_batch(numbers, positions)
        self._check_elements(numbers)
        unplaced = np.flatnonzero(~np.isfinite(positions).all(axis=(1, 2)))
        if len(unplaced):
            raise LabelingError(f"frame {unplaced[0]} of the batch: its positions are not finite")
        energies = np.empty(len(positions))  # [B] eV
        forces = np.empty(positions.shape)  # [B, A, 3] eV/Å
        for start in range(0, len(positions), self.batch_size):
            frames = np.arange(start, min(start + self.batch_size, len(positions)))  # [b]
            try:
                energies[frames], forces[frames] = self._evaluate(numbers, positions[frames])
            except Exception as err:
                raise LabelingError(f"{_frame_ranges(frames)} of the batch: the {self.package} "
                                    f"model raised {type(err).__name__}: {err}") from err
            finite = np.isfinite(energies[frames]) & np.isfinite(forces[frames]).all(axis=(1, 2))
            if not finite.all():
                k = frames[np.flatnonzero(~finite)[0]]
                raise LabelingError(f"frame {k} of the batch: the {self.package} model returned "
                                    f"a non-finite energy ({energies[k]}) or forces")
        return ForceResult(energies, forces)

    def fingerprint(self) -> dict:
        """What sets the labels: the SHA-256 of the model's weights (and of its file, when
        loaded from one), the dtype and :meth:`_label_settings` (see the module docstring for
        why this differs from the per-frame calculator's fingerprint)."""
        out = {"model_weights_sha256": _module_sha256(self.model),
               "dtype": str(self.dtype).removeprefix("torch."), **self._label_settings()}
        if self._model_file_sha256 is not None:
            out["model_file_sha256"] = self._model_file_sha256
        return out


class MACEForces(_BatchedPotential):
    """A MACE model as a batched :class:`~ase_drift.forces.ForceSource` (Å in; eV, eV/Å out).

    Each chunk of ``batch_size`` frames becomes one ``torch_geometric`` batch of MACE's own
    ``AtomicData`` graph of the molecule (``config_from_atoms``, ``AtomicData.from_config``,
    as ``MACECalculator`` builds one per frame; here built once per molecule and chunk size),
    with the chunk's positions and its edges, every ordered pair of atoms of a frame closer than
    the model's ``r_max``, found in torch for all frames at once as for
    :class:`SchNetPackForces`. One model call without stress evaluates it. Agrees with
    ``CalculatorForces(MACECalculator(model_paths=path, default_dtype="float64"))`` to
    rounding.

    Args:
        model: a MACE model saved with ``torch.save(model, path)`` (a whole pickled module:
            load only files you trust), or the module itself (copied, not changed).
        device: torch device to evaluate on.
        dtype: the model's float type for evaluation (float64 matches the calculators here).
        batch_size: frames per model call.
        head: the model's head to evaluate; needed only when it has several.
    """

    package = "MACE"

    def __init__(self, model: str | os.PathLike | torch.nn.Module, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, batch_size: int = DEFAULT_BATCH_SIZE,
                 head: str | None = None):
        from mace.tools import AtomicNumberTable

        super().__init__(model, device, dtype, batch_size)
        self.heads = list(getattr(self.model, "heads", ["Default"]))
        if head is None and len(self.heads) > 1:
            raise ValueError(f"the MACE model has heads {self.heads}: pass head=")
        if head is not None and head not in self.heads:
            raise ValueError(f"the MACE model has no head {head!r}; its heads: {self.heads}")
        self.head = self.heads[0] if head is None else head
        self.r_max = float(self.model.r_max)  # Å
        self.z_table = AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        self._graphs: dict[tuple[bytes, int], dict[str, torch.Tensor]] = {}  # _frames_graph's

    def _load(self, path: str) -> torch.nn.Module:
        import mace  # noqa: F401  (sets up e3nn before the model's modules are unpickled)

        return torch.load(path, map_location=self.device, weights_only=False)

    def _check_elements(self, numbers: np.ndarray) -> None:
        unknown = sorted(set(numbers.tolist()) - set(self.z_table.zs))
        if unknown:
            raise ValueError(f"atomic numbers {unknown} are not among the MACE model's "
                             f"elements {list(self.z_table.zs)}")

    def _evaluate(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frame_positions = torch.tensor(positions, dtype=self.dtype,
                                       device=self.device)  # [b, A, 3] Å
        # pairs beyond r_max would carry zero weight under MACE's radial envelope: left out as
        # MACE's neighbour list leaves them out, for speed
        sender, receiver = _pairs_within(frame_positions, self.r_max)  # [E] each
        inputs = dict(self._frames_graph(numbers, positions[0], len(positions)))
        inputs["positions"] = frame_positions.reshape(-1, 3)  # [b·A, 3] Å
        # MACE's edges run sender → receiver; with both directions present the order is free
        inputs["edge_index"] = torch.stack((sender, receiver))  # [2, E]
        no_shift = torch.zeros(len(sender), 3, dtype=self.dtype, device=self.device)  # [E, 3]
        inputs["shifts"], inputs["unit_shifts"] = no_shift, no_shift  # isolated: no images
        output = self.model(inputs, training=False, compute_stress=False)
        energies = output["energy"].detach().cpu().numpy()  # [b] eV
        forces = output["forces"].detach().cpu().numpy().reshape(positions.shape)
        return energies, forces  # forces [b, A, 3] eV/Å

    def _frames_graph(self, numbers: np.ndarray, frame: np.ndarray,
                      n_frames: int) -> dict[str, torch.Tensor]:
        """MACE's batch of ``n_frames`` copies of the molecule's graph (``config_from_atoms``,
        ``AtomicData.from_config``, ``Batch.from_data_list``, as ``MACECalculator`` builds one),
        floats in ``dtype``, without the fields :meth:`_evaluate` sets per chunk (positions and
        the per-edge ``edge_index``, ``shifts`` and ``unit_shifts``). Built once per molecule and
        chunk size: MACE's own graph construction, frame by frame, cost a third of the batched
        call; ``frame`` ``[A, 3]`` (Å) only gives the template finite positions."""
        key = (numbers.tobytes(), n_frames)
        if key not in self._graphs:
            from ase import Atoms
            from mace import data as mace_data
            from mace.tools import torch_geometric

            if len(self._graphs) > 4:  # one molecule at a time holds batch_size and remainder
                self._graphs.clear()
            config = mace_data.config_from_atoms(Atoms(numbers=numbers, positions=frame),
                                                 head_name=self.head)
            graph = mace_data.AtomicData.from_config(config, z_table=self.z_table,
                                                     cutoff=self.r_max, heads=self.heads)
            batch = torch_geometric.Batch.from_data_list([graph] * n_frames).to(self.device)
            self._graphs[key] = {
                name: value.to(self.dtype) if torch.is_floating_point(value) else value
                for name, value in batch.to_dict().items()
                if name not in ("positions", "edge_index", "shifts", "unit_shifts")}
        return self._graphs[key]

    def _label_settings(self) -> dict:
        return {"head": self.head}


class SchNetPackForces(_BatchedPotential):
    """A SchNetPack model as a batched :class:`~ase_drift.forces.ForceSource` (Å in; eV,
    eV/Å out).

    Each chunk of ``batch_size`` frames becomes one SchNetPack input dict, the frames'
    atoms concatenated (``_idx_m`` their frame), with every pair of atoms of a frame closer
    than ``cutoff`` as a neighbour pair in both directions — what ``ASENeighborList`` gives an
    isolated molecule, found here in torch for all frames at once (O(A²) per frame: meant for
    molecules, not for thousands of atoms). The model must predict the energy under "energy"
    and forces under "forces" in eV and eV/Å. Agrees with ``CalculatorForces(SpkCalculator(
    model=path, neighbor_list=ASENeighborList(cutoff), energy_unit="eV", position_unit="Ang",
    dtype=torch.float64))`` to rounding.

    Args:
        model: a SchNetPack model saved with ``torch.save(model, path)`` (loaded by SchNetPack's
            ``load_model``: a whole pickled module, load only files you trust), or the module
            itself (copied, not changed).
        cutoff: neighbour-list cutoff in Å (at least the model's own cutoff).
        device: torch device to evaluate on.
        dtype: the model's float type for evaluation.
        batch_size: frames per model call.
    """

    package = "SchNetPack"

    def __init__(self, model: str | os.PathLike | torch.nn.Module,
                 cutoff: float = PAINN_CUTOFF_ANGSTROM, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(model, device, dtype, batch_size)
        self.cutoff = float(cutoff)

    def _load(self, path: str) -> torch.nn.Module:
        from schnetpack.utils import load_model  # torch.load(..., weights_only=False)

        return load_model(path, device=self.device)

    def _check_elements(self, numbers: np.ndarray) -> None:
        """Atomic numbers from 1 to below the size of the representation's element embedding
        (SchNet's, PaiNN's and SO3net's ``nn.Embedding``; another embedding is not checked).
        A model gives an element it was not trained on an untrained embedding, silently."""
        embedding = getattr(getattr(self.model, "representation", None), "embedding", None)
        largest = (embedding.num_embeddings - 1 if isinstance(embedding, torch.nn.Embedding)
                   else np.inf)
        outside = sorted({z for z in numbers.tolist() if not 1 <= z <= largest})
        if outside:
            raise ValueError(f"atomic numbers {outside} are outside the SchNetPack model's "
                             f"element embedding (1 to {largest})")

    def _evaluate(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from schnetpack import properties

        n_frames, n_atoms = positions.shape[:2]
        frame_positions = torch.tensor(positions, dtype=self.dtype,
                                       device=self.device)  # [b, A, 3] Å
        i, j = _pairs_within(frame_positions, self.cutoff)  # [P] each, into the b·A atoms
        on_device = {"device": self.device}
        inputs = {
            properties.Z: torch.tensor(numbers, **on_device).repeat(n_frames),  # [b·A]
            properties.R: frame_positions.reshape(-1, 3).clone(),  # [b·A, 3] Å, a leaf
            properties.n_atoms: torch.full((n_frames,), n_atoms, **on_device),  # [b]
            properties.idx_m: torch.arange(n_frames, **on_device).repeat_interleave(
                n_atoms),  # [b·A] frame of each atom
            properties.idx_i: i,  # [P]
            properties.idx_j: j,  # [P]
            properties.offsets: torch.zeros(len(i), 3, dtype=self.dtype, **on_device),  # [P, 3]
            properties.cell: torch.zeros(n_frames, 3, 3, dtype=self.dtype, **on_device),
            properties.pbc: torch.zeros(n_frames, 3, dtype=torch.bool, **on_device),
            properties.idx: torch.arange(n_frames, **on_device),  # [b]
        }
        output = self.model(inputs)
        energies = output[properties.energy].detach().cpu().numpy()  # [b] eV
        forces = output[properties.forces].detach().cpu().numpy().reshape(positions.shape)
        return energies, forces  # forces [b, A, 3] eV/Å

    def _label_settings(self) -> dict:
        return {"cutoff": self.cutoff}


def _pairs_within(positions: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair ``(i, j)``, i ≠ j, of atoms of a frame of ``positions`` ``[b, A, 3]``
    (Å) closer than ``cutoff`` (Å), as indices ``[P]`` each into the frames' b·A atoms laid end
    to end; by frame, then i, then j."""
    n_atoms = positions.shape[1]
    vectors = positions[:, None, :, :] - positions[:, :, None, :]  # [b, A, A, 3]: R_j − R_i
    others = ~torch.eye(n_atoms, dtype=torch.bool, device=positions.device)  # [A, A]
    within = (vectors.square().sum(-1) < cutoff ** 2) & others  # [b, A, A]
    frame, i, j = within.nonzero(as_tuple=True)
    return frame * n_atoms + i, frame * n_atoms + j
