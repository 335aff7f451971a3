"""Training: :class:`TrainConfig`, :class:`Trainer` (the loop, its hooks, checkpoints) and
:func:`train`, the one-call entry point.

One step (paper Algorithms 1–2): draw noise z ``[B, noise_dim]``, generate normalised coordinates
G(z) ``[B, A, 3]``, map them to features x = φ(G(z)) ``[B, D]``, draw a minibatch of positives,
evaluate the drift V = field(x, positives) without gradient, and minimise
mean_b ‖x_b − stopgrad(x_b + V_b)‖² (Eq. 9 / Eq. 30). Coordinates are divided by the data's
global standard deviation σ; forces enter as the score σ·F/kT of the normalised coordinates.

Hooks are plain callables ``hook(trainer)`` attached with an interval, as ASE's
``dyn.attach(fn, interval)``: :class:`ProgressBar` or :class:`ProgressLog` (:func:`progress_hook`
picks), :class:`Checkpointer`, :class:`Evaluator`.
A checkpoint holds everything needed to resume bit for bit: weights, optimiser and schedule
state, the random generator's state, the step and the history. Resuming with a larger ``steps``
extends the run: the cosine learning-rate schedule is re-planned over the new total.

A diverged run stops with :class:`TrainingDiverged` naming the step: a non-finite loss or
gradient, or generated features beyond :data:`DIVERGENCE_FACTOR` times the data's RMS. The
failing update is not applied, and no checkpoint or model is ever written from a diverged
state (:meth:`Trainer.check_health`), so the last checkpoint stays the last good one.

Ctrl-C (SIGINT) and SIGTERM during :meth:`Trainer.run` take effect between two steps: hooks
with an ``interrupted(trainer)`` method run (:class:`Checkpointer` saves the state of the last
completed step), then :class:`TrainingInterrupted` is raised. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import hashlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, StoredConfig, load_checkpoint, save_checkpoint
from .data import Conformations, check_temperature
from .drift import (
    DEFAULT_FIELD,
    DENSITY,
    ENERGIES,
    FIELDS,
    FORCES,
    DriftField,
    Positives,
    automatic_omega,
    blockwise_drift,
    data_force_scale_ratio,
    field_from_spec,
    field_spec,
    make_field,
)
from .features import check_canonical_rotors, check_pair_scale_exponent, make_representation
from .forces import label
from .kernels import kde_log_density
from .models import GeneratorConfig, MLPGenerator
from .sampler import DriftSampler, check_seed

__all__ = ["Checkpointer", "Evaluator", "ProgressBar", "ProgressLog", "TrainConfig", "Trainer",
           "TrainingDiverged", "TrainingInterrupted", "progress_hook", "train"]

#: Generated features with an RMS above this multiple of the training features' RMS mean the run
#: has diverged (a sound run stays within a few times the data's spread).
DIVERGENCE_FACTOR = 1e3
#: Samples of the fixed-noise probe :meth:`Trainer.check_health` runs before every checkpoint.
HEALTH_PROBE_SAMPLES = 64


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite or exploding loss, gradient, sample or weight at ``step``;
    the state is unusable and is never saved."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :meth:`Trainer.run` after ``step`` completed steps; ``saved``
    lists where hooks saved that state, ``signum`` is the signal (SIGINT for a
    KeyboardInterrupt raised by a hook)."""

    def __init__(self, message: str, step: int, saved: list, signum: int = signal.SIGINT):
        super().__init__(message)
        self.step, self.saved, self.signum = step, saved, signum


#: Pair weights of distance space by default: chosen by the ablation on the unbiased floor
#: (benchmarks/ablation.py, docs/benchmarks.md), where 0.5 beat the paper's 0 on TVD and energy
#: for ethanol and butane over 3 seeds each.
DEFAULT_PAIR_SCALE_EXPONENT = 0.5


