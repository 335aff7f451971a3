"""Drifting fields: the identities of DESIGN.md, "The maths".

x generated, y_i positives, w_i = softmax_i ℓ(x, y_i), V⁺(x) = Σ_i w_i (y_i − x).

- Antisymmetry: V_{p,q}(x) = V⁺_p(x) − V⁺_q(x) = −V_{q,p}(x), and V_{p,p} = 0.
- Equilibrium: V ≈ 0 when generated and data samples come from the same distribution.
- Drifting Score Identity (Gaussian kernel, population limit):
  E_p[k(x,y)(y − x)] / E_p[k] = τ² E_p[k(x,y) ∇log p(y)] / E_p[k].
- FI: V⁺_ω = Σ_i w_i [(1−ω)(y_i − x) + ω τ² s_i]; ω = 1 is the score side of the identity.
- FK: the force form s_i·(y_i − x) matches the energy form −E(y_i)/kT to first order; the
  unstandardised fixed points on 1-D Gaussians (population drift and particle flow): p·π^β
  for the energy form, a kernel narrowed by the Taylor remainder for the force form, π itself
  for the density-corrected energy tilt.
- Deng et al.'s field against a loop transcription of their Algorithm 2.
"""

import math

import numpy as np
import pytest
import torch

from ase_drift.drift import (
    DENSITY,
    ENERGIES,
    FORCES,
    DengDrift,
    EnergyTilt,
    ForceTilt,
    GaussianDrift,
    Positives,
    attraction,
    blockwise_drift,
    deng_drift,
    energy_alignment,
    field_from_spec,
    field_spec,
    force_alignment,
    force_interpolated_attraction,
    force_scale_ratio,
    kernel_mean,
    make_field,
    repulsion,
    standard_drift,
    standardize,
)
from ase_drift.kernels import exclude_self, gaussian_logits, kde_log_density, median_distance
from ase_drift.testing import (
    assert_drift_vanishes_at_equilibrium,
    assert_fk_force_form_matches_energy_form,
)

F64 = torch.float64


