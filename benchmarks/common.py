"""Helpers shared by the benchmark scripts: timing, and writing generated sections into docs."""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: TrainConfig options of the paper's distance map (no pair weights, no canonical rotors): the
#: stored tables of the benchmarks that use it were measured before either became the default,
#: and rows that compare fields keep it so that only the field changes between them.
PAPER_DISTANCES = {"pair_scale_exponent": 0.0, "canonical_rotors": False}


def gfn2():
    """GFN2-xTB (tblite) as a :class:`~ase_drift.forces.ForceSource`, one ASE call per frame."""
    from tblite.ase import TBLite

    from ase_drift.forces import CalculatorForces

    return CalculatorForces(TBLite(method="GFN2-xTB", verbosity=0))


def gfn2_energies(positions, numbers):
    """GFN2-xTB energies ``[n]`` (eV) of frames ``[n, A, 3]`` (Å)."""
    return gfn2().compute(numbers, positions).energies


def write_section(page: str, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in
    ``docs/<page>`` with ``text`` (atomically)."""
    path = ROOT / "docs" / page
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = path.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{path} has no {start} … {end} section")
    before, rest = content.split(start)
    _, after = rest.split(end)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{before}{start}\n{text}\n{end}{after}")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a results file that an interrupted
    run resumes from is never left half-written), creating its directory."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def store_results(path: Path, stored: dict) -> None:
    """Write the results dict ``stored`` to ``path`` (atomically, :func:`write_json`), first
    adding the entries another run of the same benchmark wrote there since ``stored`` was read:
    runs of different seeds or settings may share a results file in parallel."""
    import json

    path = Path(path)
    if path.exists():
        for key, value in json.loads(path.read_text()).items():
            stored.setdefault(key, value)
    write_json(path, stored)


def best_of(fn, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn()`` (s)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
