"""Likelihoods for the samples of any sampler: an energy model trained by score matching plus
InfoNCE over the time of a stochastic interpolant (BoltzNCE, Aggarwal et al. 2025; the
equations are numbered as in docs/likelihoods.md).

**The interpolant (Eq. 1).** Data x at t = 0, Gaussian noise ε ~ N(0, I) at t = 1:

    x_t = α_t x + σ_t ε,    linear: α_t = 1 − t, σ_t = t;    trig: α_t = cos(πt/2), σ_t = sin(πt/2).

p_t is the law of x_t. The network U_θ(x, t) is an *energy*: log p_t(x) ≈ −U_θ(x, t) + c.

**Score matching (Eq. 2).** ∇ log p_t(x_t) = −E[ε | x_t]/σ_t, so the minimiser of

    L_SM = E_{t, x, ε} ‖ −σ_t ∇_x U_θ(x_t, t) + ε ‖² / D

is ∇_x U_θ = −∇ log p_t: it fixes U_θ(·, t) = −log p_t + c(t), *a constant per time* (the
paper's L_SM, whose α_t multiplies the noise, our σ_t; D = dimension: the mean over
coordinates). **InfoNCE over time (Eq. 3).** With negatives t'_1..t'_K drawn around t
(uniform on [0, 1], or t + w·N(0, 1) reflected into [0, 1]),

    L_NCE = −E log [ exp(−U_θ(x_t, t)) / (exp(−U_θ(x_t, t)) + Σ_k exp(−U_θ(x_t, t'_k))) ]

classifies which time produced x_t; its optimum is U_θ(x, t) = −log p_t(x) + c(x), *a constant
per point* (for a symmetric proposal of t'). Only the sum L = λ_SM L_SM + λ_NCE L_NCE (Eq. 4)
pins both: U_θ = −log p_t + a single constant, hence

    log q(x) = −U_θ(x, 0) + C                                                       (Eq. 5)

with C unknown (the normaliser of exp(−U_θ), never estimated). Every quantity computed from
log q here — self-normalised importance weights, ESS, probability ratios, ΔF — is invariant to C.

**Molecules, internal coordinates (Eqs. 13–14, the default).** :class:`NCEDensity` models the
3A − 6 Z-matrix coordinates z(R) (bonds, angles, torsions cut where the samples are sparsest;
:mod:`ase_drift.internal_coordinates`) of frames whose methyl hydrogens are relabelled to one
rotamer (:func:`~ase_drift.features.canonical_rotor_order`) and whose mirror images are
reflected into the fitted handedness (Eq. 8). z fills an open set of R^(3A − 6), and

    log q̄(R) = −U_θ(z(R), 0) − Σ log scale − Σ 2 log r − Σ log sin θ + C              (Eq. 14)

is the density of centred Cartesian coordinates, symmetrised over rotations, reflections and
the 3^G cyclic relabellings of the G rotors (constant factors, absorbed in C). π is invariant
under all of them, so the weights are right for every observable that is too; signed torsions
are right after :meth:`NCEDensity.fold`.

**Molecules, pair distances (Eqs. 6–8).** ``coordinates="distances"`` models the pair
distances φ(R) (standardised per pair), invariant under rotations, translations and
reflections. They lie on a (3A − 6)-dimensional manifold M of R^M, M = A(A−1)/2, so
U_θ(·, 0) estimates the density q_M of the sampler's distances with respect to the surface
(Hausdorff) measure of M: Gaussian smoothing at small t multiplies a density on M by a factor
that is the same at every point of M (the normal directions), which C absorbs. Importance weights need q over the same space as
π ∝ exp(−E/kT), centred Cartesian coordinates. By the coarea formula the O(3)-symmetrised
sampler density there is

    q̄(R) = q_M(φ(R)) · √pdet(J_φᵀJ_φ)(R) / vol(O(3)·R),   vol(O(3)·R) ∝ √det I(R)      (Eq. 6)

(J_φ the Jacobian of the standardised features, pdet its product over the 3A − 6 non-zero
eigenvalues, I the unit-mass inertia tensor about the centroid; for three atoms
√pdet/√det I ∝ 1/(d₁₂d₁₃d₂₃), as uniformly placed atoms have side density ∝ d₁₂d₁₃d₂₃ — tested),
and :meth:`log_prob` returns

    log q̄(R) = −U_θ(φ(R), 0) + ½ log pdet(J_φᵀJ_φ) − ½ log det I + C.              (Eq. 7)

π is O(3)-invariant, so w = π/q̄ gives E_q[w f] = E_π[f] for every observable f invariant under
rotations *and reflections* (distances, angles, energies, unsigned torsions; regions defined by
them), whatever orientations the sampler produces.

**Chirality (Eq. 8).** Distances cannot tell a conformation from its mirror image. MD never
inverts an sp³ centre (that breaks bonds), so a molecule's frames keep the sign of the signed
volume v_c = (r_a − r_c)·[(r_b − r_c) × (r_d − r_c)] at every atom c with four covalent neighbours
(a < b < d the first three), prochiral ones such as ethanol's CH₂ included; a generator trained in
distance space may still emit mirror images, in which every sign flips. :meth:`chirality` records
the fitted frames' most common sign pattern and classifies frames as native, mirror (all signs
flipped) or inverted (some flipped: a centre passed through a plane, which reflection cannot
undo). :meth:`fold` reflects the mirror frames; the distances, hence log q̄, do not change, and
after folding the weights are right for chiral observables (signed torsions, e.g. φ/ψ) too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import StoredConfig, load_checkpoint, save_checkpoint
from .features import PairwiseDistances, canonical_rotor_order, find_rotors, fit_rotor_phases
from .internal_coordinates import (
    build_zmatrix,
    evenly_spaced,
    internal_coordinates,
    log_jacobian,
    torsion_cuts,
    unwrap_torsions,
)
from .metrics.distances import covalent_bonds, pair_distances, pair_indices
from .sampler import check_seed

KIND = "nce-density"
INTERPOLANTS = ("linear", "trig")
COORDINATES = ("internal", "distances")


# --------------------------------------------------------------------------- the interpolant


def interpolant_coefficients(t: Tensor, kind: str, power: float = 1.0) -> tuple[Tensor, Tensor]:
    """(α_t, σ_t) of Eq. 1 read at τ = t^``power``, shaped like ``t``: data at t = 0, noise at
    t = 1. A power p > 1 is a slower schedule (σ ≈ t^p near the data): of the uniformly drawn
    times, a fraction s^(1/p) instead of s has σ < s, where the finest detail of p_t lives."""
    tau = t if power == 1 else t**power
    if kind == "linear":
        return 1 - tau, tau
    if kind == "trig":
        return torch.cos(0.5 * math.pi * tau), torch.sin(0.5 * math.pi * tau)
    raise ValueError(f"unknown interpolant {kind!r}; use one of {INTERPOLANTS}")


def negative_times(t: Tensor, n_negatives: int, window: float | None,
                   generator: torch.Generator) -> Tensor:
    """Contrast times t' ``[B, K]`` for times ``t`` ``[B]``: uniform on [0, 1] (``window``
    None, the paper's toy setup), else t + window·N(0, 1) reflected into [0, 1].

    Either proposal is symmetric, q(t' | t) = q(t | t'), which makes U_θ = −log p_t + c(x) the
    optimum of Eq. 3. The reference code *clips* to [0, 1] instead (its molecules); clipping puts
    an atom of probability at t' = 0 and 1, where the true t never lies, so the classifier can
    tell negatives at t = 0 apart without looking at x, and Eq. 5 is read exactly there."""
    shape = (len(t), n_negatives)
    if window is None:
        return torch.rand(shape, generator=generator, dtype=t.dtype)
    noise = torch.randn(shape, generator=generator, dtype=t.dtype)
    folded = torch.remainder(t[:, None] + window * noise, 2.0)  # [B, K] in [0, 2)
    return torch.where(folded > 1.0, 2.0 - folded, folded)


# --------------------------------------------------------------------------- the network


def fourier_features(x: Tensor, frequencies: Tensor) -> Tensor:
    """γ(x) = [sin 2πxB, cos 2πxB] ``[B, 2F]`` of ``x`` ``[B, D]`` for frequencies B ``[D, F]``
    (random Fourier features, Tancik et al. 2020): an MLP on x alone learns detail finer than
    the data's spread only slowly (spectral bias); γ gives it that detail as inputs."""
    phase = 2 * math.pi * x @ frequencies  # [B, F]
    return torch.cat([phase.sin(), phase.cos()], dim=1)


