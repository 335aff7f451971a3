"""Samplers for score-based diffusion models, as free functions (k-diffusion style).

Every sampler takes a score callable ``score_fn(x, sigma)`` returning ∇ₓ log p_σ(x) for a batch
``x`` ``[B, D]`` (any trailing shape works) at noise levels ``sigma`` ``[B]``, the starting
batch ``x`` (noise at ``sigmas[0]``), a decreasing sequence of noise levels ``sigmas`` ending
with 0 (see :mod:`ase_drift.diffusion.schedules`), a ``torch.Generator`` and an optional
``callback`` called after every level. Nothing here knows about molecules: a model acting on
``[B, A, 3]`` passes a score function of that shape, and a ``noise_sampler`` when its
diffusion lives in a subspace (e.g. centred coordinates).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x [B, ...], sigma [B]) -> ∇ₓ log p_σ(x) [B, ...]``."""

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise_sampler(sigma, sigma_next) -> standard normal noise shaped like x``."""


def default_noise_sampler(x: Tensor, rng: torch.Generator) -> NoiseSampler:
    """Independent N(0, I) noise shaped like ``x``, drawn from ``rng``."""

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)

    return noise


def check_sigmas(sigmas, like: Tensor) -> Tensor:
    """``sigmas`` as a 1-D tensor on ``like``'s dtype and device; raise ValueError unless it
    is strictly decreasing, positive, and ends with 0 (the noise-free level)."""
    sigmas = torch.as_tensor(sigmas, dtype=like.dtype, device=like.device)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 levels, "
                         f"got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or not bool((sigmas[:-1] > 0).all()):
        raise ValueError("sigmas must be positive and end with 0 (the noise-free level; "
                         "see schedules.append_zero)")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing")
    return sigmas


def langevin_step(score_fn: ScoreFn, x: Tensor, sigma: Tensor, noise: Tensor,
                  snr: float) -> Tensor:
    """One Langevin corrector step at level ``sigma`` ``[B]`` (Song et al. 2021, Algorithm 4):
    x + ε s(x, σ) + √(2ε) z with ε = 2 (snr ‖z‖ / ‖s‖)², norms per sample, averaged over the
    batch.

    On a Gaussian of variance v with the exact score, ε = 2 snr² v and this unadjusted Langevin
    step leaves N(0, v / (1 − snr²)) invariant: repeated corrector steps bias the variance by
    a relative snr² (2.6 % at the usual snr = 0.16).
    """
    score = score_fn(x, sigma)
    noise_norm = noise.flatten(1).norm(dim=-1).mean()
    score_norm = score.flatten(1).norm(dim=-1).mean()
    step = 2 * (snr * noise_norm / score_norm) ** 2
    return x + step * score + (2 * step).sqrt() * noise


def pc_sample(score_fn: ScoreFn, x: Tensor, sigmas, rng: torch.Generator,
              callback: Callable[[dict], None] | None = None, snr: float = 0.16,
              n_corrector: int = 1, noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Predictor–corrector sampling of the variance-exploding SDE (Song et al. 2021,
    Algorithm 2, with the noise-free last step of their Appendix G).

    For each pair of consecutive positive levels σ > σ' in ``sigmas``:

    1. predictor (reverse diffusion): x ← x + (σ² − σ'²) s(x, σ) + √(σ² − σ'²) z;
    2. corrector: ``n_corrector`` Langevin steps at σ' (:func:`langevin_step`, ``snr``).

    The last step, from σ_min to 0, adds no noise: x ← x + σ_min² s(x, σ_min), Tweedie's
    posterior mean E[x₀ | x_σmin]. Network evaluations: n + (n − 1)·``n_corrector`` for
    n positive levels.

    Args:
        score_fn: ``score_fn(x, sigma)`` with ``x`` ``[B, ...]`` and ``sigma`` ``[B]``.
        x: the starting batch, distributed as p at ``sigmas[0]`` (for the VE SDE:
            σ_max · N(0, I)); not modified.
        sigmas: strictly decreasing positive levels followed by 0 (``[n + 1]``).
        rng: the generator of all noise draws (unless ``noise_sampler`` is given).
        callback: called after each level with ``{"x", "i", "sigma", "sigma_next",
            "denoised"}`` (``denoised``: the Tweedie estimate x + σ² s(x, σ) before the step).
        snr: signal-to-noise ratio setting the corrector's step size.
        n_corrector: Langevin steps per level (0: the plain reverse-diffusion sampler).
        noise_sampler: ``noise_sampler(sigma, sigma_next)`` → standard normal noise shaped
            like ``x``; default independent N(0, I) from ``rng``.

    Returns:
        The samples, shaped like ``x``.
    """
    if n_corrector < 0:
        raise ValueError(f"n_corrector must be >= 0, got {n_corrector}")
    sigmas = check_sigmas(sigmas, x)
    noise = noise_sampler or default_noise_sampler(x, rng)
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        score = score_fn(x, sigma * ones)
        denoised = x + sigma**2 * score
        if sigma_next == 0:
            x = denoised  # noise-free last step: Tweedie's E[x₀ | x_σ]
        else:
            variance = sigma**2 - sigma_next**2
            x = x + variance * score + variance.sqrt() * noise(sigma, sigma_next)  # predictor
            for _ in range(n_corrector):  # corrector at the new level
                x = langevin_step(score_fn, x, sigma_next * ones, noise(sigma_next, sigma_next),
                                  snr)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_next": sigma_next,
                      "denoised": denoised})
    return x


