"""Reference Ramachandran surface and basin free energy of an alanine dipeptide data set.

    python -m benchmarks.alanine_reference [--dataset NAME | --file NPZ] [--docs]

Prints ΔF = F(αL/C7ax) − F(C7eq/β/αR) in kT with its block-bootstrap error (blocks of whole runs'
segments), the training set's basin populations, the integrated autocorrelation time of φ, and
plots the free-energy surfaces of the reference and the biased training set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ase_drift.datasets import data_path, load_npz
from ase_drift.metrics import basin_masks_phi, integrated_autocorrelation_time, plot_ramachandran
from ase_drift.peptides import backbone_dihedrals, ramachandran_reference, topology_from_pdb
from benchmarks.common import ROOT, write_section


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="alanine-dipeptide-amber99sbildn-300K-small")
    parser.add_argument("--file", type=Path, help="an npz written by ase_drift.datasets.alanine")
    parser.add_argument("--docs", action="store_true", help="write into docs/forces-and-data.md")
    args = parser.parse_args()
    path = args.file or data_path(args.dataset)
    train_set, reference = load_npz(path)
    with np.load(path) as npz:
        topology = topology_from_pdb(str(npz["pdb"]))
        runs = npz["reference_run"]
    phi, psi = backbone_dihedrals(reference.positions, topology)
    train_phi, train_psi = backbone_dihedrals(train_set.positions, topology)
    ref = ramachandran_reference(phi, psi)
    tau = max(integrated_autocorrelation_time(np.cos(phi[runs == k])) for k in np.unique(runs))
    lines = [
        (f"Data: `{path.name}`, {len(reference):,} reference frames from "
         f"{len(np.unique(runs))} runs, {len(train_set):,} training frames."),
        "",
        "| quantity | value |", "|---|---|",
        f"| reference P(αL/C7ax: 0 < φ < 2.2) | {np.mean(basin_masks_phi(phi)[1]):.5f} |",
        (f"| reference ΔF = F(αL/C7ax) − F(C7eq/β/αR) | {ref.delta_f:.2f} ± "
         f"{ref.delta_f_error:.2f} kT |"),
        f"| training set P(αL/C7ax) | {np.mean(basin_masks_phi(train_phi)[1]):.5f} |",
        f"| slowest τ_int of cos φ (reference frames) | {tau:.1f} |",
        (f"| median block-bootstrap error of F over populated bins | "
         f"{np.nanmedian(ref.free_energy_error):.2f} kT |"),
    ]
    text = "\n".join(lines)
    print(text)
    image = ROOT / "docs" / "img" / "ala2_reference.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    plot_ramachandran(image, {"reference": (phi, psi), "biased training set": (train_phi, train_psi)})
    if args.docs:
        write_section("forces-and-data.md", "ala2",
                      f"{text}\n\n![Ramachandran](img/ala2_reference.png)")


if __name__ == "__main__":
    main()
