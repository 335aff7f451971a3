"""Writing and reading sampled conformations in the formats chemists use.

ASE writes extxyz, xyz, traj (and everything else ``ase.io`` knows); PDB and DCD go through
mdtraj, with CONECT records for the covalent bonds, and a DCD gets a PDB of its first frame
beside it as the topology (``x.dcd`` -> ``x.pdb``). :class:`FrameWriter` streams frames chunk
by chunk into a temporary file that replaces the output only when complete.
That PDB is marked as ase_drift's topology of the DCD in a REMARK line: a PDB without the mark
is the user's file and is never overwritten (:func:`check_output` refuses before any work).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import numpy as np

from . import units
from .data import Conformations


def mdtraj_topology(numbers, bonds=()):
    """A one-residue mdtraj topology for a molecule of atomic numbers ``[A]``, with ``bonds``
    (pairs of atom indices) so that a PDB written from it carries CONECT records."""
    import mdtraj

    topology = mdtraj.Topology()
    chain = topology.add_chain()
    residue = topology.add_residue("MOL", chain)
    atoms = [topology.add_atom(f"{element.symbol}{k + 1}", element, residue)
             for k, element in enumerate(map(mdtraj.element.Element.getByAtomicNumber,
                                             map(int, numbers)))]
    for i, j in bonds:
        topology.add_bond(atoms[i], atoms[j])
    return topology


def covalent_bond_pairs(numbers, positions: np.ndarray) -> list[tuple[int, int]]:
    """Atom pairs ``(i, j)`` bonded in frames ``[n, A, 3]`` (Å): mean distance below 1.2 × the sum
    of the covalent radii (as :func:`ase_drift.metrics.covalent_bonds`)."""
    from .metrics import covalent_bonds, pair_indices

    i, j = pair_indices(len(numbers))
    bonded = covalent_bonds(numbers, positions)
    return [(int(a), int(b)) for a, b in zip(i[bonded], j[bonded], strict=True)]


def topology_path(path: str | Path) -> Path:
    """The topology PDB written beside (and read with) the DCD file ``path``."""
    return Path(path).with_suffix(".pdb")


def _topology_remark(path: Path) -> str:
    return f"REMARK   1 ase_drift topology of {path.name}"


def check_output(path: str | Path, n_frames: int = 2) -> Path:
    """Raise ValueError naming ``path`` unless frames can be written there: a format ``ase.io``
    writes (or DCD) holding ``n_frames`` frames, not a directory, in a writable place, and for a
    DCD a topology PDB beside it that is absent or was written by ase_drift for this DCD (a PDB
    the user made is never overwritten). Call it before any expensive work."""
    path = Path(path)
    if path.suffix != ".dcd":
        from ase.io.formats import UnknownFileTypeError, filetype, get_ioformat

        try:
            io_format = get_ioformat(filetype(str(path), read=False))
        except UnknownFileTypeError:
            raise ValueError(f"{path}: unknown output format {path.suffix or '(no suffix)'!r}; "
                             f"use .extxyz, .xyz, .traj, .pdb, .dcd or another suffix ase.io "
                             f"writes") from None
        if not io_format.can_write:
            raise ValueError(f"{path}: ase.io cannot write the {io_format.name} format")
        if io_format.single and n_frames > 1:
            raise ValueError(f"{path}: the {io_format.name} format holds one frame, not "
                             f"{n_frames}; use .extxyz, .traj, .pdb or .dcd")
    check_writable(path)
    if path.suffix == ".dcd":
        topology = topology_path(path)
        if topology.exists() and not _is_topology_of(topology, path):
            raise ValueError(f"{path}: writing a DCD also writes its topology {topology}, which "
                             f"exists and was not written by ase_drift for {path.name}; refusing "
                             f"to overwrite it: move it away or choose another output name")
        check_writable(topology)
    return path


def _is_topology_of(topology: Path, path: Path) -> bool:
    try:
        with open(topology, errors="replace") as lines:
            return next(lines, "").rstrip() == _topology_remark(path)
    except OSError:
        return False


def check_writable(path: str | Path, what: str = "") -> Path:
    """Raise ValueError naming ``path`` unless a file can be written there (it is not a directory,
    and it, or the nearest existing folder above it, is writable)."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise ValueError(f"{name} is a directory, not a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{name} exists and is not writable")
        return path
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{name} cannot be created: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} cannot be created: the folder {folder} is not writable")
    return path


