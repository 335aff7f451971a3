"""Denoising-score-matching diffusion baseline (VE-SDE), behind the same Sampler protocol.

The paper's comparison method: a variance-exploding SDE (Song et al. 2021) with
σ(t) = σ_min (σ_max/σ_min)^t on centred, Kabsch-aligned coordinates normalised by their global
standard deviation (as the drift sampler's Cartesian space), a small Transformer score network
over atoms, and the predictor–corrector sampler :func:`~ase_drift.diffusion.samplers.pc_sample`
(per level a reverse-diffusion predictor, then one Langevin corrector step; a noise-free
denoising step at σ_min: 1,000 levels = 1,999 network evaluations).

Force-guided variant (``force_sigma > 0``): for noise levels σ < ``force_sigma`` the regression
target −ε/σ of denoising score matching is replaced by the Boltzmann score of the clean sample,
σ_data·F(x₀)/kT — in the spirit of potential score matching (Guo et al. 2025): at small noise
∇log p_σ(x) ≈ ∇log π(x), which force labels give exactly even when the data are biased.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, StoredConfig, save_checkpoint
from ..data import Conformations, check_temperature
from ..features import Cartesian
from ..sampler import TemplateSampler, _formula, register_sampler
from .samplers import pc_sample
from .schedules import ve_sigma, ve_sigmas


@dataclass(frozen=True)
class DiffusionConfig(StoredConfig):
    """Score network, noise schedule, training and sampler settings (paper's DSM: d=128, 4
    layers, 4 heads; PC sampler with 1,000 noise levels)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    force_sigma: float = 0.0
    temperature_K: float | None = None
    steps: int = 20000
    batch_size: int = 256
    learning_rate: float = 5e-4
    sampler_steps: int = 1000
    snr: float = 0.16
    seed: int = 0


class ScoreTransformer(nn.Module):
    """s_θ(x, σ) ``[B, A, 3]``: a Transformer encoder over atom tokens built from coordinates,
    element embeddings and a Fourier embedding of log σ; the output is centred over atoms and
    divided by σ."""

    def __init__(self, numbers, config: DiffusionConfig):
        super().__init__()
        species = sorted({int(z) for z in numbers})
        self.register_buffer("species_index",
                             torch.tensor([species.index(int(z)) for z in numbers]))
        self.register_buffer("atom_index", torch.arange(len(numbers)))
        d = config.d_model
        self.element = nn.Embedding(len(species), d)
        self.position = nn.Embedding(len(numbers), d)  # atom identity: order is fixed
        self.coords = nn.Linear(3, d)
        self.noise = nn.Sequential(nn.Linear(32, d), nn.SiLU(), nn.Linear(d, d))
        self.register_buffer("frequencies", torch.randn(16, generator=torch.Generator()
                                                        .manual_seed(0)) * 4)
        layer = nn.TransformerEncoderLayer(d, config.n_heads, 4 * d, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 3))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        log_sigma = sigma.log()[:, None] * self.frequencies  # [B, 16]
        noise = self.noise(torch.cat([log_sigma.sin(), log_sigma.cos()], -1))  # [B, d]
        tokens = (self.coords(x) + self.element(self.species_index)
                  + self.position(self.atom_index) + noise[:, None])  # [B, A, d]
        score = self.out(self.encoder(tokens))  # [B, A, 3]
        # The diffusion lives in the centred subspace (molecules have no preferred position).
        return (score - score.mean(1, keepdim=True)) / sigma[:, None, None]


def sigma_at(t: Tensor, config: DiffusionConfig) -> Tensor:
    """σ(t) = σ_min (σ_max/σ_min)^t."""
    return ve_sigma(t, config.sigma_min, config.sigma_max)


