"""Force sources: energies and forces for batches of frames, from stored labels or any engine.

Contract: a :class:`ForceSource` maps atomic numbers ``[A]`` and positions ``[B, A, 3]`` (or a
single frame ``[A, 3]``, read as B = 1) to a :class:`ForceResult` of potential energies ``[B]``
and forces ``[B, A, 3]``. It either returns finite labels for every frame or raises — a
:class:`LabelingError` when an engine fails or returns NaN/inf — and never fills in zeros.
Units: positions in Å, energies in eV, forces in eV/Å at the boundary; OpenMM's nm and kJ/mol
are converted via units.py only.

Sources:

- :class:`LabelForces` serves labels already stored in a :class:`~ase_drift.data.Conformations`.
- :class:`CalculatorForces` wraps any ASE calculator (tblite, SchNetPack, MACE, EMT, ...).
- :class:`OpenMMForces` evaluates an ``openmm.System``; :class:`OpenMMCalculator` exposes the
  same as an ASE calculator.

:func:`label` labels a :class:`~ase_drift.data.Conformations` with a source and returns the
labelled copy; :func:`label_positions` does the same for bare positions. Both run the source
over the frames in batches, optionally through a resumable HDF5 cache that is updated after
every batch. The cache records the source's :func:`source_fingerprint` and serves its labels to
that source only. Given a Dask ``distributed.Client`` (:func:`connect_scheduler`), they run the
batches as tasks on its cluster and write each finished batch into the same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from . import units
from .data import ENERGIES, FORCES, Conformations

if TYPE_CHECKING:
    import distributed

#: Positions are matched to stored frames after rounding to this many Å (:class:`LabelForces`).
POSITION_MATCH_ANGSTROM = 1e-6
#: Largest allowed difference between an OpenMM particle mass and ASE's atomic mass, in amu.
MASS_TOLERANCE_AMU = 0.01
#: The units written into a cache file's attributes.
CACHE_UNITS = "positions Å, energies eV, forces eV/Å"
#: Calculator parameters that set only what is printed, not the labels: left out of
#: :meth:`CalculatorForces.fingerprint`.
OUTPUT_PARAMETERS = frozenset({"verbosity", "verbose", "txt", "label", "directory"})


class ForceResult(NamedTuple):
    """Labels of a batch of frames."""

    energies: np.ndarray  # [B] eV
    forces: np.ndarray  # [B, A, 3] eV/Å


@runtime_checkable
class ForceSource(Protocol):
    """Anything that labels frames of one molecule with energies (eV) and forces (eV/Å)."""

    def compute(self, numbers: np.ndarray, positions: np.ndarray) -> ForceResult:
        """Labels for ``positions`` ``[B, A, 3]`` (or ``[A, 3]``) in Å of atoms ``numbers`` ``[A]``."""
        ...


class LabelingError(RuntimeError):
    """A force engine failed on a frame, or returned a non-finite energy or force."""


def _as_batch(numbers, positions) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers ``[A]`` and positions ``[B, A, 3]`` (a single ``[A, 3]`` frame -> B = 1)."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
        raise ValueError(f"positions must have shape [B, {len(numbers)}, 3] (or "
                         f"[{len(numbers)}, 3]) for {len(numbers)} atoms, got {positions.shape}")
    return numbers, positions


# ---------------------------------------------------------------------- fingerprints
def source_fingerprint(source) -> dict:
    """What identifies the labels ``source`` computes, as a JSON-able dict: its class and what
    its ``fingerprint()`` method returns when it has one (:class:`CalculatorForces`: the
    calculator's class, parameters and model digests; :class:`OpenMMForces`: the System's XML
    digest; :class:`LabelForces`: the stored labels' digest). A label cache records it and
    serves its labels to a source with the same fingerprint only. A source of your own should
    define ``fingerprint()`` returning what sets its labels (parameters, file digests); a
    wrapper that only observes another source may return ``source_fingerprint(inner)`` (its
    ``"source"`` entry replaces the wrapper's class)."""
    own = getattr(source, "fingerprint", None)
    return {"source": _qualname(source), **_jsonable(own() if callable(own) else {})}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _qualname(value) -> str:
    kind = value if isinstance(value, type) else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _array_sha256(array) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str((array.dtype.str, array.shape)).encode() + array.tobytes()).hexdigest()


def _module_sha256(module) -> str:
    """Digest of a torch module's weights and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(_array_sha256(tensor.detach().cpu().numpy()).encode())
    return digest.hexdigest()


def _jsonable(value):
    """``value`` as JSON data for a fingerprint: large arrays by digest, objects of unknown kind
    by their type (never by a repr that may hold a memory address)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else {"sha256": _array_sha256(value),
                                                        "shape": list(value.shape)}
    if callable(getattr(value, "todict", None)):
        return _jsonable(value.todict())
    return _qualname(value)


def _fingerprint_differences(cached: dict, now: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprints, e.g. "parameters.sigma: 3.4 in the
    cache, 3.0 now"."""
    out = []
    for key in sorted(set(cached) | set(now)):
        old, new = cached.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += _fingerprint_differences(old, new, f"{prefix}{key}.")
        elif json.dumps(old) != json.dumps(new):
            show = (lambda v: (r if len(r := json.dumps(v)) <= 80 else r[:77] + "..."))
            out.append(f"{prefix}{key}: {show(old)} in the cache, {show(new)} now")
    return out


# ---------------------------------------------------------------------- stored labels
class LabelForces:
    """Serve the stored energies and forces of ``conformations`` for frames it contains.

    A requested frame is found by its positions rounded to 1e-6 Å; a frame without a stored
    label raises KeyError. Useful to pass stored labels wherever a :class:`ForceSource` is
    expected (the drift code asks for forces of positive samples, which are stored frames).
    """

    def __init__(self, conformations: Conformations):
        conformations.require(FORCES, ENERGIES, why="LabelForces serves stored labels")
        self.conformations = conformations
        self._frame_of_key = {key: k for k, key in enumerate(self._keys(conformations.positions))}

    @staticmethod
    def _keys(positions: np.ndarray) -> list[bytes]:
        """One hashable key per frame of ``positions`` ``[B, A, 3]`` Å (integer multiples of 1e-6 Å)."""
        grid = np.rint(positions / POSITION_MATCH_ANGSTROM).astype(np.int64)  # [B, A, 3]
        return [frame.tobytes() for frame in grid]

    def compute(self, numbers: np.ndarray, positions: np.ndarray) -> ForceResult:
        numbers, positions = _as_batch(numbers, positions)
        if not np.array_equal(numbers, self.conformations.numbers):
            raise ValueError(f"atomic numbers {numbers.tolist()} differ from the stored "
                             f"molecule's {self.conformations.numbers.tolist()}")
        frames = []
        for k, key in enumerate(self._keys(positions)):
            if key not in self._frame_of_key:
                raise KeyError(f"frame {k} of the batch has no stored label in "
                               f"{self.conformations!r} (positions are matched to "
                               f"{POSITION_MATCH_ANGSTROM:g} Å)")
            frames.append(self._frame_of_key[key])
        return ForceResult(self.conformations.energies[frames], self.conformations.forces[frames])

    def fingerprint(self) -> dict:
        stored = self.conformations
        return {"numbers": stored.numbers.tolist(), "positions": _array_sha256(stored.positions),
                "energies": _array_sha256(stored.energies), "forces": _array_sha256(stored.forces)}


# ---------------------------------------------------------------------- ASE calculators
class CalculatorForces:
    """Any ASE calculator as a :class:`ForceSource`.

    One ``ase.Atoms`` (no cell, no periodicity) carries ``calc`` and gets each frame's positions
    in turn, so the calculator is never re-created and may reuse state between frames (e.g.
    tblite's wavefunction guess). Calls with other atomic numbers rebuild only the Atoms.

    Its :meth:`fingerprint` (what a label cache compares) holds the calculator's class, its
    parameters as ASE exposes them (``calc.parameters``, defaults included, without the output
    settings in :data:`OUTPUT_PARAMETERS`), the SHA-256 of files its parameters name, of
    ``model_file`` and of the weights of torch modules it holds as ``calc.model`` or
    ``calc.models`` (SchNetPack's and MACE's calculators).

    Args:
        calc: an ASE calculator returning energy (eV) and forces (eV/Å).
        check_finite: raise :class:`LabelingError` on NaN/inf energies or forces.
        model_file: the file the calculator's model was read from, if any; its digest joins
            the fingerprint.
    """

    def __init__(self, calc: Calculator, check_finite: bool = True,
                 model_file: str | os.PathLike | None = None):
        self.calc = calc
        self.check_finite = check_finite
        self.model_file = model_file
        self._atoms = None

    def fingerprint(self) -> dict:
        calc = self.calc
        parameters = getattr(calc, "parameters", None)
        if parameters is None and callable(getattr(calc, "todict", None)):
            parameters = calc.todict()
        parameters = {k: v for k, v in dict(parameters or {}).items()
                      if k not in OUTPUT_PARAMETERS}
        out = {"calculator": _qualname(calc), "parameters": _jsonable(parameters)}
        named = [v for v in _leaves(parameters) if isinstance(v, (str, os.PathLike))
                 and len(os.fspath(v)) < 4096 and os.path.isfile(v)]
        if named:
            out["parameter_files_sha256"] = [file_sha256(v) for v in named]
        if self.model_file is not None:
            out["model_file_sha256"] = file_sha256(self.model_file)
        torch = sys.modules.get("torch")  # a calculator holding torch modules imported torch
        if torch is not None:
            modules = []
            for name in ("model", "models"):
                held = getattr(calc, name, None)
                modules += held if isinstance(held, (list, tuple)) else [held]
            digests = [_module_sha256(m) for m in modules if isinstance(m, torch.nn.Module)]
            if digests:
                out["model_weights_sha256"] = digests
        return out

    def _atoms_for(self, numbers: np.ndarray):
        from ase import Atoms

        if self._atoms is None or not np.array_equal(self._atoms.numbers, numbers):
            self._atoms = Atoms(numbers=numbers, positions=np.zeros((len(numbers), 3)))
            self._atoms.calc = self.calc
        return self._atoms

    def compute(self, numbers: np.ndarray, positions: np.ndarray) -> ForceResult:
        numbers, positions = _as_batch(numbers, positions)
        atoms = self._atoms_for(numbers)
        energies = np.empty(len(positions))  # [B] eV
        forces = np.empty(positions.shape)  # [B, A, 3] eV/Å
        for k, frame in enumerate(positions):
            atoms.positions = frame
            try:
                energies[k] = atoms.get_potential_energy()
                forces[k] = atoms.get_forces()
            except Exception as err:
                raise LabelingError(f"frame {k} of the batch: {type(self.calc).__name__} "
                                    f"raised {type(err).__name__}: {err}") from err
            if self.check_finite and not (np.isfinite(energies[k])
                                          and np.isfinite(forces[k]).all()):
                raise LabelingError(f"frame {k} of the batch: {type(self.calc).__name__} returned "
                                    f"a non-finite energy ({energies[k]}) or forces")
        return ForceResult(energies, forces)


# ---------------------------------------------------------------------- OpenMM
class OpenMMForces:
    """An ``openmm.System`` as a :class:`ForceSource` (positions Å in, eV and eV/Å out).

    One ``openmm.Context`` (with a dummy ``VerletIntegrator``) is created on the first call and
    reused for every frame. Positions are sent as nm; the box is the System's default. Each call
    checks that the System has one particle per atom and, unless ``check_masses`` is False
    (e.g. hydrogen mass repartitioning) or the System has no masses, that the particle masses
    match ASE's atomic masses of ``numbers`` within 0.01 amu — this catches a wrong atom order.

    Args:
        system: the ``openmm.System``.
        platform: OpenMM platform name ('Reference' is fastest for small molecules).
        properties: platform properties, e.g. ``{"Threads": "1"}`` for 'CPU'.
        check_masses: compare particle masses with the atomic numbers.
    """

    def __init__(self, system, platform: str = "Reference", properties: dict | None = None,
                 check_masses: bool = True):
        from openmm import unit

        self.system = system
        self.platform = platform
        self.properties = dict(properties or {})
        self.check_masses = check_masses
        self.masses_amu = np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                                    for i in range(system.getNumParticles())])  # [A]
        self._context = None

    def validate(self, numbers: np.ndarray) -> None:
        """Raise ValueError unless the System's particles are the atoms ``numbers`` in order."""
        from ase.data import atomic_masses, chemical_symbols

        if len(numbers) != len(self.masses_amu):
            raise ValueError(f"the OpenMM System has {len(self.masses_amu)} particles but "
                             f"{len(numbers)} atoms were given")
        if not self.check_masses or not self.masses_amu.any():
            return
        expected = atomic_masses[numbers]  # [A] amu
        wrong = np.flatnonzero(np.abs(self.masses_amu - expected) > MASS_TOLERANCE_AMU)
        if len(wrong):
            atom = wrong[0]
            raise ValueError(
                f"atom {atom} is {chemical_symbols[numbers[atom]]} ({expected[atom]:.3f} amu) but "
                f"OpenMM particle {atom} has mass {self.masses_amu[atom]:.3f} amu: wrong atom "
                f"order or species ({len(wrong)} mismatching atoms; pass check_masses=False if "
                f"the masses were repartitioned on purpose)")

    def _get_context(self):
        if self._context is None:
            import openmm

            platform = openmm.Platform.getPlatformByName(self.platform)
            self._context = openmm.Context(self.system, openmm.VerletIntegrator(1.0), platform,
                                           self.properties)
        return self._context

    def compute(self, numbers: np.ndarray, positions: np.ndarray) -> ForceResult:
        from openmm import unit

        numbers, positions = _as_batch(numbers, positions)
        self.validate(numbers)
        context = self._get_context()
        energy_unit = unit.kilojoule_per_mole
        force_unit = unit.kilojoule_per_mole / unit.nanometer
        positions_nm = units.angstrom_to_nm(positions)  # [B, A, 3] nm
        energies_kj = np.empty(len(positions))  # [B] kJ/mol
        forces_kj_nm = np.empty(positions.shape)  # [B, A, 3] kJ/mol/nm
        for k, frame in enumerate(positions_nm):
            context.setPositions(frame)
            state = context.getState(getEnergy=True, getForces=True)
            energies_kj[k] = state.getPotentialEnergy().value_in_unit(energy_unit)
            forces_kj_nm[k] = state.getForces(asNumpy=True).value_in_unit(force_unit)
        energies = units.kj_per_mol_to_ev(energies_kj)  # [B] eV
        forces = units.kj_per_mol_nm_to_ev_per_angstrom(forces_kj_nm)  # [B, A, 3] eV/Å
        bad = np.flatnonzero(~(np.isfinite(energies) & np.isfinite(forces).all(axis=(1, 2))))
        if len(bad):
            raise LabelingError(f"frame {bad[0]} of the batch: OpenMM returned a non-finite "
                                f"energy ({energies[bad[0]]}) or forces")
        return ForceResult(energies, forces)

    def fingerprint(self) -> dict:
        import openmm

        xml = openmm.XmlSerializer.serialize(self.system)
        return {"system_xml_sha256": hashlib.sha256(xml.encode()).hexdigest()}


