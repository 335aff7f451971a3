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

import zipfile
import zlib
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
#: What a reader does with a label some frames carry and others lack: raise naming the first
#: frame without it, or drop that label for every frame.
PARTIAL_LABELS = ("error", "drop")


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
            forces = np.asarray(self.forces, dtype=np.float64)
            if len(positions) == 1 and forces.shape == positions.shape[1:]:
                forces = forces[None]
            if forces.shape != positions.shape:
                n, a = positions.shape[:2]
                hint = (" (it looks like [n_frames, 3, n_atoms]: transpose it with "
                        "forces.transpose(0, 2, 1))" if forces.shape == (n, 3, a) else "")
                raise ValueError(f"forces must have the shape of the positions "
                                 f"{positions.shape} ([n_frames, n_atoms, 3]), got "
                                 f"{forces.shape}{hint}")
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
        object.__setattr__(self, "temperature_K", check_temperature(self.temperature_K))

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
        """The first ``n`` frames (MD17's biased 'first frames' protocol); all of them when
        there are fewer. A negative ``n`` raises ValueError (it is not Python's 'all but')."""
        if n < 0:
            raise ValueError(f"the number of frames must not be negative, got {n}")
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
             format: str | None = None, energy_unit: str = "eV",
             partial_labels: str = "error", energy_key: str | None = None,
             forces_key: str | None = None) -> Conformations:
        """Read any file ``ase.io.read`` reads, or an MD17-style ``.npz``.

        Energies and forces are taken from the frames' calculators or arrays when present, in
        ``energy_unit`` (and ``energy_unit``/Å); the temperature comes from ``temperature_K`` or
        the first frame's info. A label that some frames carry and others lack raises naming
        the first frame without it, unless ``partial_labels="drop"`` (then no frame has it).
        ``energy_key``/``forces_key`` read the labels from the frames' info/arrays entries of
        that name instead (e.g. MACE's ``REF_energy``/``REF_forces``); ignored for npz.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no such data file: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a data file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty")
        if path.suffix == ".npz":
            return cls.from_npz(path, energy_unit=energy_unit, temperature_K=temperature_K)
        from .checkpoint import is_torch_file

        if is_torch_file(path):
            raise ValueError(f"{path} is a PyTorch file (an ase_drift model or checkpoint?), not "
                             f"a data file of conformations")
        import ase.io

        try:
            frames = ase.io.read(str(path), index=index, format=format)
        except Exception as exc:  # ase.io's readers raise many types for damaged files
            kind = f"as {format}" if format else "with ase.io"
            if isinstance(exc, UnicodeDecodeError):
                reason = "it holds binary data where text was expected"
            else:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ValueError(f"{path} cannot be read {kind} ({reason}): is it truncated, "
                             f"damaged or of another format?") from exc
        if not isinstance(frames, list):
            frames = [frames]
        try:
            return cls.from_atoms(frames, temperature_K=temperature_K, energy_unit=energy_unit,
                                  partial_labels=partial_labels, energy_key=energy_key,
                                  forces_key=forces_key)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_atoms(cls, frames, temperature_K: float | None = None, energy_unit: str = "eV",
                   partial_labels: str = "error", energy_key: str | None = None,
                   forces_key: str | None = None) -> Conformations:
        """From a list of ``ase.Atoms`` (same species and order in every frame); energies and
        forces in ``energy_unit`` (per Å) are converted to eV. ``partial_labels``,
        ``energy_key`` and ``forces_key`` as in :meth:`read`."""
        if partial_labels not in PARTIAL_LABELS:
            raise ValueError(f"partial_labels must be one of {PARTIAL_LABELS}, got "
                             f"{partial_labels!r}")
        frames = list(frames)
        if not frames:
            raise ValueError("no frames given")
        numbers = frames[0].numbers
        for k, atoms in enumerate(frames):
            if len(atoms) != len(numbers):
                raise ValueError(f"frame {k} has {len(atoms)} atoms "
                                 f"({atoms.get_chemical_formula()}), frame 0 has {len(numbers)} "
                                 f"({frames[0].get_chemical_formula()}): every frame must be the "
                                 f"same molecule")
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
        forces = _collect(frames, "forces", partial_labels, forces_key)
        energies = _collect(frames, "energy", partial_labels, energy_key)
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
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                for key in ("z", "R"):
                    if key not in keys:
                        raise KeyError(f"{path}: npz needs key {key!r} (has {sorted(keys)})")
                arrays = {key: npz[key] for key in keys}
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{path} cannot be read as an npz file: it is truncated or not "
                             f"NumPy's npz format ({type(exc).__name__}: {exc})") from exc
        except ValueError as exc:  # e.g. object arrays, which are never unpickled
            raise ValueError(f"{path}: {exc}") from exc
        scale = units.energy_to_eV(1.0, energy_unit)
        forces = arrays["F"] * scale if "F" in keys else None
        energies = arrays["E"].reshape(-1) * scale if "E" in keys else None
        if temperature_K is None:
            temperature_K = _temperature_from(arrays)
        try:
            return cls(arrays["z"], arrays["R"], forces, energies, temperature_K)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

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


def species_difference(numbers, other) -> str:
    """How two molecules' atomic numbers differ ('' if they are equal): the atom counts, or
    the first atom whose species differs."""
    from ase.data import chemical_symbols
    from ase.symbols import Symbols

    numbers, other = np.asarray(numbers).reshape(-1), np.asarray(other).reshape(-1)
    if len(numbers) != len(other):
        return (f"{len(numbers)} atoms ({Symbols(numbers).get_chemical_formula()}) against "
                f"{len(other)} ({Symbols(other).get_chemical_formula()})")
    wrong = np.flatnonzero(numbers != other)
    if not len(wrong):
        return ""
    k = int(wrong[0])
    return (f"atom {k} is {chemical_symbols[numbers[k]]} in one and "
            f"{chemical_symbols[other[k]]} in the other (same count, other species or order)")


def check_temperature(temperature_K, name: str = "temperature_K") -> float | None:
    """``temperature_K`` as a float, or None; ValueError naming ``name`` unless it is a
    positive finite number of kelvin (0 K is never taken to mean 'unknown')."""
    if temperature_K is None:
        return None
    try:
        temperature = float(temperature_K)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of kelvin, got {temperature_K!r}") from None
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name} must be positive and finite (kelvin), got {temperature_K}")
    return temperature


def _collect(frames, name: str, partial_labels: str = "error",
             key: str | None = None) -> np.ndarray | None:
    """Stack a per-frame property from the calculators (or arrays); None if no frame has it.
    If only some frames have it: ValueError naming the first frame without it, or None with
    ``partial_labels="drop"``. With ``key``, only the arrays/info entry ``key`` is read, and
    no frame having it is a ValueError naming the keys the first frame has."""
    from ase.calculators.calculator import PropertyNotImplementedError

    if key is not None:
        if not any(key in atoms.arrays or key in atoms.info for atoms in frames):
            first = frames[0]
            have = sorted(set(first.arrays) - {"numbers", "positions"}) + sorted(first.info)
            raise ValueError(f"no frame has the {name} key {key!r} (frame 0 has "
                             f"{', '.join(map(repr, have)) or 'no per-frame entries'})")
        name = key
    values, missing = [], []
    for k, atoms in enumerate(frames):
        value = None
        if atoms.calc is not None and key is None:
            try:
                value = (atoms.calc.get_property(name, atoms, allow_calculation=False))
            except PropertyNotImplementedError:
                value = None
        if value is None and name in atoms.arrays:
            value = atoms.arrays[name]
        if value is None and name in atoms.info:
            value = atoms.info[name]
        if value is None:
            missing.append(k)
        else:
            values.append(np.asarray(value, dtype=np.float64))
    if not values or (missing and partial_labels == "drop"):
        return None
    if missing:
        labelled = min(set(range(len(frames))) - set(missing))
        raise ValueError(f"frame {missing[0]} has no {name} but frame {labelled} has "
                         f"({len(missing)} of {len(frames)} frames lack it): complete the file, "
                         f"or drop the {name} of every frame (partial_labels='drop', command "
                         f"line: --partial-labels drop)")
    return np.stack(values)


def _temperature_from(info) -> float | None:
    for key in TEMPERATURE_KEYS:
        if key in info:
            return float(np.asarray(info[key]))
    return None
