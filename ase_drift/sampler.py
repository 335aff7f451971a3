"""Samplers: the :class:`Sampler` protocol every sampler in ase_drift shares, the registry of
sampler kinds behind :func:`load`, and :class:`DriftSampler`, the one-step generator trained by
a drifting field.

Every sampler draws conformations of one molecule (fixed species and order) in Å:
``sample_positions(n, seed)`` returns an array ``[n, A, 3]``; ``sample(atoms, n, seed)``
returns ``ase.Atoms`` copies of a template whose species and order are checked against the
model. Samples carry positions only: no energies or forces are invented.

Every sampler file stores its kind in ``metadata["kind"]``; a sampler class registers the
kinds it reads with :func:`register_sampler`, and :func:`load` returns the right object for
any file.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .models import GeneratorConfig, MLPGenerator

_KINDS: dict[str, type] = {}

# Modules whose samplers register themselves on import; `load` imports them lazily (no import
# cycle: they import this module). A new sampler kind outside them adds its module here.
_KIND_MODULES = ("ase_drift.diffusion",)


def register_sampler(kind: str, *aliases: str):
    """Class decorator: checkpoints whose ``metadata["kind"]`` is ``kind`` (written by the
    class's ``save``, which it sets as ``cls.kind``) or one of ``aliases`` (kinds it also
    reads, e.g. older names) load as ``cls`` through :func:`load`.

    The class implements ``from_checkpoint(payload, path)`` (``payload`` as returned by
    :func:`~ase_drift.checkpoint.load_checkpoint`).
    """

    def decorate(cls):
        for name in (kind, *aliases):
            if _KINDS.get(name, cls) is not cls:
                raise ValueError(f"sampler kind {name!r} is already registered to "
                                 f"{_KINDS[name].__qualname__}")
        for name in (kind, *aliases):
            _KINDS[name] = cls
        cls.kind = kind
        return cls

    return decorate


def sampler_kinds() -> dict[str, type]:
    """Every registered kind and the class it loads as (importing the built-in kinds)."""
    for module in _KIND_MODULES:
        importlib.import_module(module)
    return dict(sorted(_KINDS.items()))


def load(path: str | Path) -> Sampler:
    """The sampler stored at ``path``, of whatever kind it is (drift, DSM, ...).

    The file is read with ``torch.load(weights_only=True)``. Raises
    :class:`~ase_drift.checkpoint.CheckpointError` for a missing, corrupt or unknown file.
    """
    kinds = sampler_kinds()
    payload = load_checkpoint(path)
    kind = payload["metadata"].get("kind")
    if kind not in kinds:
        raise CheckpointError(f"{path} holds a checkpoint of kind {kind!r}, which no sampler "
                              f"reads; known kinds: "
                              + ", ".join(f"{k} ({c.__name__})" for k, c in kinds.items()))
    return _from_checkpoint(kinds[kind], payload, path)


def _from_checkpoint(cls, payload: dict, path: str | Path):
    """``cls.from_checkpoint``, with a missing or malformed entry of the stored metadata or
    configuration reported as a :class:`CheckpointError` naming the file."""
    try:
        return cls.from_checkpoint(payload, path)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        what = (f"lacks the entry {exc.args[0]!r}" if isinstance(exc, KeyError)
                else f"is malformed ({exc})")
        raise CheckpointError(f"{path}: the stored metadata or configuration {what}; the file "
                              f"was not written by this ase_drift or was altered") from exc


@runtime_checkable
class Sampler(Protocol):
    """What every ase_drift sampler offers (drift, diffusion, ... see :func:`sampler_kinds`)."""

    numbers: np.ndarray

    def sample_positions(self, n: int, seed: int | None = None) -> np.ndarray: ...

    def sample(self, atoms, n: int, seed: int | None = None) -> list: ...

    def save(self, path: str | Path) -> Path: ...


#: Seeds are integers in [0, MAX_SEED): they fit torch's and NumPy's generators alike.
MAX_SEED = 2**63


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int: TypeError naming ``name`` unless it is an integer, ValueError unless
    it lies in [0, 2⁶³)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {seed!r}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must lie in [0, 2**63), got {seed}")
    return int(seed)


def caller_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn`, called from the warning function, that
    names the first frame outside ase_drift: a warning about the user's call points at their
    line whichever path inside the package led to it (Python 3.12's ``skip_file_prefixes``)."""
    import sys

    package = Path(__file__).resolve().parent
    frame, level = sys._getframe(1), 1
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(package):
        frame, level = frame.f_back, level + 1
    return level


