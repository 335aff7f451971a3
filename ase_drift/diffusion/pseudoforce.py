"""Generative pseudo-force fields (GPFF; papers/generative-pseudo-force-fields.txt): a force-field
network, without time input, trained to predict pseudo-forces that point from a noisy structure
back to its equilibrium structure; generation is structure relaxation.

The maths (symbols restored from the paper's prose; x₀ a reference equilibrium ``[A, 3]`` Å,
x̃ = x₀ + σε a noisy copy):

- Pseudo-PES (Eq. 7): E(x̃) = ½ k ‖x̃ − x₀‖² with unit stiffness k = 1 eV/Å², so the pseudo-forces
  (Eq. 8) are F = −∇E = x₀ − x̃ in eV/Å, numerically equal to the displacement in Å.
- Label ambiguity: before computing F the atoms of x̃ are matched to those of x₀ within each
  element by the Hungarian algorithm on squared distances of centred coordinates (A.8,
  :func:`hungarian_alignment`).
- Loss (Eq. 9): L = E_σ E_x₀ [ w(σ) ‖F_θ(x̃) − F‖² ], ‖·‖ the Frobenius norm over atoms, with
  w(σ) = min(1/σ, 1000) (the paper's reciprocal weight clipped at 1000, §3.2 and A.4) and
  ln σ ~ N(P_mean, P_std²) clipped to [σ_min, σ_max] (A.4; the paper's numbers were lost in the
  text: this module uses P_mean = 0 (σ median 1 Å, where a QM9 molecule's atoms start to lose
  their neighbours), P_std = 1.5, clip [0.01, 30] Å, the sampler's range in A.2).
- Score (Eq. 11): ∇ log p_σ(x̃) = F/σ² (the Boltzmann distribution of the pseudo-PES at
  k_B T = k σ² is the VE perturbation kernel), and the denoiser is x̂₀ = x̃ + F (Eq. 13).
- Noise-level estimate (Eq. 18): σ̂ = ‖F‖/√(3A) (E‖x₀ − x̃‖² = 3A σ²).

Molecules live in the centred subspace: the noise is centred (no centre-of-mass translation)
and the predicted pseudo-forces are projected to zero net force per molecule.

The network is SchNetPack's PaiNN (Schütt et al. 2021) with a gated-equivariant vector head
(one vector per atom). Because generation starts from σ_max = 30 Å, where atoms are tens of Å
apart, every pair of atoms of a molecule is an edge (no radius graph) and distances are expanded
in Gaussians of ln d (:class:`LogGaussianRBF`, 0.3–300 Å) rather than the paper's 600 linear
Gaussians up to 150 Å: the same coverage at a CPU-sized cost.

The time-conditioned diffusion baseline (§3.1, A.10) is the same network with an embedding of
ln σ added to PaiNN's initial scalar features (:class:`NoiseEmbedding`) and EDM's
preconditioning (Karras et al. 2022): D(x̃; σ) = c_skip x̃ + c_out v_θ(x̃, σ),
c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), trained on ‖v_θ − (x₀ − c_skip x̃)/c_out‖²
(EDM's λ(σ) = 1/c_out² weighting of ‖D − x₀‖²), with the same σ distribution and no permutation
alignment (the paper aligns for GPFF only). Unlike EDM, positions enter in Å (no c_in) so both
models see the same geometry features.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, StoredConfig, load_checkpoint, save_checkpoint
from ..sampler import TemplateSampler, register_sampler

#: Clip of the loss weight 1/σ (paper §3.2, A.4).
MAX_LOSS_WEIGHT = 1000.0


@dataclass(frozen=True)
class PseudoForceConfig(StoredConfig):
    """Network and noise distribution of a GPFF (or, with ``time_conditioned``, of the EDM
    diffusion baseline). Lengths in Å.

    The paper's model (A.1) has 256 features, 4 interactions and 600 radial functions; the
    shipped CPU model is smaller (see docs/pseudo-force-fields.md)."""

    n_features: int = 96
    n_interactions: int = 3
    n_rbf: int = 48
    rbf_min: float = 0.3
    rbf_max: float = 300.0
    time_conditioned: bool = False
    sigma_data: float = 1.5  # σ_d of EDM's preconditioning (baseline only)
    p_mean: float = 0.0  # ln σ ~ N(p_mean, p_std²), clipped to [sigma_min, sigma_max]
    p_std: float = 1.5
    sigma_min: float = 0.01
    sigma_max: float = 30.0


#: The fields of :class:`PseudoForceConfig` that set the training noise only (not the network):
#: a further training stage may change them.
TRAINING_NOISE_FIELDS = ("p_mean", "p_std", "sigma_min", "sigma_max")


class LogGaussianRBF(nn.Module):
    """Gaussians in ln d: exp(−(ln d − μ_k)²/(2w²)), μ_k evenly spaced on [ln d_min, ln d_max],
    w the spacing. ``forward(d [E, 1]) -> [E, 1, n_rbf]``, the shapes (and ``n_rbf``) PaiNN
    expects of SchNetPack's radial bases."""

    def __init__(self, n_rbf: int, d_min: float, d_max: float):
        super().__init__()
        self.n_rbf = n_rbf
        centres = torch.linspace(math.log(d_min), math.log(d_max), n_rbf)
        self.register_buffer("centres", centres)
        self.width = float(centres[1] - centres[0])

    def forward(self, d: Tensor) -> Tensor:
        log_d = d.clamp_min(1e-6).log()[..., None]  # [E, 1, 1]
        exponent = 0.5 * ((log_d - self.centres) / self.width) ** 2  # [E, 1, n_rbf]
        # exact zeros beyond e⁻³⁰: the float32 tails would be denormal numbers, which make the
        # matrix products of PaiNN's filter network (and their gradients) ~50x slower on CPUs
        return torch.where(exponent < 30.0, torch.exp(-exponent), 0.0)