def correlated_gaussian(dim=3, seed=0):
    """Mean μ, covariance Σ = AAᵀ + 0.3 I (correlated, well conditioned), and a sampler."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    factor = torch.randn(dim, dim, generator=gen, dtype=F64) / math.sqrt(dim)
    cov = factor @ factor.T + 0.3 * torch.eye(dim, dtype=F64)
    chol = torch.linalg.cholesky(cov)

    def sample(n, generator):
        return mean + torch.randn(n, dim, generator=generator, dtype=F64) @ chol.T

    def score(y):  # ∇log p(y) = −Σ⁻¹(y − μ)
        return -torch.linalg.solve(cov, (y - mean).T).T

    return mean, cov, sample, score


def cloud(n, dim=4, seed=0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=F64) + shift


# ----------------------------------------------------------------------------- standard drift
def test_attraction_is_kernel_weighted_displacement():
    """V⁺(x) = Σ_i w_i (y_i − x); with one positive, V⁺ = y − x."""
    x, y = cloud(5), cloud(8, seed=1)
    logits = gaussian_logits(x, y, 0.8)
    w = torch.softmax(logits, -1)
    expected = (w[..., None] * (y[None] - x[:, None])).sum(1)
    torch.testing.assert_close(attraction(x, y, logits), expected)
    torch.testing.assert_close(attraction(x, y[:1], gaussian_logits(x, y[:1], 0.8)), y[:1] - x)


def test_drift_between_two_sets_is_antisymmetric_and_zero_for_equal_sets():
    """V_{p,q}(x) = V⁺_p(x) − V⁺_q(x) = −V_{q,p}(x); V_{p,p} ≡ 0 exactly."""
    x, yp, yq = cloud(6), cloud(20, seed=1), cloud(30, seed=2, shift=0.5)
    tau = 1.1

    def v(a, b):
        return (attraction(x, a, gaussian_logits(x, a, tau))
                - attraction(x, b, gaussian_logits(x, b, tau)))

    torch.testing.assert_close(v(yp, yq), -v(yq, yp), rtol=0, atol=0)
    assert v(yp, yq).abs().max() > 0.1
    assert v(yp, yp).abs().max() == 0
    # the same set in another order is the same distribution: zero up to round-off
    assert v(yp, yp.flip(0)).abs().max() < 1e-14


def test_standard_drift_is_attraction_minus_repulsion_without_self():
    """V = Σ_i w_i (y_i − x) − Σ_{j≠x} u_j (x_j − x); a sample never repels itself."""
    x, y = cloud(7), cloud(9, seed=1)
    tau = 0.9
    u = torch.softmax(exclude_self(gaussian_logits(x, x, tau)), -1)
    assert u.diagonal().abs().max() == 0
    rep = (u[..., None] * (x[None] - x[:, None])).sum(1)
    torch.testing.assert_close(repulsion(x, gaussian_logits(x, x, tau)), rep)
    torch.testing.assert_close(standard_drift(x, y, tau),
                               attraction(x, y, gaussian_logits(x, y, tau)) - rep)


def test_standard_drift_vanishes_at_equilibrium():
    """Independent samples (1024 each) of one correlated 3-D Gaussian: RMS ‖V‖ is below 1/10
    of its value when the data are shifted by 2 std (measured ≈ 0.064 at τ = 1)."""
    _, _, sample, _ = correlated_gaussian()
    field = lambda x, pos: standard_drift(x, pos.features, 1.0)
    assert assert_drift_vanishes_at_equilibrium(field, sample, max_ratio=0.1) < 0.1


def deng_single(x, pos):
    """The unnormalised Deng drift at 0.2 × the mean distance (DengDrift rescales every drift
    to unit RMS, so its norm cannot vanish at equilibrium by construction)."""
    return deng_drift(x, pos.features, 0.2 * torch.cdist(x, pos.features).mean())


@pytest.mark.parametrize("field", [GaussianDrift(), GaussianDrift(bandwidths=(0.1, 0.25, 1.0)),
                                   GaussianDrift(omega=1.0), deng_single],
                         ids=["gauss", "multi-bandwidth", "fi-omega1", "deng"])
def test_fields_vanish_at_equilibrium(field):
    """The library's fields (scores ∇log p = −Σ⁻¹(y − μ) for FI): RMS ‖V‖ at equilibrium
    ≤ 1/4 of that for data shifted by 2 std (measured 0.07–0.16; the rest is sampling noise)."""
    _, _, sample, score = correlated_gaussian()
    assert assert_drift_vanishes_at_equilibrium(field, sample, score=score) < 0.25


def test_equilibrium_check_catches_a_biased_field():
    _, _, sample, _ = correlated_gaussian()
    biased = lambda x, pos: GaussianDrift()(x, pos) + 0.3
    with pytest.raises(AssertionError, match="does not vanish"):
        assert_drift_vanishes_at_equilibrium(biased, sample, n=256)


# ----------------------------------------------------------------------------- score identity
def test_drifting_score_identity_monte_carlo():
    """E_p[k(x,y)(y−x)]/E_p[k] = τ² E_p[k ∇log p(y)]/E_p[k] on a correlated 3-D Gaussian
    (250k samples; within 3 % relative). Both sides also equal the closed form m − x with
    m = (Σ⁻¹ + I/τ²)⁻¹(Σ⁻¹μ + x/τ²), the mean of the Gaussian k·p."""
    mean, cov, sample, score = correlated_gaussian()
    gen = torch.Generator().manual_seed(7)
    y = sample(250_000, gen)
    scores = score(y)
    x = mean + torch.tensor([[1.5, 0.0, 0.0], [0.0, -1.2, 0.8], [-1.0, 1.0, 1.0]], dtype=F64)
    tau = 0.8
    logits = gaussian_logits(x, y, tau)
    lhs = attraction(x, y, logits)  # Σ w_i (y_i − x)
    rhs = tau**2 * kernel_mean(logits, scores)  # τ² Σ w_i ∇log p(y_i)
    precision = torch.linalg.inv(cov) + torch.eye(3, dtype=F64) / tau**2
    posterior_mean = torch.linalg.solve(precision, (torch.linalg.solve(cov, mean) + x / tau**2).T).T
    exact = posterior_mean - x
    rel = lambda a, b: ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
    assert rel(lhs, rhs) < 0.03
    assert rel(lhs, exact) < 0.03
    assert rel(rhs, exact) < 0.03


def test_fi_interpolates_between_data_and_score_terms():
    """ω = 0: V⁺; ω = 1: τ²·kernel mean of the scores; linear in ω in between; ρ divides the
    force term only."""
    x, y, s = cloud(5), cloud(12, seed=1), cloud(12, seed=2)
    tau = 0.7
    logits = gaussian_logits(x, y, tau)
    data = attraction(x, y, logits)
    force = tau**2 * kernel_mean(logits, s)
    fi = lambda omega, rho=1.0: force_interpolated_attraction(x, y, s, logits, tau, omega, rho)
    torch.testing.assert_close(fi(0.0), data)
    torch.testing.assert_close(fi(1.0), force)
    torch.testing.assert_close(fi(0.3), 0.7 * data + 0.3 * force)
    torch.testing.assert_close(fi(1.0, 4.0), force / 4.0)


def test_force_scale_ratio():
    """ρ = median‖τ² s_i‖ / median‖y_i − x‖."""
    x, y, s = cloud(5), cloud(12, seed=1), 3 * cloud(12, seed=2)
    tau = 0.6
    expected = (tau**2 * s).norm(dim=-1).median() / median_distance(x, y)
    torch.testing.assert_close(force_scale_ratio(x, y, s, tau), expected)


# ----------------------------------------------------------------------------- FK
def quadratic_potential(dim=4, seed=3):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=F64)
    hessian = a @ a.T + 0.5 * torch.eye(dim, dtype=F64)
    center = torch.randn(dim, generator=gen, dtype=F64)
    return hessian, center


def test_fk_force_form_matches_energy_form_on_quadratic():
    """−E(y_i)/kT = s_i·(y_i − x) − E(x)/kT + ½(y_i − x)ᵀK(y_i − x)/kT exactly, s = F/kT;
    the FK weights of both forms agree to first order in the spread."""
    hessian, center = quadratic_potential()
    x, y = cloud(6, seed=4), cloud(40, seed=5)
    err = assert_fk_force_form_matches_energy_form(x, y, hessian, center, kT=0.7)
    assert err < 1e-10


def test_fk_check_catches_a_sign_error():
    """a_i = s_i·(x − y_i) (wrong sign) or s = −F/kT fails both the identity and the order."""
    hessian, center = quadratic_potential()
    x, y = cloud(6, seed=4), cloud(40, seed=5)
    flipped = lambda x, y, s: force_alignment(x, y, -s)
    with pytest.raises(AssertionError, match="sign"):
        assert_fk_force_form_matches_energy_form(x, y, hessian, center,
                                                 drift_alignment=flipped)


def test_force_alignment_formula():
    """a_i(x) = s_i·(y_i − x) ``[B, N]``; energy_alignment = −(E − Ē)/kT."""
    x, y, s = cloud(5), cloud(12, seed=1), cloud(12, seed=2)
    expected = ((y[None] - x[:, None]) * s[None]).sum(-1)
    torch.testing.assert_close(force_alignment(x, y, s), expected)
    e = torch.tensor([1.0, 2.0, 6.0], dtype=F64)
    torch.testing.assert_close(energy_alignment(e), torch.tensor([2.0, 1.0, -3.0], dtype=F64))


def test_fk_energy_form_reweights_positives_by_boltzmann_factor():
    """FK with β and the energy form: attraction weights ∝ k(x, y_i)·exp(−β E_i/kT)."""
    x, y = cloud(5), cloud(12, seed=1)
    energies = cloud(12, dim=1, seed=2)[:, 0]
    field = GaussianDrift(tilts=(EnergyTilt(0.8),))
    drift = field(x, Positives(y, reduced_energies=energies))
    tau = 0.25 * median_distance(x, y)
    w = torch.exp(gaussian_logits(x, y, tau) - 0.8 * energies[None])
    w = w / w.sum(-1, keepdim=True)
    expected = w @ y - x - repulsion(x, gaussian_logits(x, x, tau))
    torch.testing.assert_close(drift, expected)


def test_standardize_gives_zero_mean_unit_std():
    a = 5 * cloud(4, dim=30, seed=1) + 2
    z = standardize(a)
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(-1), torch.ones(4, dtype=F64))
    assert torch.isfinite(standardize(torch.ones(3, 5))).all()  # constant rows stay finite


# ----------------------------------------------------------------------------- field objects
def test_bandwidth_drifts_are_summed():
    """Several bandwidths: the drifts at each τ = factor·median add up."""
    x, y = cloud(6), cloud(15, seed=1)
    pos = Positives(y)
    torch.testing.assert_close(GaussianDrift(bandwidths=(0.25, 0.5))(x, pos),
                               GaussianDrift(bandwidths=(0.25,))(x, pos)
                               + GaussianDrift(bandwidths=(0.5,))(x, pos))
    tau = 0.25 * median_distance(x, y)
    torch.testing.assert_close(GaussianDrift()(x, pos), standard_drift(x, y, tau))


def test_blockwise_drift_applies_the_field_to_each_block_alone():
    """Blocks of sizes (3, 5): V = [field(x₁, y₁, s₁), field(x₂, y₂, s₂)], each block with its
    own median bandwidth and scores, and not the field on the concatenated features."""
    x, y = cloud(6, dim=8), cloud(15, dim=8, seed=1)
    scores = cloud(15, dim=8, seed=2)
    energies = torch.linspace(-1, 1, 15, dtype=F64)
    field = make_field("fi+fk", "distance", omega=0.3, beta=0.5)
    positives = Positives(y, scores, energies)
    expected = torch.cat([field(x[:, :3], Positives(y[:, :3], scores[:, :3], energies)),
                          field(x[:, 3:], Positives(y[:, 3:], scores[:, 3:], energies))], -1)
    blocks = blockwise_drift(field, x, positives, (3, 5))
    torch.testing.assert_close(blocks, expected)
    assert not torch.allclose(blocks, field(x, positives))
    # plain drifting needs no scores: the blocks go without them
    plain, unlabelled = make_field("drift", "distance"), Positives(y)
    torch.testing.assert_close(blockwise_drift(plain, x, unlabelled, (3, 5)),
                               torch.cat([plain(x[:, :3], Positives(y[:, :3])),
                                          plain(x[:, 3:], Positives(y[:, 3:]))], 1))


def test_make_field_defaults_and_rejections():
    assert make_field("drift", "cartesian") == GaussianDrift()
    assert make_field("fi", "cartesian").omega == 0.02
    fi = make_field("fi", "distance")
    assert fi.omega == 0.1 and not fi.normalize_force_scale and fi.tilts == ()
    assert make_field("fi", "distance", normalize_force_scale=True).normalize_force_scale
    # 'fk' is the paper's force form, standardised in distance space (Eqs. 35–36)
    assert make_field("fk", "distance") == GaussianDrift(tilts=(ForceTilt(0.5, True),))
    assert make_field("fk", "cartesian") == GaussianDrift(tilts=(ForceTilt(0.5, False),))
    assert make_field("fk-energy", "distance").tilts == (EnergyTilt(0.5, standardize=True),)
    assert make_field("fk-energy", "distance", beta=1.0, density_correction=True).tilts == (
        EnergyTilt(1.0, standardize=False, density_correction=True),)
    both = make_field("fi+fk", "cartesian", omega=0.2, beta=1.0)
    assert (both.omega, both.tilts) == (0.2, (ForceTilt(1.0, False),))
    assert isinstance(make_field("deng", "distance"), DengDrift)
    with pytest.raises(ValueError, match="omega applies to 'fi' and 'fi\\+fk', not 'fk'"):
        make_field("fk", "distance", omega=0.5)
    with pytest.raises(ValueError, match="beta applies"):
        make_field("fi", "distance", beta=0.5)
    with pytest.raises(ValueError, match="density_correction applies to 'fk-energy'"):
        make_field("fk", "distance", density_correction=True)
    with pytest.raises(ValueError, match="unknown field 'score'"):
        make_field("score", "distance")


@pytest.mark.parametrize(("name", "labels"), [
    ("drift", set()), ("deng", set()), ("fi", {FORCES}), ("fk", {FORCES}),
    ("fi+fk", {FORCES}), ("fk-energy", {ENERGIES}),
])
def test_fields_declare_the_labels_they_need(name, labels):
    assert make_field(name, "distance").requires == labels
    corrected = make_field("fk-energy", "distance", beta=1.0, density_correction=True)
    assert corrected.requires == {ENERGIES, DENSITY}


@pytest.mark.parametrize("name", ["drift", "fi", "fk", "fk-energy", "fi+fk", "deng"])
def test_field_spec_round_trips_through_json(name):
    import json

    field = make_field(name, "distance", bandwidths=(0.1, 0.5)) if name != "deng" else DengDrift()
    spec = json.loads(json.dumps(field_spec(field)))
    assert field_from_spec(spec) == field


def test_field_spec_rejects_foreign_fields_and_unknown_kinds():
    with pytest.raises(TypeError, match="no spec"):
        field_spec(lambda x, positives: x)
    with pytest.raises(ValueError, match="unknown field kind 'magic'"):
        field_from_spec({"kind": "magic"})


@pytest.mark.parametrize(("field", "missing"), [
    (GaussianDrift(omega=0.5), "forces"),
    (GaussianDrift(tilts=(ForceTilt(0.5),)), "forces"),
    (GaussianDrift(tilts=(EnergyTilt(0.5),)), "energies"),
    (GaussianDrift(tilts=(EnergyTilt(1.0, density_correction=True),)), "density"),
])
def test_gaussian_drift_raises_when_labels_are_missing(field, missing):
    x, y = cloud(4), cloud(8, seed=1)
    energies = torch.zeros(8, dtype=F64) if missing == "density" else None
    with pytest.raises(ValueError, match=f"needs .*{missing}.* but the data has none"):
        field(x, Positives(y, reduced_energies=energies))


@pytest.mark.parametrize("make", [
    lambda: GaussianDrift(omega=1.5), lambda: ForceTilt(beta=-1.0),
    lambda: EnergyTilt(beta=-1.0), lambda: EnergyTilt(standardize=True, density_correction=True),
    lambda: GaussianDrift(bandwidths=()), lambda: GaussianDrift(bandwidths=(0.0,))])
def test_fields_validate_parameters(make):
    with pytest.raises(ValueError):
        make()


def test_force_tilt_standardises_per_generated_sample():
    """ForceTilt: β·ã_i(x) with ã standardised over the positives for each x (Eq. 36)."""
    x, y, s = cloud(5), cloud(12, seed=1), cloud(12, seed=2)
    pos = Positives(y, scores=s)
    raw = force_alignment(x, y, s)
    torch.testing.assert_close(ForceTilt(0.7, standardize=False)(x, pos), 0.7 * raw)
    expected = 0.7 * (raw - raw.mean(-1, keepdim=True)) / raw.std(-1, keepdim=True)
    torch.testing.assert_close(ForceTilt(0.7)(x, pos), expected)


def test_energy_tilt_subtracts_the_density_estimate():
    """EnergyTilt with the density correction: β·(−(E_i − Ē)/kT − log p̂(y_i))."""
    x, y = cloud(3), cloud(6, seed=1)
    energies, log_p = cloud(6, dim=1, seed=2)[:, 0], cloud(6, dim=1, seed=3)[:, 0]
    pos = Positives(y, reduced_energies=energies, log_density=log_p)
    tilt = EnergyTilt(1.3, density_correction=True)(x, pos)
    torch.testing.assert_close(tilt, 1.3 * (energy_alignment(energies) - log_p)[None])


def test_deng_drift_is_finite_with_unit_rms_per_temperature():
    """Each temperature's drift is rescaled to unit RMS; the field is their sum."""
    x, y = cloud(32, seed=1), cloud(48, seed=2, shift=0.7)
    x[1] = x[0]  # coincident generated samples must not produce NaN
    field = DengDrift()
    drift = field(x, Positives(y))
    assert torch.isfinite(drift).all()
    scale = torch.cdist(x, y).mean()
    total = torch.zeros_like(x)
    for temperature in field.temperatures:
        v = deng_drift(x, y, temperature * scale)
        assert torch.isfinite(v).all() and v.abs().max() > 0
        unit = v / v.square().sum(-1).mean().sqrt()
        assert unit.square().sum(-1).mean().sqrt().item() == pytest.approx(1.0, rel=1e-12)
        total = total + unit
    torch.testing.assert_close(drift, total)