class EnergyNet(nn.Module):
    """U_θ(x, t): a residual SiLU MLP on the concatenation [x, γ(x), t] ``[B, D + 2F + 1]`` →
    ``[B]``; γ (:func:`fourier_features`) only with ``n_fourier`` F > 0, its frequencies drawn
    once from N(0, ``fourier_scale``²) per unit of x and stored with the weights."""

    def __init__(self, dim: int, hidden: int, depth: int, n_fourier: int = 0,
                 fourier_scale: float = 1.0):
        super().__init__()
        self.register_buffer("frequencies", fourier_scale * torch.randn(dim, n_fourier)
                             if n_fourier else None)  # [D, F]; None is left out of state_dict
        self.inp = nn.Linear(dim + 2 * n_fourier + 1, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        inputs = [x, t[:, None]]
        if self.frequencies is not None:
            inputs.insert(1, fourier_features(x, self.frequencies))
        h = nn.functional.silu(self.inp(torch.cat(inputs, dim=1)))  # [B, H]
        for block in self.blocks:
            h = h + nn.functional.silu(block(h))
        return self.out(h)[:, 0]  # [B]


# --------------------------------------------------------------------------- the losses


class NCELosses(NamedTuple):
    score_matching: Tensor  # scalar, Eq. 2
    infonce: Tensor  # scalar, Eq. 3


def nce_losses(net: nn.Module, x: Tensor, t: Tensor, noise: Tensor, t_negative: Tensor,
               interpolant: str, need_score: bool = True, power: float = 1.0) -> NCELosses:
    """L_SM (Eq. 2) and L_NCE (Eq. 3) for data ``x`` ``[B, D]``, times ``t`` ``[B]``, noise
    ``[B, D]`` and contrast times ``t_negative`` ``[B, K]``, the interpolant read at t^``power``
    (:func:`interpolant_coefficients`; U_θ is conditioned on t itself). Without
    ``need_score`` L_SM is not computed (zero), which skips the double backward pass."""
    alpha, sigma = interpolant_coefficients(t, interpolant, power)  # [B], [B]
    x_t = (alpha[:, None] * x + sigma[:, None] * noise).requires_grad_(need_score)  # [B, D]
    energy = net(x_t, t)  # [B]
    if need_score:
        (grad,) = torch.autograd.grad(energy.sum(), x_t, create_graph=True)  # [B, D]
        score_matching = (noise - sigma[:, None] * grad).square().mean()
    else:
        score_matching = energy.new_zeros(())
    batch, k = t_negative.shape
    negatives = net(x_t.repeat(k, 1), t_negative.T.reshape(-1)).view(k, batch).T  # [B, K]
    logits = -torch.cat([energy[:, None], negatives], dim=1)  # [B, 1 + K]
    infonce = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    return NCELosses(score_matching, infonce)


@dataclass(frozen=True)
class NCEConfig(StoredConfig):
    """One NCE density fit (Eqs. 1–4). ``score_weight`` and ``nce_weight`` are λ_SM and λ_NCE
    (0 switches a term off: the ablations); ``window`` None draws t' uniformly (the paper's
    toys), else from N(t, window²) reflected into [0, 1]. The defaults (trig interpolant, four
    contrast times within 0.1) fitted a 2-D Gaussian best in a short run (tests). The learning
    rate decays to zero on a cosine. ``time_power`` p reads the interpolant at t^p
    (:func:`interpolant_coefficients`), ``fourier_features`` F > 0 adds random Fourier features
    of the standardised input, frequencies ~ N(0, ``fourier_scale``²) (:class:`EnergyNet`):
    both for densities with detail much finer than their spread (the toys' modes and cells).
    ``coordinates`` is what a molecule's density is learned on: "internal" (Z-matrix bonds,
    angles and torsions, methyl hydrogens relabelled to one rotamer; Eqs. 13–14) or
    "distances" (the pair distances, Eqs. 6–7); vectors ignore it."""

    hidden: int = 256
    depth: int = 4
    fourier_features: int = 0
    fourier_scale: float = 1.0
    interpolant: str = "trig"
    time_power: float = 1.0
    score_weight: float = 1.0
    nce_weight: float = 1.0
    n_negatives: int = 4
    window: float | None = 0.1
    steps: int = 2000
    batch_size: int = 1024
    learning_rate: float = 1e-3
    coordinates: str = "internal"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "seed", check_seed(self.seed))
        if self.coordinates not in COORDINATES:
            raise ValueError(f"unknown coordinates {self.coordinates!r}; use one of "
                             f"{COORDINATES}")
        if self.interpolant not in INTERPOLANTS:
            raise ValueError(f"unknown interpolant {self.interpolant!r}; use one of "
                             f"{INTERPOLANTS}")
        for name in ("hidden", "depth", "n_negatives", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.score_weight < 0 or self.nce_weight < 0 or \
                self.score_weight + self.nce_weight == 0:
            raise ValueError("score_weight and nce_weight must be non-negative, not both zero")
        if not self.time_power > 0:
            raise ValueError(f"time_power must be positive, got {self.time_power}")
        if self.fourier_features < 0 or not self.fourier_scale > 0:
            raise ValueError("fourier_features must be non-negative and fourier_scale positive, "
                             f"got {self.fourier_features} and {self.fourier_scale}")
        if self.window is not None and not self.window > 0:
            raise ValueError(f"window must be positive or None, got {self.window}")


def fit_energy(x: Tensor, config: NCEConfig, progress: bool = True) -> tuple[EnergyNet, dict]:
    """Train U_θ on standardised data ``x`` ``[N, D]`` by Eq. 4; returns the network and the
    loss history (``{"score_matching": [...], "infonce": [...]}``, one entry per step)."""
    from tqdm.auto import trange

    with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG untouched
        torch.manual_seed(config.seed)
        net = EnergyNet(x.shape[1], config.hidden, config.depth, config.fourier_features,
                        config.fourier_scale).to(x.dtype)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps))))
    rng = torch.Generator().manual_seed(config.seed)
    history = {"score_matching": [], "infonce": []}
    batch = min(config.batch_size, len(x))
    for _ in trange(config.steps, desc="NCE density", disable=not progress, mininterval=0.5):
        x0 = x[torch.randint(len(x), (batch,), generator=rng)]  # [B, D]
        t = torch.rand(batch, generator=rng, dtype=x.dtype)  # [B]
        noise = torch.randn(x0.shape, generator=rng, dtype=x.dtype)  # [B, D]
        t_neg = negative_times(t, config.n_negatives, config.window, rng)  # [B, K]
        losses = nce_losses(net, x0, t, noise, t_neg, config.interpolant,
                            need_score=config.score_weight > 0, power=config.time_power)
        loss = config.score_weight * losses.score_matching + config.nce_weight * losses.infonce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["score_matching"].append(float(losses.score_matching.detach()))
        history["infonce"].append(float(losses.infonce.detach()))
    return net.eval(), history


