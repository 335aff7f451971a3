"""``ase-drift``: a thin command-line layer over the library.

    ase-drift label DATA --calculator tblite:GFN2-xTB -o LABELLED.extxyz
    ase-drift train DATA --temperature 500 --field fk-energy --space distance -o MODEL.pt
    ase-drift sample MODEL.pt -n 1000 -o samples.extxyz
    ase-drift reweight MODEL.pt --calculator tblite:GFN2-xTB -n 10000 -o weighted.extxyz
    ase-drift evaluate samples.extxyz REFERENCE [--json] [--plot DIR [--model MODEL.pt]]
    ase-drift demo
    ase-drift data [NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from . import __version__
from .drift import DEFAULT_FIELD, FIELDS
from .likelihood import COORDINATES


def _read_data(path: str, temperature_K: float | None, energy_unit: str,
               partial_labels: str = "error", energy_key: str | None = None,
               forces_key: str | None = None):
    """A data file, or the training set of a named data set."""
    from .data import Conformations
    from .datasets import DATASETS, load

    if path in DATASETS:
        data = load(path)[0]
        return data if temperature_K is None else data.with_temperature(temperature_K)
    return Conformations.read(path, temperature_K=temperature_K, energy_unit=energy_unit,
                              partial_labels=partial_labels, energy_key=energy_key,
                              forces_key=forces_key)


def _first_frames(data, args):
    """``data`` cut to ``--frames`` (all of it when not given); more than it has is an error."""
    if args.frames is None:
        return data
    if args.frames > len(data):
        raise ValueError(f"--frames {args.frames}, but {args.data} has {len(data)} frames")
    return data.head(args.frames)


def _labels_cache(args, output: str) -> Path:
    """``--cache``, else ``<output stem>.labels.h5`` beside the output; checked writable."""
    from .io import check_writable

    return check_writable(args.cache or Path(output).with_suffix(".labels.h5"), "--cache")


def _label(data, source, cache: Path, args):
    """``data`` labelled by ``source`` through ``cache`` (progress bar on a terminal only), on
    the Dask cluster of ``--scheduler`` if given, ``--label-batch`` frames per call or task."""
    from contextlib import nullcontext

    from .forces import connect_scheduler, label

    start = time.perf_counter()
    cluster = connect_scheduler(args.scheduler) if args.scheduler else nullcontext()
    with cluster as client:
        labelled = label(data, source, cache=cache, batch_size=args.label_batch,
                         progress=sys.stderr.isatty(), client=client)
    where = f" on {args.scheduler}" if args.scheduler else ""
    print(f"labelled {len(data)} frames{where} in {time.perf_counter() - start:.1f} s "
          f"(cache {cache})", file=sys.stderr)
    return labelled


#: Suffixes of the files ``ase-drift label`` writes: formats that keep energies and forces.
LABELLED_SUFFIXES = (".extxyz", ".xyz", ".traj")


def cmd_label(args) -> int:

    from .forces import source_from_spec
    from .io import check_output

    output = check_output(args.output, 2)
    if output.suffix not in LABELLED_SUFFIXES:
        raise ValueError(f"-o {output}: labelled frames are written as "
                         f"{', '.join(LABELLED_SUFFIXES)} (formats that keep energies and forces)")
    cache = _labels_cache(args, args.output)
    source = source_from_spec(args.calculator)  # an unknown kind fails before reading the data
    data = _read_data(args.data, args.temperature, "eV", "drop", args.energy_key,
                      args.forces_key)
    data = _first_frames(data, args)
    labelled = _label(data, source, cache, args)
    _write_atomically(labelled, output)
    print(f"labelled {labelled!r} with {args.calculator} -> {output}")
    return 0


def _read_reference(path: str):
    """A reference file, or the reference of a named data set (with its run labels)."""
    from .datasets import DATASETS, load, reference_runs
    from .io import read_positions

    if path in DATASETS:
        return load(path)[1], reference_runs(path)
    return read_positions(path), None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _seed(text: str) -> int:
    from .sampler import MAX_SEED

    value = int(text)
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {value}")
    return value


def _kelvin(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive temperature in K, got {text}")
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its messages
_non_negative_int.__name__ = "non-negative integer"
_seed.__name__ = "seed"
_kelvin.__name__ = "temperature"


def _write_atomically(data, output: Path) -> None:
    """Write conformations to ``output`` in the format its name says, atomically: a reader
    never sees half a file."""
    _write_frames_atomically(data.to_atoms(), output)


def _write_frames_atomically(frames: list, output: Path) -> None:
    """Write ``ase.Atoms`` frames to ``output`` (format from its name) atomically."""
    import ase.io
    from ase.io.formats import filetype

    tmp = output.with_name(f".{output.name}.tmp")
    try:
        ase.io.write(str(tmp), frames, format=filetype(str(output), read=False))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_train(args) -> int:
    if args.method == "energy-diffusion":
        return _train_energy_diffusion(args)
    from .data import species_difference
    from .io import check_writable
    from .training import train

    # Everything that could fail after training is checked before it.
    check_writable(args.output, "-o")
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint FILE to resume from")
    if args.resume and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--resume: there is no checkpoint {args.checkpoint} (drop "
                                f"--resume to start a new run)")
    source = cache = None
    if args.calculator:
        from .forces import source_from_spec

        cache = _labels_cache(args, args.output)
        source = source_from_spec(args.calculator)
    elif args.cache or args.scheduler:
        raise ValueError("--cache and --scheduler are for labelling with --calculator: give "
                         "--calculator too")
    data = _read_data(args.data, args.temperature, args.energy_unit,
                      "drop" if source else args.partial_labels, args.energy_key,
                      args.forces_key)
    data = _first_frames(data, args)
    options = {k: v for k, v in (("omega", args.omega), ("beta", args.beta)) if v is not None}
    if args.pair_scale_exponent:
        exponents = tuple(args.pair_scale_exponent)
        options["pair_scale_exponent"] = exponents[0] if len(exponents) == 1 else exponents
    if args.bandwidths:
        options["bandwidths"] = tuple(args.bandwidths)
    if args.canonical_rotors is not None:
        options["canonical_rotors"] = args.canonical_rotors
    reference = None
    if args.reference:
        reference = _read_reference(args.reference)[0]
        difference = species_difference(reference.numbers, data.numbers)
        if difference:
            raise ValueError(f"--reference {args.reference} is another molecule than "
                             f"{args.data}: {difference}")
        reference = reference.positions
    if source is not None:  # positions-only data: label first (cached, resumable)
        data = _label(data, source, cache, args)
    start = time.perf_counter()
    sampler = train(data, temperature_K=args.temperature, field=args.field, space=args.space,
                    steps=args.steps, seed=args.seed, checkpoint=args.checkpoint,
                    checkpoint_every=args.checkpoint_every, resume=args.resume,
                    reference=reference, progress=not args.quiet, progress_every=args.log_every,
                    **options)
    path = sampler.save(args.output)
    print(f"trained {sampler!r} in {time.perf_counter() - start:.1f} s -> {path}")
    return 0


#: ``train`` options that only the drift method reads.
DRIFT_ONLY_OPTIONS = ("omega", "beta", "bandwidths", "pair_scale_exponent", "canonical_rotors",
                      "calculator", "cache", "scheduler", "checkpoint", "resume", "reference")


def _train_energy_diffusion(args) -> int:
    """``train --method energy-diffusion``: :meth:`EnergyDiffusion.train` on the positions."""
    from .diffusion import EnergyDiffusion
    from .io import check_writable

    given = [f"--{name.replace('_', '-')}" for name in DRIFT_ONLY_OPTIONS
             if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: drift options, not read by --method "
                         f"energy-diffusion")
    check_writable(args.output, "-o")
    data = _read_data(args.data, args.temperature, args.energy_unit, "drop", args.energy_key,
                      args.forces_key)
    data = _first_frames(data, args)
    start = time.perf_counter()
    model = EnergyDiffusion.train(data, temperature_K=args.temperature,
                                  fokker_planck=args.fokker_planck,
                                  experts=None if args.experts is None else tuple(args.experts),
                                  steps=args.steps, seed=args.seed, progress=not args.quiet)
    path = model.save(args.output)
    print(f"trained {model!r} in {time.perf_counter() - start:.1f} s -> {path}")
    return 0


def cmd_simulate(args) -> int:
    """Batched Langevin dynamics on a model that is a force field (energy diffusion)."""
    from .io import FrameWriter, check_output, read_positions
    from .sampler import load

    n_frames = (args.steps // args.record_every) * args.replicas
    if n_frames == 0:
        raise ValueError(f"--steps {args.steps} records no frame every {args.record_every} "
                         f"steps: give more steps or a smaller --record-every")
    output = check_output(args.output, n_frames)
    model = load(args.model)
    if not hasattr(model, "simulate"):
        raise ValueError(f"{args.model} is a {model.kind} model, which is no force field: "
                         f"simulate needs an energy-diffusion model")
    start = read_positions(args.start)
    atoms = start.to_atoms()[0]
    frames = model.simulate(atoms, args.replicas, args.steps, timestep_fs=args.timestep_fs,
                            friction_per_fs=args.friction_per_fs,
                            record_every=args.record_every, seed=args.seed,
                            progress=sys.stderr.isatty())  # [F, R, A, 3] Å
    info = {"model_file": Path(args.model).name, "replicas": args.replicas,
            "record_every_steps": args.record_every, "timestep_fs": args.timestep_fs,
            "order": "frame k*replicas + r is replica r at record k"}
    with FrameWriter(output, model.numbers, info, n_frames=n_frames) as out:
        out.write(frames.reshape(-1, len(model.numbers), 3))
    print(f"simulated {args.replicas} replicas × {args.steps} steps with {model!r} -> {output} "
          f"({n_frames} frames)")
    return 0


def cmd_sample(args) -> int:
    from tqdm.auto import tqdm

    from .io import FrameWriter, check_output, topology_path
    from .sampler import MAX_SEED, DriftSampler, load

    output = check_output(args.output, args.n)  # before any work; never overwrites a user's PDB
    sampler = load(args.model)  # any kind: drift, DSM, ...
    options = {}
    if args.precision != "fp32":
        if not isinstance(sampler, DriftSampler):
            raise ValueError(f"--precision {args.precision} is for drift models; "
                             f"{args.model} is a {sampler.kind}")
        options["precision"] = args.precision
    refine = _refinement(args, sampler)
    seed = fresh_seed() if args.seed is None else args.seed  # recorded: the run can be repeated
    info = _provenance(sampler, args.model, seed)
    if refine is not None:
        info.update(refine_calculator=args.refine, refine_steps=args.refine_steps,
                    refine_step_size_angstrom=refine.keywords["step_size"],
                    refine_torsion_moves=args.torsion_moves)
    accepted, moves = 0, None
    start = time.perf_counter()
    # Streamed batch by batch: any n fits in memory, and a failure leaves no half-written file.
    with FrameWriter(output, sampler.numbers, info, n_frames=args.n) as out, \
            tqdm(total=args.n, unit="conf", disable=not sys.stderr.isatty() or args.n < 10**5,
                 desc="sampling") as bar:
        for batch, positions in enumerate(sampler.iter_positions(args.n, seed=seed, **options)):
            if refine is None:
                out.write(positions)
            else:  # each batch's chains from their own seed: reproducible, streamable
                if args.torsion_moves and moves is None:  # bonds of the first batch, kept
                    from .torsions import TorsionMoves

                    moves = TorsionMoves.from_frames(sampler.numbers, positions)
                chains = refine(positions=positions, seed=(seed + batch) % MAX_SEED,
                                torsion_moves=moves)
                out.write(chains.positions, chains.energies, chains.forces)
                accepted += int(chains.accepted.sum())
            bar.update(len(positions))
    elapsed = time.perf_counter() - start
    written = f"{output} (topology {topology_path(output)})" if output.suffix == ".dcd" else output
    what = "" if refine is None else (
        f", each refined by {args.refine_steps} MALA steps"
        f"{' and torsion moves' if args.torsion_moves else ''} with {args.refine} (MALA "
        f"acceptance {accepted / max(1, args.n * args.refine_steps):.2f})")
    print(f"sampled {args.n} conformations with {sampler!r} (seed {seed}){what} in "
          f"{elapsed:.3f} s -> {written}")
    return 0


def cmd_generate(args) -> int:
    from .diffusion.pseudoforce import PseudoForceField

    output = Path(args.output)
    model = (PseudoForceField.load(args.model) if args.model
             else PseudoForceField.load_pretrained("qm9"))
    seed = fresh_seed() if args.seed is None else args.seed  # recorded: the run can be repeated
    start = time.perf_counter()
    options = {name: value for name, value in (("step_size", args.step_size),
                                               ("step_size_below", args.step_size_below),
                                               ("max_overshoot", args.max_overshoot),
                                               ("max_step_ratio", args.max_step_ratio),
                                               ("noise_scale", args.noise_scale),
                                               ("target_steps", args.target_steps),
                                               ("prior_sigma", args.prior_sigma))
               if value is not None}
    frames = model.generate(args.formula, args.n, sampler=args.sampler, nfe=args.nfe,
                            adaptive=args.adaptive, shape=args.shape, seed=seed, **options)
    elapsed = time.perf_counter() - start
    for atoms in frames:
        atoms.info.update(seed=seed, model_file=Path(args.model).name if args.model
                          else "gpff-qm9.pt (shipped)", **options)
    _write_frames_atomically(frames, output)
    spent = sum(atoms.info["nfe"] for atoms in frames) / max(len(frames), 1)
    print(f"generated {args.n} x {args.formula} with {args.sampler} (mean {spent:.1f} network "
          f"evaluations, seed {seed}) in {elapsed:.2f} s -> {output}")
    return 0


def _refinement(args, sampler):
    """``--refine``: MALA on each batch (a partial of :func:`ase_drift.refine.mala`), or None."""
    if args.refine is None:
        if args.refine_steps or args.refine_step_size is not None or args.torsion_moves:
            raise ValueError("--refine-steps, --refine-step-size and --torsion-moves need "
                             "--refine CALC")
        return None
    from functools import partial

    from .forces import source_from_spec
    from .refine import DEFAULT_STEP_SIZE, mala

    if sampler.temperature_K is None:
        raise ValueError(f"--refine needs the temperature {args.model} was trained for, and it "
                         f"records none")
    step_size = DEFAULT_STEP_SIZE if args.refine_step_size is None else args.refine_step_size
    return partial(mala, source_from_spec(args.refine), sampler.numbers,
                   temperature_K=sampler.temperature_K, steps=args.refine_steps,
                   step_size=step_size)


def cmd_reweight(args) -> int:
    from ase import Atoms

    from .forces import source_from_spec
    from .io import check_output
    from .likelihood import NCEDensity
    from .reweighting import reweight_sampler
    from .sampler import atoms_from_positions, load

    output = check_output(args.output, args.n)
    if output.suffix not in LABELLED_SUFFIXES:
        raise ValueError(f"-o {output}: weighted frames are written as "
                         f"{', '.join(LABELLED_SUFFIXES)} (formats that keep per-frame info)")
    if (args.anneal_step_size is not None or args.torsion_moves) and not args.anneal_steps:
        raise ValueError("--anneal-step-size and --torsion-moves need --anneal-steps K")
    source = source_from_spec(args.calculator)  # an unknown kind fails before any work
    sampler = load(args.model)
    density = NCEDensity.for_model(args.model, n=args.fit_samples, steps=args.fit_steps,
                                   coordinates=args.density_coordinates, seed=args.seed,
                                   progress=sys.stderr.isatty())
    if args.anneal_steps:
        from .annealing import DEFAULT_STEP_SIZE, anneal_sampler

        step_size = (DEFAULT_STEP_SIZE if args.anneal_step_size is None
                     else args.anneal_step_size)
        weighted = anneal_sampler(sampler, density, args.n, forces=source, steps=args.anneal_steps,
                                  seed=args.seed, step_size=step_size,
                                  torsion_moves=args.torsion_moves,
                                  progress=sys.stderr.isatty()).samples
    else:
        weighted = reweight_sampler(sampler, density, args.n, forces=source, seed=args.seed,
                                    progress=sys.stderr.isatty())
    frames = atoms_from_positions(Atoms(numbers=sampler.numbers), weighted.positions)
    for atoms, weight, log_weight, reduced in zip(frames, weighted.weights,
                                                  weighted.log_weights,
                                                  weighted.reduced_energies, strict=True):
        atoms.info.update(weight=float(weight), log_weight=float(log_weight),
                          energy_kT=float(reduced))
    _write_frames_atomically(frames, output)
    annealed = f" after {args.anneal_steps} annealing levels" if args.anneal_steps else ""
    print(f"weighted {args.n} samples of {sampler!r} with {args.calculator}{annealed}: Kish ESS "
          f"{weighted.ess:.4f} of the samples (density cached as {args.model}.nce.pt) -> "
          f"{output}")
    return 0


def fresh_seed() -> int:
    """A seed from the OS's entropy, in [0, 2**63)."""
    import numpy as np

    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _provenance(sampler, model: str, seed: int) -> dict:
    """What made these samples, for the output's info / PDB REMARKs (None values are dropped)."""
    from .forces import file_sha256

    meta = getattr(sampler, "metadata", None) or {}
    return {"ase_drift_version": __version__, "model_file": Path(model).name,
            "model_sha256": file_sha256(model), "model_kind": getattr(sampler, "kind", None),
            "field": meta.get("field"), "space": meta.get("space"),
            "temperature_K": meta.get("temperature_K"), "seed": seed,
            "units": "positions Angstrom"}


