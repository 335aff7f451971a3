"""Figures of the metrics (matplotlib, imported on first use): each ``plot_*`` writes one PNG and
returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .distances import _checked_positions, normalised_histogram, pair_distances, pair_types
from .peptides import ramachandran_histogram


def plot_distance_histograms(path, numbers, reference_positions, samples: dict, bins: int = 100):
    """Distance distributions: the pooled pairs, then one panel per pair type.

    The reference is a filled step, each named sample set ``[N, A, 3]`` a line; densities in
    Å⁻¹ on the bins of :func:`evaluate` (``bins`` on [0, 1.2 × max reference distance]).
    Writes a PNG and returns its path.
    """
    from matplotlib.figure import Figure

    numbers = np.asarray(numbers)
    reference = pair_distances(_checked_positions(reference_positions, len(numbers), "reference"))
    generated = {
        name: pair_distances(_checked_positions(pos, len(numbers), name))
        for name, pos in samples.items()
    }
    hist_range = (0.0, 1.2 * float(reference.max()))
    edges = np.linspace(*hist_range, bins + 1)
    types = pair_types(numbers)
    panels = [("all pairs", np.ones_like(types, dtype=bool))]
    panels += [(t, types == t) for t in sorted(set(types))]

    def density(distances):
        return normalised_histogram(distances, bins, hist_range) / np.diff(edges)

    n_cols = min(3, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig = Figure(figsize=(4 * n_cols, 3 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (title, columns) in zip(axes, panels):
        ax.stairs(density(reference[:, columns]), edges, fill=True, color="0.8", label="reference")
        for name, distances in generated.items():
            ax.stairs(density(distances[:, columns]), edges, label=name)
        ax.set(title=title, xlabel="distance (Å)", ylabel="density (Å⁻¹)")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_training_curve(path, history: dict[str, list[float]]):
    """One panel per logged quantity of a training history (as :class:`~ase_drift.Trainer`
    records it): quantities as long as ``history["step"]`` are drawn against it, those as long as
    ``history["eval_step"]`` (periodic evaluations) against that. NaN entries are skipped;
    quantities whose name contains "loss" get a log-scale y axis. Writes a PNG, returns its path.
    """
    from matplotlib.figure import Figure

    axes_keys = [key for key in ("step", "eval_step") if key in history]
    if not axes_keys:
        raise ValueError("history needs a 'step' (or 'eval_step') list")
    xs = {key: np.asarray(history[key], dtype=float) for key in axes_keys}
    series = {}
    for key, values in history.items():
        if key in xs:
            continue
        values = np.asarray(values, dtype=float)
        x_key = next((k for k in axes_keys if len(xs[k]) == len(values)), None)
        if x_key is None:
            raise ValueError(f"history[{key!r}] has {len(values)} entries, matching no step list")
        series[key] = (xs[x_key], values)
    fig = Figure(figsize=(6, 2.2 * len(series)), layout="constrained")
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, (steps, values)) in zip(axes, series.items()):
        logged = np.isfinite(values)
        ax.plot(steps[logged], values[logged], marker="." if logged.sum() < 50 else None)
        ax.set_ylabel(key)
        if "loss" in key:
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_ramachandran(path, panels: dict[str, tuple], bins: int = 64, columns: int = 4):
    """Free energy −log p(φ, ψ) (kT, minimum shifted to 0) per named (φ, ψ) set in radians.

    All panels share one colour scale, ``columns`` to a row; empty bins are blank. Writes a PNG
    and returns its path.
    """
    from matplotlib.figure import Figure

    free_energies = {}
    for name, (phi, psi) in panels.items():
        with np.errstate(divide="ignore"):
            f = -np.log(ramachandran_histogram(phi, psi, bins))  # [bins, bins]
        free_energies[name] = np.where(np.isfinite(f), f - f.min(), np.nan)
    vmax = max(np.nanmax(f) for f in free_energies.values())
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.6 * columns + 1, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    ticks = [-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi]
    labels = ["−π", "−π/2", "0", "π/2", "π"]
    for ax, (name, f) in zip(axes, free_energies.items()):
        image = ax.imshow(
            f.T, origin="lower", extent=(-np.pi, np.pi, -np.pi, np.pi), vmin=0, vmax=vmax
        )
        ax.set(title=name, xlabel="φ", ylabel="ψ", xticks=ticks, yticks=ticks)
        ax.set_xticklabels(labels)
        ax.set_yticklabels(labels)
    fig.colorbar(image, ax=list(axes[:len(panels)]), label="free energy (kT)")
    fig.savefig(path, dpi=110)
    return Path(path)
