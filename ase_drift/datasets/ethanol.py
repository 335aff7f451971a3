"""Regenerate the bundled ethanol data set (GFN2-xTB, 500 K) from a seed.

The protocol is :mod:`ase_drift.datasets.molecule`'s (GFN2-xTB through tblite, Langevin at
500 K, 0.5 fs, friction 0.002 fs⁻¹, ``fixcm=False``; an MD17-style biased training run of 3,000
consecutive frames from the relaxed geometry, and independent reference runs of 100 ps after
10 ps of equilibration, every 20 fs), applied to ethanol in MD17's atom order:
C(H2) C(H3) O H H H H H H (two H on C0, three on C1, H on O).

Run ``python -m ase_drift.datasets.ethanol -o ethanol-gfn2-500K.npz`` (about 12 minutes on
2 cores; one process per run, ``OMP_NUM_THREADS=1`` so the result is deterministic).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from . import molecule

# ase.build's ethanol is C(H3) C(H2) O H(O) H H H H H; this puts it in MD17's order.
_ASE_TO_MD17_ORDER = [1, 0, 2, 4, 5, 6, 7, 8, 3]

# The bundled set's settings (ASE units: K, fs): the molecule protocol's defaults.
EthanolProtocol = molecule.MDProtocol


def relaxed_ethanol():
    """Ethanol in MD17 atom order, relaxed with GFN2-xTB (BFGS, fmax 1e-4 eV/Å)."""
    from ase.build import molecule as build

    return molecule.relaxed(build("CH3CH2OH")[_ASE_TO_MD17_ORDER])


def generate(protocol: EthanolProtocol | None = None, processes: int = 2) -> dict:
    """Relax, run the biased and the reference trajectories (default: the bundled set's
    protocol); return the npz payload."""
    return molecule.generate(relaxed_ethanol(), protocol or EthanolProtocol(),
                             processes=processes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--seed", type=int, default=EthanolProtocol.seed)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    molecule.save(generate(replace(EthanolProtocol(), seed=args.seed), processes=args.processes),
                  args.output)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
