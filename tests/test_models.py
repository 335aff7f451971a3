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


def test_residual_generator_is_a_stack_of_pre_norm_residual_blocks():
    """residual=True: h₁ = W₀z + b₀, h_{k+1} = h_k + W_k SiLU(LayerNorm(h_k)), out = W SiLU(h) + b
    (+ the affine path), with as many hidden weight matrices as the plain MLP."""
    config = GeneratorConfig(n_atoms=5, noise_dim=8, hidden=16, depth=3, residual=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPGenerator(config).eval()
    for parameter in model.parameters():  # LayerNorm's affine part away from 1/0 as well
        torch.nn.init.normal_(parameter, std=0.3)
    z = model.noise(4, torch.Generator().manual_seed(1))
    first, *blocks, _, last = model.net
    h = z @ first.weight.T + first.bias
    for block in blocks:
        normed = torch.nn.functional.layer_norm(h, (16,), block.norm.weight, block.norm.bias)
        h = h + torch.nn.functional.silu(normed) @ block.linear.weight.T + block.linear.bias
    expected = torch.nn.functional.silu(h) @ last.weight.T + last.bias + model.skip(z)
    with torch.no_grad():
        torch.testing.assert_close(model(z), expected.view(4, 5, 3))
    plain = MLPGenerator(GeneratorConfig(n_atoms=5, noise_dim=8, hidden=16, depth=3))
    linears = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == len([m for m in plain.net if isinstance(m, torch.nn.Linear)]) == 4
