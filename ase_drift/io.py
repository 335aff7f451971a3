"""Writing and reading sampled conformations in the formats chemists use.

ASE writes extxyz, xyz, traj, pdb (and everything else ``ase.io`` knows); DCD goes through
mdtraj, with a PDB of the first frame written beside it as the topology (``x.dcd`` -> ``x.pdb``).
That PDB is marked as ase_drift's topology of the DCD in a REMARK line: a PDB without the mark
is the user's file and is never overwritten (:func:`check_output` refuses before any work).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import units
from .data import Conformations


def mdtraj_topology(numbers):
    """A one-residue mdtraj topology for a molecule of atomic numbers ``[A]``."""
    import mdtraj

    topology = mdtraj.Topology()
    chain = topology.add_chain()
    residue = topology.add_residue("MOL", chain)
    for k, z in enumerate(numbers):
        element = mdtraj.element.Element.getByAtomicNumber(int(z))
        topology.add_atom(f"{element.symbol}{k + 1}", element, residue)
    return topology


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


def write_positions(path: str | Path, numbers, positions: np.ndarray,
                    info: dict | None = None) -> Path:
    """Write frames ``[n, A, 3]`` (Å) to ``path``; the format follows the suffix.

    Checks ``path`` with :func:`check_output` first: an unknown format, or a DCD whose topology
    PDB would overwrite a file ase_drift did not write, raises ValueError and writes nothing.
    ``info`` (provenance: flat str/number values) goes into every frame's ``atoms.info``
    (extxyz, traj) and into ``REMARK 250`` lines of a PDB (a DCD's topology PDB included).
    """
    path = check_output(path, len(positions))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {k: v for k, v in (info or {}).items() if v is not None}
    if path.suffix == ".dcd":
        import mdtraj

        traj = mdtraj.Trajectory(units.angstrom_to_nm(positions), mdtraj_topology(numbers))
        traj.save_dcd(str(path))
        topology = topology_path(path)
        tmp = topology.with_name(topology.name + ".tmp")
        traj[0].save_pdb(str(tmp))
        tmp.write_text(_topology_remark(path) + "\n" + _remarks(info) + tmp.read_text())
        os.replace(tmp, topology)
        return path
    import ase.io

    frames = Conformations(numbers, positions).to_atoms()
    for atoms in frames:
        atoms.info.update(info)
    ase.io.write(str(path), frames)
    if path.suffix == ".pdb" and info:
        path.write_text(_remarks(info) + path.read_text())
    return path


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