def dsm_loss(model: ScoreTransformer, x0: Tensor, scores0: Tensor | None,
             config: DiffusionConfig, rng: torch.Generator) -> Tensor:
    """σ²-weighted denoising score matching, with force targets below ``force_sigma``."""
    batch = len(x0)
    sigma = sigma_at(torch.rand(batch, generator=rng), config)  # [B]
    eps = torch.randn(x0.shape, generator=rng)
    eps = eps - eps.mean(1, keepdim=True)  # diffuse in the centred subspace
    xt = x0 + sigma[:, None, None] * eps
    target = -eps / sigma[:, None, None]  # [B, A, 3]
    if scores0 is not None and config.force_sigma > 0:
        use_force = (sigma < config.force_sigma)[:, None, None]
        target = torch.where(use_force, scores0, target)
    residual = model(xt, sigma) - target
    return (sigma[:, None, None] ** 2 * residual.square()).sum((1, 2)).mean()


@register_sampler("dsm-sampler", "diffusion-sampler")
class DiffusionSampler(TemplateSampler):
    """A trained VE-SDE score model sampled by predictor–corrector
    (:func:`~ase_drift.diffusion.samplers.pc_sample`).

    Its files have kind ``"dsm-sampler"`` (``"diffusion-sampler"`` before the move to
    ``ase_drift.diffusion``; still read).
    """

    batch_size = 1000

    def __init__(self, model: ScoreTransformer, numbers, scale: float, config: DiffusionConfig,
                 metadata: dict):
        super().__init__(numbers, scale, config, metadata)
        self.model = model.eval()

    def __repr__(self) -> str:
        return (f"DiffusionSampler({_formula(self.numbers)}, {self.config.sampler_steps} levels, "
                f"T={self.metadata.get('temperature_K')} K)")

    @property
    def network_evaluations(self) -> int:
        """Score evaluations per sample batch: a predictor per level, a corrector per level
        after the first."""
        return 2 * self.config.sampler_steps - 1

    @torch.inference_mode()
    def _sample_batch(self, n: int, rng: torch.Generator) -> np.ndarray:
        """Predictor–corrector sampling of ``n`` conformations ``[n, A, 3]`` in Å."""
        cfg = self.config
        shape = (n, len(self.numbers), 3)

        def centred_noise(sigma=None, sigma_next=None) -> Tensor:
            # the diffusion lives in the centred subspace (no preferred position)
            z = torch.randn(shape, generator=rng)
            return z - z.mean(1, keepdim=True)

        x = pc_sample(self.model, cfg.sigma_max * centred_noise(),
                      ve_sigmas(cfg.sampler_steps, cfg.sigma_min, cfg.sigma_max), rng,
                      snr=cfg.snr, n_corrector=1, noise_sampler=centred_noise)
        return (x * self.scale).numpy().astype(np.float32)

    def log_prob(self, positions, divergence: str = "exact", seed: int | None = None,
                 batch_size: int = 64, rtol: float = 1e-5, atol: float = 1e-5) -> np.ndarray:
        """log q̄ ``[n]`` of conformations ``positions`` ``[n, A, 3]`` (Å) under this model's
        probability-flow ODE (F1–F3, F5, F7 of docs/likelihoods.md; ``divergence`` "exact" or
        "hutchinson", its probes seeded by ``seed``), per Å^(3A − 3) of centred coordinates up
        to a constant: the convention of :meth:`~ase_drift.likelihood.NCEDensity.log_prob`, so
        either can go to :func:`~ase_drift.reweighting.reweight`.

        The model was trained on frames Kabsch-aligned to one reference: its density at σ_min
        is that of the aligned section S smoothed by N(0, σ_min²) across it, whose value on S is
        q_S × a constant. Each frame is therefore aligned (s ∈ S), read there by the ODE from
        σ_min to σ_max (prior N(0, σ_max² I) on the 3A − 3 centred dimensions), and spread
        uniformly over rotations: log q̄ = log p_{σ_min}(s/scale) − (3A − 3) log scale
        − log det(tr H · I − H) (F7). The ODE density is that of the model's probability-flow
        samples; the predictor–corrector sampler's samples follow it as far as the score is
        exact. Mirror images are not folded: their alignment is poor and their q̄ tiny.
        """
        from ..features import align_frames
        from ..sampler import torch_generator
        from .flow_likelihood import centre_flat, orbit_log_volume, ve_log_prob

        reference = self.metadata.get("reference_angstrom")
        if reference is None:
            raise ValueError("this DSM checkpoint does not record the frame its training data "
                             "were aligned to (reference_angstrom): retrain it to read "
                             "likelihoods")
        n_atoms = len(self.numbers)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
            raise ValueError(f"positions must have shape [n, {n_atoms}, 3], got "
                             f"{positions.shape}")
        reference = np.asarray(reference, dtype=np.float64)  # [A, 3], centred
        aligned = align_frames(positions, reference)[0]  # [n, A, 3] Å, on S
        x = torch.as_tensor(aligned / self.scale, dtype=torch.float32).flatten(1)  # [n, 3A]
        rng = torch_generator(seed)

        def score(z: Tensor, sigma: Tensor) -> Tensor:
            return self.model(z.view(len(z), n_atoms, 3), sigma).flatten(1)  # [B, 3A]

        out = [ve_log_prob(score, chunk, self.config.sigma_min, self.config.sigma_max,
                           dim=3 * n_atoms - 3, project=lambda z: centre_flat(z, n_atoms),
                           divergence=divergence, rng=rng, rtol=rtol, atol=atol).log_prob
               for chunk in x.split(batch_size) if len(chunk)]  # no frames: one empty chunk
        log_p = torch.cat(out).double().numpy() if out else np.zeros(0)
        return (log_p - (3 * n_atoms - 3) * math.log(self.scale)
                - orbit_log_volume(aligned, reference))

    def save(self, path: str | Path) -> Path:
        metadata = dict(self.metadata, kind=self.kind)
        return save_checkpoint(path, {"diffusion": self.config.as_dict()},
                               self.model.state_dict(), metadata)

    @classmethod
    def from_checkpoint(cls, payload: dict, path: str | Path) -> DiffusionSampler:
        config = DiffusionConfig.from_dict(payload["config"]["diffusion"])
        metadata = {k: v for k, v in payload["metadata"].items() if k != "kind"}
        model = ScoreTransformer(metadata["numbers"], config)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the stored configuration") from exc
        return cls(model, metadata["numbers"], metadata["scale_angstrom"], config, metadata)


