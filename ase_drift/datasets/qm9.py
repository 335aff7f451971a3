"""QM9 (Ramakrishnan et al. 2014, CC BY 4.0): small organic molecules (C, H, N, O, F; at most nine
heavy atoms) at their B3LYP/6-31G(2df,p) equilibrium geometries, read offline from the CSV files
shipped in the ``qm9pack`` wheel (the ``chem`` extra; 130,831 molecules: QM9's 133,885 without the
3,054 that failed its consistency check).

``qm9pack``'s own ``__init__`` imports ``pkg_resources``, which newer Pythons lack, so the CSVs are
located with :func:`importlib.util.find_spec` and read without importing the package. The
geometries (column ``XYZ_Ang``, Å) and species (``Elements``) of all molecules are parsed once
(a few seconds) and cached as a compact npz under :func:`ase_drift.datasets.cache_dir`.

>>> from ase_drift.datasets.qm9 import load_qm9, split
>>> qm9 = load_qm9()
>>> train, valid, test = split(len(qm9), seed=0)        # 80/10/10 by molecule (the paper's A.1)
>>> numbers, positions = qm9[train[0]]
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from . import cache_dir

CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_NAME = "qm9-geometries.npz"
#: The paper's split (Appendix A.1): train / validation / test fractions, by molecule.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def qm9pack_data_dir() -> Path:
    """The directory of qm9pack's CSVs, found without importing the package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("QM9 needs the qm9pack package (pip install 'ase-drift[chem]')")
    return Path(spec.submodule_search_locations[0]) / "data"


@dataclass(frozen=True)
class QM9:
    """All molecules of QM9 in flat arrays: molecule ``m`` has atoms
    ``offsets[m]:offsets[m + 1]`` of ``numbers`` ``[N_atoms]`` and ``positions``
    ``[N_atoms, 3]`` (Å, as stored: not centred); ``index`` ``[M]`` is QM9's molecule index."""

    numbers: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """Atom count of every molecule ``[M]``."""
        return np.diff(self.offsets)

    def __getitem__(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``(numbers [A], positions [A, 3] Å)`` of molecule ``m``."""
        start, stop = self.offsets[m], self.offsets[m + 1]
        return self.numbers[start:stop], self.positions[start:stop]

    def atoms(self, m: int):
        """Molecule ``m`` as ``ase.Atoms`` (centred at its centroid)."""
        from ase import Atoms

        numbers, positions = self[m]
        return Atoms(numbers=numbers, positions=positions - positions.mean(0),
                     info={"qm9_index": int(self.index[m])})


def read_qm9_csv(path: str | Path, nrows: int | None = None) -> QM9:
    """Parse one qm9pack CSV (its first ``nrows`` molecules, or all)."""
    csv.field_size_limit(sys.maxsize)
    numbers, positions, sizes, index = [], [], [], []
    with open(path, newline="") as stream:
        for k, row in enumerate(csv.DictReader(stream)):
            if nrows is not None and k >= nrows:
                break
            elements = json.loads(row["Elements"].replace("'", '"'))
            # not JSON ("0.", and Mathematica's 1.2*^-6 for tiny numbers): read the numbers
            flat = row["XYZ_Ang"].replace("[", "").replace("]", "").replace("*^", "e")
            xyz = np.asarray(flat.split(","), dtype=np.float64).reshape(-1, 3)  # [A, 3]
            if xyz.shape != (len(elements), 3) or len(elements) != int(row["N_atoms"]):
                raise ValueError(f"{path}: molecule {row['Index']} has inconsistent atoms")
            numbers.append([atomic_numbers[e] for e in elements])
            positions.append(xyz)
            sizes.append(len(elements))
            index.append(int(row["Index"]))
    return QM9(np.concatenate(numbers).astype(np.int64),
               np.concatenate(positions).astype(np.float32),
               np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
               np.asarray(index, dtype=np.int64))


def _concatenate(parts: list[QM9]) -> QM9:
    sizes = np.concatenate([p.n_atoms for p in parts])
    return QM9(np.concatenate([p.numbers for p in parts]),
               np.concatenate([p.positions for p in parts]),
               np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
               np.concatenate([p.index for p in parts]))


def load_qm9(cache: str | Path | None = None) -> QM9:
    """All of QM9, from the cache (``cache`` or ``cache_dir()/qm9-geometries.npz``), parsed from
    qm9pack's CSVs and cached (written atomically) on first use."""
    path = Path(cache) if cache is not None else cache_dir() / CACHE_NAME
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return QM9(npz["numbers"], npz["positions"], npz["offsets"], npz["index"])
    data_dir = qm9pack_data_dir()
    from tqdm.auto import tqdm

    qm9 = _concatenate([read_qm9_csv(data_dir / name)
                        for name in tqdm(CSV_FILES, desc="parsing QM9 CSVs")])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, numbers=qm9.numbers, positions=qm9.positions, offsets=qm9.offsets,
             index=qm9.index)
    os.replace(tmp, path)
    return qm9


def split(n_molecules: int, seed: int = 0,
          fractions: tuple[float, float, float] = SPLIT_FRACTIONS):
    """``(train, validation, test)`` molecule indices: a seeded random permutation of
    ``range(n_molecules)`` cut by ``fractions`` (each part sorted)."""
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n_molecules)
    cuts = np.round(np.cumsum(fractions)[:2] * n_molecules).astype(int)
    return tuple(np.sort(part) for part in np.split(order, cuts))


def training_subset(train: np.ndarray, size: int | None, seed: int = 0) -> np.ndarray:
    """``size`` molecules drawn uniformly without replacement from the training indices (random
    molecules across all sizes, so the atom-count distribution is QM9's); all when ``None``."""
    if size is None or size >= len(train):
        return np.asarray(train)
    return np.sort(np.random.default_rng(seed).choice(train, size, replace=False))
