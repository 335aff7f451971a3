"""Batched Langevin dynamics in torch: the BAOAB splitting (Leimkuhler & Matthews 2013) for many
replicas at once, driven by any force function — a learned potential
(:class:`~ase_drift.diffusion.energy.EnergyDiffusion`) or any
:class:`~ase_drift.forces.ForceSource`.

:func:`baoab` is the pure integrator in any consistent units (force / mass × time² = length;
kT in the force's energy unit): for the 2-D toys dimensionless, for molecules ASE's. One step
of length h, friction γ:

    B: v ← v + ½h F(x)/m      A: x ← x + ½h v
    O: v ← e^(−γh) v + √((1 − e^(−2γh)) kT/m) ξ
    A: x ← x + ½h v           B: v ← v + ½h F(x)/m

one force evaluation per step (the last B's force is the next step's first). For a harmonic
potential BAOAB samples the configurational Boltzmann distribution exactly at any stable step
(ωh < 2); velocities carry an O(h²) error.

:func:`simulate` is the ASE-units boundary: positions Å, masses amu (ASE's), temperature K,
time step fs, friction 1/fs, forces eV/Å.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import units
from .sampler import torch_generator

ForceFn = Callable[[Tensor], Tensor]
"""``force_fn(x [B, ...]) -> F [B, ...]``."""


class LangevinRun(NamedTuple):
    """Frames recorded every ``record_every`` steps and the final state."""

    frames: Tensor  # [steps // record_every, B, ...]
    x: Tensor  # [B, ...] final positions
    v: Tensor  # [B, ...] final velocities


def baoab(force_fn: ForceFn, x0: Tensor, masses: Tensor | float, kT: float, timestep: float,
          friction: float, steps: int, rng: torch.Generator, v0: Tensor | None = None,
          record_every: int = 1, callback: Callable[[int, Tensor, Tensor], None] | None = None,
          progress: bool = False) -> LangevinRun:
    """``steps`` BAOAB steps from ``x0`` ``[B, ...]`` (module docstring).

    Args:
        force_fn: forces for a batch of positions, shaped like ``x0``.
        x0: start positions ``[B, ...]``; not modified.
        masses: a scalar or a tensor broadcasting against ``x0`` (e.g. ``[A, 1]`` for
            ``[B, A, 3]``).
        kT: thermal energy, in the force's energy unit.
        timestep: h > 0.
        friction: γ ≥ 0 (0: velocity Verlet, energy-conserving).
        steps: number of steps (≥ 0).
        rng: generator of the initial velocities (if ``v0`` is None: Maxwell–Boltzmann) and of
            the O-step noise.
        v0: start velocities, shaped like ``x0``.
        record_every: keep the positions after every ``record_every``-th step.
        callback: ``callback(step, x, v)`` after every step (step counts from 1).
        progress: show a tqdm bar.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)) \
            or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    if not timestep > 0:
        raise ValueError(f"timestep must be positive, got {timestep}")
    if not friction >= 0:
        raise ValueError(f"friction must be non-negative, got {friction}")
    if not kT > 0:
        raise ValueError(f"kT must be positive, got {kT}")
    masses = torch.as_tensor(masses, dtype=x0.dtype, device=x0.device)
    if not bool((masses > 0).all()):
        raise ValueError("masses must be positive")
    try:
        torch.broadcast_shapes(masses.shape, x0.shape)
    except RuntimeError:
        raise ValueError(f"masses of shape {tuple(masses.shape)} do not broadcast against "
                         f"positions {tuple(x0.shape)}") from None
    from tqdm.auto import trange

    thermal = (kT / masses).sqrt()  # velocity standard deviation
    x = x0.clone()
    v = thermal * torch.randn(x.shape, generator=rng, dtype=x.dtype) if v0 is None else v0.clone()
    decay = float(np.exp(-friction * timestep))
    kick = float(np.sqrt(1 - decay**2))
    half = 0.5 * timestep
    force = force_fn(x)
    frames = []
    for step in trange(1, steps + 1, desc="Langevin (BAOAB)", disable=not progress,
                       mininterval=0.5):
        v = v + half * force / masses  # B
        x = x + half * v  # A
        v = decay * v + kick * thermal * torch.randn(x.shape, generator=rng, dtype=x.dtype)  # O
        x = x + half * v  # A
        force = force_fn(x)
        v = v + half * force / masses  # B
        if step % record_every == 0:
            frames.append(x)
        if callback is not None:
            callback(step, x, v)
    stacked = torch.stack(frames) if frames else x.new_empty((0, *x.shape))
    return LangevinRun(stacked, x, v)


def source_force_fn(source, numbers) -> ForceFn:
    """A torch force function ``[B, A, 3]`` Å → eV/Å around a
    :class:`~ase_drift.forces.ForceSource` (or any object with ``force_field`` on normalised
    coordinates, used directly without a NumPy round trip)."""

    def force(x: Tensor) -> Tensor:
        result = source.compute(numbers, x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(result.forces), dtype=x.dtype)

    return force


def simulate(source, numbers, positions, temperature_K: float, steps: int,
             timestep_fs: float = 1.0, friction_per_fs: float = 0.01, record_every: int = 1,
             seed: int | None = None, progress: bool = False) -> np.ndarray:
    """Langevin dynamics of replicas ``positions`` ``[R, A, 3]`` (Å) of atoms ``numbers`` on a
    force source (eV/Å) at ``temperature_K``; masses are ASE's atomic masses.

    A model with a ``force_field(x)`` method on normalised flattened coordinates (a learned
    potential) is integrated in its own normalised coordinates without leaving torch; any
    other :class:`~ase_drift.forces.ForceSource` is called through NumPy.

    Returns the frames ``[steps // record_every, R, A, 3]`` in Å.
    """
    from ase.data import atomic_masses

    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
        raise ValueError(f"positions must be [n_replicas, {len(numbers)}, 3] (Å), got "
                         f"{positions.shape}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    kt = units.kT(temperature_K)
    masses = torch.as_tensor(atomic_masses[numbers], dtype=torch.float64)[:, None]  # [A, 1]
    dt = float(units.fs_to_ase_time(timestep_fs))
    friction = friction_per_fs / float(units.fs_to_ase_time(1.0))
    rng = torch_generator(seed)
    if hasattr(source, "force_field"):  # learned potential: stay in torch, normalised coords
        scale = source.scale
        x0 = torch.as_tensor(positions / scale, dtype=torch.float32)  # [R, A, 3]

        def force(x: Tensor) -> Tensor:  # eV/Å -> eV per normalised unit
            return source.force_field(x.flatten(1))[1].view_as(x) * scale

        run = baoab(force, x0, (masses * scale**2).float(), kt, dt, friction, steps, rng,
                    record_every=record_every, progress=progress)
        return run.frames.double().numpy() * scale
    run = baoab(source_force_fn(source, numbers), torch.as_tensor(positions), masses, kt, dt,
                friction, steps, rng, record_every=record_every, progress=progress)
    return run.frames.numpy()