def test_deng_drift_points_toward_the_data():
    """Generated cloud shifted by −2 on every axis: the mean drift points along +(1, 1, 1, 1)."""
    x, y = cloud(64, seed=1, shift=-2.0), cloud(64, seed=2)
    v = DengDrift()(x, Positives(y)).mean(0)
    cosine = v.sum() / (2 * v.norm())
    assert cosine > 0.95


def test_kde_log_density_estimates_a_known_density():
    """Block-cross-validated KDE of 1,500 draws of N(0, 0.5²·I₂): log p̂ tracks the exact,
    normalised log density (correlation > 0.95, mean error < 0.1 nats)."""
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(1500, 2, generator=gen, dtype=F64)
    exact = -(x**2).sum(-1) / (2 * 0.25) - math.log(2 * math.pi * 0.25)
    log_p = kde_log_density(x)
    assert log_p.dtype == F64
    assert torch.corrcoef(torch.stack([log_p, exact]))[0, 1] > 0.95
    assert abs((log_p - exact).mean()) < 0.1


def test_kde_log_density_is_not_fooled_by_correlated_frames():
    """A slow random walk (AR(1), correlation 0.999 per frame) whose stationary law is N(0, 1):
    the leave-one-out nearest-neighbour bandwidth sees only the step between frames; block
    cross-validation still recovers the density's shape (correlation with the exact log density
    > 0.9, where the nearest-neighbour estimate's spread is far smaller than the truth's)."""
    gen = torch.Generator().manual_seed(1)
    n, rho = 20_000, 0.999
    steps = torch.randn(n, 1, generator=gen, dtype=F64) * math.sqrt(1 - rho**2)
    x = torch.empty(n, 1, dtype=F64)
    x[0] = 0.0
    for i in range(1, n):
        x[i] = rho * x[i - 1] + steps[i]
    x = x[::10]
    exact = -0.5 * x[:, 0] ** 2
    log_p = kde_log_density(x)
    assert torch.corrcoef(torch.stack([log_p, exact]))[0, 1] > 0.9
    assert log_p.std() > 0.5 * exact.std()


