"""Labelling throughput on a Dask cluster: frames/s of a source of known cost, serial and on
local workers.

    python -m benchmarks.labelling [--frames 200] [--ms-per-frame 20] [--batch-size 10] [--docs]

The source (``ase_drift.testing.SpringForces``) sleeps ``--ms-per-frame`` per frame, like an
engine of known cost that leaves the CPU free, so the ideal rate is workers / cost. Each run
labels all frames through a fresh HDF5 cache with ``ase_drift.forces.label_positions``: in this
process (serial), then on a ``LocalCluster`` of 1 and 2 worker processes (one thread each),
with ``--batch-size`` frames per task and with the default 64. Cluster start-up and the
workers' first import of ase_drift are not timed (a warm-up run comes first). Prints a markdown
table; ``--docs`` writes it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

from ase_drift.forces import label_positions
from ase_drift.testing import SpringForces
from benchmarks.common import write_section

DEFAULT_BATCH_SIZE = 64  # label_positions' default


def labelling_seconds(source, positions: np.ndarray, batch_size: int, cache: Path,
                      client: Client | None) -> float:
    """Wall time (s) of labelling every frame of ``positions`` through a new ``cache``."""
    start = time.perf_counter()
    label_positions(source, np.ones(positions.shape[1], dtype=int), positions, cache=cache,
                    batch_size=batch_size, progress=False, client=client)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--ms-per-frame", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--docs", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    source = SpringForces(seconds_per_frame=args.ms_per_frame / 1e3)
    positions = np.random.default_rng(0).normal(size=(args.frames, 3, 3))  # Å
    per_worker = 1e3 / args.ms_per_frame  # frames/s of one worker at the source's cost
    rows = []  # (run, workers, frames per task, seconds)
    with tempfile.TemporaryDirectory() as scratch:
        caches = (Path(scratch) / f"labels-{k}.h5" for k in itertools.count())
        rows.append(("serial (this process)", 1, args.batch_size,
                     labelling_seconds(source, positions, args.batch_size, next(caches), None)))
        # with one worker the batch size only sets the overhead per task: one run
        for workers, batch_sizes in ((1, [args.batch_size]),
                                     (2, [args.batch_size, DEFAULT_BATCH_SIZE])):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                labelling_seconds(source, positions[:2 * workers], 1, next(caches), client)
                for batch_size in batch_sizes:
                    seconds = labelling_seconds(source, positions, batch_size, next(caches),
                                                client)
                    rows.append((f"LocalCluster, {workers} worker{'s' * (workers > 1)}",
                                 workers, batch_size, seconds))
    command = (f"python -m benchmarks.labelling --frames {args.frames} --ms-per-frame "
               f"{args.ms_per_frame:g} --batch-size {args.batch_size}")
    header = ("| run | workers | frames per task | wall time (s) | frames/s | ideal frames/s | "
              "efficiency |")
    intro = (f"`{command}`: {args.frames} frames of a source that sleeps "
             f"{args.ms_per_frame:g} ms per frame, through the HDF5 cache.")
    lines = [intro, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    for run, workers, batch_size, seconds in rows:
        rate, ideal = args.frames / seconds, workers * per_worker
        lines.append(f"| {run} | {workers} | {batch_size} | {seconds:.2f} | {rate:.1f} | "
                     f"{ideal:.0f} | {rate / ideal:.0%} |")
    text = "\n".join(lines)
    print(text)
    if args.docs:
        write_section("benchmarks.md", "labelling", text)


if __name__ == "__main__":
    main()
