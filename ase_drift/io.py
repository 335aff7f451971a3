"""Writing and reading sampled conformations in the formats chemists use.

ASE writes extxyz, xyz, traj, pdb (and everything else ``ase.io`` knows); DCD goes through
mdtraj, with a PDB of the first frame written beside it as the topology.
"""

from __future__ import annotations

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


def write_positions(path: str | Path, numbers, positions: np.ndarray) -> Path:
    """Write frames ``[n, A, 3]`` (Å) to ``path``; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".dcd":
        import mdtraj

        traj = mdtraj.Trajectory(units.angstrom_to_nm(positions), mdtraj_topology(numbers))
        traj.save_dcd(str(path))
        traj[0].save_pdb(str(path.with_suffix(".pdb")))
    else:
        Conformations(numbers, positions).write(path)
    return path


def read_positions(path: str | Path) -> Conformations:
    """Read frames written by :func:`write_positions` (or any ``ase.io`` file / npz)."""
    path = Path(path)
    if path.suffix == ".dcd":
        import mdtraj

        topology = path.with_suffix(".pdb")
        if not topology.exists():
            raise FileNotFoundError(f"{path} needs its topology {topology} beside it")
        return Conformations.from_mdtraj(mdtraj.load_dcd(str(path), top=str(topology)))
    return Conformations.read(path)
