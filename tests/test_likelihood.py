"""NCEDensity (ase_drift.likelihood): the losses' optima (Eqs. 2–3), a fitted 2-D Gaussian, the
Cartesian volume factor of the distance density (Eq. 7), the internal-coordinate density
(Eq. 14), chirality (Eq. 8), files and inputs."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ase_drift.checkpoint import CheckpointError, save_checkpoint
from ase_drift.datasets import load
from ase_drift.features import find_rotors
from ase_drift.internal_coordinates import internal_coordinates, log_jacobian, unwrap_torsions
from ase_drift.likelihood import (
    EnergyNet,
    NCEConfig,
    NCEDensity,
    NCELosses,
    chirality_quadruples,
    classify_chirality,
    fourier_features,
    interpolant_coefficients,
    log_volume_factor,
    nce_losses,
    negative_times,
    signed_volumes,
)
from ase_drift.metrics import covalent_bonds, pair_distances, pair_indices


@pytest.fixture(scope="module")
def ethanol():
    train, _ = load("ethanol-gfn2-500K")
    return train


@pytest.mark.parametrize("kind", ["linear", "trig"])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_interpolant_ends_at_data_and_noise(kind, power):
    alpha, sigma = interpolant_coefficients(torch.tensor([0.0, 1.0]), kind, power)
    assert torch.allclose(alpha, torch.tensor([1.0, 0.0]), atol=1e-7)
    assert torch.allclose(sigma, torch.tensor([0.0, 1.0]), atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "trig"])
def test_time_power_reads_the_interpolant_at_t_to_the_power(kind):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    powered, squared = interpolant_coefficients(t, kind, 2.0), interpolant_coefficients(t**2, kind)
    for got, want in zip(powered, squared):
        torch.testing.assert_close(got, want)
    _, sigma = interpolant_coefficients(torch.tensor([0.5]), "linear", 2.0)
    assert sigma.item() == pytest.approx(0.25)


def test_reflected_contrast_times_are_symmetric():
    """q(t' | t) = q(t | t'): the histogram of (t, t') pairs is symmetric, and t' ∈ [0, 1]."""
    rng = torch.Generator().manual_seed(0)
    t = torch.rand(400_000, generator=rng, dtype=torch.float64)
    t_neg = negative_times(t, 1, 0.3, rng)[:, 0]
    assert t_neg.min() >= 0 and t_neg.max() <= 1
    counts, _, _ = np.histogram2d(t.numpy(), t_neg.numpy(), bins=8, range=[[0, 1], [0, 1]])
    # Poisson counts: |n_ij − n_ji| ≤ 5√(n_ij + n_ji) fails with probability < 1e-5 per cell.
    assert np.all(np.abs(counts - counts.T) <= 5 * np.sqrt(counts + counts.T + 1))


class GaussianEnergy(torch.nn.Module):
    """The exact U(x, t) = −log p_t(x) of 1-D data N(0, s²) under the trig interpolant read at
    t^power, plus optional distortions f(t) and g(x)."""

    def __init__(self, s=0.5, time_term=None, space_term=None, power=1.0):
        super().__init__()
        self.s, self.time_term, self.space_term, self.power = s, time_term, space_term, power

    def forward(self, x, t):
        alpha, sigma = interpolant_coefficients(t, "trig", self.power)
        var = alpha**2 * self.s**2 + sigma**2
        u = x[:, 0] ** 2 / (2 * var) + 0.5 * torch.log(2 * math.pi * var)
        if self.time_term is not None:
            u = u + self.time_term(t)
        if self.space_term is not None:
            u = u + self.space_term(x[:, 0])
        return u


@pytest.mark.parametrize("window, power", [(None, 1.0), (0.1, 1.0), (None, 2.0)])
def test_exact_log_density_minimises_both_losses(window, power):
    """Eq. 2 fixes U up to c(t), Eq. 3 up to c(x): adding f(t) leaves L_SM unchanged and raises
    L_NCE; adding g(x) leaves L_NCE unchanged and raises L_SM. Common random numbers make the
    differences exact up to round-off; a sign error in either loss breaks these inequalities.
    With a time power p, the exact U is that of the schedule read at t^p, not at t."""
    rng = torch.Generator().manual_seed(0)
    n = 100_000
    x = 0.5 * torch.randn(n, 1, generator=rng, dtype=torch.float64)
    t = torch.rand(n, generator=rng, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=rng, dtype=torch.float64)
    t_neg = negative_times(t, 4, window, rng)

    def losses(net):
        return NCELosses(*(float(v.detach()) for v in nce_losses(
            net, x, t, noise, t_neg, "trig", power=power)))

    exact = losses(GaussianEnergy(power=power))
    time_shifted = losses(GaussianEnergy(time_term=lambda t: 2.0 * t, power=power))
    space_shifted = losses(GaussianEnergy(space_term=lambda x: 0.5 * torch.sin(3 * x),
                                          power=power))
    too_wide = losses(GaussianEnergy(s=0.6, power=power))
    other_schedule = losses(GaussianEnergy(power=3.0 - power))
    assert other_schedule.score_matching > exact.score_matching + 1e-3
    assert other_schedule.infonce > exact.infonce + 1e-3
    assert time_shifted.score_matching == pytest.approx(exact.score_matching, rel=1e-12)
    assert space_shifted.infonce == pytest.approx(exact.infonce, rel=1e-12)
    assert time_shifted.infonce > exact.infonce + 1e-3
    assert space_shifted.score_matching > exact.score_matching + 1e-3
    assert too_wide.score_matching > exact.score_matching


def _gaussian_2d():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    mean = np.array([1.0, -2.0])
    train = rng.multivariate_normal(mean, cov, size=5000)
    test = rng.multivariate_normal(mean, cov, size=2000)
    diff = test - mean
    truth = -0.5 * np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return train, test, truth


@pytest.mark.slow
def test_fit_learns_a_2d_gaussian_up_to_a_constant():
    """A short seeded run (default losses, small net, ≈ 40 s on one free core): log q − log p is
    nearly constant: correlation > 0.99 and residual std < 0.15 (measured 0.993 and 0.120).
    Score matching alone (the InfoNCE term dropped, a mutation) measured 0.982 and 0.198, so it
    fails both; a sign error in either loss fails
    :func:`test_exact_log_density_minimises_both_losses`."""
    train, test, truth = _gaussian_2d()
    log_q = NCEDensity.fit(train, steps=2000, batch_size=256, hidden=64, depth=2,
                           learning_rate=3e-3, seed=0, progress=False).log_prob(test)
    assert np.corrcoef(log_q, truth)[0, 1] > 0.99
    assert np.std(log_q - truth) < 0.15


def test_vector_log_prob_includes_the_standardisation():
    """log q of vectors is −U(standardised x, 0) − Σ log scale: a density in the input units."""
    train, test, _ = _gaussian_2d()
    density = NCEDensity.fit(train, steps=2, hidden=8, depth=1, progress=False)
    z = (test - density.shift.numpy()) / density.scale.numpy()
    direct = -density.net(torch.as_tensor(z, dtype=torch.float32),
                          torch.zeros(len(z))).detach().double().numpy()
    np.testing.assert_allclose(density.log_prob(test),
                               direct - np.log(density.scale.numpy()).sum(), atol=1e-5)
    with pytest.raises(ValueError, match=r"^expected vectors \[n, 2\], got \(4, 3\)$"):
        density.log_prob(np.zeros((4, 3)))


def test_fourier_features_are_sines_and_cosines_of_two_pi_x_b():
    """γ(x) = [sin 2πxB, cos 2πxB]: phases π/2, π/4 and (two dimensions summed) π."""
    x = torch.tensor([[1.0, 0.0], [0.5, 0.0], [1.0, 2.0]], dtype=torch.float64)
    frequencies = torch.tensor([[0.25], [0.125]], dtype=torch.float64)
    half = math.sqrt(0.5)
    expected = torch.tensor([[1.0, 0.0], [half, half], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(fourier_features(x, frequencies), expected, atol=1e-12, rtol=0)


def test_energy_net_reads_fourier_features_of_x_and_stores_their_frequencies(tmp_path):
    """The first layer sees [x, γ(x), t]; frequencies ~ N(0, scale²) are saved and loaded with
    the weights; without features the state has no ``frequencies`` (older files load)."""
    torch.manual_seed(0)
    net = EnergyNet(2, 8, 1, n_fourier=256, fourier_scale=2.0).double()
    assert net.frequencies.shape == (2, 256)
    assert net.frequencies.std().item() == pytest.approx(2.0, rel=0.1)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    first = net.inp(torch.cat([x, fourier_features(x, net.frequencies), t[:, None]], dim=1))
    h = torch.nn.functional.silu(first)
    h = h + torch.nn.functional.silu(net.blocks[0](h))
    torch.testing.assert_close(net(x, t), net.out(h)[:, 0])
    assert "frequencies" not in EnergyNet(2, 8, 1).state_dict()
    train, test, _ = _gaussian_2d()
    density = NCEDensity.fit(train, steps=2, hidden=8, depth=1, fourier_features=4,
                             fourier_scale=3.0, progress=False)
    loaded = NCEDensity.load(density.save(tmp_path / "fourier.pt"))
    torch.testing.assert_close(loaded.net.frequencies, density.net.frequencies)
    np.testing.assert_array_equal(loaded.log_prob(test), density.log_prob(test))


def test_volume_factor_of_a_triangle_is_the_product_of_its_sides():
    """Three atoms: the sides d₁₂, d₁₃, d₂₃ are coordinates of the shape, and uniformly placed
    atoms have side density ∝ d₁₂d₁₃d₂₃ (classical), so Eq. 7's factor, which turns a density of
    the sides into one of Cartesian coordinates, must be ∝ 1/(d₁₂d₁₃d₂₃), for any per-pair
    feature scale."""
    positions = np.random.default_rng(1).normal(size=(50, 3, 3))
    d = np.linalg.norm(positions[:, [0, 0, 1]] - positions[:, [1, 2, 2]], axis=-1)  # [50, 3]
    for scale in (np.ones(3), np.array([0.3, 2.0, 1.1])):
        excess = log_volume_factor(positions, scale) + np.log(d).sum(1)
        assert np.std(excess) < 1e-8


def test_volume_factor_is_invariant_under_rigid_motions_and_reflection(ethanol):
    positions = ethanol.positions[:20]
    moved = positions @ Rotation.random(random_state=2).as_matrix().T + [1.0, -2.0, 0.5]
    mirrored = positions * [-1.0, 1.0, 1.0]
    base = log_volume_factor(positions, np.ones(36))
    np.testing.assert_allclose(log_volume_factor(moved, np.ones(36)), base, atol=1e-8)
    np.testing.assert_allclose(log_volume_factor(mirrored, np.ones(36)), base, atol=1e-8)


@pytest.fixture(scope="module")
def ethanol_density(ethanol):
    return NCEDensity.fit(ethanol.positions[:500], ethanol.numbers, steps=3, hidden=16, depth=1,
                          coordinates="distances", progress=False)


@pytest.fixture(scope="module")
def internal_density(ethanol):
    return NCEDensity.fit(ethanol.positions[:500], ethanol.numbers, steps=3, hidden=16, depth=1,
                          progress=False)


def test_internal_log_prob_is_eq_13(ethanol, internal_density):
    """log q̄ = −U(z, 0) − Σ log scale − log ∏ r² ∏ sin θ (Eq. 14) on the Z-matrix of the fitted frames
    (ethanol's methyl relabelled to one rotamer); invariant under rigid motions, reflections
    and 120° relabellings of the methyl hydrogens."""
    assert internal_density.config.coordinates == "internal"
    positions = ethanol.positions[500:520]
    metadata = internal_density.metadata
    assert len(metadata["rotors"]) == 1 and len(metadata["zmatrix"]) == 8
    rows = np.asarray(metadata["zmatrix"])
    hydrogens = find_rotors(ethanol.numbers, positions[0])[0, 3:]
    labellings = [positions.copy() for _ in range(3)]
    for shift, frames in enumerate(labellings):
        frames[:, hydrogens] = positions[:, np.roll(hydrogens, shift)]
    logs = []
    for frames in labellings:
        z = internal_coordinates(frames, rows)
        features = np.concatenate([z.bonds, z.angles,
                                   unwrap_torsions(z.torsions, metadata["torsion_cuts"])], 1)
        logs.append(-internal_density.energy(features)
                    - float(internal_density.scale.log().sum()) - log_jacobian(z))
    log_q = internal_density.log_prob(positions)
    # One of the three labellings is the canonical one for each frame: log q̄ matches it there.
    assert np.abs(np.subtract(logs, log_q)).min(0).max() < 1e-4
    for frames in labellings[1:]:
        np.testing.assert_allclose(internal_density.log_prob(frames), log_q, atol=1e-4)
    moved = positions @ Rotation.random(random_state=3).as_matrix().T * [1, 1, -1] + 0.7
    np.testing.assert_allclose(internal_density.log_prob(moved), log_q, atol=1e-4)


def test_internal_density_of_a_triatomic_is_exact():
    """Water-like frames whose bond lengths and angle are drawn from known Gaussians, turned at
    random: their Cartesian density is p(r₁)p(r₂)p(θ) / (r₁² r₂² sin θ) (Eq. 13), and the fitted
    log q̄ must follow it with slope 1: residual std 0.04 over three seeds, 0.47 without the
    Jacobian."""
    rng = np.random.default_rng(0)
    n = 6000
    r1, r2 = rng.normal(1.0, 0.15, n), rng.normal(1.0, 0.15, n)
    theta = rng.normal(1.9, 0.25, n)
    frames = np.zeros((n, 3, 3))
    frames[:, 1, 0] = r1
    frames[:, 2, 0], frames[:, 2, 1] = r2 * np.cos(theta), r2 * np.sin(theta)
    frames = np.einsum("nij,naj->nai", Rotation.random(n, random_state=1).as_matrix(), frames)
    truth = (-0.5 * ((r1 - 1.0) / 0.15) ** 2 - 0.5 * ((r2 - 1.0) / 0.15) ** 2
             - 0.5 * ((theta - 1.9) / 0.25) ** 2 - 2 * np.log(r1 * r2) - np.log(np.sin(theta)))
    density = NCEDensity.fit(frames[:5000], [8, 1, 1], steps=1500, hidden=64, depth=2,
                             batch_size=256, progress=False)
    assert not density.chirality(frames[:50]).mirror.any()  # no centre with four neighbours
    log_q, want = density.log_prob(frames[5000:]), truth[5000:]
    slope = np.polyfit(want, log_q, 1)[0]
    assert 0.9 < slope < 1.1
    assert np.std(log_q - want) < 0.15


def _central_differences(density, samples, h=1e-3):
    """∂ log q / ∂ each coordinate ``[n, ...]`` by central differences (float32 nets: h = 1e-3
    keeps the rounding error near 1e-3 per unit of log q)."""
    flat = samples.reshape(len(samples), -1)
    out = np.empty_like(flat)
    for k in range(flat.shape[1]):
        step = np.zeros_like(flat)
        step[:, k] = h
        out[:, k] = (density.log_prob((flat + step).reshape(samples.shape))
                     - density.log_prob((flat - step).reshape(samples.shape))) / (2 * h)
    return out.reshape(samples.shape)


@pytest.mark.parametrize("which", ["vectors", "internal", "distances"])
def test_log_prob_gradient_is_the_derivative_of_log_prob(which, ethanol, internal_density,
                                                         ethanol_density):
    """∇ log q by automatic differentiation equals central differences of :meth:`log_prob`
    (a mirror image and a relabelled methyl included), and for molecules it is the gradient of
    a rigid-motion invariant: Σ_a ∇_a log q = 0 (translations), Σ_a r_a × ∇_a log q = 0
    (rotations), and a rotated frame has the rotated gradient."""
    if which == "vectors":
        train, test, _ = _gaussian_2d()
        density = NCEDensity.fit(train, steps=20, hidden=16, depth=2, progress=False)
        samples = test[:30]
    else:
        density = internal_density if which == "internal" else ethanol_density
        samples = ethanol.positions[500:510].copy()
        samples[1, :, 0] *= -1  # a mirror image
        hydrogens = find_rotors(ethanol.numbers, samples[2])[0, 3:]
        samples[2, hydrogens] = samples[2, np.roll(hydrogens, 1)]
    result = density.log_prob_gradient(samples)
    np.testing.assert_allclose(result.log_prob, density.log_prob(samples), rtol=0, atol=1e-9)
    assert result.gradient.shape == samples.shape
    numeric = _central_differences(density, samples)
    scale = np.abs(result.gradient).max()
    np.testing.assert_allclose(result.gradient, numeric, rtol=0, atol=2e-3 * scale)
    if which == "vectors":
        return
    np.testing.assert_allclose(result.gradient.sum(1), 0, atol=1e-4 * scale)
    centred = samples - samples.mean(1, keepdims=True)
    torque = np.cross(centred, result.gradient).sum(1)
    np.testing.assert_allclose(torque, 0, atol=1e-3 * scale)
    rotation = Rotation.random(random_state=5).as_matrix()
    rotated = density.log_prob_gradient(samples @ rotation.T + 0.4)
    np.testing.assert_allclose(rotated.gradient, result.gradient @ rotation.T, rtol=0,
                               atol=1e-4 * scale)


def test_molecular_log_prob_is_eq_7(ethanol, ethanol_density):
    """log q̄ = −U(φ, 0) + volume factor, invariant under rotations, translations, reflections."""
    positions = ethanol.positions[500:520]
    expected = (-ethanol_density.energy(pair_distances(positions))
                + log_volume_factor(positions, ethanol_density.scale.double().numpy()))
    log_q = ethanol_density.log_prob(positions)
    np.testing.assert_allclose(log_q, expected, atol=1e-6)
    moved = positions @ Rotation.random(random_state=3).as_matrix().T * [1, 1, -1] + 0.7
    np.testing.assert_allclose(ethanol_density.log_prob(moved), log_q, atol=1e-4)


def test_ethanol_chirality_centres_and_mirror_images(ethanol, ethanol_density):
    """Ethanol's two carbons have four neighbours; MD keeps both signs; a reflected frame is a
    mirror image, one with two hydrogens of a CH₂ swapped has one inverted centre."""
    quadruples = chirality_quadruples(ethanol.numbers, ethanol.positions)
    assert sorted(quadruples[:, 0].tolist()) == [0, 1]
    signs = np.sign(signed_volumes(ethanol.positions, quadruples))
    assert (signs == signs[0]).all()
    frames = ethanol.positions[:6].copy()
    frames[2:4] *= [-1.0, 1.0, 1.0]
    centre = int(quadruples[0, 0])
    hydrogens = sorted(a for a in _neighbours(ethanol, centre) if ethanol.numbers[a] == 1)
    frames[4:6, hydrogens[:2]] = frames[4:6, hydrogens[1::-1]]
    found = ethanol_density.chirality(frames)
    assert found.mirror.tolist() == [False, False, True, True, False, False]
    assert found.inverted.tolist() == [False, False, False, False, True, True]
    folded = ethanol_density.fold(frames)
    assert not ethanol_density.chirality(folded).mirror.any()
    np.testing.assert_array_equal(folded[2:4], ethanol.positions[2:4])  # x → −x undone
    np.testing.assert_allclose(ethanol_density.log_prob(folded), ethanol_density.log_prob(frames),
                               atol=1e-4)


def test_one_chirality_centre_is_enough_to_see_a_mirror_image():
    """A single tetrahedral centre: its reflection flips the one sign, which makes the frame a
    mirror image (not an inverted one)."""
    tetrahedron = np.array([[0.0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    frames = np.stack([tetrahedron, tetrahedron * [-1.0, 1.0, 1.0]])
    quadruples = np.array([[0, 1, 2, 3]])
    reference = np.sign(signed_volumes(frames[:1], quadruples))[0]
    found = classify_chirality(frames, quadruples, reference)
    assert found.mirror.tolist() == [False, True] and not found.inverted.any()


def _neighbours(ethanol, centre):
    """The covalent neighbours of atom ``centre``."""
    i, j = pair_indices(len(ethanol.numbers))
    bonds = covalent_bonds(ethanol.numbers, ethanol.positions)
    return {*j[bonds][i[bonds] == centre], *i[bonds][j[bonds] == centre]}


def test_save_and_load_round_trip(tmp_path, ethanol, ethanol_density):
    path = ethanol_density.save(tmp_path / "density.pt")
    loaded = NCEDensity.load(path)
    assert loaded.config == ethanol_density.config
    assert loaded.metadata == ethanol_density.metadata
    positions = ethanol.positions[:10]
    np.testing.assert_array_equal(loaded.log_prob(positions), ethanol_density.log_prob(positions))
    # A density written before internal coordinates existed has no "coordinates": distances.
    config = {k: v for k, v in ethanol_density.config.as_dict().items() if k != "coordinates"}
    state = {"net": ethanol_density.net.state_dict(), "shift": ethanol_density.shift,
             "scale": ethanol_density.scale}
    old = NCEDensity.load(save_checkpoint(tmp_path / "old.pt", config, state,
                                          dict(ethanol_density.metadata)))
    assert old.config.coordinates == "distances"
    np.testing.assert_array_equal(old.log_prob(positions), ethanol_density.log_prob(positions))
    other = save_checkpoint(tmp_path / "other.pt", {}, {}, {"kind": "drift-sampler"})
    with pytest.raises(CheckpointError, match="not a 'nce-density'"):
        NCEDensity.load(other)


def test_fit_draws_from_a_sampler(ethanol):
    class Replay:
        numbers = ethanol.numbers

        def sample_positions(self, n, seed=None):
            return ethanol.positions[:n]

    density = NCEDensity.fit(Replay(), n=300, steps=1, hidden=8, depth=1, progress=False)
    assert density.metadata["n_samples"] == 300
    assert density.numbers.tolist() == ethanol.numbers.tolist()


def test_bad_inputs_raise_clear_errors(ethanol, ethanol_density):
    with pytest.raises(ValueError, match="need numbers"):
        NCEDensity.fit(ethanol.positions[:10], steps=1)
    with pytest.raises(ValueError, match="non-finite"):
        NCEDensity.fit(np.array([[0.0, np.nan], [1.0, 2.0]]), steps=1)
    with pytest.raises(ValueError, match=r"shape \[N, 9, 3\]"):
        NCEDensity.fit(ethanol.positions[:10, :8], ethanol.numbers, steps=1)
    with pytest.raises(ValueError, match=r"shape \[n, 9, 3\]"):
        ethanol_density.log_prob(ethanol.positions[:5, :8])
    with pytest.raises(ValueError, match="not both zero"):
        NCEConfig(score_weight=0.0, nce_weight=0.0)
    with pytest.raises(ValueError, match="unknown interpolant"):
        NCEConfig(interpolant="cosine")
    with pytest.raises(ValueError, match="window must be positive"):
        NCEConfig(window=0.0)
    with pytest.raises(ValueError, match="fourier_scale positive"):
        NCEConfig(fourier_features=8, fourier_scale=0.0)
    with pytest.raises(ValueError, match="time_power must be positive"):
        NCEConfig(time_power=0.0)
    with pytest.raises(ValueError, match="unknown coordinates 'zmatrix'"):
        NCEConfig(coordinates="zmatrix")