def torch_generator(seed: int | None) -> torch.Generator:
    """A seeded ``torch.Generator``; ``None`` draws a fresh seed from the OS."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return torch.Generator().manual_seed(check_seed(seed))


class TemplateSampler:
    """Shared behaviour of samplers: drawing in batches, template checks, Atoms and mdtraj
    export.

    A subclass implements ``_sample_batch(n, rng, **options)`` (``n`` conformations ``[n, A, 3]``
    in Å from the ``torch.Generator`` ``rng``) and, when registered with
    :func:`register_sampler`, ``from_checkpoint``; it sets ``batch_size``, the most conformations
    drawn at once. :meth:`iter_positions` and :meth:`sample_positions` draw the same
    conformations for the same seed (and ``batch_size``), whether streamed or at once.
    """

    numbers: np.ndarray
    kind: str
    batch_size: int = 8192

    def __init__(self, numbers, scale: float, config, metadata: dict):
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.scale = float(scale)  # σ in Å: normalised coordinates × scale = Å
        self.config = config
        self.metadata = metadata

    @property
    def temperature_K(self) -> float | None:
        """The temperature the sampler was trained for (K), if recorded."""
        return self.metadata.get("temperature_K")

    def _sample_batch(self, n: int, rng: torch.Generator, **options) -> np.ndarray:
        raise NotImplementedError

    def iter_positions(self, n: int, seed: int | None = None,
                       **options) -> Iterator[np.ndarray]:
        """``n`` conformations in batches ``[≤ batch_size, A, 3]`` (Å): for any ``n``, without
        holding them all in memory (``ase-drift sample`` streams them to disk)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        rng = torch_generator(seed)
        for start in range(0, n, self.batch_size):
            yield self._sample_batch(min(self.batch_size, n - start), rng, **options)

    def sample_positions(self, n: int, seed: int | None = None, **options) -> np.ndarray:
        """``n`` conformations ``[n, A, 3]`` in Å (float32); ``options`` as the subclass's
        ``_sample_batch`` takes them."""
        batches = list(self.iter_positions(n, seed, **options))
        return (np.concatenate(batches) if batches
                else np.empty((0, len(self.numbers), 3), dtype=np.float32))

    @classmethod
    def from_checkpoint(cls, payload: dict, path: str | Path):
        """The sampler from a checkpoint ``payload`` read from ``path`` (named in errors)."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path):
        """This class's sampler from ``path``; :func:`load` reads a file of any kind."""
        payload = load_checkpoint(path)
        found = payload["metadata"].get("kind")
        if _KINDS.get(found) is not cls:
            raise CheckpointError(f"{path} holds a {found!r} checkpoint, not a {cls.__name__} "
                                  f"({getattr(cls, 'kind', None)!r}); ase_drift.load(path) reads "
                                  f"every kind")
        return _from_checkpoint(cls, payload, path)

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

    def sample(self, atoms, n: int, seed: int | None = None, refine=None, refine_steps: int = 0,
               refine_step_size: float | None = None, refine_torsions: bool = False) -> list:
        """``n`` copies of ``atoms`` with sampled positions, centred on the template's centroid.

        The template's cell, pbc and info are kept; calculators and stored results are not.

        With ``refine`` (a :class:`~ase_drift.forces.ForceSource`), each sample then takes
        ``refine_steps`` exact MALA steps towards the Boltzmann distribution of ``refine`` at the
        sampler's temperature (:func:`ase_drift.refine.mala`, step size ``refine_step_size`` Å,
        default :data:`~ase_drift.refine.DEFAULT_STEP_SIZE`; its seed is ``seed``). Each
        returned Atoms then carries its energy (eV) and forces (eV/Å) in a
        ``SinglePointCalculator``, and ``info["mala_steps"]`` and ``info["mala_acceptance"]``
        (its chain's accepted fraction of MALA moves). ``refine_torsions`` adds a torsion move
        after each MALA step (:mod:`ase_drift.torsions`, about the rotatable bonds of the
        samples; one more force evaluation per step), so that the chains also cross torsional
        barriers.
        """
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, (int, np.integer)) \
                or refine_steps < 0:
            raise ValueError(f"refine_steps must be a non-negative integer, got {refine_steps!r}")
        if refine is None and (refine_steps or refine_step_size is not None or refine_torsions):
            raise ValueError("refine_steps, refine_step_size and refine_torsions need a force "
                             "source: pass refine=")
        if refine is not None and not hasattr(refine, "compute"):
            raise TypeError(f"refine must be a ForceSource, got {type(refine).__name__}; wrap "
                            f"an ASE calculator as ase_drift.forces.CalculatorForces(calc)")
        temperature_K = self.temperature_K
        if refine is not None and temperature_K is None:
            raise ValueError("refine needs the sampler's temperature, and this sampler was "
                             "trained without one")
        self.check_template(atoms)
        positions = self.sample_positions(n, seed=seed)  # [n, A, 3] Å
        if refine is None:
            return atoms_from_positions(atoms, positions + atoms.positions.mean(axis=0))
        from ase.calculators.singlepoint import SinglePointCalculator

        from .refine import DEFAULT_STEP_SIZE, mala
        from .torsions import TorsionMoves

        chains = mala(refine, self.numbers, positions, temperature_K, refine_steps,
                      step_size=DEFAULT_STEP_SIZE if refine_step_size is None
                      else refine_step_size, seed=seed,
                      torsion_moves=(TorsionMoves.from_frames(self.numbers, positions)
                                     if refine_torsions else None))
        centred = chains.positions - chains.positions.mean(axis=1, keepdims=True)  # [n, A, 3]
        frames = atoms_from_positions(atoms, centred + atoms.positions.mean(axis=0))
        for frame, energy, forces, accepted in zip(frames, chains.energies, chains.forces,
                                                   chains.accepted):
            frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=forces)
            frame.info["mala_steps"] = int(refine_steps)
            frame.info["mala_acceptance"] = (float(accepted / refine_steps) if refine_steps
                                             else float("nan"))
        return frames

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