class OpenMMCalculator(Calculator):
    """ASE calculator backed by :class:`OpenMMForces`: energy in eV, forces in eV/Å.

    Lets an ``openmm.System`` serve anywhere ASE expects a calculator (MD, optimisers, ...).
    The Atoms' cell and periodicity are not sent to OpenMM; the System's default box applies.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(self, system, platform: str = "Reference", **kwargs):
        super().__init__(**kwargs)
        self.source = OpenMMForces(system, platform=platform)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = self.source.compute(self.atoms.numbers, self.atoms.positions)
        self.results["energy"] = float(result.energies[0])
        self.results["forces"] = result.forces[0]


# ---------------------------------------------------------------------- batched labelling
def label(data: Conformations, source: ForceSource, cache: str | Path | None = None,
          batch_size: int = 64, progress: bool = True,
          client: distributed.Client | None = None) -> Conformations:
    """``data`` with the energies (eV) and forces (eV/Å) of every frame computed by ``source``.

    Labels already on ``data`` are replaced; the temperature is kept. Frames already in
    ``cache`` are not recomputed: see :func:`label_positions` for batching, the cache, labelling
    on a Dask cluster (``client``) and what happens when the source fails.
    """
    result = label_positions(source, data.numbers, data.positions, cache=cache,
                             batch_size=batch_size, progress=progress, client=client)
    return replace(data, **{FORCES: result.forces, ENERGIES: result.energies})


def label_positions(source: ForceSource, numbers: np.ndarray, positions: np.ndarray,
                    cache: str | Path | None = None, batch_size: int = 64,
                    progress: bool = True,
                    client: distributed.Client | None = None) -> ForceResult:
    """Energies ``[N]`` (eV) and forces ``[N, A, 3]`` (eV/Å) of every frame of ``positions`` (Å).

    Frames go to ``source`` in batches of ``batch_size``. With ``cache`` (an ``.h5`` path) the
    labels are written and flushed after every batch together with a ``done`` mask, so an
    interrupted run loses at most the batches under way and a rerun computes only the missing
    frames. The file holds datasets ``positions``, ``energies``, ``forces``
    (:data:`~ase_drift.data.ENERGIES`, :data:`~ase_drift.data.FORCES`), ``done`` and attributes
    ``numbers``, ``n_frames``, ``units`` and ``source`` (the JSON of
    :func:`source_fingerprint`); it must belong to the same atoms and positions (within 1e-6 Å)
    and to a source with the same fingerprint, else ValueError naming the file. A new file is
    created atomically (``.tmp`` + rename); an unreadable one raises ValueError saying to
    delete it.

    When a batch raises :class:`LabelingError`, its frames are computed one by one: those before
    the failing frame are stored, then the error is re-raised naming the failing frame's index.

    With ``client`` (a ``distributed.Client``, e.g. from :func:`connect_scheduler`) every
    batch of frames not yet in the cache is one task on the client's Dask cluster, and each
    finished batch is written into the cache as it arrives (by this process only: one
    writer). ``source`` is pickled (cloudpickle) and sent to the workers, so it must be
    picklable, else TypeError: make it afresh, as some engines hold unpicklable state once
    they have computed (tblite does). Choose ``batch_size`` so that there are several batches
    per worker (with DFT, a few frames per batch). Dask reruns a task whose worker died (up to
    its ``distributed.scheduler.allowed-failures`` setting, 3 by default). A batch whose task
    fails does not stop the others: when all have finished, one :class:`LabelingError` names
    every failed frame (a frame that failed alone, as above) or batch (any other exception on
    the worker, or ``KilledWorker`` when the workers running it kept dying), with the cause.
    """
    from tqdm.auto import tqdm

    numbers, positions = _as_batch(numbers, positions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pickled_source = None if client is None else _pickled_source(source)
    with closing(_LabelStore(numbers, positions, cache, source_fingerprint(source))) as store:
        pending = np.flatnonzero(~store.done)
        batches = [pending[start:start + batch_size]
                   for start in range(0, len(pending), batch_size)]
        labelled = (_label_batches(source, numbers, positions, batches) if client is None
                    else _label_batches_on_cluster(client, pickled_source, numbers, positions,
                                                   batches))
        failed = []
        with tqdm(total=len(positions), initial=len(positions) - len(pending), unit="frame",
                  desc="labelling", disable=not progress) as bar, closing(labelled):
            for part in labelled:
                store.write(part.frames, part.result)
                bar.update(len(part.frames))
                if part.failure is not None:
                    failed.append(part)
        if failed:
            raise LabelingError(f"labelling failed at {'; '.join(part.failure for part in failed)}. "
                                f"{store.resume_hint()}") from failed[0].cause
        return ForceResult(store.energies.copy(), store.forces.copy())


def connect_scheduler(address: str, timeout_s: float = 5.0) -> distributed.Client:
    """A ``distributed.Client`` of the Dask scheduler at ``address`` (e.g. ``tcp://host:8786``,
    as printed by ``dask scheduler`` or a dask-jobqueue cluster's ``scheduler_address``), for
    the ``client`` of :func:`label`. Close it when done (``with connect_scheduler(...) as
    client:``). No scheduler answering within ``timeout_s`` seconds, or a malformed address,
    raises ValueError naming the address; without the ``distributed`` package (the ``cluster``
    extra), ImportError saying so."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ImportError("labelling on a Dask cluster needs the distributed package: "
                          "pip install 'ase_drift[cluster]'") from exc
    try:
        return Client(address, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, or garbage from another server
        raise ValueError(f"no Dask scheduler answered at {address} within {timeout_s:g} s "
                         f"({type(exc).__name__}: {exc}); give the address a running scheduler "
                         f"prints, e.g. tcp://host:8786") from None


class _ChunkLabels(NamedTuple):
    """What one batch of frames gave: labels of its first frames, and why the next failed."""

    result: ForceResult  # energies [b] eV, forces [b, A, 3] eV/Å of the batch's first b frames
    failure: LabelingError | None  # None when b is the whole batch, else frame b's, alone


class _LabelledFrames(NamedTuple):
    """Labels of some frames of the data, and what failed among the frames of their batch."""

    frames: np.ndarray  # [b] indices of the labelled frames in the data
    result: ForceResult  # their energies [b] eV and forces [b, A, 3] eV/Å
    failure: str | None  # None, or the failed frames (indices in the data) and why, in words
    cause: Exception | None  # the exception that failed them


def _label_chunk(source: ForceSource, numbers: np.ndarray, positions: np.ndarray) -> _ChunkLabels:
    """Labels of the frames ``positions`` ``[b, A, 3]`` (Å) in one call of ``source``; when that
    raises :class:`LabelingError`, frame by frame up to the first frame that fails alone."""
    try:
        return _ChunkLabels(source.compute(numbers, positions), None)
    except LabelingError:
        pass
    alone, failure = [], None
    for frame in positions:
        try:
            alone.append(source.compute(numbers, frame))
        except LabelingError as err:
            failure = err
            break
    energies = np.concatenate([np.empty(0), *(result.energies for result in alone)])  # [b] eV
    forces = np.concatenate([np.empty((0, *positions.shape[1:])),
                             *(result.forces for result in alone)])  # [b, A, 3] eV/Å
    return _ChunkLabels(ForceResult(energies, forces), failure)


def _label_pickled_chunk(pickled_source: bytes, numbers: np.ndarray,
                         positions: np.ndarray) -> _ChunkLabels:
    """:func:`_label_chunk` with the source unpickled first: the task a Dask worker runs."""
    import cloudpickle

    return _label_chunk(cloudpickle.loads(pickled_source), numbers, positions)


def _as_labelled_frames(frames: np.ndarray, chunk: _ChunkLabels, n_frames: int) -> _LabelledFrames:
    """The labels of batch ``frames`` (indices among ``n_frames``) as labels of those frames."""
    done = len(chunk.result.energies)
    failure = (None if chunk.failure is None else
               f"frame {frames[done]} (of {n_frames}), computed alone: {chunk.failure}")
    return _LabelledFrames(frames[:done], chunk.result, failure, chunk.failure)


def _label_batches(source: ForceSource, numbers: np.ndarray, positions: np.ndarray,
                   batches: list[np.ndarray]) -> Iterator[_LabelledFrames]:
    """The labels of each batch of frame indices in turn, computed here; the first batch with a
    failing frame is the last."""
    for frames in batches:
        labelled = _as_labelled_frames(frames, _label_chunk(source, numbers, positions[frames]),
                                       len(positions))
        yield labelled
        if labelled.failure is not None:
            return


def _label_batches_on_cluster(client: distributed.Client, pickled_source: bytes,
                              numbers: np.ndarray, positions: np.ndarray,
                              batches: list[np.ndarray]) -> Iterator[_LabelledFrames]:
    """The labels of each batch of frame indices as its task on ``client``'s cluster finishes;
    a batch whose task failed comes with no labels and the cause. Tasks not yet finished when
    the consumer stops (an error, Ctrl-C) are cancelled."""
    from distributed import as_completed

    frames_of = {client.submit(_label_pickled_chunk, pickled_source, numbers,
                               positions[frames], pure=False): frames for frames in batches}
    no_labels = ForceResult(np.empty(0), np.empty((0, *positions.shape[1:])))
    try:
        for task in as_completed(list(frames_of)):
            frames = frames_of.pop(task)
            try:
                chunk = task.result()
            except Exception as exc:  # noqa: BLE001 - whatever failed the task, keep the other batches
                yield _LabelledFrames(frames[:0], no_labels, f"{_frame_ranges(frames)} "
                                      f"(of {len(positions)}): {_task_failure(exc)}", exc)
            else:
                yield _as_labelled_frames(frames, chunk, len(positions))
    finally:
        client.cancel(list(frames_of))


def _task_failure(exc: Exception) -> str:
    """Why a labelling task failed on the cluster, in words."""
    from distributed import CancelledError, KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"every worker running their task died ({exc.allowed_failures + 1} workers, "
                f"KilledWorker): an engine that ends its process on one of these frames (a "
                f"crash, memory, a job time limit) does this; see the workers' logs")
    if isinstance(exc, CancelledError):
        return f"their task was cancelled ({exc})"
    return f"{type(exc).__name__} on the worker: {exc}"


