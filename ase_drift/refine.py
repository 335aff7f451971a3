"""Exact refinement of samples with a force field: the Metropolis-adjusted Langevin algorithm.

:func:`mala` runs independent MALA chains, one per sample, with any
:class:`~ase_drift.forces.ForceSource`; ``sampler.sample(atoms, n, refine=source,
refine_steps=k)`` applies it to one-step samples, which become a warm start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from ase.data import atomic_masses

from . import units
from .forces import ForceSource, LabelingError
from .torsions import TorsionMoves

#: Mass (amu) of the atom whose random displacement per Cartesian coordinate is ``step_size``:
#: hydrogen. An atom of mass m moves by ``step_size``·√(m_H/m).
REFERENCE_MASS_AMU = float(atomic_masses[1])
#: Default ε in Å (see :func:`mala` for how it was chosen).
DEFAULT_STEP_SIZE = 0.03


class MALAResult(NamedTuple):
    """The chains' final states and what it cost to reach them."""

    positions: np.ndarray  # [n, A, 3] Å, final state of each chain
    energies: np.ndarray  # [n] eV of those states
    forces: np.ndarray  # [n, A, 3] eV/Å of those states
    accepted: np.ndarray  # [n] accepted MALA moves per chain (int)
    acceptance: np.ndarray  # [steps] fraction of the chains that moved at each step
    force_evaluations: int  # frames sent to the source: n·(steps + 1); + n·steps with torsions
    step_size: float  # ε in Å
    torsion_acceptance: np.ndarray  # [steps] fraction of torsion moves accepted (NaN: none made)

    @property
    def acceptance_rate(self) -> float:
        """Accepted moves over proposed moves, all chains and steps (NaN without steps)."""
        return float(self.acceptance.mean()) if len(self.acceptance) else float("nan")


