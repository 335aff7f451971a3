"""Speed of the core on this machine: training steps/s, sampling rates, feature-force precompute.

    python -m benchmarks.speed [--steps 200] [--threads N]

Ethanol from the bundled GFN2-xTB data set, fp32, the paper's setup (MLP 6×512, batch 256
generated, 512 positives). Prints a markdown table; targets from the core issue in the last column.
"""

from __future__ import annotations

import argparse

import torch

from ase_drift.datasets import load
from ase_drift.features import PairwiseDistances
from ase_drift.training import TrainConfig, Trainer
from benchmarks.common import best_of


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set, _ = load("ethanol-gfn2-500K")
    rows = []

    for space, field in (("distance", "fk"), ("cartesian", "fi"), ("distance", "drift")):
        trainer = Trainer(train_set, TrainConfig(field=field, space=space, steps=10 * args.steps))
        for _ in range(20):  # warm-up
            trainer.step()

        def steps(trainer=trainer):
            for _ in range(args.steps):
                trainer.step()

        rate = args.steps / best_of(steps, 3)
        rows.append((f"training, {field.upper()} {space} (steps/s)", rate, "≥ 40"))

    sampler = trainer.sampler()
    sampler.sample_positions(1000, seed=0)
    n = 200_000
    rate = n / best_of(lambda: sampler.sample_positions(n, seed=0), 5)
    rows.append(("sample_positions (conformers/s)", rate, "≥ 50,000"))
    sampler.sample_positions(1000, seed=0, precision="bf16")
    rate = n / best_of(lambda: sampler.sample_positions(n, seed=0, precision="bf16"), 5)
    rows.append(("sample_positions, bf16 hidden layers (conformers/s)", rate, "≥ 250,000"))

    atoms = train_set.to_atoms()[0]
    atoms.calc = None
    n = 50_000
    rate = n / best_of(lambda: sampler.sample(atoms, n, seed=0))
    rows.append(("sample → ase.Atoms (conformers/s)", rate, "≥ 10,000"))

    representation = PairwiseDistances(train_set.n_atoms)
    coords = torch.as_tensor(train_set.positions, dtype=torch.float32)
    scores = torch.as_tensor(train_set.forces, dtype=torch.float32)
    seconds = best_of(lambda: representation.feature_scores(coords, scores))
    rows.append(("exact feature force precompute (ms/frame)", 1e3 * seconds / len(coords), "≤ 1"))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(train_set)} training frames\n")
    print("| quantity | measured | target |\n|---|---:|---|")
    for name, value, target in rows:
        print(f"| {name} | {value:,.{3 if value < 10 else 0}f} | {target} |")


if __name__ == "__main__":
    main()