# ----------------------------------------------------------------------------- Deng, transcribed
def deng_reference(x, y, temperature, column_normalise=True):
    """Deng et al. (2026), Algorithm 2, transcribed with explicit loops in float64 numpy.

    Targets are the concatenation [positives y, negatives x]; logits ℓ_bc = −‖x_b − t_c‖/T, with
    the generated sample itself (column N + b of row b) masked out. A = √(row softmax × column
    softmax) (row: over the targets c; column: over the generated rows b). Then
    V_b = Σ_i A_bi (Σ_j A_b,N+j) y_i − Σ_j A_b,N+j (Σ_i A_bi) x_j. With ``column_normalise``
    False, A is the row softmax alone (a wrong reduction the test must reject).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_gen, n_pos = len(x), len(y)
    targets = [y[i] for i in range(n_pos)] + [x[j] for j in range(n_gen)]
    n_targets = len(targets)
    masked = [[c == n_pos + b for c in range(n_targets)] for b in range(n_gen)]
    logit = [[-math.sqrt(sum((x[b][d] - targets[c][d]) ** 2 for d in range(x.shape[1])))
              / temperature for c in range(n_targets)] for b in range(n_gen)]
    kernel = [[0.0 if masked[b][c] else math.exp(logit[b][c]) for c in range(n_targets)]
              for b in range(n_gen)]
    row_sum = [sum(kernel[b][c] for c in range(n_targets)) for b in range(n_gen)]
    col_sum = [sum(kernel[b][c] for b in range(n_gen)) for c in range(n_targets)]
    weight = [[0.0] * n_targets for _ in range(n_gen)]
    for b in range(n_gen):
        for c in range(n_targets):
            row = kernel[b][c] / row_sum[b]
            col = kernel[b][c] / col_sum[c]
            weight[b][c] = math.sqrt(row * col) if column_normalise else row
    drift = np.zeros_like(x)
    for b in range(n_gen):
        pos_mass = sum(weight[b][i] for i in range(n_pos))
        neg_mass = sum(weight[b][n_pos + j] for j in range(n_gen))
        for i in range(n_pos):
            drift[b] += weight[b][i] * neg_mass * y[i]
        for j in range(n_gen):
            drift[b] -= weight[b][n_pos + j] * pos_mass * x[j]
    return drift


def deng_inputs(seed=0):
    """A small generated cloud (7 × 3) offset from 9 positives, float64."""
    return cloud(7, dim=3, seed=seed, shift=-0.6), cloud(9, dim=3, seed=seed + 1)


@pytest.mark.parametrize("temperature", [0.2, 0.7, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_deng_drift_matches_a_transcription_of_algorithm_2(seed, temperature):
    """deng_drift = the loop transcription of Deng et al.'s Algorithm 2, to 1e-12."""
    x, y = deng_inputs(seed)
    expected = torch.as_tensor(deng_reference(x.numpy(), y.numpy(), temperature))
    torch.testing.assert_close(deng_drift(x, y, temperature), expected, rtol=1e-12, atol=1e-12)


