"""Conformations: the one data container of ase_drift, with readers and splits.

A :class:`Conformations` holds frames of one molecule in ASE units: positions ``[N, A, 3]`` in
Å, optional forces ``[N, A, 3]`` in eV/Å, optional potential energies ``[N]`` in eV, and the
temperature in K at which the frames are meant to be Boltzmann samples. Readers accept anything
``ase.io.read`` reads (extxyz, traj, db, ...), MD17-style npz files and mdtraj trajectories.
Frames are isolated molecules: periodic input (ase.Atoms with any ``pbc``, an mdtraj trajectory
with a unit cell) is refused, since the cell would be dropped and every label computed later
would miss the periodic images.
A missing label is ``None``, never zeros; code that needs it raises through
:meth:`Conformations.require`. This module knows nothing about force sources: frames are
labelled by :func:`ase_drift.forces.label`, which returns new Conformations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import units

#: Names of the labels a :class:`Conformations` may carry (its attributes, the arguments of
#: :meth:`Conformations.require`, the datasets of a label cache).
FORCES = "forces"
ENERGIES = "energies"
LABELS = (FORCES, ENERGIES)
#: Keys of an info dict or npz that carry the temperature in K, in order of preference.
TEMPERATURE_KEYS = ("temperature_K", "temperature", "T")


@dataclass(frozen=True, eq=False)
class Conformations:
    """Frames of one molecule (ASE units: Å, eV/Å, eV, K).

    Args:
        numbers: atomic numbers ``[A]``; they fix species and order for everything downstream.
        positions: ``[N, A, 3]`` in Å.
        forces: ``[N, A, 3]`` in eV/Å, or None when unlabelled.
        energies: ``[N]`` potential energies in eV, or None.
        temperature_K: temperature of the target Boltzmann distribution, or None if unknown.
    """

    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray | None = None
    energies: np.ndarray | None = None
    temperature_K: float | None = None

    def __post_init__(self):
        numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.ndim == 2:
            positions = positions[None]
        if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
            raise ValueError(f"positions must have shape [n_frames, {len(numbers)}, 3] to match "
                             f"{len(numbers)} atomic numbers, got {positions.shape}")
        if not np.isfinite(positions).all():
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=(1, 2)))
            raise ValueError(f"positions are not finite in frame(s) {bad[:10].tolist()}")
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "positions", positions)
        if self.forces is not None:
            forces = np.asarray(self.forces, dtype=np.float64).reshape(positions.shape)
            if not np.isfinite(forces).all():
                bad = np.flatnonzero(~np.isfinite(forces).all(axis=(1, 2)))
                raise ValueError(f"forces are NaN or infinite in frame(s) {bad[:10].tolist()}")
            object.__setattr__(self, FORCES, forces)
        if self.energies is not None:
            energies = np.asarray(self.energies, dtype=np.float64).reshape(-1)
            if len(energies) != len(positions):
                raise ValueError(f"{len(energies)} energies for {len(positions)} frames")
            if not np.isfinite(energies).all():
                bad = np.flatnonzero(~np.isfinite(energies))
                raise ValueError(f"energies are NaN or infinite in frame(s) {bad[:10].tolist()}")
            object.__setattr__(self, ENERGIES, energies)
        if self.temperature_K is not None:
            temperature = float(self.temperature_K)
            if not temperature > 0:
                raise ValueError(f"temperature_K must be positive, got {self.temperature_K}")
            object.__setattr__(self, "temperature_K", temperature)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.positions)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def symbols(self) -> list[str]:
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.numbers]

    @property
    def formula(self) -> str:
        from ase.symbols import Symbols

        return Symbols(self.numbers).get_chemical_formula()

    def __repr__(self) -> str:
        labels = [name for name in LABELS if getattr(self, name) is not None]
        return (f"Conformations({self.formula}, {len(self)} frames, "
                f"labels={labels or 'none'}, temperature_K={self.temperature_K})")

    def __getitem__(self, index) -> Conformations:
        """Frames selected by an int, slice, index array or boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return replace(
            self,
            positions=self.positions[index],
            forces=None if self.forces is None else self.forces[index],
            energies=None if self.energies is None else self.energies[index],
        )

    def require(self, *labels: str, why: str = "") -> Conformations:
        """Return self, or raise ValueError naming the missing label(s)."""
        missing = [name for name in labels if getattr(self, name) is None]
        if missing:
            reason = f" ({why})" if why else ""
            hint = (" Attach them, or label the frames with "
                    "ase_drift.forces.label(data, ForceSource).")
            raise ValueError(f"{self!r} has no {' or '.join(missing)}{reason}.{hint}")
        return self

    def with_temperature(self, temperature_K: float | None) -> Conformations:
        return replace(self, temperature_K=temperature_K)

    # ------------------------------------------------------------------ splits
    def head(self, n: int) -> Conformations:
        """The first ``n`` frames (MD17's biased 'first frames' protocol)."""
        return self[:n]

    def frames(self, start: int, stop: int) -> Conformations:
        """Frames ``start`` (inclusive) to ``stop`` (exclusive)."""
        return self[start:stop]

    def stride(self, k: int) -> Conformations:
        """Every ``k``-th frame."""
        return self[::k]

    def split(self, fraction: float, seed: int = 0) -> tuple[Conformations, Conformations]:
        """Random split into (fraction, 1 - fraction) of the frames, reproducible by ``seed``."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = round(fraction * len(self))
        return self[np.sort(order[:cut])], self[np.sort(order[cut:])]

    @staticmethod
    def concatenate(parts: list[Conformations]) -> Conformations:
        first = parts[0]
        for part in parts[1:]:
            if not np.array_equal(part.numbers, first.numbers):
                raise ValueError("cannot concatenate conformations of different molecules")

        def joined(name):
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return Conformations(first.numbers, joined("positions"), joined(FORCES),
                             joined(ENERGIES), first.temperature_K)

    # ------------------------------------------------------------------ readers
    @classmethod
    def read(cls, path: str | Path, index=":", temperature_K: float | None = None,
             format: str | None = None, energy_unit: str = "eV") -> Conformations:
        """Read any file ``ase.io.read`` reads, or an MD17-style ``.npz``.

        Energies and forces are taken from the frames' calculators or arrays when present, in
        ``energy_unit`` (and ``energy_unit``/Å); the temperature comes from ``temperature_K`` or
        the first frame's info.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such data file: {path}")
        if path.suffix == ".npz":
            return cls.from_npz(path, energy_unit=energy_unit, temperature_K=temperature_K)
        import ase.io

        frames = ase.io.read(str(path), index=index, format=format)
        if not isinstance(frames, list):
            frames = [frames]
        try:
            return cls.from_atoms(frames, temperature_K=temperature_K, energy_unit=energy_unit)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_atoms(cls, frames, temperature_K: float | None = None,
                   energy_unit: str = "eV") -> Conformations:
        """From a list of ``ase.Atoms`` (same species and order in every frame); energies and
        forces in ``energy_unit`` (per Å) are converted to eV."""
        frames = list(frames)
        if not frames:
            raise ValueError("no frames given")
        numbers = frames[0].numbers
        for k, atoms in enumerate(frames):
            if atoms.pbc.any():
                raise ValueError(
                    f"frame {k} is periodic (pbc={atoms.pbc.tolist()}, cell lengths "
                    f"{np.round(atoms.cell.lengths(), 3).tolist()} Å): ase_drift samples "
                    f"isolated molecules and would drop the cell (labels would miss the "
                    f"periodic images). If the molecule is isolated and whole, set "
                    f"atoms.pbc = False (extxyz: pbc=\"F F F\").")
            if not np.array_equal(atoms.numbers, numbers):
                raise ValueError(f"frame {k} has species {atoms.get_chemical_formula()} in a "
                                 f"different order than frame 0 ({frames[0].get_chemical_formula()})")
        positions = np.stack([atoms.positions for atoms in frames])
        scale = units.energy_to_eV(1.0, energy_unit)
        forces = _collect(frames, "forces")
        energies = _collect(frames, "energy")
        forces = None if forces is None else forces * scale
        energies = None if energies is None else energies * scale
        if temperature_K is None:
            temperature_K = _temperature_from(frames[0].info)
        return cls(numbers, positions, forces, energies, temperature_K)

    @classmethod
    def from_npz(cls, path: str | Path, energy_unit: str = "eV",
                 temperature_K: float | None = None) -> Conformations:
        """From an MD17-style npz with keys ``z``, ``R`` (Å) and optional ``F``, ``E``.

        ``energy_unit`` ('eV', 'kcal/mol' or 'kJ/mol') is the unit of E and of F per Å.
        """
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            for key in ("z", "R"):
                if key not in keys:
                    raise KeyError(f"{path}: npz needs key {key!r} (has {sorted(keys)})")
            scale = units.energy_to_eV(1.0, energy_unit)
            forces = npz["F"] * scale if "F" in keys else None
            energies = npz["E"].reshape(-1) * scale if "E" in keys else None
            if temperature_K is None:
                temperature_K = _temperature_from({k: npz[k] for k in keys})
            return cls(npz["z"], npz["R"], forces, energies, temperature_K)

    @classmethod
    def from_mdtraj(cls, traj, temperature_K: float | None = None) -> Conformations:
        """From an ``mdtraj.Trajectory`` (positions only; mdtraj stores nm). A trajectory with a
        unit cell is refused (the box would be dropped)."""
        if traj.unitcell_vectors is not None:
            raise ValueError(
                f"the mdtraj trajectory has a periodic box (unit cell lengths "
                f"{np.round(traj.unitcell_lengths[0], 3).tolist()} nm): ase_drift samples "
                f"isolated molecules and would drop it. If the molecule is whole, set "
                f"traj.unitcell_vectors = None first.")
        numbers = [atom.element.atomic_number for atom in traj.topology.atoms]
        return cls(numbers, units.nm_to_angstrom(traj.xyz), temperature_K=temperature_K)

    # ------------------------------------------------------------------ writers
    def to_atoms(self) -> list:
        """One ``ase.Atoms`` per frame; labels attached through a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for k in range(len(self)):
            atoms = Atoms(numbers=self.numbers, positions=self.positions[k])
            results = {}
            if self.energies is not None:
                results["energy"] = float(self.energies[k])
            if self.forces is not None:
                results["forces"] = self.forces[k]
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            if self.temperature_K is not None:
                atoms.info["temperature_K"] = self.temperature_K
            frames.append(atoms)
        return frames

    def write(self, path: str | Path, format: str | None = None) -> None:
        """Write with ``ase.io.write`` (extxyz keeps energies and forces)."""
        import ase.io

        ase.io.write(str(path), self.to_atoms(), format=format)


def _collect(frames, name: str) -> np.ndarray | None:
    """Stack a per-frame property from the calculators (or arrays); None if any frame lacks it."""
    from ase.calculators.calculator import PropertyNotImplementedError

    values = []
    for atoms in frames:
        value = None
        if atoms.calc is not None:
            try:
                value = (atoms.calc.get_property(name, atoms, allow_calculation=False))
            except PropertyNotImplementedError:
                value = None
        if value is None and name in atoms.arrays:
            value = atoms.arrays[name]
        if value is None and name in atoms.info:
            value = atoms.info[name]
        if value is None:
            return None
        values.append(np.asarray(value, dtype=np.float64))
    return np.stack(values)


def _temperature_from(info) -> float | None:
    for key in TEMPERATURE_KEYS:
        if key in info:
            return float(np.asarray(info[key]))
    return None
