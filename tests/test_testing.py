"""The reusable checks in ase_drift.testing pass on correct inputs and fail, with a message, on
broken ones (a check that cannot fail checks nothing)."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from ase_drift.features import PairwiseDistances
from ase_drift.forces import CalculatorForces, ForceResult
from ase_drift.testing import (
    assert_force_source_consistent,
    assert_invariant,
    assert_jacobian,
    default_atol,
    remove_rigid_motions,
)


def argon_cluster(n=6, seed=0):
    """``n`` atoms about 3.8 Å apart (no overlaps), positions ``[n, 3]`` Å."""
    rng = np.random.default_rng(seed)
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])[:n]
    return 3.8 * grid + 0.2 * rng.normal(size=(n, 3))


class FlippedForces:
    """A ForceSource with the classic sign bug: returns +∇E instead of −∇E."""

    def __init__(self, source):
        self.source = source

    def compute(self, numbers, positions):
        result = self.source.compute(numbers, positions)
        return ForceResult(result.energies, -result.forces)


def test_default_tolerances():
    assert default_atol(torch.float64) == 1e-8 and default_atol(torch.float32) == 1e-4


def test_force_source_check_passes_for_ase_calculators():
    """F = −∇E for Lennard-Jones (one frame, then a batch of two) and EMT on ethanol."""
    positions = argon_cluster()
    lj = CalculatorForces(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True))
    assert assert_force_source_consistent(lj, [18] * 6, positions, atol=1e-5) < 1e-5
    batch = np.stack([positions, argon_cluster(seed=1)])
    assert assert_force_source_consistent(lj, [18] * 6, batch, atol=1e-5) < 1e-5
    ethanol = molecule("CH3CH2OH")
    assert assert_force_source_consistent(CalculatorForces(EMT()), ethanol.numbers,
                                          ethanol.positions, atol=1e-4) < 1e-4


def test_force_source_check_catches_a_sign_error():
    lj = CalculatorForces(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True))
    with pytest.raises(AssertionError, match=r"frame 0: force on atom \d \([xyz]\)"):
        assert_force_source_consistent(FlippedForces(lj), [18] * 6, argon_cluster(), atol=1e-5)


def test_jacobian_check_catches_a_non_differentiable_mismatch():
    """A Jacobian missing the −u_ab half (atom b) is caught against autograd."""

    class HalfJacobian(PairwiseDistances):
        def jacobian(self, coords):
            jac = super().jacobian(coords).reshape(len(coords), -1, self.n_atoms, 3)
            return jac.clamp_min(0).reshape(len(coords), -1, 3 * self.n_atoms)

    coords = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert assert_jacobian(PairwiseDistances(5), coords) < 1e-8
    with pytest.raises(AssertionError, match="differs from autograd"):
        assert_jacobian(HalfJacobian(5), coords)


def test_invariance_check_catches_a_non_invariant_representation():
    class Shifted(PairwiseDistances):
        def features(self, coords):
            return super().features(coords) + coords[:, :1, 0]  # depends on absolute position

    coords = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(AssertionError, match="rotation and translation"):
        assert_invariant(Shifted(5), coords)


def test_remove_rigid_motions_on_a_linear_molecule():
    """A linear molecule has 5 rigid modes (no rotation about its axis); the projection still
    removes net force and torque and keeps the axial stretch untouched."""
    coords = torch.tensor([[[0.0, 0.0, -1.16], [0.0, 0.0, 0.0], [0.0, 0.0, 1.16]]],
                          dtype=torch.float64)  # CO2
    stretch = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]],
                           dtype=torch.float64)
    torch.testing.assert_close(remove_rigid_motions(coords, stretch), stretch)
    forces = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clean = remove_rigid_motions(coords, forces)
    assert clean.sum(1).abs().max() < 1e-12
    assert torch.linalg.cross(coords, clean, dim=-1).sum(1).abs().max() < 1e-12
    assert torch.isfinite(clean).all()
