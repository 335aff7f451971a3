"""The DSM baseline behind the Sampler protocol: trains, samples, round-trips, checks input."""

import numpy as np
import pytest
import torch

from ase_drift.baselines import DiffusionConfig, DiffusionSampler, train_diffusion
from ase_drift.baselines.diffusion import dsm_loss, sigma_at
from ase_drift.data import Conformations
from ase_drift.sampler import Sampler
from ase_drift.testing import HarmonicTriatomic, boltzmann_triatomic_positions

TINY = DiffusionConfig(d_model=16, n_layers=1, n_heads=2, steps=30, batch_size=32,
                       sampler_steps=5)


@pytest.fixture(scope="module")
def data():
    positions = boltzmann_triatomic_positions(200)
    labels = HarmonicTriatomic().compute([8, 1, 1], positions)
    return Conformations([8, 1, 1], positions, labels.forces, labels.energies, 300.0)


def test_noise_schedule_spans_sigma_min_to_sigma_max():
    ends = sigma_at(torch.tensor([0.0, 1.0]), TINY)
    torch.testing.assert_close(ends, torch.tensor([TINY.sigma_min, TINY.sigma_max]))


def test_trains_samples_and_round_trips(data, tmp_path):
    sampler = train_diffusion(data, TINY, progress=False)
    assert isinstance(sampler, Sampler)
    assert sampler.network_evaluations == 2 * TINY.sampler_steps
    samples = sampler.sample_positions(7, seed=3)
    assert samples.shape == (7, 3, 3) and np.isfinite(samples).all()
    np.testing.assert_allclose(samples.mean(axis=1), 0.0, atol=1e-4)  # centred subspace
    sampler.save(tmp_path / "dsm.pt")
    again = DiffusionSampler.load(tmp_path / "dsm.pt")
    np.testing.assert_array_equal(again.sample_positions(7, seed=3), samples)


def test_training_leaves_the_global_rng_alone(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_diffusion(data, TINY, progress=False)
    torch.testing.assert_close(torch.rand(3), expected)


def test_force_targets_need_forces(data):
    unlabelled = Conformations(data.numbers, data.positions, temperature_K=300.0)
    with pytest.raises(ValueError, match="forces"):
        train_diffusion(unlabelled, DiffusionConfig(force_sigma=0.05, steps=1), progress=False)


def test_force_targets_replace_the_dsm_target_at_small_noise(data):
    """Below force_sigma the regression target is the clean sample's score, so a model that
    outputs exactly that score has zero loss whatever the noise draw."""
    config = DiffusionConfig(sigma_min=0.01, sigma_max=0.02, force_sigma=1.0)
    scores = torch.randn(4, 3, 3)

    class Oracle(torch.nn.Module):
        def forward(self, x, sigma):
            return scores

    loss = dsm_loss(Oracle(), torch.zeros(4, 3, 3), scores, config, torch.Generator())
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
