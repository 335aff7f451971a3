"""ASE calculators around learned models, so that ASE's MD integrators, optimisers and
workflows can drive them.

:class:`LearnedPotential` wraps a model that is a :class:`~ase_drift.forces.ForceSource` of one
molecule (e.g. :class:`~ase_drift.diffusion.energy.EnergyDiffusion`: energy −kT log p(x, t_min)
in eV up to a constant, forces kT ∇ log p in eV/Å).
"""

from __future__ import annotations

from typing import ClassVar

from ase.calculators.calculator import Calculator, all_changes


class LearnedPotential(Calculator):
    """ASE calculator of a learned model's ``compute(numbers, positions)``
    (energy eV, forces eV/Å). The atoms must have the model's species and order."""

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if hasattr(self.model, "check_template"):
            self.model.check_template(self.atoms)
        result = self.model.compute(self.atoms.numbers, self.atoms.positions)
        self.results = {"energy": float(result.energies[0]), "free_energy":
                        float(result.energies[0]), "forces": result.forces[0]}
