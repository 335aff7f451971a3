"""Force-source speed: forces per second of each engine on ethanol and alanine dipeptide.

    python -m benchmarks.forces [--frames 200] [--threads 1]
    python -m benchmarks.forces --batched [--frames 1000] [--threads 1 [2]] [--docs]

Each engine labels ``--frames`` frames of the bundled data sets through ase_drift's force
sources (what training with ``forces=...`` does). The neural potentials are the examples'
architectures (PaiNN 32×3; MACE 16x0e+16x1o, 2 interactions) with freshly initialised weights:
speed does not depend on the weights. Prints a markdown table.

``--batched`` compares, for each neural potential on ``--frames`` ethanol frames and each
``--threads`` count, its per-frame ASE calculator (``CalculatorForces``) with the batched
source of the same model file (``SchNetPackForces``, ``MACEForces``) at several frames per
model call, both in each of ``--dtypes``; ``--docs`` writes that table into
docs/benchmarks.md. Give ``--threads 1 2`` on a machine with two idle cores only: with other
work on them, OpenMP's second thread is descheduled and the first waits for it (a two-thread
run here took over half an hour).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from ase_drift import potentials
from ase_drift.datasets import load, topology_pdb
from ase_drift.forces import CalculatorForces, LabelForces, OpenMMForces
from benchmarks.common import best_of, gfn2, write_section

SYSTEMS = {"ethanol": "ethanol-gfn2-500K",
           "alanine dipeptide": "alanine-dipeptide-amber99sbildn-300K-small"}


def tblite(data, workdir):
    return gfn2()


def openmm_amber(data, workdir):
    if data.n_atoms != 22:
        return None  # amber99sb-ildn has no ethanol
    from openmm import app

    from ase_drift.datasets.alanine import make_system

    pdb = Path(workdir) / "ala2.pdb"
    pdb.write_text(topology_pdb(SYSTEMS["alanine dipeptide"]))
    return OpenMMForces(make_system(app.PDBFile(str(pdb)).topology))


def painn_file(data, workdir) -> Path:
    """The examples' PaiNN (32 features, 3 interactions), saved as SchNetPack saves models."""
    import torch

    model = potentials.build_painn(32, 3, float(data.energies.mean()) / data.n_atoms, seed=0)
    path = Path(workdir) / f"painn-{data.n_atoms}.model"
    torch.save(model, path)
    return path


def mace_file(data, workdir) -> Path:
    """The examples' MACE (16x0e+16x1o, 2 interactions), saved in float64."""
    import torch

    model = potentials.build_mace(16, potentials.atomic_number_table(data),
                                  float(data.energies.mean()) / data.n_atoms,
                                  float(np.sqrt(np.mean(data.forces ** 2))), 8.0, seed=0)
    path = Path(workdir) / f"mace-{data.n_atoms}.model"
    torch.save(model.double(), path)
    return path


def schnetpack_painn(data, workdir):
    return CalculatorForces(potentials.painn_calculator(painn_file(data, workdir)))


def mace_small(data, workdir):
    return CalculatorForces(potentials.mace_calculator(mace_file(data, workdir)))


ENGINES = {
    "stored labels (LabelForces)": lambda data, workdir: LabelForces(data),
    "GFN2-xTB (tblite)": tblite,
    "amber99sb-ildn (OpenMM Reference)": openmm_amber,
    "PaiNN (SchNetPack 2.2)": schnetpack_painn,
    "MACE 0.3.16": mace_small,
}
UNITS = {
    "stored labels (LabelForces)": "as stored (eV, eV/Å)",
    "GFN2-xTB (tblite)": "eV, eV/Å (ASE calculator)",
    "amber99sb-ildn (OpenMM Reference)": "kJ/mol, kJ/mol/nm → eV, eV/Å in units.py",
    "PaiNN (SchNetPack 2.2)": "eV, eV/Å (energy_unit='eV', position_unit='Ang' passed)",
    "MACE 0.3.16": "eV, eV/Å (ASE calculator)",
}


#: Per neural potential: its model file, per-frame ASE calculator and batched source.
NEURAL = {
    "PaiNN (SchNetPack 2.2)": (painn_file, potentials.painn_calculator, "SchNetPackForces"),
    "MACE 0.3.16": (mace_file, potentials.mace_calculator, "MACEForces"),
}
#: Frames per model call of the batched sources in ``--batched``.
BATCH_SIZES = (16, 64, 256)


