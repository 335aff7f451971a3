"""Exact log-likelihoods of score-based diffusion models from the probability-flow ODE
(equations numbered as in docs/likelihoods.md, "Exact likelihoods from the probability-flow
ODE").

- (F1) Probability-flow ODE (Song et al. 2021, Eq. 13): the SDE dx = f(x, t) dt + g(t) dw and
  the ODE dx/dt = v(x, t) = f(x, t) − ½ g(t)² ∇ₓ log p_t(x) share the marginals p_t; with a
  learned score s_θ ≈ ∇ log p_t the ODE is a continuous normalising flow.
- (F2) Instantaneous change of variables (Chen et al. 2018; Song et al. 2021, Eq. 39):
  d log p_t(x_t)/dt = −∇·v(x_t, t), hence, integrating x and the divergence together from
  x_{t₀} = x to t₁,

      log p_{t₀}(x) = log p_{t₁}(x_{t₁}) + ∫_{t₀}^{t₁} ∇·v(x_t, t) dt.

- (F3) VE SDE (f = 0, g² = dσ²/dt), with τ = log σ as the time: dx/dτ = −σ² s_θ(x, σ),
  τ from log σ_min to log σ_max, whatever the schedule σ(t).
- (F4) VP SDE (f = −½β x, g² = β): dx/dt = −½ β(t) (x + s_θ(x, t)), t from t_min to 1.
- (F5) Prior: p_{t₁} ≈ N(0, v I) on the d-dimensional space the diffusion lives in,
  log p = −‖x‖²/(2v) − (d/2) log(2πv); v = σ_max² (VE, the data's own spread neglected:
  a relative error (s/σ_max)² per dimension) or 1 (VP).
- (F6) Divergence: exact, tr ∂v/∂x, as one backward pass through D stacked copies of the batch;
  or Hutchinson–Skilling, ∇·v = E_ε[εᵀ (∂v/∂x) ε] for any ε with E[εεᵀ] = I, one Rademacher
  probe per sample held fixed along the trajectory (FFJORD, Grathwohl et al. 2019): one
  backward pass, unbiased, with variance 2 Σ_{i≠j} J_ij² (symmetrised) per evaluation.

**Subspaces.** A diffusion that lives in a linear subspace (molecules: centred coordinates,
d = 3A − 3) passes the orthogonal projection P; the velocity is read as P v(P x), whose full
Jacobian trace is the divergence within the subspace, tr(P J P), and the probes are Pε
(E[Pε εᵀP] = P). Densities are then per unit d-dimensional volume of the subspace.

Everything works on tensors ``[B, D]``; the molecular samplers
(:meth:`~ase_drift.diffusion.dsm.DiffusionSampler.log_prob`,
:meth:`~ase_drift.diffusion.energy.EnergyDiffusion.log_prob`) put coordinates, units and
rotations on top (:func:`orbit_log_volume`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .samplers import ScoreFn

Velocity = Callable[[Tensor, Tensor], Tensor]
"""``velocity(x [B, D], t [] ) -> dx/dt [B, D]``, differentiable in x."""

Projection = Callable[[Tensor], Tensor]
"""A linear orthogonal projection of ``[B, D]`` onto the subspace the diffusion lives in."""

DIVERGENCES = ("exact", "hutchinson")


class FlowLogProb(NamedTuple):
    """The result of (F2) for a batch of B points."""

    log_prob: Tensor  # [B] log p_{t₀}(x)
    prior_log_prob: Tensor  # [B] log p_{t₁}(x_{t₁}) (F5)
    delta_log_prob: Tensor  # [B] ∫ ∇·v dt
    end: Tensor  # [B, D] x_{t₁}
    nfe: int  # velocity evaluations (each one backward pass, over D·B rows when exact)


def exact_divergence(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(x) ``[B, D]``, tr ∂fn/∂x ``[B]``) with one backward pass over D stacked copies of
    the batch: copy i contributes ∂fn_i/∂x_i. ``fn`` must treat rows independently."""
    batch, dim = x.shape
    with torch.enable_grad():
        stacked = x.detach().repeat(dim, 1).requires_grad_(True)  # [D·B, D], copy i = rows iB…
        out = fn(stacked).view(dim, batch, dim)  # [D, B, D]
        diagonal = out.diagonal(dim1=0, dim2=2)  # [B, D]: out[i, b, i]
        (grad,) = torch.autograd.grad(diagonal.sum(), stacked)
    trace = grad.view(dim, batch, dim).diagonal(dim1=0, dim2=2).sum(-1)  # [B]
    return out[0].detach(), trace