class NoiseEmbedding(nn.Module):
    """Embedding of ln σ added to PaiNN's initial scalar features (the diffusion baseline's time
    input). Plugs into PaiNN's ``electronic_embeddings`` hook: ``forward(q [N, F], inputs)``
    reads the per-atom noise levels ``inputs["sigma"]`` ``[N]``."""

    def __init__(self, n_features: int, n_frequencies: int = 16):
        super().__init__()
        self.register_buffer("frequencies", torch.arange(1, n_frequencies + 1) * 0.5)
        self.net = nn.Sequential(nn.Linear(2 * n_frequencies, n_features), nn.SiLU(),
                                 nn.Linear(n_features, n_features))

    def forward(self, q: Tensor, inputs: dict) -> Tensor:
        phase = inputs["sigma"].log()[:, None] * self.frequencies  # [N, n_freq]
        return self.net(torch.cat([phase.sin(), phase.cos()], -1))  # [N, F]


def all_pairs(n_atoms: Tensor) -> tuple[Tensor, Tensor]:
    """``(idx_i, idx_j)`` ``[E]`` of every ordered pair i ≠ j within each molecule of a batch
    whose molecules have ``n_atoms`` ``[B]`` atoms, stored one after another."""
    offsets = torch.cumsum(n_atoms, 0) - n_atoms  # [B]
    idx_i, idx_j = [], []
    for n in torch.unique(n_atoms).tolist():
        local = torch.ones(n, n, dtype=torch.bool).fill_diagonal_(False).nonzero()  # [n(n-1), 2]
        start = offsets[n_atoms == n]  # [b]
        idx_i.append((start[:, None] + local[None, :, 0]).reshape(-1))
        idx_j.append((start[:, None] + local[None, :, 1]).reshape(-1))
    return torch.cat(idx_i), torch.cat(idx_j)


def molecule_mean(values: Tensor, idx_m: Tensor, n_molecules: int) -> Tensor:
    """Per-molecule mean of per-atom ``values`` ``[N, 3]``, broadcast back to atoms ``[N, 3]``."""
    sums = values.new_zeros(n_molecules, values.shape[1]).index_add_(0, idx_m, values)
    counts = torch.bincount(idx_m, minlength=n_molecules).to(values.dtype)
    return (sums / counts[:, None])[idx_m]


class PseudoForceNet(nn.Module):
    """PaiNN + gated-equivariant vector head: one vector per atom ``[N, 3]`` (zero net vector per
    molecule). With ``config.time_conditioned`` an embedding of ln σ enters the scalar features.

    ``forward(numbers [N], positions [N, 3] Å, idx_m [N], n_molecules, sigma [B] | None)``."""

    def __init__(self, config: PseudoForceConfig):
        super().__init__()
        from schnetpack.nn import CosineCutoff, build_gated_equivariant_mlp
        from schnetpack.representation import PaiNN

        self.config = config
        extra = [NoiseEmbedding(config.n_features)] if config.time_conditioned else None
        self.painn = PaiNN(config.n_features, config.n_interactions,
                           LogGaussianRBF(config.n_rbf, config.rbf_min, config.rbf_max),
                           CosineCutoff(2 * config.rbf_max), electronic_embeddings=extra)
        self.head = build_gated_equivariant_mlp(config.n_features, 1, n_layers=2)

    def forward(self, numbers: Tensor, positions: Tensor, idx_m: Tensor, n_molecules: int,
                sigma: Tensor | None = None) -> Tensor:
        from schnetpack import properties

        if self.config.time_conditioned and sigma is None:
            raise ValueError("the time-conditioned baseline needs the noise level sigma")
        idx_i, idx_j = all_pairs(torch.bincount(idx_m, minlength=n_molecules))
        inputs = {properties.Z: numbers, properties.Rij: positions[idx_j] - positions[idx_i],
                  properties.idx_i: idx_i, properties.idx_j: idx_j}
        if sigma is not None:
            inputs["sigma"] = sigma[idx_m]  # [N]
        features = self.painn(inputs)
        _, vectors = self.head((features["scalar_representation"],
                                features["vector_representation"]))  # [N, 3, 1]
        vectors = vectors.squeeze(-1)  # [N, 3]
        return vectors - molecule_mean(vectors, idx_m, n_molecules)


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor]:
    """EDM's (c_skip, c_out) at noise levels ``sigma`` (Karras et al. 2022, Table 1)."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt()


def sample_sigmas(n: int, config: PseudoForceConfig, rng: torch.Generator) -> Tensor:
    """``n`` training noise levels ``[n]``: ln σ ~ N(p_mean, p_std²), clipped (paper A.4)."""
    log_sigma = config.p_mean + config.p_std * torch.randn(n, generator=rng)
    return log_sigma.exp().clamp(config.sigma_min, config.sigma_max)


def loss_weights(sigma: Tensor) -> Tensor:
    """GPFF's per-sample loss weight min(1/σ, 1000) (paper §3.2)."""
    return (1.0 / sigma).clamp(max=MAX_LOSS_WEIGHT)


def hungarian_alignment(reference: np.ndarray, noisy: np.ndarray,
                        numbers: np.ndarray) -> np.ndarray:
    """The permutation ``p`` ``[A]`` (within each element) minimising Σ_i ‖noisy_i −
    reference_{p_i}‖² (paper A.8): noisy atom i is matched to reference atom ``p[i]``, so
    ``reference[p] − noisy`` is the aligned pseudo-force. The paper centres both structures
    first; that changes nothing here, since a translation t adds Σ_i 2 t·(noisy_i −
    reference_{p_i}) to the cost, the same for every permutation within an element."""
    from scipy.optimize import linear_sum_assignment

    perm = np.arange(len(numbers))
    for z in np.unique(numbers):
        atoms = np.flatnonzero(numbers == z)
        if len(atoms) < 2:
            continue
        cost = ((noisy[atoms, None, :] - reference[None, atoms, :]) ** 2).sum(-1)  # [a, a]
        rows, cols = linear_sum_assignment(cost)
        perm[atoms[rows]] = atoms[cols]
    return perm