@register_sampler("drift-sampler", "drift-trainer")
class DriftSampler(TemplateSampler):
    """A trained one-step generator: noise → conformation in one network evaluation.

    Args:
        generator: the network, producing normalised coordinates ``[B, A, 3]``.
        numbers: atomic numbers ``[A]`` (species and order the model was trained on).
        scale: σ in Å that turns normalised coordinates into Å.
        config: the configuration dict stored with the model (generator and training).
        metadata: provenance: temperature, units, field, space, training data summary.

    Its files have kind ``"drift-sampler"``; it also loads the current weights of a training
    checkpoint (kind ``"drift-trainer"``).
    """

    def __init__(self, generator: MLPGenerator, numbers, scale: float, config: dict,
                 metadata: dict):
        super().__init__(numbers, scale, config, metadata)
        self.generator = generator.eval()

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"DriftSampler({_formula(self.numbers)}, {meta.get('field')}/{meta.get('space')}, "
                f"T={meta.get('temperature_K')} K)")

    @torch.inference_mode()
    def _sample_batch(self, n: int, rng: torch.Generator, precision: str = "fp32") -> np.ndarray:
        """``n`` conformations ``[n, A, 3]`` in Å, centred at the origin (float32).
        ``precision="bf16"`` runs the network's hidden layers in bfloat16
        (:meth:`~ase_drift.models.MLPGenerator.forward`): several times faster on CPUs with
        bf16 units; docs/benchmarks.md measures what it changes."""
        coords = self.generator(self.generator.noise(n, rng), precision=precision)
        coords = coords - coords.mean(dim=1, keepdim=True)
        return (coords * self.scale).numpy()

    def save(self, path: str | Path) -> Path:
        """Write the sampler to ``path``; non-finite weights raise ValueError (never saved)."""
        if not all(bool(t.isfinite().all()) for t in self.generator.state_dict().values()):
            raise ValueError(f"not saving {self!r} to {path}: its weights are not finite "
                             f"(the training diverged)")
        metadata = dict(self.metadata, kind=self.kind)
        return save_checkpoint(path, self.config, self.generator.state_dict(), metadata)

    @classmethod
    def from_checkpoint(cls, payload: dict, path: str | Path) -> DriftSampler:
        """From a sampler file or a training checkpoint (its current weights)."""
        metadata = payload["metadata"]
        state = payload["state_dict"]
        if metadata.get("kind") == "drift-trainer":
            state = state["model"]
        generator = MLPGenerator(GeneratorConfig.from_dict(payload["config"]["generator"]))
        try:
            generator.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the stored configuration") from exc
        metadata = {k: v for k, v in metadata.items() if k != "kind"}
        return cls(generator, metadata["numbers"], metadata["scale_angstrom"],
                   payload["config"], metadata)
