"""Force-source speed: forces per second of each engine on ethanol and alanine dipeptide.

    python -m benchmarks.forces [--frames 200] [--threads 1]

Each engine labels ``--frames`` frames of the bundled data sets through ase_drift's force
sources (what training with ``forces=...`` does). The neural potentials are the examples'
architectures (PaiNN 32×3; MACE 16x0e+16x1o, 2 interactions) with freshly initialised weights:
speed does not depend on the weights. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ase_drift import potentials
from ase_drift.datasets import load, topology_pdb
from ase_drift.forces import CalculatorForces, LabelForces, OpenMMForces

SYSTEMS = {"ethanol": "ethanol-gfn2-500K",
           "alanine dipeptide": "alanine-dipeptide-amber99sbildn-300K-small"}


def tblite(data, workdir):
    from tblite.ase import TBLite

    return CalculatorForces(TBLite(method="GFN2-xTB", verbosity=0))


def openmm_amber(data, workdir):
    if data.n_atoms != 22:
        return None  # amber99sb-ildn has no ethanol
    from openmm import app

    from ase_drift.datasets.alanine import make_system

    pdb = Path(workdir) / "ala2.pdb"
    pdb.write_text(topology_pdb(SYSTEMS["alanine dipeptide"]))
    return OpenMMForces(make_system(app.PDBFile(str(pdb)).topology))


def schnetpack_painn(data, workdir):
    import schnetpack.transform as trn
    import torch
    from schnetpack import properties
    from schnetpack.interfaces import SpkCalculator

    model = potentials.build_painn(32, 3, float(data.energies.mean()) / data.n_atoms, seed=0)
    path = Path(workdir) / f"painn-{data.n_atoms}.model"
    torch.save(model, path)
    return CalculatorForces(SpkCalculator(
        model=str(path),
        neighbor_list=trn.ASENeighborList(cutoff=potentials.PAINN_CUTOFF_ANGSTROM),
        energy_key=properties.energy, force_key=properties.forces, energy_unit="eV",
        position_unit="Ang", dtype=torch.float64))


def mace_small(data, workdir):
    import torch
    from mace.calculators import MACECalculator
    from mace.tools import AtomicNumberTable

    z_table = AtomicNumberTable(sorted(set(data.numbers.tolist())))
    model = potentials.build_mace(16, z_table, float(data.energies.mean()) / data.n_atoms,
                                  float(np.sqrt(np.mean(data.forces ** 2))), 8.0, seed=0)
    path = Path(workdir) / f"mace-{data.n_atoms}.model"
    torch.save(model.double(), path)
    return CalculatorForces(MACECalculator(model_paths=str(path), device="cpu",
                                           default_dtype="float64"))


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data = {name: load(dataset)[0][: args.frames] for name, dataset in SYSTEMS.items()}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for engine, build in ENGINES.items():
            rates = []
            for frames in data.values():
                try:
                    source = build(frames, workdir)
                except ImportError:
                    source = None
                if source is None:
                    rates.append("—")
                    continue
                source.compute(frames.numbers, frames.positions[:2])  # warm-up
                start = time.perf_counter()
                source.compute(frames.numbers, frames.positions)
                rates.append(f"{len(frames) / (time.perf_counter() - start):,.0f}")
            rows.append((engine, UNITS[engine], *rates))
    print(f"{args.frames} frames per system, {args.threads} thread(s)\n")
    print("| engine | units at the engine → boundary | ethanol (forces/s) | "
          "alanine dipeptide (forces/s) |\n|---|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