def test_deng_field_matches_the_transcription_over_temperatures():
    """DengDrift = Σ_T v_T / RMS(v_T), v_T the transcription at T × mean‖x − y‖, RMS over the
    batch of ‖v_T‖."""
    x, y = deng_inputs(2)
    scale = np.mean([[np.linalg.norm(a - b) for b in y.numpy()] for a in x.numpy()])
    expected = 0.0
    for temperature in (0.02, 0.05, 0.2):
        v = deng_reference(x.numpy(), y.numpy(), temperature * scale)
        expected = expected + v / np.sqrt(np.mean(np.sum(v**2, axis=1)))
    torch.testing.assert_close(DengDrift()(x, Positives(y)), torch.as_tensor(expected),
                               rtol=1e-10, atol=1e-10)


def test_deng_drift_is_not_a_row_softmax():
    """The column normalisation matters on these inputs: the row-softmax-only reduction of
    Algorithm 2 differs from the transcription by more than 10 % of its norm, and deng_drift
    agrees with the transcription, not with the reduction."""
    x, y = deng_inputs(0)
    full = torch.as_tensor(deng_reference(x.numpy(), y.numpy(), 0.7))
    row_only = torch.as_tensor(deng_reference(x.numpy(), y.numpy(), 0.7, column_normalise=False))
    assert (full - row_only).norm() > 0.1 * full.norm()
    got = deng_drift(x, y, 0.7)
    assert (got - full).norm() < 1e-10 * full.norm()
    assert (got - row_only).norm() > 0.1 * full.norm()


# ----------------------------------------------------------------------------- FK fixed points
# 1-D Gaussians: positives y ~ p = N(0, s_p²), Boltzmann π = N(0, σ_π²), s(y) = −y/σ_π²,
# E/kT = y²/(2σ_π²), fixed kernel bandwidth τ.
S_P, SIGMA_PI, BETA, TAU = 0.8, 1.0, 1.0, 0.3
V_TILTED = 1 / (1 / S_P**2 + BETA / SIGMA_PI**2)  # 0.390: the variance of p·π^β
V_FORCE_FORM = V_TILTED * (1 + BETA * TAU**2 / SIGMA_PI**2)  # 0.425


