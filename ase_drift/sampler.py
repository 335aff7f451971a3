"""Samplers: the :class:`Sampler` protocol every sampler in ase_drift shares, and
:class:`DriftSampler`, the one-step generator trained by a drifting field.

Every sampler draws conformations of one molecule (fixed species and order) in Å:
``sample_positions(n, seed)`` returns an array ``[n, A, 3]``; ``sample(atoms, n, seed)``
returns ``ase.Atoms`` copies of a template whose species and order are checked against the
model. Samples carry positions only: no energies or forces are invented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .models import GeneratorConfig, MLPGenerator


@runtime_checkable
class Sampler(Protocol):
    """What every ase_drift sampler offers (drift, diffusion, ... see ``baselines``)."""

    numbers: np.ndarray

    def sample_positions(self, n: int, seed: int | None = None) -> np.ndarray: ...

    def sample(self, atoms, n: int, seed: int | None = None) -> list: ...

    def save(self, path: str | Path) -> Path: ...


def torch_generator(seed: int | None) -> torch.Generator:
    """A seeded ``torch.Generator``; ``None`` draws a fresh seed from the OS."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return torch.Generator().manual_seed(int(seed))


class TemplateSampler:
    """Shared behaviour of samplers: template checks, Atoms and mdtraj export.

    Subclasses set ``numbers`` and implement ``sample_positions``.
    """

    numbers: np.ndarray

    def sample_positions(self, n: int, seed: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def check_template(self, atoms) -> None:
        """Raise ValueError naming the first atom whose species differs from the model's."""
        numbers = np.asarray(atoms.numbers)
        expected = self.numbers
        if len(numbers) != len(expected):
            raise ValueError(f"template has {len(numbers)} atoms "
                             f"({atoms.get_chemical_formula()}); the model samples "
                             f"{len(expected)} atoms ({_formula(expected)})")
        wrong = np.flatnonzero(numbers != expected)
        if len(wrong):
            from ase.data import chemical_symbols

            k = int(wrong[0])
            raise ValueError(
                f"template atom {k} is {chemical_symbols[numbers[k]]}, but the model's atom {k} "
                f"is {chemical_symbols[expected[k]]}: species or order differ "
                f"(template {''.join(chemical_symbols[z] for z in numbers)}, "
                f"model {''.join(chemical_symbols[z] for z in expected)})")

    def sample(self, atoms, n: int, seed: int | None = None) -> list:
        """``n`` copies of ``atoms`` with sampled positions, centred on the template's centroid.

        The template's cell, pbc and info are kept; calculators and stored results are not.
        """
        self.check_template(atoms)
        positions = self.sample_positions(n, seed=seed)
        positions = positions + atoms.positions.mean(axis=0)
        return atoms_from_positions(atoms, positions)

    def to_mdtraj(self, positions: np.ndarray, topology):
        """An ``mdtraj.Trajectory`` of positions ``[n, A, 3]`` in Å (mdtraj stores nm)."""
        import mdtraj

        from . import units

        if topology.n_atoms != len(self.numbers):
            raise ValueError(f"topology has {topology.n_atoms} atoms, the model {len(self.numbers)}")
        elements = np.array([atom.element.atomic_number for atom in topology.atoms])
        if not np.array_equal(elements, self.numbers):
            k = int(np.flatnonzero(elements != self.numbers)[0])
            raise ValueError(f"topology atom {k} has atomic number {elements[k]}, the model's "
                             f"atom {k} has {self.numbers[k]}")
        return mdtraj.Trajectory(units.angstrom_to_nm(positions), topology)


def atoms_from_positions(template, positions: np.ndarray) -> list:
    """Copies of ``template`` (without calculator) with positions ``[n, A, 3]`` in Å."""
    from ase import Atoms

    base = Atoms(numbers=template.numbers, cell=template.cell, pbc=template.pbc)
    base.info.update(template.info)
    frames = []
    for frame in positions:
        atoms = base.copy()
        atoms.arrays["positions"] = frame.copy()
        frames.append(atoms)
    return frames


def _formula(numbers) -> str:
    from ase.symbols import Symbols

    return Symbols(numbers).get_chemical_formula()


class DriftSampler(TemplateSampler):
    """A trained one-step generator: noise → conformation in one network evaluation.

    Args:
        generator: the network, producing normalised coordinates ``[B, A, 3]``.
        numbers: atomic numbers ``[A]`` (species and order the model was trained on).
        scale: σ in Å that turns normalised coordinates into Å.
        config: the configuration dict stored with the model (generator and training).
        metadata: provenance: temperature, units, field, space, training data summary.
    """

    kind = "drift-sampler"

    def __init__(self, generator: MLPGenerator, numbers, scale: float, config: dict,
                 metadata: dict):
        self.generator = generator.eval()
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.scale = float(scale)
        self.config = config
        self.metadata = metadata

    @property
    def temperature_K(self) -> float:
        return self.metadata["temperature_K"]

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"DriftSampler({_formula(self.numbers)}, {meta.get('field')}/{meta.get('space')}, "
                f"T={meta.get('temperature_K')} K)")

    @torch.inference_mode()
    def sample_positions(self, n: int, seed: int | None = None,
                         batch_size: int = 8192) -> np.ndarray:
        """``n`` conformations ``[n, A, 3]`` in Å, centred at the origin (float32)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        rng = torch_generator(seed)
        out = np.empty((n, len(self.numbers), 3), dtype=np.float32)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            coords = self.generator(self.generator.noise(stop - start, rng))
            coords = coords - coords.mean(dim=1, keepdim=True)
            out[start:stop] = (coords * self.scale).numpy()
        return out

    def save(self, path: str | Path) -> Path:
        metadata = dict(self.metadata, kind=self.kind)
        return save_checkpoint(path, self.config, self.generator.state_dict(), metadata)

    @classmethod
    def load(cls, path: str | Path) -> DriftSampler:
        """From a sampler file or a training checkpoint (its current weights)."""
        payload = load_checkpoint(path)
        metadata = payload["metadata"]
        state = payload["state_dict"]
        if metadata.get("kind") == "drift-trainer":
            state = state["model"]
        elif metadata.get("kind") != cls.kind:
            from .checkpoint import CheckpointError

            raise CheckpointError(f"{path} holds a {metadata.get('kind')!r} checkpoint, "
                                  f"not a drift sampler")
        generator = MLPGenerator(GeneratorConfig(**payload["config"]["generator"]))
        generator.load_state_dict(state)
        metadata = {k: v for k, v in metadata.items() if k != "kind"}
        return cls(generator, metadata["numbers"], metadata["scale_angstrom"],
                   payload["config"], metadata)