# --------------------------------------------------------------------------- molecules


def log_volume_factor(positions, scale: np.ndarray):
    """½ log pdet(J_fᵀJ_f) − ½ log det I ``[n]`` of Eq. 7 for positions ``[n, A, 3]`` (Å) and
    features f = (φ − μ)/``scale`` (φ the pair distances, ``scale`` ``[M]``), up to a constant.

    J_f ``[M, 3A]`` loses rank 6 (rigid motions); the six smallest eigenvalues of J_fᵀJ_f are
    dropped. Float64 throughout; a float64 tensor gives a (differentiable) tensor.
    """
    tensor = isinstance(positions, torch.Tensor)
    coords = positions if tensor else torch.as_tensor(positions, dtype=torch.float64)  # [n, A, 3]
    coords = coords - coords.mean(dim=1, keepdim=True)
    jac = PairwiseDistances(coords.shape[1]).jacobian(coords)  # [n, M, 3A]
    jac = jac / torch.as_tensor(scale, dtype=torch.float64)[:, None]
    eigval = torch.linalg.eigvalsh(jac.transpose(1, 2) @ jac)[:, 6:]  # [n, 3A − 6]
    squared = coords.square().sum(-1)  # [n, A]
    eye = torch.eye(3, dtype=torch.float64)
    inertia = (squared.sum(1)[:, None, None] * eye
               - torch.einsum("nai,naj->nij", coords, coords))  # [n, 3, 3]
    factor = 0.5 * eigval.log().sum(1) - 0.5 * torch.linalg.slogdet(inertia)[1]
    return factor if tensor else factor.numpy()