def engine_speeds(frames: int, threads: int) -> str:
    """Forces/s of every engine on ``frames`` frames of each system, as a markdown table."""
    import torch

    torch.set_num_threads(threads)
    data = {name: load(dataset)[0][:frames] for name, dataset in SYSTEMS.items()}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for engine, build in ENGINES.items():
            rates = []
            for labelled in data.values():
                try:
                    source = build(labelled, workdir)
                except ImportError:
                    source = None
                if source is None:
                    rates.append("—")
                    continue
                source.compute(labelled.numbers, labelled.positions[:2])  # warm-up
                start = time.perf_counter()
                source.compute(labelled.numbers, labelled.positions)
                rates.append(f"{len(labelled) / (time.perf_counter() - start):,.0f}")
            rows.append((engine, UNITS[engine], *rates))
    header = ("| engine | units at the engine → boundary | ethanol (forces/s) | "
              "alanine dipeptide (forces/s) |")
    lines = [f"{frames} frames per system, {threads} thread(s)", "", header, "|---|---|---:|---:|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def batched_speeds(frames: int, thread_counts: list[int], dtypes: list[str]) -> str:
    """Frames/s of each neural potential's per-frame calculator and batched source on
    ``frames`` ethanol frames, per dtype and thread count, as a markdown table with the
    speed-ups (both routes in the row's dtype). The per-frame calculator is timed once, each
    batched size as the best of 3, all after a warm-up call. Every batched result is checked
    against the float64 per-frame calculator's: forces to 1e-5 eV/Å (the issue's tolerance),
    and the largest force and energy differences are shown."""
    import torch

    from ase_drift import neural_forces

    ethanol = load(SYSTEMS["ethanol"])[0]
    numbers, positions = ethanol.numbers, ethanol.positions[:frames]  # [A], [N, A, 3] Å
    header = ("| model | dtype | threads | per-frame calculator (frames/s) | "
              + " | ".join(f"batched, {size}/call (frames/s)" for size in BATCH_SIZES)
              + " | best speed-up | max force / energy difference from float64 calculator |")
    lines = [header, "|---|---|---:|" + "---:|" * (len(BATCH_SIZES) + 2) + "---:|"]
    with tempfile.TemporaryDirectory() as workdir:
        for model, (save, calculator, batched) in NEURAL.items():
            path = save(ethanol, workdir)
            exact = CalculatorForces(calculator(path)).compute(numbers, positions)
            for dtype_name in dtypes:
                dtype = getattr(torch, dtype_name)
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    per_frame = CalculatorForces(calculator(path, dtype))
                    per_frame.compute(numbers, positions[:2])  # warm-up
                    start = time.perf_counter()
                    per_frame.compute(numbers, positions)
                    rates = [frames / (time.perf_counter() - start)]
                    force_error = energy_error = 0.0
                    for size in BATCH_SIZES:
                        source = getattr(neural_forces, batched)(path, batch_size=size,
                                                                 dtype=dtype)
                        source.compute(numbers, positions[:size])  # warm-up
                        got = source.compute(numbers, positions)
                        force_error = max(force_error,
                                          float(np.abs(got.forces - exact.forces).max()))
                        energy_error = max(energy_error,
                                           float(np.abs(got.energies - exact.energies).max()))
                        if force_error > 1e-5:
                            raise AssertionError(f"{model} ({dtype_name}): batched forces differ "
                                                 f"by {force_error:g} eV/Å")
                        rates.append(frames / best_of(partial(source.compute, numbers, positions)))
                    cells = [f"{rate:,.0f}" for rate in rates]
                    lines.append(f"| {model} | {dtype_name} | {threads} | {' | '.join(cells)} | "
                                 f"{max(rates[1:]) / rates[0]:.1f}× | {force_error:.0e} eV/Å / "
                                 f"{energy_error:.0e} eV |")
                    print(lines[-1], file=sys.stderr, flush=True)  # progress: a row a minute
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batched", action="store_true",
                        help="per-frame calculators against the batched neural sources")
    parser.add_argument("--frames", type=int, help="200 by default; 1,000 with --batched")
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch thread counts (1 by default)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                        choices=["float64", "float32"], help="with --batched: model dtypes")
    parser.add_argument("--docs", action="store_true",
                        help="with --batched: write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if not args.batched:
        print(engine_speeds(args.frames or 200, args.threads[0] if args.threads else 1))
        return
    frames, threads = args.frames or 1000, args.threads or [1]
    table = batched_speeds(frames, threads, args.dtypes)
    command = (f"python -m benchmarks.forces --batched --frames {frames} --threads "
               + " ".join(map(str, threads)) + " --dtypes " + " ".join(args.dtypes))
    text = f"`{command}`: {frames} ethanol frames.\n\n{table}"
    print(text)
    if args.docs:
        write_section("benchmarks.md", "batched-forces", text)


if __name__ == "__main__":
    main()
