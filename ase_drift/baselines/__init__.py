"""Other samplers behind the same :class:`~ase_drift.sampler.Sampler` protocol."""

from .diffusion import DiffusionConfig, DiffusionSampler, train_diffusion

__all__ = ["DiffusionConfig", "DiffusionSampler", "train_diffusion"]
