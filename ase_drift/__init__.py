"""ase_drift: one-step Boltzmann conformer sampling for ASE with force-guided drifting models.

>>> from ase_drift import Conformations, DriftSampler, train
>>> sampler = train(Conformations.read("train.extxyz"), temperature_K=500, field="fk-energy")
>>> atoms_list = sampler.sample(atoms, n=1000, seed=0)
>>> import ase_drift
>>> sampler = ase_drift.load("model.pt")  # a saved sampler of any kind (drift, DSM, ...)
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError
from .data import Conformations
from .drift import (
    DengDrift,
    DriftField,
    EnergyTilt,
    ForceTilt,
    GaussianDrift,
    Positives,
    field_from_spec,
    field_spec,
    make_field,
)
from .features import Cartesian, PairwiseDistances, Representation
from .forces import (
    CalculatorForces,
    ForceResult,
    ForceSource,
    LabelForces,
    LabelingError,
    OpenMMCalculator,
    OpenMMForces,
    label,
)
from .likelihood import NCEConfig, NCEDensity
from .reweighting import WeightedSamples, reweight, reweight_sampler
from .sampler import DriftSampler, Sampler, load
from .training import TrainConfig, Trainer, train

__all__ = [
    "CalculatorForces",
    "Cartesian",
    "CheckpointError",
    "Conformations",
    "DengDrift",
    "DriftField",
    "DriftSampler",
    "EnergyTilt",
    "ForceResult",
    "ForceSource",
    "ForceTilt",
    "GaussianDrift",
    "LabelForces",
    "LabelingError",
    "NCEConfig",
    "NCEDensity",
    "OpenMMCalculator",
    "OpenMMForces",
    "PairwiseDistances",
    "Positives",
    "Representation",
    "Sampler",
    "TrainConfig",
    "Trainer",
    "WeightedSamples",
    "__version__",
    "field_from_spec",
    "field_spec",
    "label",
    "load",
    "make_field",
    "reweight",
    "reweight_sampler",
    "train",
]