def chirality_quadruples(numbers, positions: np.ndarray) -> np.ndarray:
    """(c, a, b, d) ``[K, 4]`` for every atom c with four covalent neighbours (bonds from the
    mean distances of ``positions`` ``[n, A, 3]``, at most 1,000 evenly spaced frames of them,
    :func:`~ase_drift.metrics.covalent_bonds`), a < b < d its first three neighbours."""
    i, j = pair_indices(len(numbers))
    bonds = covalent_bonds(numbers, evenly_spaced(positions, 1000))
    neighbours = [sorted({*j[bonds][i[bonds] == c], *i[bonds][j[bonds] == c]})
                  for c in range(len(numbers))]
    rows = [[c, *near[:3]] for c, near in enumerate(neighbours) if len(near) == 4]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def signed_volumes(positions: np.ndarray, quadruples: np.ndarray) -> np.ndarray:
    """v_c = (r_a − r_c)·[(r_b − r_c) × (r_d − r_c)] ``[n, K]`` (Å³, Eq. 8)."""
    positions = np.asarray(positions, dtype=np.float64)
    c, a, b, d = (positions[:, quadruples[:, k]] for k in range(4))  # [n, K, 3] each
    return np.einsum("nki,nki->nk", a - c, np.cross(b - c, d - c))