def pseudo_force_targets(reference: Tensor, noisy: Tensor, numbers: Tensor, idx_m: Tensor,
                         align: bool = True) -> Tensor:
    """Pseudo-forces x₀ − x̃ ``[N, 3]`` (Eq. 8 with k = 1 eV/Å²) of a batch of molecules (flat
    atoms stored molecule after molecule, molecule of each atom ``idx_m`` = 0, 0, …, 1, …, as
    :func:`molecule_batch` makes them), after per-element Hungarian alignment of each noisy
    molecule to its reference when ``align``."""
    if not align:
        return reference - noisy
    ref, noi, z, m = (t.detach().cpu().numpy() for t in (reference, noisy, numbers, idx_m))
    index = np.arange(len(z))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(m))])  # molecule m: bounds[m:m + 2]
    for start, stop in itertools.pairwise(bounds):
        index[start:stop] = start + hungarian_alignment(ref[start:stop], noi[start:stop],
                                                        z[start:stop])
    return reference[torch.as_tensor(index)] - noisy


def training_loss(net: PseudoForceNet, numbers: Tensor, reference: Tensor, idx_m: Tensor,
                  n_molecules: int, rng: torch.Generator) -> Tensor:
    """One batch's loss: GPFF's Eq. 9 (aligned pseudo-forces, weight min(1/σ, 1000)) or, for a
    time-conditioned net, EDM's preconditioned denoising loss (module docstring).

    ``reference`` ``[N, 3]`` are equilibrium positions (Å), centred per molecule; the noise is
    centred per molecule."""
    config = net.config
    sigma = sample_sigmas(n_molecules, config, rng)  # [B]
    eps = torch.randn(reference.shape, generator=rng)
    eps = eps - molecule_mean(eps, idx_m, n_molecules)  # no centre-of-mass translation
    noisy = reference + sigma[idx_m, None] * eps  # [N, 3]
    if config.time_conditioned:
        c_skip, c_out = edm_coefficients(sigma[idx_m, None], config.sigma_data)  # [N, 1]
        target = (reference - c_skip * noisy) / c_out
        residual = net(numbers, noisy, idx_m, n_molecules, sigma) - target
        weight = torch.ones_like(sigma)
    else:
        target = pseudo_force_targets(reference, noisy, numbers, idx_m)
        residual = net(numbers, noisy, idx_m, n_molecules) - target
        weight = loss_weights(sigma)
    per_molecule = torch.zeros_like(sigma).index_add_(0, idx_m, residual.square().sum(-1))
    return (weight * per_molecule).mean()


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainingConfig(StoredConfig):
    """Optimisation of :func:`train_pseudo_force_field` (the paper's A.1 uses AdamW, batch 512
    and EMA 0.995 for days on a GPU; these are CPU-sized). Training stops at ``steps`` or after
    ``minutes`` of wall time, whichever comes first; the learning rate decays by a cosine from
    ``learning_rate`` to 5 % of it over that budget (the fraction of steps or time used)."""

    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 1e-5
    ema_decay: float = 0.999
    grad_clip: float = 10.0
    steps: int | None = None
    minutes: float | None = 60.0
    checkpoint_minutes: float = 3.0
    seed: int = 0


def molecule_batch(molecules, chosen: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """``(numbers [N], positions [N, 3] Å centred per molecule, idx_m [N])`` of molecules
    ``chosen`` of ``molecules`` (a :class:`~ase_drift.datasets.qm9.QM9`-like set: flat
    ``numbers``, ``positions``, ``offsets``), stored one after another."""
    sizes = molecules.offsets[chosen + 1] - molecules.offsets[chosen]  # [B]
    starts = np.repeat(molecules.offsets[chosen] - np.cumsum(sizes) + sizes, sizes)
    atoms = starts + np.arange(sizes.sum())  # [N]
    idx_m = torch.as_tensor(np.repeat(np.arange(len(chosen)), sizes))
    positions = torch.as_tensor(molecules.positions[atoms], dtype=torch.float32)
    positions = positions - molecule_mean(positions, idx_m, len(chosen))
    return torch.as_tensor(molecules.numbers[atoms]), positions, idx_m


def validation_loss(net: PseudoForceNet, molecules, seed: int = 0, batch_size: int = 64) -> float:
    """The training loss over all of ``molecules`` with fixed noise (``seed``): comparable
    across checkpoints."""
    rng = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(molecules), batch_size):
            part = np.arange(start, min(start + batch_size, len(molecules)))
            numbers, positions, idx_m = molecule_batch(molecules, part)
            total += float(training_loss(net, numbers, positions, idx_m, len(part), rng)) * len(part)
    return total / len(molecules)


def cosine_learning_rate(base: float, fraction: float) -> float:
    """The learning rate after ``fraction`` ∈ [0, 1] of the budget: a half cosine from
    ``base`` down to 5 % of it (:class:`TrainingConfig`)."""
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * fraction)))