#: Frames examined to find the bonds of the CONECT records (:func:`covalent_bond_pairs`).
BOND_FRAMES = 1000


class FrameWriter:
    """Write frames of one molecule to ``path`` chunk by chunk, so that any number of frames fits
    in memory; the format follows the suffix. Use as a context manager::

        with FrameWriter("samples.pdb", numbers, info, n_frames=n) as out:
            for chunk in sampler.iter_positions(n, seed=0):   # [k, A, 3] Å
                out.write(chunk)

    :func:`check_output` runs first (an unknown format, or a DCD whose topology PDB would
    overwrite a file ase_drift did not write, raises ValueError and writes nothing). The frames
    go to a hidden temporary file that replaces ``path`` only when the context exits without an
    error: a reader never sees half a file and a failed run leaves ``path`` as it was.

    ``info`` (provenance: flat str/number values, None dropped) goes into every frame's
    ``atoms.info`` (extxyz, traj) and into ``REMARK 250`` lines of a PDB. PDB files (and a DCD's
    topology PDB) are written with mdtraj and carry CONECT records for the covalent bonds found
    in the first :data:`BOND_FRAMES` frames (:func:`covalent_bond_pairs`), so mdtraj, VMD and
    PyMOL see the bonds. Formats ``ase.io`` writes only as a whole (not extxyz, xyz, traj, pdb,
    dcd) are collected and written on exit.
    """

    STREAMED = (".extxyz", ".xyz", ".traj", ".pdb", ".dcd")

    def __init__(self, path: str | Path, numbers, info: dict | None = None,
                 n_frames: int = 2):
        self.path = check_output(path, n_frames)
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.info = {k: v for k, v in (info or {}).items() if v is not None}
        self.n_written = 0
        # hidden, and with the output's suffix for writers that read the format off the name
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self._file = None  # the open output (text handle, ase Trajectory or mdtraj file)
        self._pdb_body = None  # PDB: frames written by mdtraj, prefixed with REMARKs on close
        self._topology = None
        self._first_frame = None  # DCD: the frame of its topology PDB
        self._whole = []  # frames of formats written as a whole

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, positions: np.ndarray, energies: np.ndarray | None = None,
              forces: np.ndarray | None = None) -> None:
        """Append frames ``[k, A, 3]`` in Å, with their energies ``[k]`` (eV) and forces
        ``[k, A, 3]`` (eV/Å) if known: kept by extxyz and traj, not by xyz, PDB or DCD."""
        positions = np.asarray(positions)
        if positions.ndim != 3 or positions.shape[1:] != (len(self.numbers), 3):
            raise ValueError(f"frames must have shape [k, {len(self.numbers)}, 3], got "
                             f"{positions.shape}")
        if len(positions) == 0:
            return
        suffix = self.path.suffix
        if suffix in (".pdb", ".dcd"):  # mdtraj stores float32
            positions = positions.astype(np.float32, copy=False)
        if suffix in (".pdb", ".dcd") and self._topology is None:
            bonds = covalent_bond_pairs(self.numbers, positions[:BOND_FRAMES])
            self._topology = mdtraj_topology(self.numbers, bonds)
        if suffix == ".dcd":
            self._write_dcd(positions)
        elif suffix == ".pdb":
            self._write_pdb(positions)
        else:
            frames = Conformations(self.numbers, positions, forces, energies)
            if suffix in self.STREAMED:
                self._write_ase(frames)
            else:
                self._whole.append(frames)
        self.n_written += len(positions)

    def _atoms(self, frames: Conformations) -> list:
        atoms_list = frames.to_atoms()
        for atoms in atoms_list:
            atoms.info.update(self.info)
        return atoms_list

    def _write_ase(self, frames: Conformations) -> None:
        import ase.io

        if self.path.suffix == ".traj":
            if self._file is None:
                self._file = ase.io.Trajectory(str(self._tmp), "w")
            for atoms in self._atoms(frames):
                self._file.write(atoms)
            return
        if self._file is None:
            self._file = open(self._tmp, "w")  # noqa: SIM115 - closed in __exit__
        ase.io.write(self._file, self._atoms(frames), format=self.path.suffix[1:])

    def _write_pdb(self, positions: np.ndarray) -> None:
        from mdtraj.formats import PDBTrajectoryFile

        if self._file is None:
            self._pdb_body = self._tmp.with_name(self._tmp.name + ".body")
            self._file = PDBTrajectoryFile(str(self._pdb_body), "w")
        for k, frame in enumerate(positions):
            self._file.write(frame, self._topology, modelIndex=self.n_written + k)

    def _write_dcd(self, positions: np.ndarray) -> None:
        from mdtraj.formats import DCDTrajectoryFile

        if self._file is None:
            self._file = DCDTrajectoryFile(str(self._tmp), "w")
            self._first_frame = positions[0]
        self._file.write(positions)  # mdtraj's DCD file object takes Å

    def _write_topology(self, frame: np.ndarray) -> None:
        """The DCD's topology PDB (first frame, bonds), marked as ase_drift's, atomically."""
        import mdtraj

        topology = topology_path(self.path)
        tmp = topology.with_name(f".{topology.name}.tmp")
        body = tmp.with_name(tmp.name + ".body")
        try:
            mdtraj.Trajectory(units.angstrom_to_nm(frame[None]), self._topology).save_pdb(
                str(body))
            _write_pdb(tmp, _topology_remark(self.path) + "\n" + _remarks(self.info), body)
            os.replace(tmp, topology)
        finally:
            body.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if self._file is not None:
                self._file.close()
            if exc_type is not None:
                return
            if self._whole:
                import ase.io
                from ase.io.formats import filetype

                frames = [atoms for chunk in self._whole for atoms in self._atoms(chunk)]
                ase.io.write(str(self._tmp), frames, format=filetype(str(self.path), read=False))
            if self._pdb_body is not None:
                _write_pdb(self._tmp, _remarks(self.info), self._pdb_body)
            if self.n_written == 0:
                raise ValueError(f"{self.path}: no frames to write")
            if self._first_frame is not None:
                self._write_topology(self._first_frame)
            os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            if self._pdb_body is not None:
                self._pdb_body.unlink(missing_ok=True)