class Chirality(NamedTuple):
    """Frames classified against the fitted frames' sign pattern (Eq. 8)."""

    mirror: np.ndarray  # [n] bool: every sign flipped
    inverted: np.ndarray  # [n] bool: some but not all flipped


def classify_chirality(positions: np.ndarray, quadruples: np.ndarray,
                       reference_signs: np.ndarray) -> Chirality:
    """Frames ``[n, A, 3]`` against the sign pattern ``[K]`` of ``quadruples`` ``[K, 4]``."""
    flipped = np.sign(signed_volumes(positions, quadruples)) != reference_signs  # [n, K]
    some = flipped.any(1)
    every = flipped.all(1) & (len(reference_signs) > 0)
    return Chirality(mirror=every, inverted=some & ~every)


def mirror_reflection(positions: np.ndarray, quadruples: np.ndarray,
                      reference_signs: np.ndarray) -> np.ndarray:
    """Factors ``[n, 1, 3]`` that reflect the mirror frames of ``positions`` ``[n, A, 3]``
    (x → −x) and leave the others: (−1, 1, 1) or (1, 1, 1)."""
    mirror = classify_chirality(positions, quadruples, reference_signs).mirror  # [n]
    factors = np.ones((len(mirror), 1, 3))
    factors[mirror, :, 0] = -1.0
    return factors


def reflect_mirrors(positions: np.ndarray, quadruples: np.ndarray,
                    reference_signs: np.ndarray) -> np.ndarray:
    """A copy of ``positions`` ``[n, A, 3]`` with the mirror frames reflected (x → −x)."""
    positions = np.asarray(positions, dtype=np.float64)
    return positions * mirror_reflection(positions, quadruples, reference_signs)


class InternalFrame(NamedTuple):
    """How a molecule's frames become internal coordinates (Eq. 14), fitted once."""

    rotors: np.ndarray  # [G, 6] (:func:`~ase_drift.features.find_rotors`)
    rotor_phases: np.ndarray  # [G] rad
    zmatrix: np.ndarray  # [A − 1, 4] (:func:`~ase_drift.internal_coordinates.build_zmatrix`)
    cuts: np.ndarray  # [A − 3] rad, each torsion's cut

    @classmethod
    def fit(cls, numbers, positions: np.ndarray) -> InternalFrame:
        """Rotors and phases, then the Z-matrix and the torsion cuts of the relabelled frames
        ``[N, A, 3]`` (already of one handedness)."""
        rotors = find_rotors(numbers, positions[0])
        phases = fit_rotor_phases(positions, rotors)
        positions = relabel_rotors(positions, rotors, phases)
        zmatrix = build_zmatrix(numbers, positions)
        cuts = torsion_cuts(internal_coordinates(positions, zmatrix).torsions)
        return cls(rotors, phases, zmatrix, cuts)

    def coordinates(self, positions):
        """(bonds, angles, unwrapped torsions) ``[n, 3A − 6]`` of frames ``[n, A, 3]`` after the
        rotor relabelling, and log ∏ r² ∏ sin θ ``[n]`` (Eq. 13): arrays, or tensors for a
        tensor (differentiable)."""
        positions = relabel_rotors(positions, self.rotors, self.rotor_phases)
        internal = internal_coordinates(positions, self.zmatrix)
        torsions = unwrap_torsions(internal.torsions, self.cuts)
        concatenate = torch.cat if isinstance(torsions, torch.Tensor) else np.concatenate
        return (concatenate([internal.bonds, internal.angles, torsions], 1),
                log_jacobian(internal))

    def as_metadata(self) -> dict:
        return {"rotors": self.rotors.tolist(), "rotor_phases": self.rotor_phases.tolist(),
                "zmatrix": self.zmatrix.tolist(), "torsion_cuts": self.cuts.tolist()}

    @classmethod
    def from_metadata(cls, metadata: dict) -> InternalFrame:
        return cls(np.asarray(metadata["rotors"], dtype=np.int64).reshape(-1, 6),
                   np.asarray(metadata["rotor_phases"], dtype=np.float64),
                   np.asarray(metadata["zmatrix"], dtype=np.int64).reshape(-1, 4),
                   np.asarray(metadata["torsion_cuts"], dtype=np.float64))


