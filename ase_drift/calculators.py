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


class PseudoForceCalculator(Calculator):
    """ASE calculator of a generative pseudo-force field
    (:class:`~ase_drift.diffusion.pseudoforce.PseudoForceField`), for molecules of any formula
    made of its elements.

    Forces: the predicted pseudo-forces F (eV/Å) of the quadratic pseudo-PES
    E = ½ k ‖x − x₀‖² with unit stiffness k = 1 eV/Å² (GPFF paper Eqs. 7–8), so F is
    numerically the predicted displacement x̂₀ − x in Å. Energy: ½ ‖F‖²/k (eV), the pseudo-energy
    of the quadratic PES at the predicted displacement. The network predicts F directly (not as
    a gradient), so this energy is consistent with the forces only to the extent that the
    pseudo-PES is locally quadratic: optimisers that use forces only (FIRE, BFGS's steps) are
    the intended use. ``FIRE(atoms).run(fmax=...)`` is then direct denoising, and ASE
    constraints (``FixAtoms``: scaffolds) apply as in any relaxation. ``results["sigma_hat"]``
    is the noise-level estimate ‖F‖/√(3A) (Å, Eq. 18).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = self.model.pseudo_forces(self.atoms.numbers, self.atoms.positions)  # [A, 3]
        energy = 0.5 * float((forces**2).sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                        "sigma_hat": float(((forces**2).sum() / forces.size) ** 0.5)}