def normal_quantiles(n, dtype=F64):
    """Φ⁻¹((i + ½)/n), i < n: a stratified, noise-free sample of N(0, 1), sorted."""
    u = (torch.arange(n, dtype=dtype) + 0.5) / n
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


def fk_logits(x, y, form):
    """Gaussian logits + β·a with a = energy_alignment(E/kT) or force_alignment(x, y, s)."""
    if form == "energy":
        align = energy_alignment(y[:, 0] ** 2 / (2 * SIGMA_PI**2))[None, :]
    else:
        align = force_alignment(x, y, -y / SIGMA_PI**2)
    return gaussian_logits(x, y, TAU) + BETA * align


def bulk_variance(x, z, keep=0.8):
    """Variance of particles ``x`` [B, 1] started at the quantiles ``z`` (times a scale), from
    the least-squares slope of the sorted central ``keep`` fraction against z: a Gaussian's
    variance, insensitive to a few escaped tail particles."""
    xs = x[:, 0].sort().values
    cut = int(len(xs) * (1 - keep) / 2)
    zc, xc = z[cut:len(z) - cut], xs[cut:len(xs) - cut]
    return ((zc * xc).sum() / (zc * zc).sum()).item() ** 2


@pytest.mark.parametrize(("form", "predicted", "other"), [
    ("energy", V_TILTED, V_FORCE_FORM), ("force", V_FORCE_FORM, V_TILTED)], ids=["energy", "force"])
def test_fk_population_drift_vanishes_at_the_predicted_variance(form, predicted, other):
    """Population drift of the unstandardised FK field on q = N(0, v), p and π as above.

    Energy form: weights ∝ k(x, y)·p(y)·π(y)^β, so V⁺(x) = x·v̄/(v̄ + τ²) − x with
    v̄ = 1/(1/s_p² + β/σ_π²), and V⁻(x) = x·v/(v + τ²) − x: V ≡ 0 iff v = v̄ (p·π^β).
    Force form: on a quadratic potential a = s(y)·(y − x) = −ΔE/kT − (y − x)²/(2σ_π²) exactly
    (plus a constant in y), so β·a narrows the kernel to 1/τ'² = 1/τ² + β/σ_π²:
    V⁺ = x·v̄/(v̄ + τ'²) − x, and V ≡ 0 iff v = v̄·τ²/τ'² = v̄(1 + βτ²/σ_π²).

    p and q are represented by 20,000 quantiles each (no Monte Carlo noise); V is evaluated at
    31 points in ±1.5√v and its slope c(v) = Σ xV/Σ x² located by linear interpolation between
    v = 0.98 and 1.02 × predicted: within 0.3 % of the prediction (measured +0.03 % for both
    forms), while the other form's prediction lies 9 % away.
    """
    y = (S_P * normal_quantiles(20_000))[:, None]

    def slope(v):
        xq = (math.sqrt(v) * torch.linspace(-1.5, 1.5, 31, dtype=F64))[:, None]
        xs = (math.sqrt(v) * normal_quantiles(20_000))[:, None]
        drift = (attraction(xq, y, fk_logits(xq, y, form))
                 - (kernel_mean(gaussian_logits(xq, xs, TAU), xs) - xq))
        return ((xq * drift).sum() / (xq * xq).sum()).item()

    low, high = 0.98 * predicted, 1.02 * predicted
    c_low, c_high = slope(low), slope(high)
    assert c_low > 0 > c_high  # restoring: q wider than the fixed point contracts
    root = low + (high - low) * c_low / (c_low - c_high)
    assert root == pytest.approx(predicted, rel=3e-3)
    assert abs(root / other - 1) > 0.05


def particle_flow(drift, n_particles=1000, steps=60, start_variance=1.0, average=20,
                  dtype=torch.float32):
    """Move particles x ← x + drift(x) from the quantiles of N(0, start_variance); returns the
    bulk variance averaged over the last ``average`` steps."""
    z = normal_quantiles(n_particles, dtype)
    x = (math.sqrt(start_variance) * z)[:, None]
    history = []
    for _ in range(steps):
        x = x + drift(x)
        history.append(bulk_variance(x, z))
    return sum(history[-average:]) / average


@pytest.mark.parametrize(("form", "predicted"), [("energy", V_TILTED), ("force", V_FORCE_FORM)],
                         ids=["energy", "force"])
def test_fk_fixed_point_by_particle_flow(form, predicted):
    """Particle flow (no network): 1,000 particles from N(0, 1) move by
    V = attraction(x, y, ℓ_τ + β·a) − repulsion(x, ℓ_τ(x, x)) with 2,000 fresh positives
    y ~ p each step; the unstandardised FK fixed point is p·π^β (energy form, variance 0.390)
    and v̄(1 + βτ²/σ_π²) (force form: the Taylor remainder narrows the kernel, 0.425; see the
    population test above).

    Two finite-sample effects, measured: (1) the self-excluded, normalised repulsion pushes an
    isolated tail particle away from its nearest neighbour by the full distance, so V no longer
    depends on its position and a few particles escape (max |x| up to 10 with 1,000
    particles): the plain variance is unreliable (0.44–0.57 in the energy form, the cause of
    0.48 vs 0.425 in an earlier try), hence the bulk variance of the central 80 %; (2) the
    particles form a regular set, not an iid sample, so leaving each particle out of its own
    repulsion leaves a hole that overstates the repulsion by ≈ 1/(B·Σ-kernel mass): the bulk
    variance comes out ≈ 23/B high (+6.6 % at B = 300, +2.3 % at 1,000, +1.0 % at 3,000;
    ±0.3 % between seeds; the number of positives does not matter; with the particle itself
    included it is +0.05 %, but for iid generated samples, as in training, excluding it is the
    unbiased choice). Measured here: energy 1.020, force 1.021 × predicted. Tolerance
    −1 % … +5 %; the forms' predictions are 9 % apart.
    """
    gen = torch.Generator().manual_seed(0)

    def drift(x):
        y = S_P * torch.randn(2000, 1, generator=gen, dtype=x.dtype)
        return (attraction(x, y, fk_logits(x, y, form))
                - repulsion(x, gaussian_logits(x, x, TAU)))

    ratio = particle_flow(drift) / predicted
    assert 0.99 < ratio < 1.05, f"fixed-point variance / predicted = {ratio:.4f}"