def hutchinson_divergence(fn: Callable[[Tensor], Tensor], x: Tensor,
                          probe: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(x) ``[B, D]``, εᵀ (∂fn/∂x) ε ``[B]``) for probes ε = ``probe`` ``[B, D]`` (F6):
    one vector–Jacobian product."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)  # [B, D]
        (vjp,) = torch.autograd.grad((out * probe).sum(), x)  # [B, D] εᵀJ
    return out.detach(), (vjp * probe).sum(-1)


def gaussian_log_prob(x: Tensor, variance: float, dim: int | None = None) -> Tensor:
    """log N(x; 0, v I) ``[B]`` of (F5) on a ``dim``-dimensional (sub)space (default D) holding
    the rows of ``x`` ``[B, D]``."""
    dim = x.shape[1] if dim is None else dim
    return -0.5 * x.square().sum(-1) / variance - 0.5 * dim * math.log(2 * math.pi * variance)


def rademacher(shape, rng: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Independent ±1 entries (E[εεᵀ] = I)."""
    return torch.randint(0, 2, shape, generator=rng).to(dtype) * 2 - 1


def flow_log_prob(velocity: Velocity, x: Tensor, t0: float, t1: float,
                  prior_log_prob: Callable[[Tensor], Tensor], *, divergence: str = "exact",
                  project: Projection | None = None, rng: torch.Generator | None = None,
                  rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                  options: dict | None = None) -> FlowLogProb:
    """log p_{t₀}(x) ``[B]`` for points ``x`` ``[B, D]`` by (F2): the state (x_t, ∫∇·v) is
    integrated from ``t0`` to ``t1`` with ``torchdiffeq.odeint`` (``method``, ``rtol``,
    ``atol``, ``options``), then ``prior_log_prob(x_{t₁})`` is added.

    ``divergence`` is ``"exact"`` or ``"hutchinson"`` (probes from ``rng``, required); with
    ``project`` (see the module docstring) the flow, the probes and the divergence stay in the
    subspace, and ``x`` must lie in it.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; use one of {DIVERGENCES}")
    if x.ndim != 2:
        raise ValueError(f"x must be a batch of vectors [B, D], got shape {tuple(x.shape)}")
    if divergence == "hutchinson" and rng is None:
        raise ValueError("the Hutchinson divergence needs rng= (a torch.Generator)")
    from torchdiffeq import odeint

    project = project or (lambda z: z)
    probe = (project(rademacher(x.shape, rng, x.dtype)) if divergence == "hutchinson"
             else None)  # [B, D], fixed along the trajectory
    nfe = 0

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1

        def field(z: Tensor) -> Tensor:
            return project(velocity(project(z), t))  # P v(P z)

        if probe is None:
            dx, div = exact_divergence(field, state[0])
        else:
            dx, div = hutchinson_divergence(field, state[0], probe)
        return dx, div

    times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    try:
        xs, integrals = odeint(dynamics, (x.detach(), x.new_zeros(len(x))), times, rtol=rtol,
                               atol=atol, method=method, options=options)
    except AssertionError as exc:  # torchdiffeq's "underflow in dt"
        raise RuntimeError(f"the probability-flow ODE is too stiff for {method} at rtol={rtol}, "
                           f"atol={atol} ({exc}): loosen the tolerances or pass a fixed-step "
                           f"method") from exc
    end, integral = xs[-1], integrals[-1]
    prior = prior_log_prob(end)
    return FlowLogProb(prior + integral, prior, integral, end, nfe)


def ve_log_prob(score_fn: ScoreFn, x: Tensor, sigma_min: float, sigma_max: float, *,
                dim: int | None = None, prior_log_prob: Callable[[Tensor], Tensor] | None = None,
                **options) -> FlowLogProb:
    """log p_{σ_min}(x) ``[B]`` of a VE diffusion (F3) with score ``score_fn(x, σ [B])``; the
    prior is N(0, σ_max² I) on ``dim`` dimensions (F5) unless ``prior_log_prob`` is given.
    ``options`` go to :func:`flow_log_prob`."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

    def velocity(z: Tensor, tau: Tensor) -> Tensor:
        sigma = tau.exp()
        return -sigma**2 * score_fn(z, sigma.expand(len(z)))  # [B, D]

    if prior_log_prob is None:
        def prior_log_prob(end):
            return gaussian_log_prob(end, sigma_max**2, dim)

    return flow_log_prob(velocity, x, math.log(sigma_min), math.log(sigma_max), prior_log_prob,
                         **options)


def vp_log_prob(score_fn: ScoreFn, x: Tensor, beta: Callable[[Tensor], Tensor], t_min: float,
                *, dim: int | None = None,
                prior_log_prob: Callable[[Tensor], Tensor] | None = None,
                **options) -> FlowLogProb:
    """log p_{t_min}(x) ``[B]`` of a VP diffusion (F4) with noise rate ``beta(t)`` and score
    ``score_fn(x, t [B])``; the prior is N(0, I) on ``dim`` dimensions (F5) unless
    ``prior_log_prob`` is given. ``options`` go to :func:`flow_log_prob`."""

    def velocity(z: Tensor, t: Tensor) -> Tensor:
        return -0.5 * beta(t) * (z + score_fn(z, t.expand(len(z))))  # [B, D]

    if prior_log_prob is None:
        def prior_log_prob(end):
            return gaussian_log_prob(end, 1.0, dim)

    return flow_log_prob(velocity, x, t_min, 1.0, prior_log_prob, **options)


# --------------------------------------------------------------------------- molecules


def centre_flat(z: Tensor, n_atoms: int) -> Tensor:
    """P z: flattened coordinates ``[B, 3A]`` with each frame's centroid removed."""
    coords = z.view(len(z), n_atoms, 3)
    return (coords - coords.mean(1, keepdim=True)).view_as(z)


def orbit_log_volume(aligned: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """log det(tr(H) I − H) ``[n]``, H = Σ_a s_a r_aᵀ, for frames ``aligned`` ``[n, A, 3]``
    Kabsch-aligned onto the centred ``reference`` r ``[A, 3]`` (F7 of docs/likelihoods.md).

    Aligned frames s form the (3A − 6)-dimensional section S = {s : H(s) symmetric}, whose
    normals at s are the rotations of the reference, e_k × r_a. Centred coordinates are
    R = Q s (Q ∈ SO(3)), with volume element |det(N̂ᵀΩ_s)| dQ dS, Ω_s = (e_k × s_a) the rotation
    generators at s and N̂ the orthonormalised normals; NᵀΩ_s = tr(H) I − H. A density q_S on S
    spread uniformly over rotations therefore has the centred-coordinate density
    q̄(R) ∝ q_S(s) / det(tr(H) I − H).
    """
    h = np.einsum("nai,aj->nij", np.asarray(aligned, dtype=np.float64),
                  np.asarray(reference, dtype=np.float64))  # [n, 3, 3]
    m = np.trace(h, axis1=1, axis2=2)[:, None, None] * np.eye(3) - h
    sign, logdet = np.linalg.slogdet(m)
    if (sign <= 0).any():
        raise ValueError("a frame is not at a Kabsch optimum of the reference (det ≤ 0)")
    return logdet
