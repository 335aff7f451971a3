"""Torsion moves (ase_drift.torsions; MALAKernel.torsion_step; mala and anneal with them).

The maths under test: turning one side of a non-ring bond by θ ~ U(−θ_max, θ_max) about the
bond's axis is a volume-preserving map that (b, −θ) undoes, so the proposal is symmetric and
Metropolis with min(1, γ(x')/γ(x)) leaves γ invariant. Checked on a four-atom chain X–O–O–X
(:class:`ChainForces`: stiff bonds and angles plus a torsion potential V(φ)), whose φ-marginal
is ∝ exp(−V(φ)/kT) exactly (the Jacobian of Cartesian to bond–angle–torsion coordinates and the
bond and angle terms do not depend on φ). Estimates over independent chains must lie within 5
standard errors of the exact integrals: a correct sampler fails a check with probability
< 1e-6 (Gaussian errors).

mutmut (`make mutants`): 219 mutants of torsions.py, 207 killed, the other 12 equivalent
(benchmarks/mutants_equivalent.toml: dtype and reshape spellings NumPy reads alike, and how
many frames the bond graph averages).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.geometry import get_dihedrals

from ase_drift import units
from ase_drift.annealing import anneal
from ase_drift.forces import ForceResult
from ase_drift.refine import MALAKernel, mala
from ase_drift.torsions import (
    RotatableBond,
    TorsionMoves,
    bond_graph,
    rotatable_bonds,
    rotate_about_bond,
)

T = 300.0
KT = units.kT(T)
NUMBERS = np.array([6, 8, 8, 6])  # heavy ends: the MALA steps barely move the chain's ends


def torsion(positions) -> np.ndarray:
    """φ of atoms 0–1–2–3 ``[n]`` in rad, (−π, π]."""
    p = np.asarray(positions, dtype=float)
    degrees = get_dihedrals(p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2])
    return np.angle(np.exp(1j * np.radians(degrees)))


def well_potential(phi):
    """V(φ)/kT: wells at ±π/2 (the one at −π/2 1 kT higher), barriers ≈ 4 kT at 0 and π."""
    return 2.0 * torch.cos(2 * phi) - 0.5 * torch.sin(phi)


class ChainForces:
    """E = ½k_b Σ(d − 1.45)² + ½k_a Σ(θ − 1.8)² + kT·V(φ) + kT·``tilt``(φ) (eV) with exact
    autograd forces, for frames ``[n, 4, 3]`` Å."""

    def __init__(self, tilt=None):
        self.tilt = tilt

    def compute(self, numbers, positions) -> ForceResult:
        x = torch.tensor(np.asarray(positions, dtype=np.float64), requires_grad=True)
        b = x[:, 1:] - x[:, :-1]  # [n, 3, 3] bond vectors
        d = b.norm(dim=-1)
        cos_angle = -(b[:, :-1] * b[:, 1:]).sum(-1) / (d[:, :-1] * d[:, 1:])
        angle = torch.acos(cos_angle.clamp(-1, 1))
        n1, n2 = torch.cross(b[:, 0], b[:, 1], dim=-1), torch.cross(b[:, 1], b[:, 2], dim=-1)
        m = torch.cross(n1, b[:, 1] / d[:, 1:2], dim=-1)
        phi = -torch.atan2((m * n2).sum(-1), (n1 * n2).sum(-1))  # the sign of torsion()
        reduced = well_potential(phi) + (0 if self.tilt is None else self.tilt(phi))
        energy = (10.0 * ((d - 1.45) ** 2).sum(-1) + 1.0 * ((angle - 1.8) ** 2).sum(-1)
                  + KT * reduced)
        (gradient,) = torch.autograd.grad(energy.sum(), x)
        return ForceResult(energy.detach().numpy(), -gradient.numpy())


def chain_frames(n: int, phi: float) -> np.ndarray:
    """``n`` copies of the chain at its rest bond lengths and angles, with torsion ``phi``."""
    d, theta = 1.45, 1.8
    x = np.array([[d * np.cos(theta), d * np.sin(theta), 0.0], [0.0, 0.0, 0.0], [d, 0.0, 0.0],
                  [d - d * np.cos(theta), d * np.sin(theta) * np.cos(phi),
                   d * np.sin(theta) * np.sin(phi)]])
    return np.repeat(x[None], n, 0)


def exact_mean(f, tilt=None) -> float:
    """E[f(φ)] under ∝ exp(−V(φ) − tilt(φ)), by quadrature."""
    phi = torch.linspace(-np.pi, np.pi, 20001, dtype=torch.float64)[:-1]
    log_p = -well_potential(phi) - (0 if tilt is None else tilt(phi))
    p = torch.exp(log_p - log_p.max())
    return float((f(phi) * p).sum() / p.sum())


def standard_error(values) -> float:
    return float(np.std(values) / np.sqrt(len(values)))


def test_rotatable_bonds_of_known_molecules():
    ethanol = molecule("CH3CH2OH")  # C0 C1 O2 H3(hydroxyl) H4 H5 (C1) H6 H7 H8 (C0)
    bonds = {(b.fixed, b.pivot): b.moving.tolist()
             for b in rotatable_bonds(ethanol.numbers, ethanol.positions)}
    assert bonds == {(1, 0): [6, 7, 8], (1, 2): [3]}  # the methyl and the hydroxyl
    butane = molecule("trans-butane")
    bonds = rotatable_bonds(butane.numbers, butane.positions)
    assert len(bonds) == 3 and all(butane.numbers[[b.fixed, b.pivot]].tolist() == [6, 6]
                                   for b in bonds)
    assert sorted(len(b.moving) for b in bonds) == [3, 3, 6]  # two methyls, the central bond
    benzene = molecule("C6H6")  # every C–C on the ring, every C–H terminal
    assert rotatable_bonds(benzene.numbers, benzene.positions) == []
    ring = molecule("methylenecyclopropane")  # only the exocyclic C=CH2 bond turns
    (bond,) = rotatable_bonds(ring.numbers, ring.positions)
    assert ring.numbers[bond.moving].tolist() == [1, 1]
    toluene = _toluene()  # the ring atom's ring bonds come before its bond to the methyl
    (bond,) = rotatable_bonds(toluene.numbers, toluene.positions)
    assert (bond.fixed, bond.pivot, bond.moving.tolist()) == (0, 11, [12, 13, 14])
    order = [0, 6, 7, 8, 1, 2, 3, 4, 5]  # ethanol with the methyl's hydrogens listed early
    permuted = {(order.index(b.fixed), order.index(b.pivot)) for b in rotatable_bonds(
        ethanol.numbers, ethanol.positions)}
    assert {(b.fixed, b.pivot) for b in rotatable_bonds(
        ethanol.numbers[order], ethanol.positions[order])} == permuted
    central = next(b for b in rotatable_bonds(butane.numbers, butane.positions)
                   if len(b.moving) == 6)  # seven atoms a side: the higher index's side turns
    assert central.pivot > central.fixed
    graph = bond_graph(ethanol.numbers, ethanol.positions)
    assert graph[2] == [1, 3] and len(graph[0]) == 4


def _toluene():
    """Benzene with the hydrogen of carbon 0 replaced by a methyl (atoms 11–14)."""
    benzene = molecule("C6H6")
    carbon, hydrogen = benzene.positions[0], benzene.positions[6]
    axis = (hydrogen - carbon) / np.linalg.norm(hydrogen - carbon)
    methyl = carbon + 1.51 * axis
    normal = np.cross(axis, [0.0, 0.0, 1.0])
    normal /= np.linalg.norm(normal)
    other = np.cross(axis, normal)
    hydrogens = [methyl + 1.09 * (np.cos(1.23) * axis + np.sin(1.23) * (np.cos(t) * normal
                                                                       + np.sin(t) * other))
                 for t in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]
    positions = np.vstack([benzene.positions[:6], benzene.positions[7:], [methyl], hydrogens])
    return Atoms(numbers=[6] * 6 + [1] * 5 + [6, 1, 1, 1], positions=positions)


def test_rotation_is_rigid_on_each_side_and_turns_the_dihedral_by_the_angle():
    butane = molecule("trans-butane")
    bond = max(rotatable_bonds(butane.numbers, butane.positions), key=lambda b: len(b.moving))
    angles = np.array([0.4, -2.5, np.pi])
    frames = np.repeat(butane.positions[None], 3, 0)
    turned = rotate_about_bond(frames, bond, angles)
    # float32 frames (a sampler's draws) are turned in float64
    single = rotate_about_bond(frames.astype(np.float32), bond, angles)
    assert single.dtype == np.float64
    np.testing.assert_allclose(single, rotate_about_bond(
        frames.astype(np.float32).astype(np.float64), bond, angles), rtol=0, atol=1e-12)
    moving = np.r_[bond.moving, bond.pivot]
    still = np.setdiff1d(np.arange(len(butane)), bond.moving)
    np.testing.assert_allclose(turned[:, still], frames[:, still], atol=1e-12)

    def distances(x, atoms):
        return np.linalg.norm(x[:, atoms, None] - x[:, None, atoms], axis=-1)

    np.testing.assert_allclose(distances(turned, np.r_[moving, bond.fixed]),
                               distances(frames, np.r_[moving, bond.fixed]), atol=1e-12)
    # a dihedral across the bond, (a fixed-side neighbour, fixed, pivot, a moving atom)
    graph = bond_graph(butane.numbers, butane.positions)
    a = next(n for n in graph[bond.fixed] if n != bond.pivot)
    d = next(n for n in graph[bond.pivot] if n != bond.fixed)

    def dihedral(x):
        return np.radians(get_dihedrals(x[:, bond.fixed] - x[:, a], x[:, bond.pivot]
                                        - x[:, bond.fixed], x[:, d] - x[:, bond.pivot]))

    change = np.angle(np.exp(1j * (dihedral(turned) - dihedral(frames))))
    np.testing.assert_allclose(np.abs(change), np.abs(np.angle(np.exp(1j * angles))), atol=1e-9)
    np.testing.assert_allclose(np.sign(change[:2]), np.sign(angles[:2]))
    np.testing.assert_allclose(rotate_about_bond(turned, bond, -angles), frames, atol=1e-12)


def test_proposals_pick_bonds_uniformly_and_angles_within_the_range():
    ethanol = molecule("CH3CH2OH")
    moves = TorsionMoves.from_frames(ethanol.numbers, ethanol.positions, max_angle=0.5)
    frames = np.repeat(ethanol.positions[None], 4000, 0)
    proposed = moves.propose(frames, np.random.default_rng(0))
    single = moves.propose(frames.astype(np.float32), np.random.default_rng(0))
    assert single.dtype == np.float64
    np.testing.assert_allclose(single, moves.propose(frames.astype(np.float32).astype(
        np.float64), np.random.default_rng(0)), rtol=0, atol=1e-12)
    moved_hydroxyl = np.abs(proposed[:, 3] - frames[:, 3]).sum(-1) > 0
    moved_methyl = np.abs(proposed[:, 6] - frames[:, 6]).sum(-1) > 0
    assert not (moved_hydroxyl & moved_methyl).any()  # one bond per proposal
    assert abs(moved_hydroxyl.mean() - 0.5) < 5 * 0.5 / np.sqrt(4000)
    hoc = [3, 2, 1, 0]

    def hydroxyl_dihedral(x):
        p = x[:, hoc]
        return np.radians(get_dihedrals(p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]))

    turn = np.angle(np.exp(1j * (hydroxyl_dihedral(proposed) - hydroxyl_dihedral(frames))))
    turn = turn[moved_hydroxyl]
    assert np.abs(turn).max() <= 0.5 + 1e-9 and np.abs(turn).max() > 0.49
    assert abs(turn.mean()) < 5 * standard_error(turn)  # symmetric about 0


def test_bad_moves_are_refused():
    with pytest.raises(ValueError, match=r"^torsion moves need at least one rotatable bond \(a "
                                         r"bond on no ring with two or more atoms on each side\)$"):
        TorsionMoves([])
    bond = RotatableBond(1, 2, np.array([3]))
    for bad in (0.0, -1.0, 4.0, np.nan):
        with pytest.raises(ValueError, match="max_angle"):
            TorsionMoves([bond], max_angle=bad)
    benzene = molecule("C6H6")
    with pytest.raises(ValueError, match="rotatable bond"):
        TorsionMoves.from_frames(benzene.numbers, benzene.positions)


def test_mala_with_torsion_moves_samples_the_dihedral_marginal():
    """From the lower well only, 2,000 independent chains of 150 MALA + torsion steps reach
    the exact φ-marginal (both wells); without torsion moves they stay in the start well."""
    moves = TorsionMoves.from_frames(NUMBERS, chain_frames(1, 1.0)[0])
    start = chain_frames(2000, np.pi / 2)
    result = mala(ChainForces(), NUMBERS, start, T, 150, seed=0, torsion_moves=moves)
    phi = torsion(result.positions)
    for f in (torch.cos, torch.sin, lambda p: (p < 0).double()):
        values = f(torch.as_tensor(phi)).numpy()
        assert abs(values.mean() - exact_mean(f)) < 5 * standard_error(values)
    assert 0.1 < np.nanmean(result.torsion_acceptance) < 0.9
    assert result.force_evaluations == 2000 * (150 + 1) + 2000 * 150
    assert result.torsion_acceptance.shape == (150,)
    stuck = mala(ChainForces(), NUMBERS, start, T, 150, seed=0)
    assert (torsion(stuck.positions) < 0).mean() < 0.02  # exact: 0.27
    assert np.isnan(stuck.torsion_acceptance).all()
    assert exact_mean(lambda p: (p < 0).double()) > 0.2


def test_torsion_step_is_invariant_for_tempered_targets():
    """γ_β ∝ exp(−β E/kT + (1 − β) log q) with log q = −V(φ) − 3 sin φ: torsion steps alone
    from the well at +π/2 reach γ_β's φ-marginal, exp(−V − 3(1 − β) sin φ)."""
    beta = 0.4
    source = ChainForces()

    def log_q(x):
        phi = torch.as_tensor(torsion(x))
        return (-well_potential(phi) - 3 * torch.sin(phi)).numpy()

    kernel = MALAKernel(source, NUMBERS, KT, 0.03, log_prob=log_q)
    moves = TorsionMoves.from_frames(NUMBERS, chain_frames(1, 1.0)[0])
    chains = kernel.start(chain_frames(3000, np.pi / 2))
    rng = np.random.default_rng(1)
    for _ in range(60):
        chains, _ = kernel.torsion_step(chains, rng, moves, beta=beta)
    phi = torch.as_tensor(torsion(chains.positions))
    tilt = lambda p: 3 * (1 - beta) * torch.sin(p)
    for f in (torch.sin, torch.cos):
        values = f(phi).numpy()
        assert abs(values.mean() - exact_mean(f, tilt)) < 5 * standard_error(values)
    assert abs(exact_mean(torch.sin, tilt) - exact_mean(torch.sin)) > 0.2  # β matters here