def budget_fraction(training: TrainingConfig, step: int, elapsed_s: float) -> float:
    """The fraction of :class:`TrainingConfig`'s budget used after ``step`` steps and
    ``elapsed_s`` seconds: of the steps or of the minutes, whichever is further along."""
    return max(step / training.steps if training.steps else 0.0,
               elapsed_s / (60 * training.minutes) if training.minutes else 0.0)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA's decay at (0-based) ``step``: min(decay, (1 + step)/(10 + step)), so the average
    forgets the initial weights quickly before settling at ``decay``."""
    return min(decay, (1 + step) / (10 + step))


def _trainer_state(net, ema, optimizer, step, elapsed, history) -> tuple[dict, dict]:
    return ({"net": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()},
            {"kind": "gpff-trainer", "step": step, "elapsed_s": elapsed, "history": history})


def train_pseudo_force_field(molecules, config: PseudoForceConfig, training: TrainingConfig,
                             validation=None,
                             checkpoint: str | None = None, progress: bool = True,
                             initial: PseudoForceNet | None = None):
    """Train a GPFF (or, with ``config.time_conditioned``, the EDM baseline) on ``molecules``.

    Each step draws ``batch_size`` molecules uniformly (with replacement across steps), noise
    levels, centred noise and, for GPFF, aligned pseudo-force targets (:func:`training_loss`).
    Randomness is a function of (``seed``, step), so a run resumed from ``checkpoint`` (written
    atomically every ``checkpoint_minutes``) continues exactly where it stopped; each checkpoint
    records the EMA net's :func:`validation_loss` on the molecule set ``validation``.

    ``initial``: a net to fine-tune instead of a fresh one. ``config`` must describe its network;
    only the training noise (``p_mean``, ``p_std``, ``sigma_min``, ``sigma_max``) may differ, so
    a further stage can spend its steps on other noise levels.

    Returns ``(ema_net, record)``: the exponential moving average of the weights and a record
    {steps, wall time, loss history (mean training loss per 50 steps, validation losses)}.
    """
    import copy
    import os
    import time

    from tqdm.auto import tqdm

    if training.steps is None and training.minutes is None:
        raise ValueError("give steps or minutes (or both): training needs a budget")
    if initial is not None:
        noise = {k: getattr(config, k) for k in TRAINING_NOISE_FIELDS}
        if replace(initial.config, **noise) != config:
            raise ValueError(f"config {config} does not describe the initial net "
                             f"({initial.config}): only its training noise may differ")
        net = copy.deepcopy(initial).train().requires_grad_(True)
        net.config = config
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training.seed)
            net = PseudoForceNet(config)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=training.learning_rate,
                                  weight_decay=training.weight_decay)
    step, elapsed = 0, 0.0
    history: dict = {"step": [], "loss": [], "validation_step": [], "validation_loss": []}
    if checkpoint is not None and os.path.exists(checkpoint):
        payload = load_checkpoint(checkpoint, kind="gpff-trainer")
        net.load_state_dict(payload["state_dict"]["net"])
        ema.load_state_dict(payload["state_dict"]["ema"])
        optimizer.load_state_dict(payload["state_dict"]["optimizer"])
        step, elapsed = payload["metadata"]["step"], payload["metadata"]["elapsed_s"]
        history = payload["metadata"]["history"]

    def save():
        if checkpoint is not None:
            if validation is not None:
                history["validation_step"].append(step)
                history["validation_loss"].append(validation_loss(ema, validation))
            state, meta = _trainer_state(net, ema, optimizer, step, elapsed, history)
            save_checkpoint(checkpoint, {"model": config.as_dict(),
                                         "training": training.as_dict()}, state, meta)

    bar = tqdm(total=training.steps, initial=step, disable=not progress, mininterval=2.0,
               desc="GPFF" if not config.time_conditioned else "EDM baseline")
    running, last_save, start = [], time.monotonic(), time.monotonic() - elapsed
    while (used := budget_fraction(training, step, elapsed)) < 1.0:
        rng = torch.Generator().manual_seed(training.seed * 1_000_003 + step)
        chosen = np.random.default_rng([training.seed, step]).integers(
            len(molecules), size=training.batch_size)
        numbers, positions, idx_m = molecule_batch(molecules, chosen)
        for group in optimizer.param_groups:
            group["lr"] = cosine_learning_rate(training.learning_rate, used)
        loss = training_loss(net, numbers, positions, idx_m, len(chosen), rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), training.grad_clip)
        optimizer.step()
        decay = ema_decay_at(step, training.ema_decay)
        with torch.no_grad():
            for average, current in zip(ema.parameters(), net.parameters()):
                average.lerp_(current, 1 - decay)
        step += 1
        elapsed = time.monotonic() - start
        running.append(loss.item())
        if len(running) == 50:
            history["step"].append(step)
            history["loss"].append(float(np.mean(running)))
            bar.set_postfix(loss=f"{history['loss'][-1]:.3g}", refresh=False)
            running = []
        bar.update()
        if time.monotonic() - last_save > 60 * training.checkpoint_minutes:
            save()
            last_save = time.monotonic()
    bar.close()
    if not history["validation_step"] or history["validation_step"][-1] != step:
        save()
    record = {"steps": step, "wall_time_s": round(elapsed, 1), "history": history}
    return ema, record


# ----------------------------------------------------------------------------------------------
# Shape prior (paper A.5, A.6)

#: Relative principal variances (sorted, summing to 1) of the shape archetypes (paper A.6; the
#: paper's numbers were lost in the text: sphere and disc sit on the vertices of the NPR
#: triangle, the rod is offset from (1, 0, 0) because no molecule has all its variance on one
#: axis).
SHAPE_TARGETS = {"sphere": (1 / 3, 1 / 3, 1 / 3), "disc": (0.5, 0.5, 0.0),
                 "rod": (0.8, 0.1, 0.1)}


def principal_covariance(positions: np.ndarray) -> np.ndarray:
    """The covariance ``[3, 3]`` (Å²) of centred atomic coordinates ``[A, 3]`` (uniform weights)
    in their principal frame: diagonal, variances in non-increasing order (paper A.5)."""
    centred = positions - positions.mean(0)
    variances = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1]
    return np.diag(np.clip(variances, 1e-6, None))


def cholesky_log_vector(covariance: np.ndarray) -> np.ndarray:
    """The unconstrained 6-vector (ln L₁₁, ln L₂₂, ln L₃₃, L₂₁, L₃₁, L₃₂) of Σ = L Lᵀ (Eq. 20)."""
    lower = np.linalg.cholesky(covariance)
    return np.array([*np.log(np.diag(lower)), lower[1, 0], lower[2, 0], lower[2, 1]])


def covariance_from_vector(vector: np.ndarray) -> np.ndarray:
    """Σ = L Lᵀ ``[..., 3, 3]`` from 6-vectors ``[..., 6]`` (inverse of
    :func:`cholesky_log_vector`): positive definite for any vector."""
    lower = np.zeros((*vector.shape[:-1], 3, 3))
    for k in range(3):
        lower[..., k, k] = np.exp(vector[..., k])
    lower[..., 1, 0], lower[..., 2, 0], lower[..., 2, 1] = (vector[..., 3], vector[..., 4],
                                                            vector[..., 5])
    return lower @ np.swapaxes(lower, -1, -2)


def fit_shape_prior(molecules, components: int = 5, seed: int = 0,
                    reg_covar: float = 1e-4) -> dict:
    """One Gaussian mixture (``components``, fewer when an atom count has few molecules) per atom
    count on the Cholesky-log vectors of the molecules' principal covariances (paper A.5).
    Returns plain data {atom count (str): {weights [K], means [K, 6], covariances [K, 6, 6]}}
    so that checkpoints hold no pickled objects."""
    from sklearn.mixture import GaussianMixture

    sizes = molecules.n_atoms
    prior = {}
    for n in np.unique(sizes):
        vectors = np.stack([cholesky_log_vector(principal_covariance(molecules[m][1]))
                            for m in np.flatnonzero(sizes == n)])  # [M_n, 6]
        if len(vectors) < 2:  # one molecule of this size: a point mass widened by reg_covar
            prior[str(int(n))] = {"weights": [1.0], "means": vectors.tolist(),
                                  "covariances": [(reg_covar * np.eye(6)).tolist()]}
            continue
        mixture = GaussianMixture(min(components, len(vectors)), covariance_type="full",
                                  reg_covar=reg_covar, random_state=seed).fit(vectors)
        prior[str(int(n))] = {"weights": mixture.weights_.tolist(),
                              "means": mixture.means_.tolist(),
                              "covariances": mixture.covariances_.tolist()}
    return prior


def sample_shape_covariances(prior: dict, n_atoms: int, n: int,
                             rng: np.random.Generator) -> np.ndarray:
    """``n`` covariances ``[n, 3, 3]`` (Å²) for molecules of ``n_atoms`` atoms from the shape
    prior (ValueError for an atom count it has not seen)."""
    if str(n_atoms) not in prior:
        raise ValueError(f"the shape prior knows molecules of {sorted(map(int, prior))} atoms, "
                         f"not {n_atoms}")
    mixture = prior[str(n_atoms)]
    weights = np.asarray(mixture["weights"])
    component = rng.choice(len(weights), size=n, p=weights / weights.sum())
    means, covariances = np.asarray(mixture["means"]), np.asarray(mixture["covariances"])
    vectors = np.stack([rng.multivariate_normal(means[k], covariances[k]) for k in component])
    return covariance_from_vector(vectors)


# ----------------------------------------------------------------------------------------------
# The model behind the user's API

#: Pretrained models shipped in ase_drift/datasets/data (made by
#: ``python -m ase_drift.datasets.make_gpff_qm9``).
PRETRAINED = {"qm9": "gpff-qm9.pt", "qm9-baseline": "gpff-qm9-baseline.pt"}


@register_sampler("gpff")
class PseudoForceField:
    """A trained pseudo-force field (or the time-conditioned EDM baseline, ``config.
    time_conditioned``) for molecules of any formula made of the elements it was trained on.

    Args:
        net: the network (:class:`PseudoForceNet`).
        shape_prior: the per-atom-count Gaussian mixtures of :func:`fit_shape_prior` (or None).
        metadata: provenance (training record, data, units).
    """

    def __init__(self, net: PseudoForceNet, shape_prior: dict | None = None,
                 metadata: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.shape_prior = shape_prior
        self.metadata = dict(metadata or {})

    @property
    def config(self) -> PseudoForceConfig:
        return self.net.config

    def __repr__(self) -> str:
        what = "EDM baseline" if self.config.time_conditioned else "GPFF"
        return (f"PseudoForceField({what}, PaiNN {self.config.n_features}x"
                f"{self.config.n_interactions}, elements {self.metadata.get('elements')})")

    def save(self, path) -> Path:
        """Write the model to ``path`` (atomically); non-finite weights raise ValueError."""
        state = self.net.state_dict()
        if not all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point()):
            raise ValueError(f"not saving {self!r}: its weights are not finite")
        metadata = dict(self.metadata, kind=self.kind, shape_prior=self.shape_prior)
        return save_checkpoint(path, {"model": self.config.as_dict()}, state, metadata)

    @classmethod
    def from_checkpoint(cls, payload: dict, path) -> PseudoForceField:
        config = PseudoForceConfig.from_dict(payload["config"]["model"])
        net = PseudoForceNet(config)
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the stored configuration") from exc
        metadata = {k: v for k, v in payload["metadata"].items()
                    if k not in ("kind", "shape_prior")}
        return cls(net, payload["metadata"].get("shape_prior"), metadata)

    @classmethod
    def load(cls, path) -> PseudoForceField:
        """The model stored at ``path`` (CheckpointError for a missing, corrupt or other file)."""
        return cls.from_checkpoint(load_checkpoint(path, kind=cls.kind), path)

    @classmethod
    def load_pretrained(cls, name: str = "qm9") -> PseudoForceField:
        """A shipped model: ``"qm9"`` (the GPFF) or ``"qm9-baseline"`` (the time-conditioned
        EDM diffusion baseline trained the same way); docs/pseudo-force-fields.md says how."""
        from ..datasets import bundled_path

        if name not in PRETRAINED:
            raise ValueError(f"unknown pretrained model {name!r}; available: "
                             f"{', '.join(PRETRAINED)}")
        return cls.load(bundled_path(PRETRAINED[name]))

    @staticmethod
    def train_conformers(conformations, training: TrainingConfig | None = None,
                         config: PseudoForceConfig | None = None,
                         base: PseudoForceField | None = None, progress: bool = True,
                         sampler: str = "stochastic-heun", nfe: int = 64,
                         **sampling) -> ConformerSampler:
        """A GPFF of one molecule trained on its ``conformations``
        (:class:`~ase_drift.data.Conformations`, Å), behind the Sampler protocol.

        Each conformation is a reference equilibrium of the pseudo-PES, so the field pulls noisy
        structures towards the conformational ensemble; samples are drawn with ``sampler`` and
        ``nfe`` (and ``sampling`` options of :meth:`generate`) from the Gaussian prior. ``base``
        (e.g. ``PseudoForceField.load_pretrained("qm9")``) is fine-tuned instead of training a
        fresh ``config`` network (then ``config`` may change only the training noise). Default
        training: 2,000 steps of 32 conformations.
        """
        from ..datasets.qm9 import QM9

        numbers = np.asarray(conformations.numbers, dtype=np.int64)
        positions = np.asarray(conformations.positions, dtype=np.float32)  # [N, A, 3]
        count, n_atoms = positions.shape[:2]
        molecules = QM9(np.tile(numbers, count), positions.reshape(-1, 3),
                        np.arange(count + 1) * n_atoms, np.arange(count))
        training = training or TrainingConfig(steps=2000, minutes=None)
        config = config or (base.config if base is not None else PseudoForceConfig())
        net, record = train_pseudo_force_field(molecules, config, training, progress=progress,
                                               initial=None if base is None else base.net)
        elements = sorted(set(numbers.tolist()) | set((base.metadata.get("elements") or [])
                                                      if base is not None else []))
        field = PseudoForceField(net, None, {"elements": elements})
        metadata = {"numbers": numbers.tolist(), "training": {k: record[k] for k in
                                                               ("steps", "wall_time_s")},
                    "training_frames": count, "fine_tuned": base is not None,
                    "temperature_K": getattr(conformations, "temperature_K", None),
                    "units": {"positions": "Å"}}
        return ConformerSampler(field, numbers, {"sampler": sampler, "nfe": nfe, **sampling},
                                metadata)

    # ---- forces and denoisers

    def _network(self, numbers: Tensor, x: Tensor, sigma: Tensor | None) -> Tensor:
        """The net's per-atom vectors ``[B, A, 3]`` for molecules ``numbers`` ``[B, A]`` at
        ``x`` ``[B, A, 3]`` (Å)."""
        batch, n_atoms = numbers.shape
        idx_m = torch.arange(batch).repeat_interleave(n_atoms)  # [B·A]
        with torch.inference_mode():
            out = self.net(numbers.reshape(-1), x.reshape(-1, 3).float(), idx_m, batch, sigma)
        return out.reshape(batch, n_atoms, 3).to(x.dtype)

    def denoiser(self, numbers: Tensor):
        """``denoiser(x [B, A, 3], sigma [B]) -> x̂₀`` for molecules ``numbers`` ``[B, A]``, the
        callable :mod:`~ase_drift.diffusion.samplers` takes. GPFF: x̂₀ = x + F(x), σ ignored
        (Eq. 13); baseline: EDM's c_skip x + c_out v(x, σ)."""
        def gpff(x: Tensor, sigma: Tensor) -> Tensor:
            return x + self._network(numbers[:len(x)], x, None)

        def edm(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = sigma.float().clamp_min(self.config.sigma_min)  # [b]
            c_skip, c_out = edm_coefficients(sigma[:, None, None], self.config.sigma_data)
            return c_skip * x + c_out * self._network(numbers[:len(x)], x, sigma)

        # the samplers call the denoiser on the still-active rows of a batch; all rows have
        # the same species in generate(), so the first len(x) rows of numbers are right
        return edm if self.config.time_conditioned else gpff

    def pseudo_forces(self, numbers, positions) -> np.ndarray:
        """Predicted pseudo-forces (eV/Å; stiffness 1 eV/Å², so numerically x̂₀ − x in Å) on one
        molecule ``positions`` ``[A, 3]`` or a batch ``[B, A, 3]`` (Å) of species ``numbers``
        ``[A]``. Only a time-agnostic GPFF is a force field: the baseline raises ValueError."""
        if self.config.time_conditioned:
            raise ValueError("the time-conditioned diffusion baseline needs a noise level: it "
                             "is not a force field (only a GPFF is)")
        numbers = self.check_numbers(numbers)
        positions = np.asarray(positions, dtype=np.float64)
        single = positions.ndim == 2
        x = torch.as_tensor(positions.reshape(-1, len(numbers), 3))  # [B, A, 3]
        if not bool(torch.isfinite(x).all()):
            raise ValueError("positions contain NaN or inf")
        z = torch.as_tensor(numbers).expand(len(x), -1)
        forces = self._network(z, x, None).numpy()
        return forces[0] if single else forces

    def check_numbers(self, numbers) -> np.ndarray:
        """``numbers`` as an int64 array; ValueError naming an element the model never saw."""
        from ase.data import chemical_symbols

        numbers = np.asarray(numbers, dtype=np.int64)
        if numbers.ndim != 1 or len(numbers) < 2:
            raise ValueError(f"need a molecule of at least 2 atoms, got numbers {numbers}")
        known = self.metadata.get("elements")
        unknown = sorted(set(numbers.tolist()) - set(known)) if known else []
        if unknown:
            raise ValueError(f"element(s) {', '.join(chemical_symbols[z] for z in unknown)} "
                             f"not among the model's elements "
                             f"({', '.join(chemical_symbols[z] for z in known)})")
        return numbers

    def calculator(self):
        """The pseudo-forces as an ASE calculator (:class:`~ase_drift.calculators.
        PseudoForceCalculator`): ``FIRE(atoms).run(fmax=...)`` is direct denoising."""
        from ..calculators import PseudoForceCalculator

        return PseudoForceCalculator(self)

    # ---- generation

    def generate(self, formula, n: int, sampler: str = "dd", nfe: int = 64,
                 adaptive: bool = False, shape: str | None = None, seed: int | None = None,
                 **options) -> list:
        """``n`` molecules of ``formula`` (``list[ase.Atoms]``, centred; ``info`` holds the
        sampler, the evaluations spent (``nfe``) and the final noise estimate ``sigma_hat``).

        Args:
            formula: a chemical formula ("C4H10O"; atoms in the formula's order) or an
                ``ase.Atoms`` template. A template with a ``FixAtoms`` constraint is a scaffold
                (DD+scaffold, §3.3): its fixed atoms keep their positions, the others start at
                their template positions plus N(0, ``prior_sigma``²) noise (default 1 Å).
            n: number of molecules.
            sampler: "dd", "sdd" (direct denoising, §3.3), "ancestral", "heun" or
                "stochastic-heun" (EDM samplers with GPFF's score, Eq. 11).
            nfe: budget of network evaluations per molecule.
            adaptive: EDM samplers: the paper's adaptive sampling (AS); DD: stop each molecule
                once σ̂ < ``tolerance`` (default 0.005 Å), the paper's force threshold.
            shape: DD/SDD only: None (isotropic prior N(0, σ_max²)), "gmm" (the shape prior:
                covariances from the per-atom-count mixture, A.5, enforced by DD+shape, Eq. 16)
                or an archetype "rod", "disc", "sphere" (A.6: the mixture's total variance
                split by :data:`SHAPE_TARGETS`).
            seed: seeds every random draw.
            options: ``prior_sigma`` (Å), ``tolerance`` (DD), ``step_size``,
                ``step_size_below`` and ``max_overshoot`` (Å) (DD and SDD; default λ = 1, the
                paper's x ← x̂₀),
                ``noise_scale`` (SDD),
                ``strictness`` (DD+shape, default 1, decaying linearly to 0 over the steps),
                ``rho``, ``sigma_min``, ``sigma_max``, ``s_churn``, ``target_steps`` (adaptive
                EDM samplers: the levels of AS's target schedule, default half the budget's),
                ``max_step_ratio`` (any sampler: each atom's step to x̂₀ at most this many
                times the molecule's current radius of gyration; default no limit),
                ``batch_size`` (default 256).
        """
        from ase import Atoms
        from ase.constraints import FixAtoms

        from ..sampler import check_seed

        template = formula if isinstance(formula, Atoms) else None
        numbers = self.check_numbers(template.numbers if template is not None
                                     else formula_numbers(formula))
        fixed = None
        if template is not None:
            others = [type(c).__name__ for c in template.constraints
                      if not isinstance(c, FixAtoms)]
            if others:
                raise ValueError(f"generate keeps FixAtoms constraints only, not {others}")
            indices = [i for c in template.constraints for i in c.get_indices()]
            if indices:
                fixed = np.zeros(len(numbers), dtype=bool)
                fixed[indices] = True
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None \
            else check_seed(seed)
        batch_size = int(options.pop("batch_size", 256))
        frames = []
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            run = generate_positions(self, numbers, count, sampler, nfe, adaptive, shape,
                                     seed=seed + start, template=template, fixed=fixed,
                                     **options)
            for k in range(count):
                positions = run.x[k].double().numpy()
                atoms = Atoms(numbers=numbers, positions=positions if fixed is not None
                              else positions - positions.mean(0))
                atoms.info.update(sampler=sampler, nfe=int(run.nfe[k]),
                                  sigma_hat=float(run.sigma_hat[k]), adaptive=bool(adaptive),
                                  shape=shape or "none")
                if fixed is not None:
                    atoms.set_constraint(FixAtoms(mask=fixed))
                frames.append(atoms)
        return frames


def formula_numbers(formula: str) -> np.ndarray:
    """Atomic numbers ``[A]`` of a chemical formula, in its order ("CH4" → C, H, H, H, H);
    ValueError for an unknown element or an empty formula."""
    from ase.data import atomic_numbers
    from ase.formula import Formula

    if not isinstance(formula, str) or not formula.strip():
        raise ValueError(f"need a chemical formula such as 'C4H10O', got {formula!r}")
    try:
        counts = Formula(formula.strip()).count()
    except ValueError as exc:
        raise ValueError(f"cannot parse the formula {formula!r}: {exc}") from None
    unknown = [symbol for symbol in counts if symbol not in atomic_numbers]
    if unknown or not counts:
        raise ValueError(f"the formula {formula!r} has unknown element(s) {', '.join(unknown)}")
    return np.array([atomic_numbers[s] for s, c in counts.items() for _ in range(c)])


EDM_SAMPLERS = ("ancestral", "heun", "stochastic-heun")
SAMPLERS = ("dd", "sdd", *EDM_SAMPLERS)
#: Options of :meth:`PseudoForceField.generate` passed on to DD and to SDD.
DD_OPTIONS = ("step_size", "step_size_below", "max_overshoot")
SDD_OPTIONS = ("noise_scale", *DD_OPTIONS)
SHAPES = ("gmm", *SHAPE_TARGETS)
#: Smallest relative principal variance of a shape target (the disc's third axis is 0 in
#: A.6; hydrogens stick out of every plane and :func:`shape_constraint` needs τ > 0).
MIN_RELATIVE_VARIANCE = 0.02


def shape_variances(model: PseudoForceField, n_atoms: int, count: int, shape: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Target principal variances ``[count, 3]`` (Å², non-increasing) of DD+shape: from the
    model's shape prior ("gmm"), or its total variance split by an archetype's relative
    variances (A.6)."""
    if model.shape_prior is None:
        raise ValueError(f"shape={shape!r} needs a shape prior, and this model has none")
    variances = np.diagonal(sample_shape_covariances(model.shape_prior, n_atoms, count, rng),
                            axis1=1, axis2=2)  # [count, 3]
    variances = -np.sort(-variances, axis=1)
    if shape == "gmm":
        return variances
    relative = np.clip(SHAPE_TARGETS[shape], MIN_RELATIVE_VARIANCE, None)
    return variances.sum(1, keepdims=True) * relative / relative.sum()


def generate_positions(model: PseudoForceField, numbers: np.ndarray, count: int, sampler: str,
                       nfe: int, adaptive: bool, shape: str | None, seed: int, template=None,
                       fixed: np.ndarray | None = None, **options):
    """One batch of :meth:`PseudoForceField.generate`: the prior, then the sampler; returns the
    sampler's :class:`~ase_drift.diffusion.samplers.DenoiseRun` (``x`` ``[count, A, 3]`` Å)."""
    from . import samplers

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose None or one of {', '.join(SHAPES)}")
    if shape is not None and sampler not in ("dd", "sdd"):
        raise ValueError("shape constraints (DD+shape) need sampler 'dd' or 'sdd'")
    config = model.config
    sigma_max = float(options.pop("sigma_max", config.sigma_max))
    sigma_min = float(options.pop("sigma_min", config.sigma_min))
    prior_sigma = options.pop("prior_sigma", None)
    strictness = float(options.pop("strictness", 1.0))
    tolerance = float(options.pop("tolerance", 0.005))
    rho = float(options.pop("rho", 7.0))
    target_steps = options.pop("target_steps", None)
    max_step_ratio = options.pop("max_step_ratio", None)
    if target_steps is not None and not (adaptive and sampler in EDM_SAMPLERS):
        raise ValueError("target_steps is the adaptive schedule's target: it needs "
                         "adaptive=True and an EDM sampler (ancestral, heun, stochastic-heun)")
    extra = {name: options.pop(name) for name in (*SDD_OPTIONS, "s_churn") if name in options}
    if options:
        raise TypeError(f"unknown generate option(s): {', '.join(options)}")
    rng = torch.Generator().manual_seed(seed)
    n_atoms = len(numbers)
    z = torch.randn((count, n_atoms, 3), generator=rng)  # [B, A, 3]
    constrain = None
    if fixed is not None:
        sigma_max = 1.0 if prior_sigma is None else float(prior_sigma)
        start = torch.as_tensor(template.positions, dtype=torch.float32)  # [A, 3]
        x = start + sigma_max * z * torch.as_tensor(~fixed)[:, None]
    elif shape is None:
        sigma_max = sigma_max if prior_sigma is None else float(prior_sigma)
        x = sigma_max * z
    else:
        target = torch.as_tensor(shape_variances(model, n_atoms, count, shape,
                                                 np.random.default_rng(seed)),
                                 dtype=torch.float32)  # [B, 3]
        x = z * target.sqrt()[:, None, :]

        def constrain(x: Tensor, step: int) -> Tensor:  # Eq. 16, strictness decaying to 0
            return samplers.shape_constraint(x, target[:len(x)],
                                             strictness * (1 - step / max(nfe, 1)))
    if fixed is None:
        x = x - x.mean(1, keepdim=True)
    denoiser = model.denoiser(torch.as_tensor(numbers).expand(count, -1))
    if max_step_ratio is not None:
        denoiser = samplers.size_trust_region(denoiser, max_step_ratio)
    if sampler == "dd":
        return samplers.dd_sample(denoiser, x, nfe, tolerance=tolerance if adaptive else None,
                                  constrain=constrain, fixed=fixed,
                                  **{k: v for k, v in extra.items() if k in DD_OPTIONS})
    if sampler == "sdd":
        return samplers.sdd_sample(denoiser, x, nfe, rng, constrain=constrain, fixed=fixed,
                                   **{k: v for k, v in extra.items() if k in SDD_OPTIONS})
    schedule = {"sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho,
                "adaptive": adaptive, "target_steps": target_steps, "fixed": fixed}
    if sampler == "ancestral":
        return samplers.ancestral_sample(denoiser, x, nfe, rng, **schedule)
    if sampler == "heun":
        return samplers.heun_sample(denoiser, x, nfe, **schedule)
    return samplers.stochastic_heun_sample(denoiser, x, nfe, rng, **schedule,
                                           **{k: v for k, v in extra.items() if k == "s_churn"})


@register_sampler("gpff-conformers")
class ConformerSampler(TemplateSampler):
    """A GPFF of one molecule (:meth:`PseudoForceField.train_conformers`) behind the
    :class:`~ase_drift.sampler.Sampler` protocol: each batch is a run of the stored sampler
    (``sampling``: sampler, nfe and :meth:`PseudoForceField.generate` options) from the
    Gaussian prior; ``sample_positions(n, seed, **options)`` overrides them per call."""

    batch_size = 1000

    def __init__(self, field: PseudoForceField, numbers, sampling: dict, metadata: dict):
        super().__init__(numbers, 1.0, field.config, metadata)
        self.field = field
        self.sampling = dict(sampling)

    def __repr__(self) -> str:
        from ..sampler import _formula

        return (f"ConformerSampler({_formula(self.numbers)}, GPFF, {self.sampling['sampler']} "
                f"{self.sampling['nfe']} NFE)")

    def _sample_batch(self, n: int, rng: torch.Generator, **options) -> np.ndarray:
        """``n`` conformations ``[n, A, 3]`` (Å, centred, float32)."""
        settings = {**self.sampling, **options}
        sampler, nfe = settings.pop("sampler"), settings.pop("nfe")
        adaptive = settings.pop("adaptive", False)
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        run = generate_positions(self.field, self.numbers, n, sampler, nfe, adaptive, None, seed,
                                 **settings)
        return (run.x - run.x.mean(1, keepdim=True)).numpy().astype(np.float32)

    def save(self, path) -> Path:
        metadata = dict(self.metadata, kind=self.kind, elements=self.field.metadata["elements"])
        return save_checkpoint(path, {"model": self.field.config.as_dict(),
                                      "sampling": self.sampling},
                               self.field.net.state_dict(), metadata)

    @classmethod
    def from_checkpoint(cls, payload: dict, path) -> ConformerSampler:
        field = PseudoForceField.from_checkpoint(payload, path)
        metadata = {k: v for k, v in payload["metadata"].items() if k not in ("kind", "elements")}
        return cls(field, metadata["numbers"], payload["config"]["sampling"], metadata)
