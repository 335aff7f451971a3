"""Train the shipped QM9 pseudo-force field (and its time-conditioned EDM baseline) on one CPU
thread.

    OMP_NUM_THREADS=1 python -m ase_drift.datasets.make_gpff_qm9 --minutes 45 \\
        --baseline-minutes 20 --workdir bench_out/gpff_train

Data: QM9 from qm9pack (:mod:`ase_drift.datasets.qm9`), split 80/10/10 by molecule with seed 0;
training subset: ``--subset`` molecules drawn uniformly at random from the training part (random
molecules across all sizes, so the atom-count distribution is QM9's; about as many distinct
molecules as an hour of CPU training draws). The GPFF trains first, then the baseline (same
network with an ln σ embedding, EDM preconditioning). Each run writes an atomic trainer
checkpoint to ``--workdir`` every few minutes: rerunning the same command resumes, and a run
whose budget is spent goes straight to writing the outputs: the models (EMA weights; the GPFF
also carries the shape prior, per-atom-count Gaussian mixtures fitted on the subset) and a JSON
training record beside them (steps, wall time, loss curves, subset, configuration).

``--init MODEL`` trains a saved GPFF further for ``--minutes`` with a fresh optimiser (a lost
trainer checkpoint need not cost the training behind a shipped model); its record runs on from
MODEL's and lists the stages. ``--noise-mean`` moves that stage's training noise levels (e.g.
towards the near-equilibrium σ where the generated molecules' topology is decided); a different
``--seed`` draws the stage's subset afresh. The baseline is left alone with
``--baseline-minutes 0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from ..diffusion.pseudoforce import (
    TRAINING_NOISE_FIELDS,
    PseudoForceConfig,
    PseudoForceField,
    TrainingConfig,
    fit_shape_prior,
    train_pseudo_force_field,
)
from . import bundled_path
from .qm9 import QM9, load_qm9, split, training_subset


def subset_of(qm9: QM9, chosen: np.ndarray) -> QM9:
    """The molecules ``chosen`` of ``qm9`` as a set of their own."""
    sizes = qm9.n_atoms[chosen]
    atoms = np.concatenate([np.arange(qm9.offsets[m], qm9.offsets[m + 1]) for m in chosen])
    return QM9(qm9.numbers[atoms], qm9.positions[atoms],
               np.concatenate([[0], np.cumsum(sizes)]), qm9.index[chosen])


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def continued_record(earlier: dict, record: dict, source: str, training, config,
                     subset: str) -> dict:
    """The training record of a model trained further (``record``, steps counted from 0) from
    one with the record ``earlier``: steps, wall time and loss histories run on from the
    earlier ones, and ``stages`` lists each stage's start, length, optimisation, training
    noise (of the model configuration ``config``) and training ``subset``."""
    offset = earlier["steps"]
    history = {key: list(values) for key, values in earlier["history"].items()}
    for key in ("step", "validation_step"):
        history[key] += [offset + s for s in record["history"][key]]
    for key in ("loss", "validation_loss"):
        history[key] += record["history"][key]
    stages = list(earlier.get("stages", [{"from_step": 0, "steps": offset,
                                          "wall_time_s": earlier["wall_time_s"],
                                          "training": earlier.get("training")}]))
    stages.append({"from_step": offset, "steps": record["steps"],
                   "wall_time_s": record["wall_time_s"], "initial": Path(source).name,
                   "training": training.as_dict(), "subset": subset,
                   "noise": {k: getattr(config, k) for k in TRAINING_NOISE_FIELDS}})
    return {"steps": offset + record["steps"],
            "wall_time_s": round(earlier["wall_time_s"] + record["wall_time_s"], 1),
            "history": history, "stages": stages}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="GPFF wall-time budget")
    parser.add_argument("--baseline-minutes", type=float, default=20.0,
                        help="EDM baseline wall-time budget (0: no baseline)")
    parser.add_argument("--subset", type=int, default=50000,
                        help="training molecules drawn from QM9's training split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--interactions", type=int, default=3)
    parser.add_argument("--rbf", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="bench_out/gpff_train")
    parser.add_argument("--output", default=str(bundled_path("gpff-qm9.pt")))
    parser.add_argument("--baseline-output", default=str(bundled_path("gpff-qm9-baseline.pt")))
    parser.add_argument("--init", default=None,
                        help="a saved GPFF (with its JSON training record beside it) to train "
                             "further, with a fresh optimiser, for --minutes more")
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="peak learning rate of the cosine decay")
    parser.add_argument("--noise-mean", type=float, default=None,
                        help="with --init: train this stage with ln σ ~ N(NOISE_MEAN, p_std²) "
                             "instead of the initial model's p_mean (e.g. below 0 to spend the "
                             "steps near equilibrium); the validation loss follows it")
    args = parser.parse_args(argv)
    if args.noise_mean is not None and args.init is None:
        parser.error("--noise-mean changes the noise of a further stage: it needs --init")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    qm9 = load_qm9()
    train, valid, _ = split(len(qm9), seed=0)
    chosen = training_subset(train, args.subset, seed=args.seed)
    molecules = subset_of(qm9, chosen)
    validation = subset_of(qm9, valid[np.random.default_rng(1).choice(len(valid), 256,
                                                                        replace=False)])
    data = {"dataset": "QM9 (qm9pack 1.0.3; Ramakrishnan et al. 2014, CC BY 4.0)",
            "split": "80/10/10 by molecule, numpy default_rng(0) permutation "
                     "(ase_drift.datasets.qm9.split)",
            "subset": f"{len(chosen)} molecules drawn uniformly from the {len(train)} training "
                      f"molecules (seed {args.seed}), all sizes",
            "validation": "256 random validation molecules, fixed noise (seed 0)",
            "elements": sorted(int(z) for z in np.unique(molecules.numbers))}
    runs = [("gpff", args.minutes, False, Path(args.output))]
    if args.baseline_minutes > 0:
        runs.append(("baseline", args.baseline_minutes, True, Path(args.baseline_output)))
    shape_prior, initial, earlier = None, None, None
    if args.init is not None:
        initial = PseudoForceField.load(args.init)
        earlier = json.loads(Path(args.init).with_suffix(".json").read_text())
    for name, minutes, timed, output in runs:
        warm = initial is not None and not timed
        config = initial.config if warm else PseudoForceConfig(
            n_features=args.features, n_interactions=args.interactions, n_rbf=args.rbf,
            time_conditioned=timed)
        if warm and args.noise_mean is not None:
            config = dataclasses.replace(config, p_mean=args.noise_mean)
        # stage k ≥ 1 (the first training was stage 0) draws new batches and noise: its step
        # counter starts at 0 again
        stage = len(earlier.get("stages", [earlier])) if warm else 0
        training = TrainingConfig(batch_size=args.batch_size, minutes=minutes,
                                  learning_rate=args.learning_rate, seed=args.seed + stage)
        started = time.time()
        net, record = train_pseudo_force_field(
            molecules, config, training, validation=validation,
            checkpoint=str(workdir / f"{name}{f'-stage{stage}' if warm else ''}-trainer.pt"),
            initial=initial.net if warm else None)
        if not timed:
            shape_prior = fit_shape_prior(molecules, seed=args.seed)
        if warm:
            record = continued_record(earlier, record, args.init, training, config,
                                      data["subset"])
        record.update(data, model=config.as_dict(), training=training.as_dict(),
                      machine="one CPU thread (OMP_NUM_THREADS=1), shared 2-core machine",
                      finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      session_wall_s=round(time.time() - started, 1))
        metadata = {"elements": data["elements"], "units": {"positions": "Å",
                    "forces": "eV/Å (pseudo-forces, stiffness 1 eV/Å²)"},
                    "training": {k: record[k] for k in ("steps", "wall_time_s", "subset")}}
        PseudoForceField(net, shape_prior if not timed else None, metadata).save(output)
        write_json(output.with_suffix(".json"), record)
        print(f"{name}: {record['steps']} steps in {record['wall_time_s'] / 60:.1f} min -> "
              f"{output}")


if __name__ == "__main__":
    main()
