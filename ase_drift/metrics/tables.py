"""The one markdown table renderer of ase_drift: the CLI, the demo and every benchmark print
their tables with :func:`render_table` (any columns) or :func:`markdown_table` (distance
reports).

A cell is formatted by :func:`format_cell`: text verbatim, a number to fixed decimals, an
:class:`Estimate` as "value ± error", and a list of numbers (seeds, noise-floor subsets) as
"mean ± std" over its entries (missing entries left out); None, NaN and ±inf print as "—".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .distances import BOND_SCALE, BOND_TOLERANCE, STABILITY_SIGMAS, DistanceReport, NoiseFloor

MISSING = "—"


class Estimate(NamedTuple):
    """A value with its error bar (e.g. a block-bootstrap standard deviation)."""

    value: float
    error: float


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def format_cell(value, digits: int = 3) -> str:
    """One table cell (see the module docstring); ``digits`` decimals."""
    if isinstance(value, str):
        return value
    if isinstance(value, Estimate):
        if _number(value.value) is None:
            return MISSING
        if _number(value.error) is None:
            return f"{value.value:.{digits}f}"
        return f"{value.value:.{digits}f} ± {value.error:.{digits}f}"
    if isinstance(value, (list, tuple, np.ndarray)):
        values = [v for v in map(_number, np.ravel(np.asarray(value, dtype=object))) if v is not None]
        if not values:
            return MISSING
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"
    number = _number(value)
    return MISSING if number is None else f"{number:.{digits}f}"


def render_table(header: Sequence[str], rows: Iterable[Sequence],
                 digits: int | Sequence[int] = 3) -> str:
    """A markdown table: ``header`` and one list of cells per row, each cell formatted by
    :func:`format_cell` with ``digits`` decimals (one number for every column, or one per
    column)."""
    widths = [digits] * len(header) if isinstance(digits, int) else list(digits)
    if len(widths) != len(header):
        raise ValueError(f"{len(widths)} digit counts for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns")
        lines.append("| " + " | ".join(format_cell(v, d) for v, d in zip(row, widths)) + " |")
    return "\n".join(lines)


#: Columns of :func:`markdown_table` before the per-type TVDs: (header, :class:`DistanceReport`
#: field).
DISTANCE_COLUMNS = (
    ("Pair MAE (Å)", "pair_mae"),
    ("TVD", "tvd"),
    ("W1 (Å)", "w1"),
    ("W2 (Å)", "w2"),
    ("Pair Stab", "pair_stability"),
    ("Bond MAE (Å)", "bond_mae"),
    ("Bond Stab", "bond_stability"),
)


#: (column, what it measures) of :func:`markdown_table`; ↓ lower / ↑ higher is better.
DISTANCE_LEGEND = (
    ("Pair MAE (Å) ↓", ("mean over atom pairs of |mean distance − reference mean| (distances "
                       "sorted within each pair type)")),
    ("TVD ↓", "total variation distance of the pooled pair-distance histograms, 0–1"),
    ("W1, W2 (Å) ↓", "Wasserstein distances of the pooled pair distances"),
    ("Pair Stab ↑", (f"fraction of frames with every pair within {STABILITY_SIGMAS:g} reference "
                    f"standard deviations of its reference mean")),
    ("Bond MAE (Å) ↓", (f"Pair MAE over covalent bonds (reference mean distance < "
                       f"{BOND_SCALE:g} × the sum of the covalent radii)")),
    ("Bond Stab ↑", (f"fraction of frames with every bond within {BOND_TOLERANCE:g} Å of its "
                    f"reference mean")),
    ("TVD X-Y ↓", "TVD of the pairs of one type"),
    ("E W1 (kT) ↓", "Wasserstein distance of the energies, in units of kT"),
    ("noise floor", ("the reference against itself at the same sample size: what sampling "
                    "noise alone scores")),
)


def distance_legend() -> str:
    """:data:`DISTANCE_LEGEND` as text (printed under the table by ``ase-drift evaluate``)."""
    width = max(len(column) for column, _ in DISTANCE_LEGEND)
    lines = [("Columns: samples' pair distances against the reference's (↓ lower, ↑ higher is "
             "better)")]
    return "\n".join(lines + [f"  {column:<{width}}  {text}" for column, text in DISTANCE_LEGEND])


def _as_runs(value) -> list[dict]:
    """A row's value as a list of report dicts (one per seed / subset)."""
    if isinstance(value, NoiseFloor):
        return [r.as_dict() for r in value.reports]
    if isinstance(value, (DistanceReport, Mapping)):
        value = [value]
    return [r.as_dict() if isinstance(r, DistanceReport) else dict(r) for r in value]


def markdown_table(
    rows: Mapping[str, DistanceReport | NoiseFloor | Mapping | Sequence],
    *,
    first: str = "",
    count: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    digits: int = 3,
) -> str:
    """Distance reports as a markdown table, one row per name.

    A row's value is a :class:`DistanceReport`, a :class:`NoiseFloor` (its subsets), a dict as
    :meth:`DistanceReport.as_dict` gives, or a list of those (seeds): lists print as
    "mean ± std" (ddof 1). Columns: ``first`` over the names; ``count`` (e.g. "seeds"), if
    given, the number of reports in the row; :data:`DISTANCE_COLUMNS`; one "TVD <type>" column
    per pair type found in any row; "E W1 (kT)" when any row has energies; then ``extra``
    (header, dict key) columns such as timings. "—" marks a missing value.
    """
    runs = {name: _as_runs(value) for name, value in rows.items()}
    all_runs = [r for rs in runs.values() for r in rs]
    types = sorted(set().union(*(r.get("per_type_tvd") or {} for r in all_runs)))
    columns = [(head, lambda r, k=key: r.get(k)) for head, key in DISTANCE_COLUMNS]
    columns += [(f"TVD {t}", lambda r, t=t: (r.get("per_type_tvd") or {}).get(t)) for t in types]
    if any(r.get("energy_w1") is not None for r in all_runs):
        columns.append(("E W1 (kT)", lambda r: r.get("energy_w1")))
    columns += [(head, lambda r, k=key: r.get(k)) for head, key in extra]
    header = [first] + ([count] if count else []) + [head for head, _ in columns]
    body = []
    for name, rs in runs.items():
        cells = [name] + ([str(len(rs))] if count else [])
        body.append(cells + [[get(r) for r in rs] for _, get in columns])
    return render_table(header, body, digits)