@dataclass(frozen=True)
class TrainConfig(StoredConfig):
    """Everything that defines a training run (defaults: the paper's ethanol setup, DESIGN.md).

    ``field`` is one of :data:`ase_drift.drift.FIELDS` (see :func:`ase_drift.drift.make_field`,
    whose arguments ``omega`` … ``bandwidths`` mirror) or 'custom' when a field object is passed
    to the trainer; the checkpoint stores the field's spec beside this config. ``temperature_K`` None means: take
    it from the data. ``omega`` None means, for the FI fields: chosen from the data's ρ
    (:func:`ase_drift.drift.automatic_omega`; the field spec records the value).
    ``pair_scale_exponent`` weights each pair distance by its spread over the data (see
    :class:`ase_drift.features.PairwiseDistances`); None means :data:`DEFAULT_PAIR_SCALE_EXPONENT`
    in distance space and 0 in Cartesian space. A checkpoint written before the option existed
    reads back as 0, the map it was trained with. ``canonical_rotors`` relabels the hydrogens of
    methyl-like rotors to one rotamer before the distances are taken (see
    :class:`ase_drift.features.PairwiseDistances`); None means on in distance space (chosen by
    the same ablation) and off in Cartesian space, where it is refused; a checkpoint written
    before the option existed reads back as off.
    """

    field: str = DEFAULT_FIELD
    space: str = "distance"
    omega: float | None = None
    beta: float | None = None
    density_correction: bool = False
    standardize: bool | None = None
    pair_scale_exponent: float | tuple[float, ...] | None = None
    canonical_rotors: bool | None = None
    normalize_force_scale: bool = False
    bandwidths: tuple[float, ...] = (0.25,)
    temperature_K: float | None = None
    steps: int = 20000
    batch_size: int = 256
    n_positives: int = 512
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    noise_dim: int = 64
    hidden: int = 512
    depth: int = 6
    affine_skip: bool = True
    residual: bool = False
    initialize_from_data: bool = True
    ema_decay: float = 0.0
    seed: int = 0
    log_every: int = 10

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return super().from_dict({"pair_scale_exponent": 0.0, "canonical_rotors": False,
                                  **values})

    def __post_init__(self):
        object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))
        object.__setattr__(self, "temperature_K", check_temperature(self.temperature_K))
        object.__setattr__(self, "seed", check_seed(self.seed))
        for name in ("steps", "batch_size", "n_positives", "depth", "hidden", "noise_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        exponents = self.pair_scale_exponent
        if exponents is None:
            exponents = DEFAULT_PAIR_SCALE_EXPONENT if self.space == "distance" else 0.0
        object.__setattr__(self, "pair_scale_exponent",
                           check_pair_scale_exponent(exponents, self.space))
        rotors = self.space == "distance" if self.canonical_rotors is None else self.canonical_rotors
        object.__setattr__(self, "canonical_rotors", check_canonical_rotors(rotors, self.space))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0: no averaging), got "
                             f"{self.ema_decay}")


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Holds the state of a run and calls the pure drift functions.

    Args:
        data: training conformations (the positives).
        config: a :class:`TrainConfig`.
        field: optional custom drift field ``field(x, positives) -> V``; by default the field
            named in ``config``.
        forces: optional :class:`~ase_drift.forces.ForceSource` that labels every training
            frame (energies and forces), cached in ``label_cache`` when given.
    """

    def __init__(self, data: Conformations, config: TrainConfig = TrainConfig(),
                 field: DriftField | None = None, forces=None,
                 label_cache: str | Path | None = None):
        temperature = (data.temperature_K if config.temperature_K is None
                       else config.temperature_K)
        if temperature is None:
            raise ValueError("the temperature is unknown: pass temperature_K (the data file "
                             "carries none)")
        if config.temperature_K is None:
            config = TrainConfig.from_dict(dict(config.as_dict(), temperature_K=temperature))
        if field is None:
            field = make_field(config.field, config.space, omega=config.omega, beta=config.beta,
                               bandwidths=config.bandwidths,
                               density_correction=config.density_correction,
                               standardize=config.standardize,
                               normalize_force_scale=config.normalize_force_scale)
        elif config.field != "custom":
            config = TrainConfig.from_dict(dict(config.as_dict(), field="custom"))
        if forces is not None:
            data = label(data, forces, cache=label_cache)
        # A field declares the labels it needs; a custom field without `requires` gets
        # whatever the data has.
        requires = getattr(field, "requires", None)
        if requires is None:
            requires = {k for k in (FORCES, ENERGIES) if getattr(data, k) is not None}
        data_labels = {FORCES, ENERGIES}.intersection(requires)
        have = {k for k in (FORCES, ENERGIES) if getattr(data, k) is not None}
        if not data_labels <= have:  # the hint costs a field per name: only build it to fail
            usable = [name for name in FIELDS if name != config.field
                      and {FORCES, ENERGIES}.intersection(
                          make_field(name, config.space).requires) <= have]
            data.require(*sorted(data_labels), why=f"field {config.field!r}; fields that "
                         f"train on these labels: {', '.join(usable)}")

        self.config = config
        self.data = data
        # Identify the training data in checkpoints; hashed once, not at every evaluation.
        self.data_digest = data_digest(data)
        self.positions_digest = hashlib.sha256(
            np.ascontiguousarray(data.positions).tobytes()).hexdigest()
        self.label_summary = label_summary(data)
        self.representation = make_representation(config.space, data.n_atoms,
                                                  config.pair_scale_exponent,
                                                  config.canonical_rotors)
        self.prepared = self.representation.prepare(data, temperature)
        # Feature blocks the field sees one at a time (one block but for stacked exponents).
        self.block_sizes = getattr(self.representation, "block_sizes",
                                   (self.prepared.features.shape[-1],))
        _check_prepared(self.prepared, data, config)
        self.force_scale_ratio = None  # ρ of Eq. 33 on the data, when it chose FI's ω
        if config.field in ("fi", "fi+fk") and config.omega is None:
            # the largest bandwidth has the largest ρ (∝ τ²): ω·ρ stays in range at every one
            self.force_scale_ratio = data_force_scale_ratio(
                self.prepared.features, self.prepared.scores, max(field.bandwidths))
            field = replace(field, omega=automatic_omega(self.force_scale_ratio, config.space))
        self.field = field
        self.feature_rms = float(self.prepared.features.square().mean().sqrt())
        self.log_density = (kde_log_density(self.prepared.features) if DENSITY in requires
                            else None)
        # Seeded weight initialisation (sampling uses self.rng); fork_rng restores the caller's
        # global RNG afterwards (no global state, DESIGN.md).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = MLPGenerator(GeneratorConfig(data.n_atoms, config.noise_dim,
                                                      config.hidden, config.depth,
                                                      config.affine_skip, config.residual))
        if config.initialize_from_data:
            self.model.initialize_from_data(self.prepared.aligned_coords)
        # Exponential moving average of the weights: what the sampler draws with when on.
        self.ema = (None if config.ema_decay == 0 else torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
                config.ema_decay)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate,
                                          fused=True)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, config.steps))
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self._in_step = False  # True while step() changes the state (not resumable then)
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "drift_norm": []}
        self.hooks: list[tuple[Callable[[Trainer], None], int]] = []

    # ------------------------------------------------------------------ hooks
    def attach(self, hook: Callable[[Trainer], None], interval: int = 1) -> Trainer:
        """Call ``hook(trainer)`` every ``interval`` steps (and once at the end of :meth:`run`)."""
        self.hooks.append((hook, interval))
        return self

    # ------------------------------------------------------------------ loop
    def positives(self) -> Positives:
        prepared = self.prepared
        n = len(prepared.features)
        index = torch.randperm(n, generator=self.rng)[: self.config.n_positives]
        pick = (lambda t: None if t is None else t[index])
        return Positives(prepared.features[index], pick(prepared.scores),
                         pick(prepared.reduced_energies), pick(self.log_density))

    def step(self) -> tuple[float, float]:
        """One optimisation step; returns (loss, mean ‖V‖)."""
        self._in_step = True
        self.model.train()
        noise = self.model.noise(self.config.batch_size, self.rng)
        x = self.representation.features(self.model(noise))  # [B, D]
        positives = self.positives()
        with torch.no_grad():
            drift = blockwise_drift(self.field, x.detach(), positives,
                                    self.block_sizes)  # [B, D]
        loss = (x - (x.detach() + drift)).square().sum(-1).mean()
        x_rms = x.detach().square().mean().sqrt().item()
        if not math.isfinite(loss.item()):
            self._diverged(f"the loss is {loss.item()}")
        if not x_rms <= DIVERGENCE_FACTOR * self.feature_rms:
            self._diverged(f"generated features have RMS {x_rms:.3g}, "
                           f"{x_rms / self.feature_rms:.3g} times the data's")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not torch.nn.utils.get_total_norm(grads).isfinite():
            self._diverged("the gradient is not finite (e.g. two generated atoms coincide)")
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step_count += 1
        drift_norm = drift.norm(dim=-1).mean().item()
        if self.step_count % self.config.log_every == 0:
            self.history["step"].append(self.step_count)
            self.history["loss"].append(loss.item())
            self.history["drift_norm"].append(drift_norm)
        self._in_step = False
        return loss.item(), drift_norm

    @property
    def resumable(self) -> bool:
        """Whether the state is that of a completed step (False when a step was cut off)."""
        return not self._in_step

    def _diverged(self, what: str, applied: bool = False) -> None:
        """Raise :class:`TrainingDiverged`: ``what`` went wrong in the step being taken (not
        applied), or with ``applied`` in the state after the last step."""
        step = self.step_count if applied else self.step_count + 1
        rate = self.config.learning_rate
        where = (f"after step {step}: {what}; not saving this state" if applied else
                 f"at step {step}: {what}. The step was not applied and nothing was saved "
                 f"from it")
        raise TrainingDiverged(
            f"training diverged {where}. Try a lower learning rate (now {rate:g}, e.g. "
            f"learning_rate={rate / 10:g}) or a longer warm-up (warmup_steps="
            f"{self.config.warmup_steps})", step)

    def check_health(self) -> None:
        """Raise :class:`TrainingDiverged` unless the weights are finite and a fixed-noise batch
        (its own generator: the training RNG is untouched) has finite features within
        :data:`DIVERGENCE_FACTOR` times the data's RMS. Run before any checkpoint is written."""
        model = self.sampling_model
        if not all(bool(p.isfinite().all()) for p in model.parameters()):
            self._diverged("the weights are not finite", applied=True)
        with torch.no_grad():
            probe = model.noise(HEALTH_PROBE_SAMPLES, torch.Generator().manual_seed(0))
            rms = self.representation.features(model(probe)).square().mean().sqrt().item()
        if not rms <= DIVERGENCE_FACTOR * self.feature_rms:
            self._diverged(f"generated features have RMS {rms:.3g}, "
                           f"{rms / self.feature_rms:.3g} times the data's", applied=True)

    def run(self, steps: int | None = None) -> DriftSampler:
        """Train until ``config.steps`` (or ``steps`` more); returns the sampler."""
        target = self.config.steps if steps is None else self.step_count + steps
        target = min(target, self.config.steps)
        received: list[int] = []
        try:
            with _signals_between_steps(received):
                while self.step_count < target:
                    self.step()
                    for hook, interval in self.hooks:
                        if self.step_count % interval == 0:
                            hook(self)
                    if received:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._interrupted(target, received[0] if received else signal.SIGINT)
        except BaseException:
            self._close_hooks()
            raise
        for hook, interval in self.hooks:
            if self.step_count % interval:  # every hook sees the final state once
                hook(self)
            if hasattr(hook, "close"):
                hook.close()
        return self.sampler()

    def _close_hooks(self) -> None:
        for hook, _ in self.hooks:
            if hasattr(hook, "close"):
                hook.close()

    def _interrupted(self, target: int, signum: int) -> None:
        """Let hooks save the state (``hook.interrupted(trainer)`` returns where), then raise
        :class:`TrainingInterrupted`."""
        self._close_hooks()
        saved = []
        for hook, _ in self.hooks:
            if hasattr(hook, "interrupted"):
                where = hook.interrupted(self)
                if where is not None:
                    saved.append(where)
        by = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        if not self.resumable:
            state = "; it was cut off inside a step, so no state was saved"
        elif saved:
            state = (f"; its state is saved in {', '.join(map(str, saved))}: resume with "
                     f"resume=True (command line: --resume)")
        else:
            state = "; nothing was saved (no checkpoint was asked for)"
        raise TrainingInterrupted(f"training interrupted by {by} after step {self.step_count} "
                                  f"of {target}{state}", self.step_count, saved, signum)

    # ------------------------------------------------------------------ outputs
    def metadata(self) -> dict:
        from . import __version__

        data = self.data
        return {
            "numbers": data.numbers.tolist(),
            "symbols": "".join(data.symbols),
            "temperature_K": float(self.config.temperature_K),
            "units": {"positions": "Å", "energies": "eV", "forces": "eV/Å", "temperature": "K"},
            "scale_angstrom": self.prepared.scale,
            "normalization": self.representation.normalization,
            "space": self.config.space,
            "field": self.config.field,
            "field_repr": repr(self.field),
            "field_spec": self.field_spec(),
            "force_scale_ratio": self.force_scale_ratio,
            "step": self.step_count,
            "training_data": {
                "formula": data.formula,
                "n_frames": len(data),
                "labels": [k for k in ("forces", "energies") if getattr(data, k) is not None],
                "positions_sha256": self.positions_digest,
                "data_sha256": self.data_digest,
                "label_summary": self.label_summary,
            },
            "ase_drift_version": __version__,
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def field_spec(self) -> dict | None:
        """The field's JSON spec, or None for a custom field built elsewhere."""
        try:
            return field_spec(self.field)
        except TypeError:
            return None

    def stored_config(self) -> dict:
        return {"generator": self.model.config.as_dict(), "train": self.config.as_dict(),
                "field": self.field_spec()}

    @property
    def sampling_model(self) -> MLPGenerator:
        """The generator samples are drawn with: the weights' moving average when
        ``config.ema_decay`` is set, else the trained weights."""
        return self.model if self.ema is None else self.ema.module

    def sampler(self) -> DriftSampler:
        """The trained sampler; a diverged state raises :class:`TrainingDiverged`."""
        import copy

        self.check_health()
        return DriftSampler(copy.deepcopy(self.sampling_model), self.data.numbers,
                            self.prepared.scale, self.stored_config(), self.metadata())

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": self.rng.get_state(),
            "step": self.step_count,
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a resumable checkpoint; a diverged state raises :class:`TrainingDiverged` and
        leaves the file at ``path`` as it was."""
        self.check_health()
        metadata = dict(self.metadata(), kind="drift-trainer")
        return save_checkpoint(path, self.stored_config(), self.state_dict(), metadata)

    def load_checkpoint(self, path: str | Path) -> Trainer:
        """Restore a checkpoint written by :meth:`save_checkpoint` for the same data and config."""
        payload = load_checkpoint(path, kind="drift-trainer")
        stored = TrainConfig.from_dict(payload["config"]["train"])
        stored_steps = stored.steps
        # A larger ``steps`` extends the run (the cosine schedule is re-planned over the new
        # total); everything else must match.
        if replace(stored, steps=self.config.steps) != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in stored.as_dict().items()
                    if getattr(self.config, k) != v and k != "steps"}
            raise CheckpointError(f"{path} was written with another configuration "
                                  f"(checkpoint vs now: {diff})")
        step = int(payload["state_dict"]["step"])
        if self.config.steps < step:
            raise CheckpointError(f"{path} is at step {step}, beyond the {self.config.steps} "
                                  f"steps asked for now: ask for at least {step} steps")
        meta = payload["metadata"]
        stored = meta["training_data"]
        if (stored["positions_sha256"] != self.positions_digest
                or list(meta["numbers"]) != self.data.numbers.tolist()):
            raise CheckpointError(f"{path} was trained on other data than given now (other "
                                  f"atoms or positions)")
        # Checkpoints written before labels were recorded carry positions only.
        if "data_sha256" in stored and stored["data_sha256"] != self.data_digest:
            difference = label_difference(stored.get("label_summary", {}), self.label_summary)
            if difference:
                raise CheckpointError(
                    f"{path} was trained on other labels than given now ({difference}): "
                    f"resuming would mix two training sets. Pass the original labels, or start "
                    f"a new run with another checkpoint file")
        stored_field = payload["config"].get("field")
        if not _same_spec(stored_field, self.field_spec()):
            raise CheckpointError(f"{path} was written with another drift field "
                                  f"(checkpoint {stored_field}, now {self.field_spec()})")
        if stored_field is not None:  # the run's own field (an ω chosen from labels that may
            self.field = field_from_spec(stored_field)  # differ by round-off, see above)
        state = payload["state_dict"]
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.set_state(state["rng"])
        self.step_count = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        if stored_steps != self.config.steps:  # extended: the learning rate of the new plan
            factor = warmup_cosine(self.config.warmup_steps, self.config.steps)(self.step_count)
            for group, base in zip(self.optimizer.param_groups, self.schedule.base_lrs,
                                   strict=True):
                group["lr"] = base * factor
        return self


def _same_spec(a, b, rel_tol: float = 1e-5) -> bool:
    """Field specs equal, numbers to ``rel_tol``: an ω chosen from labels recomputed with
    round-off (within :data:`LABEL_RTOL`) differs after float32 rounding of the scores."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_spec(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_spec(x, y, rel_tol) for x, y in zip(a, b))
    if (isinstance(a, float) or isinstance(b, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool) and isinstance(a, (int, float)) \
            and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return a == b


def data_digest(data: Conformations) -> str:
    """SHA-256 of the atomic numbers, positions and labels (forces, energies) of ``data``."""
    digest = hashlib.sha256()
    for name, values in (("numbers", data.numbers), ("positions", data.positions),
                         (FORCES, data.forces), (ENERGIES, data.energies)):
        digest.update(name.encode())
        digest.update(b"none" if values is None else np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


#: Fixed random projections per label in :func:`label_summary`.
LABEL_PROJECTIONS = 3
#: Relative tolerance (of the label's RMS) within which :func:`label_difference` takes two label
#: summaries as equal: recomputed labels differ by round-off (e.g. multithreaded tblite).
LABEL_RTOL = 1e-6


def label_summary(data: Conformations) -> dict[str, list[float]]:
    """Per label of ``data``: [std, mean, p_1 … p_k], the p being projections of the centred
    values on :data:`LABEL_PROJECTIONS` fixed random unit-variance weights (divided by √size).
    Labels recomputed with round-off compare equal within :data:`LABEL_RTOL` of the std, while
    scaled or reordered labels do not (:func:`label_difference`)."""
    summary = {}
    for name in (FORCES, ENERGIES):
        values = getattr(data, name)
        if values is None:
            continue
        flat = values.reshape(-1)
        mean = float(flat.mean())
        centred = flat - mean
        numbers = [float(centred.std()), mean]
        for k in range(LABEL_PROJECTIONS):
            weights = np.random.default_rng(k).standard_normal(flat.size)
            numbers.append(float(centred @ weights / np.sqrt(flat.size)))
        summary[name] = numbers
    return summary


def label_difference(stored: dict, now: dict) -> str:
    """How two :func:`label_summary` results differ ('' when equal within :data:`LABEL_RTOL`
    of the spread; the mean within that of its own size, as absolute energies are large)."""
    problems = []
    for name in sorted(set(stored) | set(now)):
        if name not in now or name not in stored:
            where = "the checkpoint" if name in stored else "the data given now"
            problems.append(f"only {where} has {name}")
            continue
        old, new = np.asarray(stored[name]), np.asarray(now[name])
        if old.shape != new.shape:
            problems.append(f"{name}: summaries of another format")
            continue
        spread = max(old[0], new[0])
        tolerance = LABEL_RTOL * spread + 1e-300
        mean_tolerance = LABEL_RTOL * (spread + max(abs(old[1]), abs(new[1])))
        if abs(old[0] - new[0]) > tolerance:
            problems.append(f"{name}: spread (std) {old[0]:.6g} in the checkpoint, "
                            f"{new[0]:.6g} now")
        elif abs(old[1] - new[1]) > mean_tolerance:
            problems.append(f"{name}: mean {old[1]:.6g} in the checkpoint, {new[1]:.6g} now")
        elif np.any(np.abs(old[2:] - new[2:]) > tolerance):
            problems.append(f"{name}: same spread and mean but other values (changed or "
                            f"reordered frames)")
    return "; ".join(problems)


@contextmanager
def _signals_between_steps(received: list[int]) -> Iterator[None]:
    """Append SIGINT and SIGTERM to ``received`` instead of letting them stop a step midway;
    a second signal raises KeyboardInterrupt at once. Only in the main thread (elsewhere
    Python delivers no signals); a signal the process ignores (e.g. SIGINT of a background
    job started by a script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def record(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {signum: signal.signal(signum, record)
                for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_prepared(prepared, data: Conformations, config: TrainConfig) -> None:
    """Raise ValueError naming the frames whose features or scores are not finite (two atoms at
    one place give infinite distance-space scores)."""
    bad = torch.zeros(len(data), dtype=torch.bool)
    for values in (prepared.features, prepared.scores, prepared.reduced_energies):
        if values is not None:
            bad |= ~values.reshape(len(data), -1).isfinite().all(-1)
    if not bad.any():
        return
    frames = torch.nonzero(bad).flatten().tolist()
    frame = data.positions[frames[0]]
    distances = np.linalg.norm(frame[:, None] - frame[None], axis=-1) + np.diag(
        np.full(len(frame), np.inf))
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    raise ValueError(f"frame(s) {frames[:10]} give non-finite features or scores in "
                     f"{config.space!r} space (frame {frames[0]}: atoms {i} and {j} are "
                     f"{distances[i, j]:.3g} Å apart, the closest pair): remove those frames")


# ----------------------------------------------------------------------------- hooks
@dataclass
class ProgressBar:
    """tqdm progress with the running loss."""

    total: int
    desc: str = "training"
    _bar: object = field(default=None, repr=False)

    def __call__(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=trainer.step_count, desc=self.desc,
                             unit="step", mininterval=0.5)
        self._bar.update(trainer.step_count - self._bar.n)
        if trainer.history["loss"] and trainer.step_count % 50 == 0:
            self._bar.set_postfix(loss=f"{trainer.history['loss'][-1]:.3g}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class ProgressLog:
    """One line per ``every`` steps on ``stream`` (stderr by default): step, percentage, running
    loss, speed and time left. For logs and batch jobs, where a progress bar is noise."""

    total: int
    every: int
    desc: str = "training"
    stream: object = None
    _start: tuple[float, int] | None = field(default=None, repr=False)

    def __call__(self, trainer: Trainer) -> None:
        now, step = time.perf_counter(), trainer.step_count
        if self._start is None:
            self._start = (now, step)
        if step % self.every and step != self.total:
            return
        elapsed, done = now - self._start[0], step - self._start[1]
        rate = done / elapsed if elapsed > 0 and done > 0 else math.nan  # steps/s
        left = (self.total - step) / rate if rate > 0 else math.nan  # s (nan > 0 is False)
        loss = trainer.history["loss"][-1] if trainer.history["loss"] else float("nan")
        print(f"{self.desc}: step {step}/{self.total} ({100 * step / self.total:.0f} %), "
              f"loss {loss:.4g}, {rate:.1f} steps/s, {left / 60:.1f} min left",
              file=self.stream or sys.stderr, flush=True)


def progress_hook(total: int, desc: str = "training", every: int | None = None,
                  stream=None) -> ProgressBar | ProgressLog:
    """A progress bar on a terminal; elsewhere (logs, batch jobs), or when ``every`` is given, a
    :class:`ProgressLog` line every ``every`` steps (default: every 10 % of ``total``)."""
    stream = stream or sys.stderr
    if every is None and stream.isatty():
        return ProgressBar(total, desc)
    return ProgressLog(total, every or max(1, math.ceil(total / 10)), desc, stream)


@dataclass
class Checkpointer:
    """Write a resumable checkpoint (atomically) to ``path``, also when the run is interrupted
    (Ctrl-C, SIGTERM) between two steps. A diverged state is never written
    (:meth:`Trainer.save_checkpoint`), so ``path`` keeps the last good one."""

    path: str | Path

    def __call__(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path)

    def interrupted(self, trainer: Trainer) -> Path | None:
        """Save the state of the last completed step; None when a step was cut off."""
        if not trainer.resumable:
            return None
        return trainer.save_checkpoint(self.path)


@dataclass
class Evaluator:
    """Sample ``n_samples`` conformations with a fixed seed and record distance-histogram TVD and
    bond stability against ``reference`` positions ``[N, A, 3]`` in the trainer's history."""

    reference: np.ndarray
    n_samples: int = 2000
    seed: int = 12345

    def __call__(self, trainer: Trainer) -> None:
        from .metrics import evaluate

        positions = trainer.sampler().sample_positions(self.n_samples, seed=self.seed)
        report = evaluate(positions, self.reference, trainer.data.numbers)
        history = trainer.history
        for key, value in (("eval_step", trainer.step_count), ("tvd", report.tvd),
                           ("bond_stability", report.bond_stability)):
            history.setdefault(key, []).append(float(value))


# ----------------------------------------------------------------------------- entry point
def train(data: Conformations, temperature_K: float | None = None,
          field: str | DriftField = DEFAULT_FIELD, space: str = "distance", steps: int = 20000, seed: int = 0, *, forces=None,
          label_cache: str | Path | None = None, checkpoint: str | Path | None = None,
          checkpoint_every: int = 1000, resume: bool = False, reference: np.ndarray | None = None,
          eval_every: int = 1000, progress: bool = True, progress_every: int | None = None,
          **options) -> DriftSampler:
    """Train a one-step drift sampler on ``data``; returns a :class:`DriftSampler`.

    Args:
        data: training conformations (positions; forces/energies as the field needs).
        temperature_K: target temperature (default: the data's).
        field: a name of :data:`ase_drift.drift.FIELDS` or a custom field callable.
        space: 'cartesian' or 'distance'.
        forces: a ForceSource labelling the training frames (cached in ``label_cache``).
        checkpoint: path of a resumable training checkpoint, written every
            ``checkpoint_every`` steps and when Ctrl-C or SIGTERM stops the run; with
            ``resume=True`` training continues from it (a missing file raises).
        reference: positions ``[N, A, 3]`` to evaluate TVD against every ``eval_every`` steps.
        progress: show progress on stderr: a bar on a terminal, else a line every 10 % (or
            every ``progress_every`` steps, also on a terminal); see :func:`progress_hook`.
        options: further :class:`TrainConfig` fields (omega, beta, bandwidths, batch_size, ...).
    """
    from .io import check_writable

    custom = not isinstance(field, str)
    config = TrainConfig(field="custom" if custom else field, space=space, steps=steps, seed=seed,
                         temperature_K=temperature_K, **options)
    # Every input and output is checked before the (possibly long) labelling and training.
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint= to resume from")
    if resume and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"resume=True, but there is no checkpoint at {checkpoint} (start "
                                f"a new run without resume)")
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 3 or reference.shape[1:] != (data.n_atoms, 3):
            raise ValueError(f"reference positions must have shape [n, {data.n_atoms}, 3] for "
                             f"the {data.n_atoms} atoms of the data, got {reference.shape}")
    trainer = Trainer(data, config, field=field if custom else None, forces=forces,
                      label_cache=label_cache)
    if resume:
        trainer.load_checkpoint(checkpoint)
    if progress:
        trainer.attach(progress_hook(config.steps, every=progress_every), 1)
    if reference is not None:
        trainer.attach(Evaluator(reference), eval_every)
    if checkpoint is not None:
        trainer.attach(Checkpointer(checkpoint), checkpoint_every)
    return trainer.run()
