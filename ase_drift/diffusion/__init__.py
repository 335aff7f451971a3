"""Score-based diffusion: noise schedules and samplers on tensors ``[B, D]``
(:mod:`~ase_drift.diffusion.schedules`, :mod:`~ase_drift.diffusion.samplers`), and the
molecular samplers built on them, behind the :class:`~ase_drift.sampler.Sampler` protocol:
:mod:`~ase_drift.diffusion.dsm`, the denoising-score-matching baseline (VE SDE).

Importing this package registers its sampler kinds with :func:`ase_drift.load`.
"""

from .dsm import DiffusionConfig, DiffusionSampler, train_diffusion

__all__ = ["DiffusionConfig", "DiffusionSampler", "train_diffusion"]