#: Fewer samples than this: ``evaluate`` warns that the metrics are dominated by noise.
MIN_EVALUATED_SAMPLES = 100


def cmd_evaluate(args) -> int:
    from .data import species_difference
    from .io import read_positions
    from .metrics import (
        distance_legend,
        evaluate,
        markdown_table,
        noise_floor,
        plot_distance_histograms,
        plot_training_curve,
        reference_part,
    )

    if args.model and not args.plot:
        raise ValueError("--model only adds the model's training curves to --plot DIR: give "
                         "--plot too, or drop --model")
    samples = read_positions(args.samples)
    if len(samples) < MIN_EVALUATED_SAMPLES:
        print(f"ase-drift evaluate: warning: only {len(samples)} samples in {args.samples}; "
              f"the metrics are noisy below {MIN_EVALUATED_SAMPLES} (compare with the noise "
              f"floor row, or sample more)", file=sys.stderr)
    reference, runs = _read_reference(args.reference)
    difference = species_difference(samples.numbers, reference.numbers)
    if difference:
        raise ValueError(f"the samples {args.samples} and the reference {args.reference} are "
                         f"different molecules: {difference}")
    # The floor at the samples' size (at most the frames of the reference's second part).
    n_floor = min(len(samples.positions), int((~reference_part(len(reference.positions),
                                                                runs)).sum()))
    rows = {"samples": evaluate(samples.positions, reference.positions, reference.numbers),
            "noise floor (reference half vs half)": noise_floor(
                reference.positions, reference.numbers, n_floor, groups=runs)}
    if args.json:
        print(json.dumps({name: report.as_dict() for name, report in rows.items()}, indent=2))
    else:
        print(markdown_table(rows) + "\n\n" + distance_legend())
    if args.plot:
        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        plots = [plot_distance_histograms(out / "distance_histograms.png", reference.numbers,
                                          reference.positions, {"samples": samples.positions})]
        if args.model:
            from .sampler import DriftSampler

            history = DriftSampler.load(args.model).metadata.get("history")
            if history and history.get("step"):
                plots.append(plot_training_curve(out / "training_curve.png", history))
        print("plots -> " + ", ".join(map(str, plots)), file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out, steps=args.steps, seed=args.seed)
    return 0


