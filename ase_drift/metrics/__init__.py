"""Sample-quality metrics: pure numpy functions of positions, energies and torsion angles.

Submodules:

* :mod:`~ase_drift.metrics.distances`: pair distances, histograms, TVD, W1/W2, pair and bond
  MAE and stability, :func:`evaluate` → :class:`DistanceReport`, and :func:`noise_floor`;
* :mod:`~ase_drift.metrics.timeseries`: autocorrelation time, effective sample size, block
  bootstrap;
* :mod:`~ase_drift.metrics.peptides`: Ramachandran histograms, JS divergence, PMF RMSE, basins
  and their free-energy difference;
* :mod:`~ase_drift.metrics.chemistry`: RDKit validity of generated molecules (bonds from
  geometry, sanitisable, one fragment, no radicals), max pair distance, histogram JS;
* :mod:`~ase_drift.metrics.plots`: the figures (matplotlib);
* :mod:`~ase_drift.metrics.tables`: the one markdown table renderer.

Every public name is importable from ``ase_drift.metrics`` itself.

Contract
--------
* Inputs are plain arrays in ASE units: positions ``[n_frames, n_atoms, 3]`` in Å, energies
  ``[n_frames]`` in eV, temperatures in K, torsion angles in radians. Nothing here touches
  torch, a calculator or a file, except the ``plot_*`` functions, which write one PNG each.
* Distances are taken over all atom pairs a < b in ``numpy.triu_indices(n_atoms, k=1)`` order,
  M = A(A−1)/2 of them (:func:`pair_indices`); a "pair index" is a column of that ``[N, M]`` array.
* Histograms are normalised to probabilities per bin (sum 1). Samples outside the histogram range
  are clipped into the edge bins, so an exploded molecule counts against the score instead of
  silently vanishing.
* Results in kT are dimensionless; Wasserstein distances and MAEs of distances are in Å.
* Every comparison is "generated vs reference": :func:`evaluate` gives one
  :class:`DistanceReport`, and :func:`noise_floor` gives the same report for n frames of one
  part of the reference against another, at the sample size n of what it is read against
  (DESIGN.md, "Metrics"; definitions and reasons in docs/maths.md, "Metrics").
"""

from .chemistry import (
    ValidityResult,
    histogram_js,
    max_pair_distance,
    validity,
    validity_counts,
    validity_fraction,
)
from .distances import (
    BOND_SCALE,
    BOND_TOLERANCE,
    STABILITY_SIGMAS,
    DistanceReport,
    NoiseFloor,
    covalent_bonds,
    evaluate,
    histogram_tvd,
    noise_floor,
    noise_floor_subsets,
    normalised_histogram,
    pair_distances,
    pair_indices,
    pair_mae,
    pair_stability,
    pair_types,
    reference_part,
    sorted_within_types,
    stability,
    wasserstein2,
)
from .peptides import (
    ALPHA_L_MAX_PHI,
    C5_MIN_PSI,
    basin_masks_phi,
    basin_masks_psi,
    free_energy_difference,
    js_divergence,
    pmf_rmse,
    ramachandran_histogram,
)
from .plots import plot_distance_histograms, plot_ramachandran, plot_training_curve
from .tables import Estimate, distance_legend, format_cell, markdown_table, render_table
from .timeseries import block_bootstrap, effective_sample_size, integrated_autocorrelation_time

__all__ = [
    "ALPHA_L_MAX_PHI",
    "BOND_SCALE",
    "BOND_TOLERANCE",
    "C5_MIN_PSI",
    "STABILITY_SIGMAS",
    "DistanceReport",
    "Estimate",
    "NoiseFloor",
    "ValidityResult",
    "basin_masks_phi",
    "basin_masks_psi",
    "block_bootstrap",
    "covalent_bonds",
    "distance_legend",
    "effective_sample_size",
    "evaluate",
    "format_cell",
    "free_energy_difference",
    "histogram_js",
    "histogram_tvd",
    "integrated_autocorrelation_time",
    "js_divergence",
    "markdown_table",
    "max_pair_distance",
    "noise_floor",
    "noise_floor_subsets",
    "normalised_histogram",
    "pair_distances",
    "pair_indices",
    "pair_mae",
    "pair_stability",
    "pair_types",
    "plot_distance_histograms",
    "plot_ramachandran",
    "plot_training_curve",
    "pmf_rmse",
    "ramachandran_histogram",
    "reference_part",
    "render_table",
    "sorted_within_types",
    "stability",
    "validity",
    "validity_counts",
    "validity_fraction",
    "wasserstein2",
]