def test_density_corrected_energy_tilt_targets_boltzmann_by_particle_flow():
    """GaussianDrift with EnergyTilt(β = 1) unstandardised: weights ∝ k·p·π/p̂, so with the
    density correction log p̂ = kde_log_density of the positives the fixed point is π itself
    (σ_π² = 1), without it p·π (0.390). The KDE smooths: p̂ ≈ p ∗ N(0, h²) with h ≈ 0.17 for
    1,200 draws, which biases the corrected target to ≈ 0.94; measured 0.89–0.97 over seeds
    (800 particles from N(0, 0.25), 800 positives drawn each step from a pool of 1,200 whose
    density is estimated once, bandwidth 0.5 × median, 60 steps; this seed: 0.965), and
    0.38–0.42 uncorrected (this seed: 0.386).
    Tolerances 0.8–1.1 and ±10 % of 0.390 separate the two targets by a factor 2.5."""
    gen = torch.Generator().manual_seed(0)
    pool = S_P * torch.randn(1200, 1, generator=gen)
    log_density = kde_log_density(pool)
    reduced_energies = pool[:, 0] ** 2 / (2 * SIGMA_PI**2)

    def variance(corrected):
        field = GaussianDrift(tilts=(EnergyTilt(1.0, density_correction=corrected),),
                              bandwidths=(0.5,))

        def drift(x):
            index = torch.randperm(len(pool), generator=gen)[:800]
            return field(x, Positives(pool[index], reduced_energies=reduced_energies[index],
                                      log_density=log_density[index] if corrected else None))

        return particle_flow(drift, n_particles=800, start_variance=0.25)

    corrected, plain = variance(True), variance(False)
    assert 0.8 < corrected / SIGMA_PI**2 < 1.1, f"corrected: {corrected:.3f}, target 1"
    assert plain == pytest.approx(V_TILTED, rel=0.1)


# ----------------------------------------------------------------------------- details (mutation tests)
# Each pins a part of a definition that the tests above exercise only at values where it
# cannot show (spreads above 1, ω = 0, no force tilt inside a GaussianDrift, ...).
def test_energy_tilt_standardised_is_beta_times_the_standardised_alignment():
    """Standardised energy tilt: β·ã with ã = (a − ā)/std(a), a = −(E − Ē)/kT, over the
    positives (a 1-D alignment); with a spread of E/kT well below 1, so std(a) < 1 counts."""
    x, y = cloud(3), cloud(6, seed=1)
    energies = 0.05 * cloud(6, dim=1, seed=2)[:, 0]
    a = energy_alignment(energies)
    assert a.std() < 0.5
    expected = 0.8 * ((a - a.mean()) / a.std())[None]
    tilt = EnergyTilt(0.8, standardize=True)(x, Positives(y, reduced_energies=energies))
    torch.testing.assert_close(tilt, expected)
    z = standardize(0.01 * cloud(4, dim=30, seed=1))
    torch.testing.assert_close(z.std(-1), torch.ones(4, dtype=F64))


def test_force_scale_ratio_for_displacements_below_one():
    x, y, s = 0.01 * cloud(5), 0.01 * cloud(12, seed=1), cloud(12, seed=2)
    tau = 0.6
    assert median_distance(x, y) < 0.1
    expected = (tau**2 * s).norm(dim=-1).median() / median_distance(x, y)
    torch.testing.assert_close(force_scale_ratio(x, y, s, tau), expected)


def test_gaussian_drift_divides_the_force_term_by_rho_when_asked():
    """normalize_force_scale: V = V⁺_ω with the force term over ρ(x, y, s, τ) (Eq. 34), minus
    V⁻; ω = 0 needs no forces; without ρ the force scale is 1."""
    x, y, s = cloud(5), cloud(12, seed=1), 30 * cloud(12, seed=2)
    tau = 0.25 * median_distance(x, y)
    logits = gaussian_logits(x, y, tau)
    rho = force_scale_ratio(x, y, s, tau)
    expected = (force_interpolated_attraction(x, y, s, logits, tau, 0.4, rho)
                - repulsion(x, gaussian_logits(x, x, tau)))
    field = GaussianDrift(omega=0.4, normalize_force_scale=True)
    torch.testing.assert_close(field(x, Positives(y, scores=s)), expected)
    assert (rho - 1).abs() > 0.1  # ρ matters here
    torch.testing.assert_close(force_interpolated_attraction(x, y, s, logits, tau, 0.4),
                               force_interpolated_attraction(x, y, s, logits, tau, 0.4, 1.0))
    plain = GaussianDrift(normalize_force_scale=True)(x, Positives(y))
    torch.testing.assert_close(plain, GaussianDrift()(x, Positives(y)))