def cmd_data(args) -> int:
    from .datasets import DATASETS, generation_cost, load
    from .io import check_output

    if args.name is None:
        if args.output:
            raise ValueError("-o needs a data set NAME to export")
        for name, dataset in sorted(DATASETS.items()):
            print(f"{name}\n    {dataset.description}")
        return 0
    cost = generation_cost(args.name)  # unknown names: KeyError listing the known ones
    output = None if args.output is None else check_output(args.output)
    if cost is not None and not args.yes and not _confirm(
            f"{args.name} is not cached yet: generating it takes {cost}. Generate it now?"):
        raise ValueError(f"{args.name} is not cached yet and generating it takes {cost}: "
                         f"rerun with --yes to generate it")
    train_set, reference = load(args.name)
    if output is None:
        print(f"{args.name}: training set {train_set!r}\n    reference {reference!r}")
        return 0
    part = train_set if args.part == "train" else reference
    _write_atomically(part, output)
    print(f"{args.name} ({args.part}): {part!r} -> {output}")
    return 0


def _confirm(question: str) -> bool:
    """Ask on a terminal; anywhere else (scripts, CI) the answer is no."""
    if not sys.stdin.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ase-drift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ase_drift {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the subcommand, too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[debug], help="train a one-step drift sampler")
    p.add_argument("data", help="ase.io-readable file with energies/forces, an npz (z, R, F, E), "
                                "or a bundled data set name")
    p.add_argument("--temperature", type=_kelvin, help="K (default: from the file's metadata)")
    p.add_argument("--field", choices=FIELDS, default=DEFAULT_FIELD)
    p.add_argument("--space", choices=("cartesian", "distance"), default="distance")
    p.add_argument("--omega", type=float, help="Force-Interpolated weight ω (default: chosen "
                                                "from the data's force scale ρ, Eq. 33)")
    p.add_argument("--beta", type=float, help="Force-Aligned Kernel strength β")
    p.add_argument("--bandwidths", type=float, nargs="+",
                   help="kernel bandwidths as multiples of the median distance (default 0.25)")
    p.add_argument("--pair-scale-exponent", type=float, nargs="+", metavar="ALPHA",
                   help="distance space: divide each pair distance by (its spread over the "
                        "data / the mean spread)^ALPHA, 0 (the paper) to 1; several values "
                        "stack one block of features per value (e.g. 0 1)")
    p.add_argument("--canonical-rotors", action=argparse.BooleanOptionalAction, default=None,
                   help="distance space: relabel each methyl's hydrogens to one rotamer before "
                        "taking distances, so the generator need not bridge the three rotamers "
                        "(default: on in distance space)")
    p.add_argument("--method", choices=("drift", "energy-diffusion"), default="drift",
                   help="drift: the one-step generator (default); energy-diffusion: an "
                        "energy-based diffusion model that is also a force field")
    p.add_argument("--fokker-planck", type=float, metavar="ALPHA",
                   help="energy-diffusion: weight of the Fokker–Planck regulariser")
    p.add_argument("--experts", type=float, nargs="+", metavar="T",
                   help="energy-diffusion: diffusion times splitting [0, 1] between experts")
    p.add_argument("--steps", type=_positive_int, default=20000)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--frames", type=_positive_int, help="use only the first N frames")
    p.add_argument("--energy-unit", default="eV", help="unit of the file's energies (eV, kcal/mol, kJ/mol)")
    p.add_argument("--partial-labels", choices=("error", "drop"), default="error",
                   help="a label (forces, energy) only some frames carry: an error naming the "
                        "first frame without it (default), or drop it for every frame")
    p.add_argument("--checkpoint", help="resumable training checkpoint, written every "
                                        "--checkpoint-every steps and on Ctrl-C/SIGTERM")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1000, metavar="N",
                   help="steps between checkpoints (default 1000)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint (which must exist); a larger --steps than "
                        "the run had extends it")
    _progress_arguments(p)
    p.add_argument("--reference", help="reference file or data set name for periodic evaluation")
    _label_arguments(p, required=False)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("label", parents=[debug],
                       help="label frames with energies and forces from a calculator")
    p.add_argument("data", help="ase.io-readable file, an npz (z, R) or a bundled data set name; "
                                "labels it carries are replaced")
    _label_arguments(p, required=True)
    p.add_argument("--temperature", type=_kelvin, help="K to record (default: the file's)")
    p.add_argument("--frames", type=_positive_int, help="label only the first N frames")
    p.add_argument("-o", "--output", required=True,
                   help="labelled frames: " + ", ".join(LABELLED_SUFFIXES))
    p.set_defaults(run=cmd_label)

    p = sub.add_parser("sample", parents=[debug], help="draw conformations from a trained model")
    p.add_argument("model", help="a saved sampler of any kind (drift, DSM, ...)")
    p.add_argument("-n", type=_positive_int, required=True)
    p.add_argument("--seed", type=_seed,
                   help="repeat a run (default: a fresh seed, printed and stored in the output)")
    p.add_argument("-o", "--output", required=True, help=".extxyz, .xyz, .traj, .pdb or .dcd")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: the drift generator's hidden layers in bfloat16 (faster on CPUs "
                        "with bf16 units; see the benchmarks)")
    p.add_argument("--refine", metavar="SPEC",
                   help="refine each sample by exact MALA steps with this calculator (any "
                        "--calculator SPEC of train/label); energies and forces are written")
    p.add_argument("--refine-steps", type=_non_negative_int, default=0, metavar="K",
                   help="MALA steps per sample (default 0: only label the samples)")
    p.add_argument("--refine-step-size", type=float, metavar="Å",
                   help="MALA step for a hydrogen atom, Å (default 0.03; heavier atoms move "
                        "less, by √(m_H/m))")
    p.add_argument("--torsion-moves", action="store_true",
                   help="after each MALA step, an exact move that turns one side of a "
                        "rotatable bond (crosses torsional barriers; one more force call)")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("generate", parents=[debug],
                       help="generate molecules of a formula with a pseudo-force field (GPFF)")
    p.add_argument("formula", help="chemical formula, e.g. C4H10O (elements of the model)")
    p.add_argument("-n", type=_positive_int, required=True)
    p.add_argument("--sampler", choices=("dd", "sdd", "ancestral", "heun", "stochastic-heun"),
                   default="dd")
    p.add_argument("--nfe", type=_positive_int, default=64,
                   help="budget of network evaluations per molecule (default 64)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive steps from the predicted noise level (DD: stop at convergence)")
    p.add_argument("--shape", choices=("gmm", "rod", "disc", "sphere"),
                   help="DD+shape (dd/sdd only): the shape prior, or a target archetype")
    p.add_argument("--step-size", type=float,
                   help="dd/sdd: x <- x + STEP_SIZE * F, in (0, 2) (default 1, the paper's; "
                        "the docs list the values tuned for the shipped model)")
    p.add_argument("--step-size-below", type=float, metavar="Å",
                   help="dd/sdd: apply --step-size only to steps whose noise estimate is below "
                        "this (default: every step)")
    p.add_argument("--max-overshoot", type=float, metavar="Å",
                   help="dd/sdd: the farthest an atom's step may go past the predicted "
                        "equilibrium when --step-size > 1 (default: no cap)")
    p.add_argument("--max-step-ratio", type=float,
                   help="any sampler: the longest step of an atom to the predicted equilibrium, "
                        "in units of the molecule's current radius of gyration (default: no "
                        "limit)")
    p.add_argument("--noise-scale", type=float, metavar="Å",
                   help="sdd: the first step's noise per coordinate, decaying linearly to 0 "
                        "(default 0.1 Å; the docs' 256-NFE setting uses 0.2)")
    p.add_argument("--target-steps", type=_positive_int,
                   help="--adaptive ancestral/heun/stochastic-heun: levels of the adaptive "
                        "schedule's target (default: half the budget's)")
    p.add_argument("--prior-sigma", type=float,
                   help="width of the Gaussian prior in Å (default: the model's sigma_max for "
                        "an isotropic prior, 1 Å around a scaffold)")
    p.add_argument("--model", help="a saved GPFF (default: the shipped QM9 model)")
    p.add_argument("--seed", type=_seed,
                   help="repeat a run (default: a fresh seed, printed and stored in the output)")
    p.add_argument("-o", "--output", required=True, help="any ase.io format, e.g. out.extxyz")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("simulate", parents=[debug],
                       help="Langevin dynamics of replicas on a model that is a force field")
    p.add_argument("model", help="an energy-diffusion model")
    p.add_argument("--start", required=True,
                   help="file whose first frame starts every replica")
    p.add_argument("--replicas", type=_positive_int, default=1)
    p.add_argument("--steps", type=_positive_int, required=True)
    p.add_argument("--timestep-fs", type=float, default=1.0)
    p.add_argument("--friction-per-fs", type=float, default=0.01)
    p.add_argument("--record-every", type=_positive_int, default=100)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("-o", "--output", required=True, help=".dcd, .extxyz, .traj, .pdb, ...")
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("reweight", parents=[debug],
                       help="importance weights of a model's samples towards the Boltzmann "
                            "distribution of a calculator (NCE likelihood)")
    p.add_argument("model", help="a saved sampler of any kind")
    p.add_argument("--calculator", required=True, metavar="SPEC",
                   help="the energies' calculator (any SPEC of label/train)")
    p.add_argument("-n", type=_positive_int, required=True)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--fit-samples", type=_positive_int, default=200_000,
                   help="samples the density is fitted on (cached beside the model)")
    p.add_argument("--fit-steps", type=_positive_int, default=10_000)
    p.add_argument("--density-coordinates", choices=COORDINATES, default=COORDINATES[0],
                   help="what the density is learned on: Z-matrix internal coordinates "
                        "(default) or pair distances (docs/likelihoods.md)")
    p.add_argument("--anneal-steps", type=_non_negative_int, default=0, metavar="K",
                   help="annealed importance sampling: K MALA levels from the density to the "
                        "Boltzmann distribution, each frame keeping an exact weight "
                        "(0: plain reweighting; docs/likelihoods.md, Eqs. 15-17)")
    p.add_argument("--anneal-step-size", type=float, metavar="Å",
                   help="MALA step for a hydrogen atom, Å (default 0.03)")
    p.add_argument("--torsion-moves", action="store_true",
                   help="annealing: a torsion move per level after the MALA step (carries "
                        "chains across torsional barriers into rotamers the density misses)")
    p.add_argument("-o", "--output", required=True,
                   help="weighted frames (weight, log_weight, energy_kT in each frame's info): "
                        + ", ".join(LABELLED_SUFFIXES))
    p.set_defaults(run=cmd_reweight)

    p = sub.add_parser("evaluate", parents=[debug], help="distance-histogram, stability and bond metrics")
    p.add_argument("samples")
    p.add_argument("reference", help="reference file or bundled data set name")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="directory for plots (distance histograms per pair type)")
    p.add_argument("--model", help="the model file, to also plot its training curves")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("demo", parents=[debug], help="train, sample and evaluate on the bundled ethanol data")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("data", parents=[debug], help="list, load or export the data sets")
    p.add_argument("name", nargs="?", help="a data set (without: list them)")
    p.add_argument("-o", "--output", help="export a part of it (.extxyz keeps the labels)")
    p.add_argument("--part", choices=("train", "reference"), default="train",
                   help="which part -o exports (default: the training set)")
    p.add_argument("--yes", action="store_true",
                   help="generate a data set that is not cached without asking (hours of MD)")
    p.set_defaults(run=cmd_data)
    return parser