def relabel_rotors(positions, rotors: np.ndarray, phases: np.ndarray):
    """Frames ``[n, A, 3]`` with every rotor's hydrogens in canonical order
    (:func:`~ase_drift.features.canonical_rotor_order`): a float64 array, or for a tensor the
    same atoms of it, permuted (so gradients pass through)."""
    if isinstance(positions, torch.Tensor):
        if not len(rotors):
            return positions
        order = canonical_rotor_order(positions.detach().numpy(), rotors, phases)  # [n, A]
        return torch.take_along_dim(positions, torch.as_tensor(order)[..., None], dim=1)
    positions = np.asarray(positions, dtype=np.float64)
    if not len(rotors):
        return positions
    order = canonical_rotor_order(positions, rotors, phases)  # [n, A]
    return np.take_along_axis(positions, order[..., None], axis=1)


# --------------------------------------------------------------------------- the density


class LogProbGradient(NamedTuple):
    """log q of samples and its gradient (:meth:`NCEDensity.log_prob_gradient`)."""

    log_prob: np.ndarray  # [n]
    gradient: np.ndarray  # the samples' shape: [n, D], or [n, A, 3] per Å


class NCEDensity:
    """log q of a sampler's (or any) samples, learned by Eqs. 1–4 (see the module docstring).

    Two modes, fixed at :meth:`fit`: *vectors* ``[N, D]`` (2-D toys; log q is the density of the
    vectors), and *molecules* ``[N, A, 3]`` Å with ``numbers`` (log q̄ of Eq. 7 on centred
    Cartesian coordinates). Inputs are standardised per dimension (shift, scale). Up to an
    additive constant C in both modes.
    """

    def __init__(self, net: EnergyNet, config: NCEConfig, shift: Tensor, scale: Tensor,
                 metadata: dict):
        self.net = net.eval()
        self.config = config
        self.shift = shift  # [D]
        self.scale = scale  # [D]
        self.metadata = metadata

    @property
    def numbers(self) -> np.ndarray | None:
        numbers = self.metadata.get("numbers")
        return None if numbers is None else np.asarray(numbers, dtype=np.int64)

    @property
    def quadruples(self) -> np.ndarray:
        return np.asarray(self.metadata.get("chirality_quadruples", []),
                          dtype=np.int64).reshape(-1, 4)

    def __repr__(self) -> str:
        what = "vectors" if self.numbers is None else f"{len(self.numbers)} atoms"
        return f"NCEDensity({what}, D={len(self.shift)}, {self.config.steps} steps)"

    @classmethod
    def fit(cls, samples, numbers=None, n: int = 200_000, *, progress: bool = True,
            config: NCEConfig | None = None, **options) -> NCEDensity:
        """Fit to ``samples``: a sampler (``n`` frames drawn with ``sample_positions(n,
        seed)``, its ``numbers``), positions ``[N, A, 3]`` Å with ``numbers`` ``[A]``, or
        vectors ``[N, D]``. ``options`` are :class:`NCEConfig` fields (steps, seed, ...), or
        pass a whole ``config``. A sampler's frames cost little, and the density must be right
        in the tails, wherever the frames to be weighted land: fit on many more frames than
        you weight (ethanol: ESS 0.0013 fitted on 20,000, 0.083 on 200,000 with 12,000
        steps)."""
        config = NCEConfig(**options) if config is None else NCEConfig.from_dict(
            dict(config.as_dict(), **options))
        if hasattr(samples, "sample_positions"):
            numbers = samples.numbers if numbers is None else numbers
            samples = samples.sample_positions(n, seed=config.seed)
        samples = np.asarray(samples, dtype=np.float64)
        if not np.isfinite(samples).all():
            raise ValueError("samples contain non-finite values")
        metadata: dict = {"kind": KIND, "n_samples": len(samples)}
        if samples.ndim == 3:
            if numbers is None:
                raise ValueError("positions [N, A, 3] need numbers [A] (atomic numbers)")
            numbers = np.asarray(numbers, dtype=np.int64)
            if samples.shape[1:] != (len(numbers), 3):
                raise ValueError(f"positions must have shape [N, {len(numbers)}, 3] for "
                                 f"{len(numbers)} atoms, got {samples.shape}")
            quadruples = chirality_quadruples(numbers, samples)
            signs = np.sign(signed_volumes(samples, quadruples))  # [N, K]
            patterns, counts = np.unique(signs, axis=0, return_counts=True)
            native = patterns[np.argmax(counts)]
            metadata.update(numbers=numbers.tolist(), chirality_quadruples=quadruples.tolist(),
                            chirality_signs=native.tolist(),
                            units={"positions": "Å", "log_prob": "log Å^-(3A-3) + C"})
            if config.coordinates == "internal":
                samples = reflect_mirrors(samples, quadruples, native)
                frame = InternalFrame.fit(numbers, samples)
                metadata.update(frame.as_metadata())
                features = frame.coordinates(samples)[0]  # [N, 3A − 6]
            else:
                features = pair_distances(samples)  # [N, M]
        elif samples.ndim == 2:
            if numbers is not None:
                raise ValueError("numbers are for positions [N, A, 3], not vectors [N, D]")
            features = samples
        else:
            raise ValueError(f"samples must be vectors [N, D] or positions [N, A, 3], got "
                             f"shape {samples.shape}")
        if len(features) < 2:
            raise ValueError("fitting a density needs at least 2 samples")
        x = torch.as_tensor(features, dtype=torch.float32)
        shift, scale = x.mean(0), x.std(0).clamp_min(1e-8)  # [D], [D]
        net, history = fit_energy((x - shift) / scale, config, progress=progress)
        tail = max(1, config.steps // 10)
        metadata["final_losses"] = {k: float(np.mean(v[-tail:])) for k, v in history.items()}
        return cls(net, config, shift, scale, metadata)

    @classmethod
    def for_model(cls, model: str | Path, n: int = 200_000, *, progress: bool = True,
                  **options) -> NCEDensity:
        """The density of the sampler stored at ``model``, cached beside it as
        ``<model>.nce.pt``: read from there when it was fitted to this very file (SHA-256) with
        the same ``n`` and options (:class:`NCEConfig` fields), else fitted and written."""
        from .forces import file_sha256
        from .sampler import load

        model = Path(model)
        cache = model.with_name(model.name + ".nce.pt")
        digest, config = file_sha256(model), NCEConfig(**options)
        if cache.exists():
            cached = cls.load(cache)
            if (cached.metadata.get("sampler_sha256"), cached.metadata["n_samples"],
                    cached.config) == (digest, n, config):
                return cached
        density = cls.fit(load(model), n=n, config=config, progress=progress)
        density.metadata["sampler_sha256"] = digest
        density.save(cache)
        return density

    def energy(self, features: np.ndarray, t: float = 0.0, batch_size: int = 8192) -> np.ndarray:
        """U_θ(x, t) ``[n]`` of unstandardised features or vectors ``[n, D]``."""
        x = torch.as_tensor(np.asarray(features))
        with torch.no_grad():
            out = [self._energy(x[start:start + batch_size], t)
                   for start in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def log_prob(self, samples, batch_size: int = 8192) -> np.ndarray:
        """log q ``[n]`` up to the constant C: vectors ``[n, D]`` → −U_θ(x, 0) − Σ log scale;
        positions ``[n, A, 3]`` Å → log q̄ of Eq. 14 (internal coordinates) or Eq. 7
        (distances), per Å^(3A−3) of centred coordinates."""
        x = torch.as_tensor(self._check_samples(samples))
        with torch.no_grad():
            out = [self._log_prob(x[start:start + batch_size])
                   for start in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)

    def log_prob_gradient(self, samples, batch_size: int = 8192) -> LogProbGradient:
        """log q ``[n]`` (as :meth:`log_prob`) and its gradient ∇ log q, of the shape of
        ``samples`` (per Å for positions), by automatic differentiation through the same
        coordinates: the drift of Langevin moves that target q or a tempered mix of q and π
        (:mod:`ase_drift.annealing`). The mirror fold and the rotor relabelling are piecewise
        permutations and reflections, so the gradient is that of the folded, relabelled frame
        mapped back; it jumps where they switch, as log q̄ is continuous but not smooth there."""
        x = torch.as_tensor(self._check_samples(samples))
        values, gradients = [], []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].clone().requires_grad_(True)
            log_q = self._log_prob(chunk)
            gradients.append(torch.autograd.grad(log_q.sum(), chunk)[0])
            values.append(log_q.detach())
        if not values:
            return LogProbGradient(np.zeros(0), np.zeros_like(x.numpy()))
        return LogProbGradient(torch.cat(values).numpy(), torch.cat(gradients).numpy())

    def _energy(self, features: Tensor, t: float = 0.0) -> Tensor:
        """U_θ(x, t) ``[n]`` (float32) of unstandardised features ``[n, D]``."""
        x = (features.float() - self.shift) / self.scale
        return self.net(x, torch.full((len(x),), float(t)))

    def _log_prob(self, x: Tensor) -> Tensor:
        """log q ``[n]`` (float64, differentiable) of checked float64 samples."""
        if self.numbers is None:
            return -self._energy(x).double() - self.scale.double().log().sum()
        if self.config.coordinates == "distances":
            i, j = (torch.as_tensor(k) for k in pair_indices(x.shape[1]))
            distances = torch.linalg.norm(x[:, i] - x[:, j], dim=-1)  # [n, M]
            return (-self._energy(distances).double()
                    + log_volume_factor(x, self.scale.double().numpy()))
        reflection = mirror_reflection(x.detach().numpy(), self.quadruples,
                                       np.asarray(self.metadata["chirality_signs"]))
        features, log_volume = InternalFrame.from_metadata(self.metadata).coordinates(
            x * torch.as_tensor(reflection, dtype=x.dtype))
        return -self._energy(features).double() - self.scale.double().log().sum() - log_volume

    def _check_samples(self, samples) -> np.ndarray:
        """``samples`` as float64: vectors ``[n, D]`` or positions ``[n, A, 3]`` of the fit."""
        samples = np.asarray(samples, dtype=np.float64)
        if self.numbers is None:
            if samples.ndim != 2 or samples.shape[1] != len(self.shift):
                raise ValueError(f"expected vectors [n, {len(self.shift)}], got {samples.shape}")
            return samples
        return self._check_positions(samples)

    def chirality(self, positions) -> Chirality:
        """Which frames ``[n, A, 3]`` are mirror images or have inverted centres (Eq. 8)."""
        positions = self._check_positions(np.asarray(positions, dtype=np.float64))
        return classify_chirality(positions, self.quadruples,
                                  np.asarray(self.metadata["chirality_signs"]))

    def fold(self, positions) -> np.ndarray:
        """``positions`` ``[n, A, 3]`` with mirror images reflected (x → −x) into the fitted
        frames' handedness; log q̄ is unchanged, chiral observables become meaningful."""
        positions = self._check_positions(np.asarray(positions, dtype=np.float64))
        return reflect_mirrors(positions, self.quadruples,
                               np.asarray(self.metadata["chirality_signs"]))

    def _check_positions(self, positions: np.ndarray) -> np.ndarray:
        if self.numbers is None:
            raise ValueError("this density was fitted on vectors, not positions")
        if positions.ndim != 3 or positions.shape[1:] != (len(self.numbers), 3):
            raise ValueError(f"positions must have shape [n, {len(self.numbers)}, 3], got "
                             f"{positions.shape}")
        return positions

    def save(self, path: str | Path) -> Path:
        state = {"net": self.net.state_dict(), "shift": self.shift, "scale": self.scale}
        return save_checkpoint(path, self.config.as_dict(), state, dict(self.metadata))

    @classmethod
    def load(cls, path: str | Path) -> NCEDensity:
        """Read a density written by :meth:`save` (``torch.load(weights_only=True)``)."""
        payload = load_checkpoint(path, kind=KIND)
        # Densities written before internal coordinates existed were fitted on distances.
        config = NCEConfig.from_dict({"coordinates": "distances", **payload["config"]})
        state = payload["state_dict"]
        net = EnergyNet(len(state["shift"]), config.hidden, config.depth,
                        config.fourier_features, config.fourier_scale)
        net.load_state_dict(state["net"])
        return cls(net, config, state["shift"], state["scale"], payload["metadata"])