def mala(source: ForceSource, numbers, positions, temperature_K: float, steps: int,
         step_size: float = DEFAULT_STEP_SIZE, seed: int | None = None,
         callback: Callable[[int, MALAResult], None] | None = None,
         masses=None, torsion_moves: TorsionMoves | None = None) -> MALAResult:
    """Run ``steps`` MALA steps on each frame of ``positions`` ``[n, A, 3]`` (Å), targeting the
    Boltzmann distribution π(x) ∝ exp(−E(x)/kT) of ``source`` at ``temperature_K``.

    **The kernel.** With forces F = −∇E (eV/Å), the mass preconditioner
    C = diag(m_H/m_a) (one entry per atom a of mass m_a, dimensionless;
    m_H = :data:`REFERENCE_MASS_AMU`), the step size ε (Å) and ξ ~ N(0, I), each chain proposes

        x' = μ(x) + ε C^½ ξ,    μ(x) = x + (ε²/2) C F(x)/kT,

    i.e. one Euler–Maruyama step of Langevin diffusion preconditioned by the inverse masses
    (hydrogens move by ε per coordinate, carbons by ε/√12), and accepts it with
    probability min(1, exp(log α)),

        log α = −(E(x') − E(x))/kT + log q(x | x') − log q(x' | x),
        log q(x' | x) = −‖C^−½ (x' − μ(x))‖² / (2ε²) + const,

    the exact Gaussian proposal densities (the constant, from det C, is the same both ways and
    cancels). kT = k_B·T in eV (:func:`ase_drift.units.kT`). A proposal whose energy or forces
    are not finite is rejected (π = 0 there: a hard wall is exact); a
    :class:`~ase_drift.forces.LabelingError` of the source propagates, naming the step.

    **Why it is exact.** The Metropolis–Hastings acceptance makes the kernel K satisfy
    detailed balance π(x)K(x, x') = π(x')K(x', x), so π is invariant: πK = π. For any start
    distribution p, the data-processing inequality for the KL divergence gives
    KL(pK ‖ πK) ≤ KL(p ‖ π), i.e. KL(pK ‖ π) ≤ KL(p ‖ π): every step can only bring the
    samples closer to π, never further (the same holds for every f-divergence, TVD included).
    The step size must stay fixed while the steps are counted: adapting it from the chains'
    history makes the kernel depend on the past and the argument fails. π is flat in the
    centre of mass, which therefore random-walks; translation-invariant quantities (distances,
    energies) are what the argument is about. MALA is local: it corrects the distribution
    within the basins the samples occupy quickly, but moves mass between basins separated by
    barriers of many kT (torsional minima) only slowly.

    **Cost.** ``steps + 1`` calls of ``source.compute`` on all n chains at once (the first
    labels the start), i.e. n·(steps + 1) energy-and-force evaluations (n·steps more with torsion
    moves); the rest is O(n·A) numpy per step.

    **The default ε = 0.03 Å.** With the mass preconditioner the eigenvalues of C·∇²E/kT are
    m_H ω²/kT for the vibrational frequencies ω, so ε is limited by the fastest vibrations, the
    X–H stretches (3,000–3,700 cm⁻¹), which every organic molecule has: one ε in Å of hydrogen
    displacement fits them all. Equal acceptance needs ε ∝ √T. On ethanol with GFN2-xTB
    (``python -m benchmarks.refine``), ε = 0.03 Å accepts 0.84 of the moves at 500 K and 0.68
    at 300 K; 0.04 Å moves the chains ~18 % further per step at 500 K but accepts only 0.35 at
    300 K. At equal acceptance (0.84–0.86) the mass-preconditioned proposal moved the pair
    distances 30 % further than the unpreconditioned one. :attr:`MALAResult.acceptance` tells
    whether to change ε; adapting it is left to the caller and only valid in an uncounted
    burn-in.

    Args:
        source: energies (eV) and forces (eV/Å) of batches of frames.
        numbers: atomic numbers ``[A]`` (they set the masses of the preconditioner).
        positions: start frames ``[n, A, 3]`` in Å, one chain each.
        temperature_K: temperature of π in K.
        steps: MALA steps per chain (0 labels the start frames only).
        step_size: ε in Å (the random displacement per coordinate of a hydrogen atom).
        seed: seed of the NumPy generator of proposals and acceptances (None: fresh entropy).
        callback: called as ``callback(k, state)`` after step k = 1 … ``steps`` with the
            :class:`MALAResult` after k steps (its arrays are not modified afterwards).
        masses: m_a ``[A]`` in amu for the preconditioner (default: ASE's atomic masses of
            ``numbers``); ``np.full(A, REFERENCE_MASS_AMU)`` gives the unpreconditioned
            proposal C = I. Any positive masses keep the kernel exact.
        torsion_moves: after each MALA step, one torsion move per chain
            (:meth:`MALAKernel.torsion_step`; exact as well): the chains then cross torsional
            barriers, at one more force evaluation per chain and step.

    Returns:
        :class:`MALAResult` of the final states.
    """
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    x = np.array(positions, dtype=np.float64)  # [n, A, 3] Å
    if x.ndim != 3 or x.shape[1:] != (len(numbers), 3):
        raise ValueError(f"positions must have shape [n, {len(numbers)}, 3] for {len(numbers)} "
                         f"atoms, got {x.shape}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    kT = units.kT(temperature_K)  # eV
    rng = np.random.default_rng(seed)
    kernel = MALAKernel(source, numbers, kT, step_size, masses)
    chains = kernel.start(x)
    accepted = np.zeros(len(x), dtype=np.int64)  # [n]
    acceptance = np.empty(steps)  # [steps]
    torsion_acceptance = np.full(steps, np.nan)  # [steps]
    torsion_evaluations = 0 if torsion_moves is None else len(x)

    def state(k: int) -> MALAResult:
        return MALAResult(chains.positions, chains.energies, chains.forces, accepted.copy(),
                          acceptance[:k].copy(), len(x) * (k + 1) + torsion_evaluations * k,
                          float(step_size), torsion_acceptance[:k].copy())

    for k in range(steps):
        try:
            chains, move = kernel.step(chains, rng)
            if torsion_moves is not None:
                chains, turned = kernel.torsion_step(chains, rng, torsion_moves)
                torsion_acceptance[k] = turned.mean()
        except LabelingError as err:
            raise LabelingError(f"MALA step {k + 1} of {steps}: the force source failed on a "
                                f"proposal: {err}") from err
        accepted += move
        acceptance[k] = move.mean()
        if callback is not None:
            callback(k + 1, state(k + 1))
    return state(steps)


class Chains(NamedTuple):
    """The current state of n independent chains."""

    positions: np.ndarray  # [n, A, 3] Å
    energies: np.ndarray  # [n] eV
    forces: np.ndarray  # [n, A, 3] eV/Å
    log_q: np.ndarray | None  # [n] log-density of the start distribution (tempered targets)
    grad_log_q: np.ndarray | None = None  # [n, A, 3] 1/Å, its gradient (exact tempered drift)


class MALAKernel:
    """The MALA kernel of :func:`mala`, generalised to the tempered targets

        log γ_β(x) = β·(−E(x)/kT) + (1 − β)·log q(x) + const,    0 ≤ β ≤ 1,

    that anneal a start density q into π (:mod:`ase_drift.annealing`); β = 1 is :func:`mala`'s
    π. Given q's gradient (``log_prob_gradient``), the proposal drifts along the tempered
    target's own gradient, μ(x) = x + (ε²/2)·C·(β F(x)/kT + (1 − β)·∇log q(x)); given only
    log q (``log_prob``), it drifts along the full force as :func:`mala` does,
    μ(x) = x + (ε²/2)·C F(x)/kT. Either way the acceptance uses γ_β and the exact proposal
    densities,

        log α = log γ_β(x') − log γ_β(x) + log q_prop(x | x') − log q_prop(x' | x),

    so each step leaves γ_β invariant (Metropolis–Hastings is exact for any drift). F/kT is
    ∇log γ_β at β = 1 and close to it at β < 1 wherever q resembles π; where it is not, the
    exact drift is accepted more often: on one-step alanine dipeptide samples with their NCE
    density, a step of ε = 0.02 Å targeting q itself (β = 0) is accepted 84 % of the time with
    the exact drift and 45 % with F/kT (3 % at ε = 0.03 Å with the tempered force β·F/kT alone,
    which vanishes there).

    Args:
        source: energies (eV) and forces (eV/Å).
        numbers: atomic numbers ``[A]``.
        kT: k_B·T in eV.
        step_size: ε in Å.
        masses: preconditioner masses ``[A]`` in amu (default: ASE's masses of ``numbers``).
        log_prob: log q(positions ``[n, A, 3]``) → ``[n]``; needed only for β < 1.
        log_prob_gradient: positions → (log q ``[n]``, ∇log q ``[n, A, 3]`` per Å), instead
            of ``log_prob``, for the exact tempered drift.
    """

    def __init__(self, source: ForceSource, numbers, kT: float, step_size: float, masses=None,
                 log_prob: Callable[[np.ndarray], np.ndarray] | None = None,
                 log_prob_gradient: Callable[[np.ndarray], tuple] | None = None):
        if log_prob is not None and log_prob_gradient is not None:
            raise ValueError("pass log_prob or log_prob_gradient, not both")
        self.source = source
        self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        self.kT = float(kT)
        self.log_prob = log_prob
        self.log_prob_gradient = log_prob_gradient
        masses = (atomic_masses[self.numbers] if masses is None
                  else np.asarray(masses, dtype=np.float64))
        if masses.shape != self.numbers.shape or not (np.isfinite(masses).all()
                                                      and (masses > 0).all()):
            raise ValueError(f"masses must be {len(self.numbers)} positive numbers of amu, got "
                             f"{masses}")
        if not (np.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive number of Å, got {step_size!r}")
        preconditioner = (REFERENCE_MASS_AMU / masses)[None, :, None]  # [1, A, 1]
        self.noise_scale = step_size * np.sqrt(preconditioner)  # [1, A, 1] Å
        self.half_step = 0.5 * step_size**2 * preconditioner / self.kT  # [1, A, 1] Å²/eV

    def start(self, positions: np.ndarray) -> Chains:
        """Label the start frames ``[n, A, 3]`` (ValueError where energy or forces are not
        finite, or where log q is not when the kernel has one)."""
        chains = self._evaluate(positions)
        finite = self._finite(chains)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"the start frame {bad} has a non-finite energy "
                             f"({chains.energies[bad]}), forces or log-density: the chains "
                             f"cannot start there")
        return chains

    def step(self, chains: Chains, rng: np.random.Generator, beta: float = 1.0
             ) -> tuple[Chains, np.ndarray]:
        """One Metropolis–Hastings step of every chain, invariant for γ_β; returns the new
        state and which chains moved (bool ``[n]``). A proposal whose energy, forces or log q
        are not finite is rejected (γ_β = 0 there)."""
        self._check_beta(chains, beta)
        x = chains.positions
        xi = rng.standard_normal(x.shape)  # [n, A, 3]
        log_u = np.log(rng.random(len(x)))  # [n]
        drift = self._drift_forces(chains.forces, chains.grad_log_q, beta)  # [n, A, 3] eV/Å
        proposed = self._evaluate(x + self.half_step * drift + self.noise_scale * xi)
        # ‖C^−½(x' − μ(x))‖²/ε² = ‖ξ‖²; the reverse move's residual x − μ(x'), scaled alike
        backward = (x - proposed.positions - self.half_step * self._drift_forces(
            proposed.forces, proposed.grad_log_q, beta)) / self.noise_scale
        log_proposal_ratio = 0.5 * (np.square(xi).sum(axis=(1, 2))
                                    - np.square(backward).sum(axis=(1, 2)))  # [n]
        return self._metropolis(chains, proposed, beta, log_u, log_proposal_ratio)

    def torsion_step(self, chains: Chains, rng: np.random.Generator, moves: TorsionMoves,
                     beta: float = 1.0) -> tuple[Chains, np.ndarray]:
        """One torsion move of every chain (:class:`~ase_drift.torsions.TorsionMoves`, a
        symmetric proposal), accepted with probability min(1, γ_β(x')/γ_β(x)): invariant for
        γ_β like :meth:`step`, and able to cross torsional barriers in one move. Returns the
        new state and which chains moved."""
        self._check_beta(chains, beta)
        log_u = np.log(rng.random(len(chains.positions)))  # [n]
        proposed = self._evaluate(moves.propose(chains.positions, rng))
        return self._metropolis(chains, proposed, beta, log_u, 0.0)

    def _check_beta(self, chains: Chains, beta: float) -> None:
        if beta < 1 and chains.log_q is None:
            raise ValueError("a tempered target (β < 1) needs the start density: pass log_prob or "
                             "log_prob_gradient")

    def _evaluate(self, positions: np.ndarray) -> Chains:
        """Energies, forces and (when the kernel has it) log q of frames ``[n, A, 3]``."""
        energies, forces = _labels(self.source, self.numbers, positions)
        return Chains(positions, energies, forces, *self._log_q(positions))

    @staticmethod
    def _finite(chains: Chains) -> np.ndarray:
        """bool ``[n]``: energy, forces and whatever log q terms the chains carry are finite."""
        finite = np.isfinite(chains.energies) & np.isfinite(chains.forces).all(axis=(1, 2))
        if chains.log_q is not None:
            finite &= np.isfinite(chains.log_q)
        if chains.grad_log_q is not None:
            finite &= np.isfinite(chains.grad_log_q).all(axis=(1, 2))
        return finite

    def _metropolis(self, chains: Chains, proposed: Chains, beta: float, log_u: np.ndarray,
                    log_proposal_ratio) -> tuple[Chains, np.ndarray]:
        """Accept each proposal where log u < log γ_β(x') − log γ_β(x) + log_proposal_ratio
        (log T(x' → x) − log T(x → x')) and its terms are finite; (new state, moved ``[n]``)."""
        log_alpha = -beta * (proposed.energies - chains.energies) / self.kT + log_proposal_ratio
        if chains.log_q is not None:
            log_alpha = log_alpha + (1 - beta) * (proposed.log_q - chains.log_q)
        move = self._finite(proposed) & (log_u < log_alpha)  # [n]; False for NaN

        def keep(new, old):
            if old is None:
                return None
            return np.where(move.reshape(-1, *[1] * (old.ndim - 1)), new, old)

        return Chains(*(keep(new, old) for new, old in zip(proposed, chains))), move

    def _drift_forces(self, forces: np.ndarray, grad_log_q: np.ndarray | None,
                      beta: float) -> np.ndarray:
        """kT·∇log γ_β = β·F + (1 − β)·kT·∇log q (eV/Å) with the density's gradient, else the
        full force F."""
        if grad_log_q is None:
            return forces
        return beta * forces + (1 - beta) * self.kT * grad_log_q

    def _log_q(self, positions: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(log q ``[n]``, ∇log q ``[n, A, 3]``) of frames, each None when the kernel lacks it."""
        if self.log_prob is None and self.log_prob_gradient is None:
            return None, None
        if self.log_prob is not None:
            log_q, gradient = self.log_prob(positions), None
        else:
            log_q, gradient = self.log_prob_gradient(positions)
            gradient = np.asarray(gradient, dtype=np.float64)
            if gradient.shape != positions.shape:
                raise ValueError(f"log_prob_gradient returned a gradient of shape "
                                 f"{gradient.shape} for frames of shape {positions.shape}")
        log_q = np.asarray(log_q, dtype=np.float64)
        if log_q.shape != (len(positions),):
            raise ValueError(f"log_prob returned shape {log_q.shape} for {len(positions)} "
                             f"frames; expected ({len(positions)},)")
        return log_q, gradient


def _labels(source: ForceSource, numbers: np.ndarray, x: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Energies ``[n]`` eV and forces ``[n, A, 3]`` eV/Å of frames ``x`` ``[n, A, 3]`` Å, as
    float64 arrays of those shapes (ValueError if the source returns other shapes)."""
    result = source.compute(numbers, x)
    energies = np.asarray(result.energies, dtype=np.float64)
    forces = np.asarray(result.forces, dtype=np.float64)
    if energies.shape != (len(x),) or forces.shape != x.shape:
        raise ValueError(f"the force source returned energies of shape {energies.shape} and "
                         f"forces of shape {forces.shape} for {len(x)} frames of shape "
                         f"{x.shape[1:]}; expected ({len(x)},) and {x.shape}")
    return energies, forces