def _progress_arguments(p: argparse.ArgumentParser) -> None:
    """--quiet and --log-every: progress on stderr is a bar on a terminal, else a line every
    10 % of the run."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true", help="no progress output")
    group.add_argument("--log-every", type=_positive_int, metavar="N",
                       help="a progress line every N steps instead of a bar (default: a bar on "
                            "a terminal, else a line every 10 %%)")


def _label_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    """--calculator, --cache, --energy-key and --forces-key of ``train`` and ``label``."""
    from .forces import SOURCE_KINDS

    what = "" if required else "label the frames first (positions-only data) with "
    p.add_argument("--calculator", required=required, metavar="SPEC",
                   help=f"{what}KIND[:ARGUMENT]: " + "; ".join(SOURCE_KINDS.values()))
    p.add_argument("--cache", help="HDF5 label cache; a rerun resumes from it (default: "
                                   "OUTPUT.labels.h5 beside the output, OUTPUT's suffix replaced)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="label on this Dask cluster (e.g. tcp://host:8786; needs ase_drift[cluster])")
    p.add_argument("--label-batch", type=_positive_int, default=64, metavar="N",
                   help="frames per calculator call, or per task on a cluster (default 64)")
    p.add_argument("--energy-key", help="read energies from this extxyz info key (e.g. REF_energy)")
    p.add_argument("--forces-key", help="read forces from this extxyz array (e.g. REF_forces)")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a mistake in the input (files, arguments) or a failed run the
    user can act on: one line, exit status 2."""
    from .forces import LabelingError
    from .training import TrainingDiverged

    return ValueError, KeyError, OSError, ImportError, LabelingError, TrainingDiverged


def _one_line(exc: BaseException) -> str:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return " ".join(str(message).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Run the command line; errors are one line on stderr (``--debug``: the traceback).

    Exit status: 0 success, 2 a user error (bad file or argument, failed labelling, diverged
    training), 1 an unexpected error, 130 interrupted, 141 the reader of stdout went away.
    """
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `ase-drift evaluate --json | head`: the reader has gone
        try:  # no second BrokenPipeError when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except KeyboardInterrupt as exc:  # Ctrl-C; TrainingInterrupted says what was saved
        if args.debug:
            raise
        print(f"ase-drift {args.command}: {_one_line(exc) if exc.args else 'interrupted'}",
              file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, _user_errors()):
            print(f"ase-drift {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"ase-drift {args.command}: unexpected error: {type(exc).__name__}: "
              f"{_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