def _frame_ranges(frames: np.ndarray) -> str:
    """Increasing frame indices in words: ``frame 5``, ``frames 0-3, 8, 10-11``."""
    runs = np.split(frames, np.flatnonzero(np.diff(frames) != 1) + 1)
    words = ", ".join(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return f"frame{'s' if len(frames) > 1 else ''} {words}"


def _pickled_source(source: ForceSource) -> bytes:
    """``source`` pickled by cloudpickle (what Dask uses) for the workers; TypeError saying so
    when it cannot be."""
    try:
        import cloudpickle
    except ImportError as exc:
        raise ImportError("labelling on a Dask cluster needs the distributed package: "
                          "pip install 'ase_drift[cluster]'") from exc
    try:
        return cloudpickle.dumps(source)
    except Exception as exc:  # pickling raises TypeError, PicklingError, ...
        raise TypeError(f"labelling on a cluster sends the force source to the workers, but "
                        f"{type(source).__name__} cannot be pickled ({type(exc).__name__}: "
                        f"{exc}); make a fresh source (an engine may hold unpicklable state "
                        f"once it has computed) or label without client=") from exc


class _LabelStore:
    """Energies, forces and done mask of all frames in memory, mirrored to an HDF5 cache."""

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, cache: str | Path | None,
                 fingerprint: dict):
        self.path = None if cache is None else os.fspath(cache)
        self._file = (None if self.path is None
                      else _open_cache(self.path, numbers, positions, fingerprint))
        if self._file is None:
            self.energies = np.full(len(positions), np.nan)  # [N] eV
            self.forces = np.full(positions.shape, np.nan)  # [N, A, 3] eV/Å
            self.done = np.zeros(len(positions), dtype=bool)  # [N]
        else:
            self.energies = self._file[ENERGIES][:]
            self.forces = self._file[FORCES][:]
            self.done = self._file["done"][:]

    def write(self, frames: np.ndarray, result: ForceResult) -> None:
        """Store the labels of ``frames`` (increasing indices); flush the cache file."""
        self.energies[frames] = result.energies
        self.forces[frames] = result.forces
        self.done[frames] = True
        if self._file is not None:
            self._file[ENERGIES][frames] = result.energies
            self._file[FORCES][frames] = result.forces
            self._file["done"][frames] = True
            self._file.flush()

    def resume_hint(self) -> str:
        if self.path is None:
            return "Pass cache=... to keep labelled frames and resume on rerun."
        return (f"The {np.count_nonzero(self.done)} frames labelled so far are stored in "
                f"{self.path}; rerunning with the same cache resumes from there.")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _open_cache(path: str, numbers: np.ndarray, positions: np.ndarray, fingerprint: dict):
    """Open (or atomically create) the HDF5 label cache of these atoms and positions, labelled
    by the source of this ``fingerprint``."""
    import h5py

    source = json.dumps(fingerprint, sort_keys=True)
    if not os.path.exists(path):
        with h5py.File(path + ".tmp", "w") as new:
            new.attrs["numbers"] = numbers
            new.attrs["n_frames"] = len(positions)
            new.attrs["units"] = CACHE_UNITS
            new.attrs["source"] = source
            new["positions"] = positions
            new[ENERGIES] = np.full(len(positions), np.nan)
            new[FORCES] = np.full(positions.shape, np.nan)
            new["done"] = np.zeros(len(positions), dtype=bool)
        os.replace(path + ".tmp", path)
    delete = f"delete {path} to label the frames anew"
    if not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"the label cache {path} is not readable and writable: fix its "
                         f"permissions or pass another cache path")
    try:
        cache = h5py.File(path, "r+")
    except OSError as exc:
        raise ValueError(f"the label cache {path} is truncated or not an HDF5 label cache "
                         f"({exc}): {delete}") from None
    try:
        stored_numbers = np.asarray(cache.attrs["numbers"])
        stored_positions = cache["positions"]
        for name in (ENERGIES, FORCES, "done"):
            if cache[name].shape[0] != stored_positions.shape[0]:
                raise KeyError(name)
        stored_source = cache.attrs.get("source")
    except (KeyError, OSError) as exc:
        cache.close()
        raise ValueError(f"the label cache {path} is damaged or not an ase_drift label cache "
                         f"(missing or inconsistent {exc}): {delete}") from None
    problem = None
    if stored_source is None:
        problem = ("labels of an unrecorded source (the cache was written before ase_drift "
                   "recorded which source computed its labels)")
    elif stored_source != source:
        differences = _fingerprint_differences(json.loads(stored_source), fingerprint)
        problem = f"labels of another source ({'; '.join(differences)})"
    elif not np.array_equal(stored_numbers, numbers):
        problem = f"atomic numbers {stored_numbers.tolist()}, not {numbers.tolist()}"
    elif stored_positions.shape != positions.shape:
        problem = f"positions of shape {stored_positions.shape}, not {positions.shape}"
    elif not np.allclose(stored_positions[:], positions, rtol=0.0, atol=1e-6):
        problem = "other positions (they differ by more than 1e-6 Å)"
    if problem is not None:
        cache.close()
        raise ValueError(f"the label cache {path} belongs to other data or another source: it "
                         f"holds {problem}. Use another cache path for these frames and this "
                         f"source, or {delete}.")
    return cache


