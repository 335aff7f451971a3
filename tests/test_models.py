"""The generator: shapes, the data-informed initialisation, and the bfloat16 path."""

import pytest
import torch

from ase_drift.models import GeneratorConfig, MLPGenerator


def generator(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPGenerator(GeneratorConfig(n_atoms=5, noise_dim=8, hidden=64, depth=3)).eval()


def test_bf16_hidden_layers_keep_float32_outputs_close_to_float32():
    """bfloat16 has 8 significant bits: the hidden layers' error is ~2⁻⁸ relative, and the output
    stays float32 (the affine path and the last layer run in float32)."""
    model = generator()
    torch.nn.init.normal_(model.skip.weight)
    noise = model.noise(512, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        exact, fast = model(noise), model(noise, precision="bf16")
        mlp_only = model(noise) - model.skip(noise).view(512, 5, 3)
    assert fast.dtype == torch.float32 and fast.shape == (512, 5, 3)
    error = (fast - exact).abs().max()
    assert 0 < error < 2**-6 * mlp_only.abs().max()


def test_bf16_leaves_the_affine_path_exact():
    model = generator()
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
        torch.nn.init.normal_(model.skip.weight)
    noise = model.noise(64, torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(model(noise, precision="bf16"), model(noise))


def test_unknown_precision_is_refused():
    model = generator()
    with pytest.raises(ValueError, match="precision must be one of .*'fp16'"):
        model(model.noise(2, torch.Generator()), precision="fp16")