def train_diffusion(data: Conformations, config: DiffusionConfig = DiffusionConfig(),
                    progress: bool = True) -> DiffusionSampler:
    """Train the score network by (force-guided) denoising score matching."""
    temperature = check_temperature(config.temperature_K)
    temperature = data.temperature_K if temperature is None else temperature
    uses_forces = config.force_sigma > 0
    if uses_forces:
        data.require("forces", why="force-guided score matching (force_sigma > 0)")
        if temperature is None:
            raise ValueError("force-guided score matching needs temperature_K")
    if not uses_forces:  # positions only: the temperature may be unknown
        data = Conformations(data.numbers, data.positions)
    # Centred, Kabsch-aligned frames /σ and scores σ·F/kT rotated with them, shared with drift.
    prepared = Cartesian().prepare(data, temperature)
    scale, x_all = prepared.scale, prepared.coords  # [N, A, 3]
    scores_all = None if prepared.scores is None else prepared.scores.view_as(x_all)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG untouched
        torch.manual_seed(config.seed)
        model = ScoreTransformer(data.numbers, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps))))
    rng = torch.Generator().manual_seed(config.seed)
    from tqdm.auto import trange

    for _ in trange(config.steps, desc="score matching", disable=not progress, mininterval=0.5):
        index = torch.randint(len(x_all), (config.batch_size,), generator=rng)
        loss = dsm_loss(model, x_all[index],
                        None if scores_all is None else scores_all[index], config, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    reference = data.positions[0] - data.positions[0].mean(axis=0)  # the frames' alignment
    metadata = {"numbers": data.numbers.tolist(), "scale_angstrom": scale,
                "reference_angstrom": reference.tolist(),
                "temperature_K": temperature, "force_guided": uses_forces,
                "units": {"positions": "Å"}, "training_frames": len(data)}
    return DiffusionSampler(copy.deepcopy(model), data.numbers, scale, config, metadata)
