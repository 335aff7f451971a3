"""Score-based diffusion: noise schedules and samplers on tensors ``[B, D]``
(:mod:`~ase_drift.diffusion.schedules`, :mod:`~ase_drift.diffusion.samplers`), and the
molecular samplers built on them, behind the :class:`~ase_drift.sampler.Sampler` protocol:
:mod:`~ase_drift.diffusion.dsm`, the denoising-score-matching baseline (VE SDE), and
:mod:`~ase_drift.diffusion.energy`, the energy-based diffusion model with Fokker–Planck
regularisation (VP SDE), which is also a force field; :mod:`~ase_drift.diffusion.pseudoforce`,
the generative pseudo-force field (GPFF) and its single-molecule conformer sampler.

Importing this package registers its sampler kinds with :func:`ase_drift.load`.
"""

from .dsm import DiffusionConfig, DiffusionSampler, train_diffusion
from .energy import EnergyDiffusion, EnergyDiffusionConfig, sample_energy_model, train_energy_model
from .pseudoforce import ConformerSampler, PseudoForceField

__all__ = ["ConformerSampler", "DiffusionConfig", "DiffusionSampler", "EnergyDiffusion",
           "EnergyDiffusionConfig", "PseudoForceField", "sample_energy_model", "train_diffusion",
           "train_energy_model"]