def _write_pdb(path: Path, header: str, body: Path) -> None:
    """``header`` lines, then the PDB ``body`` written by mdtraj without its final END record:
    ase.io reads END as the start of one more (empty) frame; mdtraj, OpenMM and VMD do not
    need it."""
    with open(path, "w") as out, open(body) as lines:
        out.write(header)
        for line in lines:
            if line.rstrip() != "END":
                out.write(line)


def write_positions(path: str | Path, numbers, positions: np.ndarray,
                    info: dict | None = None) -> Path:
    """Write frames ``[n, A, 3]`` (Å) to ``path`` in one go with a :class:`FrameWriter` (the
    format follows the suffix; ``info`` is provenance for every frame). Returns ``path``."""
    with FrameWriter(path, numbers, info, n_frames=len(positions)) as out:
        out.write(positions)
    return out.path


def _remarks(info: dict) -> str:
    """PDB ``REMARK 250`` lines, one ``key: value`` each."""
    return "".join(f"REMARK 250 {key}: {value}\n" for key, value in info.items())


def read_positions(path: str | Path) -> Conformations:
    """Read frames written by :func:`write_positions` (or any ``ase.io`` file / npz); only the
    positions are needed, so labels that some frames lack are dropped."""
    path = Path(path)
    if path.suffix == ".dcd":
        import mdtraj

        topology = topology_path(path)
        if not topology.exists():
            raise FileNotFoundError(f"{path} needs its topology {topology} beside it")
        return Conformations.from_mdtraj(mdtraj.load_dcd(str(path), top=str(topology)))
    return Conformations.read(path, partial_labels="drop")