def _leaves(value):
    """The non-container values nested in dicts, lists and tuples."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


# ---------------------------------------------------------------------- sources by name
#: The kinds of force source :func:`source_from_spec` builds, with the form of their spec.
SOURCE_KINDS = {
    "tblite": "tblite[:METHOD] (GFN2-xTB by default; GFN1-xTB, IPEA1-xTB)",
    "emt": "emt (ASE's effective-medium theory: H, C, N, O, Al, Ni, Cu, Pd, Ag, Pt, Au)",
    "lj": "lj (ASE's Lennard-Jones, default parameters: for tests)",
    "openmm": "openmm:SYSTEM.xml (a serialized openmm.System)",
    "mace": "mace:MODEL.pt (a MACE model saved with torch.save; eV, Å; many frames per call)",
    "schnetpack": "schnetpack:MODEL (a SchNetPack model saved with torch.save; eV, Å; "
                  "5 Å neighbour list; many frames per call)",
}


def source_from_spec(spec: str) -> ForceSource:
    """The force source named by a command-line ``spec`` ``KIND[:ARGUMENT]``: ``tblite:GFN2-xTB``,
    ``emt``, ``lj``, ``openmm:system.xml``, ``mace:model.pt`` or ``schnetpack:model`` (see
    :data:`SOURCE_KINDS`); the neural potentials as the batched sources of
    :mod:`ase_drift.neural_forces`, in float64. Optional packages (tblite, OpenMM, MACE,
    SchNetPack) are imported here only. An unknown kind, a missing argument or a missing file
    raises ValueError."""
    kind, _, argument = spec.partition(":")
    kind = kind.strip().lower()
    known = "; ".join(SOURCE_KINDS.values())
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown calculator {spec!r}; known kinds: {known}")
    if kind in ("openmm", "mace", "schnetpack"):
        if not argument:
            raise ValueError(f"calculator {spec!r} needs a file: {SOURCE_KINDS[kind]}")
        if not os.path.isfile(argument):
            raise FileNotFoundError(f"calculator {spec!r}: no such file {argument}")
    elif argument and kind != "tblite":
        raise ValueError(f"calculator {kind!r} takes no argument, got {spec!r}")
    if kind == "tblite":
        from tblite.ase import TBLite

        return CalculatorForces(TBLite(method=argument or "GFN2-xTB", verbosity=0))
    if kind == "emt":
        from ase.calculators.emt import EMT

        return CalculatorForces(EMT())
    if kind == "lj":
        from ase.calculators.lj import LennardJones

        return CalculatorForces(LennardJones())
    if kind == "openmm":
        import openmm

        try:
            system = openmm.XmlSerializer.deserialize(Path(argument).read_text())
        except Exception as exc:  # noqa: BLE001 - OpenMM raises plain Exception on bad XML
            raise ValueError(f"calculator {spec!r}: {argument} is not a serialized "
                             f"openmm.System ({type(exc).__name__}: {exc})") from None
        if not isinstance(system, openmm.System):
            raise ValueError(f"calculator {spec!r}: {argument} holds a "
                             f"{type(system).__name__}, not an openmm.System")
        return OpenMMForces(system)
    from . import neural_forces  # imports torch; mace and schnetpack inside its classes

    return (neural_forces.MACEForces if kind == "mace"
            else neural_forces.SchNetPackForces)(argument)