def reverse_sde_sample(score_fn: ScoreFn, x: Tensor, times,
                       drift_fn: Callable[[Tensor, Tensor], Tensor],
                       g2_fn: Callable[[Tensor], Tensor], rng: torch.Generator,
                       probability_flow: bool = False,
                       callback: Callable[[dict], None] | None = None,
                       noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Euler–Maruyama integration of a forward SDE dx = f(x, t) dt + g(t) dw backwards in
    time (Song et al. 2021): the reverse-time SDE dx = [f − g² s] dt + g dw̄ (their Eq. 6) or,
    with ``probability_flow``, the deterministic probability-flow ODE dx = [f − ½ g² s] dt
    (their Eq. 13). Here ``score_fn(x, t)`` takes the diffusion *time* ``t`` ``[B]`` where the
    VE samplers above take a noise level.

    Args:
        score_fn: ∇ₓ log p_t(x) for ``x`` ``[B, ...]`` at times ``t`` ``[B]``.
        x: the starting batch, distributed as p at ``times[0]`` (for the VP SDE: N(0, I)).
        times: strictly decreasing, non-negative times ``[n + 1]`` (n steps).
        drift_fn: f(x, t) for a scalar (0-dim) ``t``, shaped like ``x``.
        g2_fn: g(t)² for a scalar ``t``.
        rng: the generator of the noise draws (unless ``noise_sampler`` is given).
        probability_flow: integrate the ODE instead of the SDE (no noise is drawn).
        callback: called after each step with ``{"x", "i", "t", "t_next"}``.
        noise_sampler: ``noise_sampler(t, t_next)`` → standard normal noise shaped like ``x``.

    Returns:
        The batch at ``times[-1]``, shaped like ``x``.
    """
    times = torch.as_tensor(times, dtype=x.dtype, device=x.device)
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D sequence of at least 2 entries, got shape "
                         f"{tuple(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()) or times[-1] < 0:
        raise ValueError("times must be strictly decreasing and non-negative")
    noise = noise_sampler or default_noise_sampler(x, rng)
    ones = x.new_ones(x.shape[0])
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        dt = t - t_next  # > 0: a step backwards in time
        g2 = g2_fn(t)
        weight = 0.5 * g2 if probability_flow else g2
        x = x - (drift_fn(x, t) - weight * score_fn(x, t * ones)) * dt
        if not probability_flow:
            x = x + (g2 * dt).sqrt() * noise(t, t_next)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "t_next": t_next})
    return x