def test_annealing_with_torsion_moves_recovers_a_well_that_q_nearly_misses():
    """q: the chain's Boltzmann distribution tilted by 3(1 − sin φ) kT (≈ 0.1 % in the well at
    −π/2, where π has 27 %), drawn by 150 MALA + torsion steps. Annealed over 10 levels with
    torsion moves, the weighted P(φ < 0) matches π's, and the weights keep more ESS than
    without them."""
    tilt = lambda p: 3 * (1 - torch.sin(p))
    tilted = ChainForces(tilt)
    moves = TorsionMoves.from_frames(NUMBERS, chain_frames(1, 1.0)[0])
    start = mala(tilted, NUMBERS, chain_frames(2000, np.pi / 2), T, 150, seed=2,
                 torsion_moves=moves).positions

    def log_q(x):  # unnormalised: self-normalised weights do not need Z_q
        return -tilted.compute(NUMBERS, x).energies / KT

    with_moves = anneal(ChainForces(), NUMBERS, start, log_q, T, 10, seed=3,
                        torsion_moves=moves)
    negative = with_moves.samples.expectation(lambda r: (torsion(r) < 0).astype(float),
                                              n_boot=200)
    exact = exact_mean(lambda p: (p < 0).double())
    assert abs(negative.value - exact) < 5 * negative.error
    assert negative.error < 0.05  # informative
    assert with_moves.force_evaluations == 2000 * (10 + 1 + 10)
    assert np.isfinite(with_moves.torsion_acceptance).all()
    without = anneal(ChainForces(), NUMBERS, start, log_q, T, 10, seed=3)
    assert with_moves.samples.ess > 2 * without.samples.ess
    assert np.isnan(without.torsion_acceptance).all()
