"""Helpers of the benchmark scripts whose figures the docs quote."""

from __future__ import annotations

import pytest


def test_adaptive_points_are_compared_with_the_fixed_sampler_at_the_nfe_they_spent():
    from benchmarks.gpff_qm9 import fixed_validity_at, matched_nfe_lines

    def point(label, budget, spent, valid):
        return {f"{label} @ {budget}": {"label": label, "nfe_budget": budget, "nfe_mean": spent,
                                        "validity": valid}}

    points = {**point("GPFF ancestral", 8, 8.0, 0.10), **point("GPFF ancestral", 16, 16.0, 0.30),
              **point("GPFF ancestral AS", 16, 10.0, 0.2), **point("GPFF ancestral AS", 6, 2.0, 0.0)}
    assert fixed_validity_at(points, "GPFF ancestral", 10.0) == pytest.approx(0.15)
    assert fixed_validity_at(points, "GPFF ancestral", 2.0) is None  # below the fixed curve
    rows = [line for line in matched_nfe_lines(points) if line.startswith("| GPFF")]
    assert rows == ["| GPFF ancestral AS | 16 | 10.0 | 0.20 | 0.15 |"]
    assert matched_nfe_lines(point("GPFF DD", 6, 6.0, 0.1)) == []