def test_gaussian_drift_with_the_force_tilt_is_attraction_under_tilted_logits():
    """FK inside the field: logits ℓ(x, y_i) + β·ã_i(x), ã the standardised force alignment at
    the generated sample x itself; V = V⁺ under those logits − V⁻."""
    x, y, s = cloud(5), cloud(12, seed=1), cloud(12, seed=2)
    tau = 0.25 * median_distance(x, y)
    logits = gaussian_logits(x, y, tau) + 0.6 * standardize(force_alignment(x, y, s))
    expected = attraction(x, y, logits) - repulsion(x, gaussian_logits(x, x, tau))
    field = GaussianDrift(tilts=(ForceTilt(0.6),))
    torch.testing.assert_close(field(x, Positives(y, scores=s)), expected)


@pytest.mark.parametrize(("field", "energies", "message"), [
    (GaussianDrift(omega=0.5), None, "Force-Interpolated drifting (omega > 0) needs forces"),
    (GaussianDrift(tilts=(ForceTilt(0.5),)), None, "the force form of FK needs forces"),
    (GaussianDrift(tilts=(EnergyTilt(0.5),)), None, "the energy form of FK needs energies"),
    (GaussianDrift(tilts=(EnergyTilt(1.0, density_correction=True),)), torch.zeros(8, dtype=F64),
     "density_correction needs a data density estimate"),
])
def test_missing_label_errors_name_the_field_and_the_label(field, energies, message):
    import re

    x, y = cloud(4), cloud(8, seed=1)
    full = f"^{re.escape(message)} of the positive samples, but the data has none$"
    with pytest.raises(ValueError, match=full):
        field(x, Positives(y, reduced_energies=energies))


def test_field_parameters_at_their_bounds_and_the_errors_beyond():
    """ω = 1 (the force side of the identity) and β = 0 (no tilt) are valid; the errors say
    what is wrong."""
    assert GaussianDrift(omega=1.0).omega == 1.0
    assert ForceTilt(0.0).beta == 0.0 and EnergyTilt(0.0).beta == 0.0
    with pytest.raises(ValueError, match=r"^omega must lie in \[0, 1\], got 1.5$"):
        GaussianDrift(omega=1.5)
    with pytest.raises(ValueError, match=r"^bandwidths must be positive, got \(\)$"):
        GaussianDrift(bandwidths=())
    with pytest.raises(ValueError, match="^beta must be non-negative, got -1.0$"):
        ForceTilt(-1.0)
    with pytest.raises(ValueError, match=r"^the density correction targets π only without "
                                         r"standardisation \(standardize=False\)$"):
        EnergyTilt(standardize=True, density_correction=True)
    field = GaussianDrift(tilts=[ForceTilt()])  # a list is stored as a tuple: hashable
    assert field.tilts == (ForceTilt(),) and isinstance(field.tilts, tuple)
    assert hash(field) == hash(GaussianDrift(tilts=(ForceTilt(),)))


def test_field_spec_is_plain_json_data():
    field = make_field("fk", "distance", bandwidths=(0.1, 0.3))
    assert field.bandwidths == (0.1, 0.3)
    assert field_spec(field) == {
        "kind": "gaussian", "omega": 0.0, "bandwidths": [0.1, 0.3],
        "normalize_force_scale": False,
        "tilts": [{"kind": "force-tilt", "beta": 0.5, "standardize": True}]}
    with pytest.raises(ValueError, match="unknown field kind None"):
        field_from_spec({"beta": 0.5})
    with pytest.raises(TypeError, match="^function is not a field of ase_drift.drift"):
        field_spec(lambda x, positives: x)


# ----------------------------------------------------------------------------- automatic ω
def test_data_force_scale_ratio_is_eq_33_and_scales_with_force_and_bandwidth_squared():
    """ρ = median‖τ²s‖ / median‖y − x‖: ×10 with the scores, ×4 with twice the bandwidth; and
    equal to Eq. 33 evaluated by hand on the same split."""
    from ase_drift.drift import data_force_scale_ratio

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    scores = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    rho = data_force_scale_ratio(features, scores, bandwidth=0.25, n=100)
    assert data_force_scale_ratio(features, 10 * scores, 0.25, n=100) == pytest.approx(10 * rho)
    assert data_force_scale_ratio(features, scores, 0.5, n=100) == pytest.approx(4 * rho)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    x, y, s = features[order[:100]], features[order[100:300]], scores[order[100:300]]
    distances = torch.cdist(x, y)
    tau = 0.25 * distances.flatten().median()
    by_hand = (tau**2 * s.norm(dim=1)).median() / distances.flatten().median()
    assert rho == pytest.approx(float(by_hand), rel=1e-12)


def test_automatic_omega_keeps_omega_times_rho_fixed_per_space_and_at_most_one():
    from ase_drift.drift import FI_OMEGA_RHO, automatic_omega

    for space, product in FI_OMEGA_RHO.items():
        assert automatic_omega(4.0, space) * 4.0 == pytest.approx(product)
        assert automatic_omega(40.0, space) == pytest.approx(automatic_omega(4.0, space) / 10)
        assert automatic_omega(1e-3, space) == 1.0
    assert FI_OMEGA_RHO["cartesian"] / 4.9 == pytest.approx(0.02, rel=0.03)  # ethanol's ω
    assert FI_OMEGA_RHO["distance"] / 3.6 == pytest.approx(0.1, rel=0.03)


def test_data_force_scale_ratio_of_a_few_frames_uses_half_as_x():
    from ase_drift.drift import data_force_scale_ratio

    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert data_force_scale_ratio(features, features, n=256) > 0
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        data_force_scale_ratio(features[:1], features[:1])
