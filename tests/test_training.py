"""Training, samplers and checkpoints: reproducible, resumable bit for bit, strict on bad input,
and able to learn a known distribution.

The synthetic molecule is a water-like triatomic O–H–H drawn exactly from the Boltzmann
distribution of the harmonic potential E = ½k_r Σ(d − r₀)² + ½k_θ(θ − θ₀)² at T = 300 K
(r₀ = 1 Å, θ₀ = 104.5°, k_r = kT/(0.08 Å)², k_θ = kT/(10°)²; with the Cartesian Jacobian
d₁²d₂² sin θ, see :func:`ase_drift.testing.boltzmann_triatomic_positions`). Forces are −∇E.
"""

import re

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ase_drift.checkpoint import CheckpointError, load_checkpoint
from ase_drift.data import Conformations
from ase_drift.sampler import DriftSampler, Sampler
from ase_drift.testing import (
    HarmonicTriatomic,
    assert_force_source_consistent,
    boltzmann_triatomic_positions,
)
from ase_drift.training import Checkpointer, TrainConfig, Trainer

TEMPERATURE_K = 300.0


def triatomic_data(n=2000, seed=0, labels=True, temperature_K=TEMPERATURE_K):
    positions = boltzmann_triatomic_positions(n, seed=seed)
    if not labels:
        return Conformations([8, 1, 1], positions, temperature_K=temperature_K)
    result = HarmonicTriatomic().compute([8, 1, 1], positions)
    return Conformations([8, 1, 1], positions, result.forces, result.energies, temperature_K)


def pair_distances(positions):
    """d(O–H₁), d(O–H₂), d(H₁–H₂) ``[n, 3]``."""
    p = np.asarray(positions, dtype=np.float64)
    return np.stack([np.linalg.norm(p[:, i] - p[:, j], axis=-1)
                     for i, j in ((0, 1), (0, 2), (1, 2))], axis=1)


def small_config(**changes):
    """A tiny, fast configuration (MLP 2×64)."""
    values = {"field": "drift", "space": "distance", "hidden": 64, "depth": 2, "noise_dim": 16,
              "steps": 10, "batch_size": 64, "n_positives": 128, "warmup_steps": 5,
              "learning_rate": 3e-3, "seed": 0}
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data():
    return triatomic_data(400)


@pytest.fixture(scope="module")
def sampler(data):
    return Trainer(data, small_config()).run()


def params(module):
    return [p.detach().clone() for p in module.parameters()]


# ----------------------------------------------------------------------------- the synthetic data
def test_synthetic_force_source_forces_are_minus_energy_gradient():
    """The harmonic source used below obeys F = −∇E (central differences, h = 1e-5 Å)."""
    err = assert_force_source_consistent(HarmonicTriatomic(), [8, 1, 1],
                                         boltzmann_triatomic_positions(3, seed=5), h=1e-5,
                                         atol=1e-6)
    assert err < 1e-6


# ----------------------------------------------------------------------------- (a) save / load
def test_sampler_save_load_round_trip_gives_identical_samples(tmp_path, sampler):
    path = sampler.save(tmp_path / "model.pt")
    loaded = DriftSampler.load(path)
    assert isinstance(loaded, Sampler)
    np.testing.assert_array_equal(loaded.sample_positions(50, seed=3),
                                  sampler.sample_positions(50, seed=3))
    np.testing.assert_array_equal(loaded.numbers, [8, 1, 1])
    assert loaded.scale == sampler.scale
    assert loaded.temperature_K == TEMPERATURE_K
    assert loaded.metadata == sampler.metadata
    assert loaded.config == sampler.config
    # a seed fixes the samples; different seeds give different samples
    assert not np.array_equal(sampler.sample_positions(5, seed=3),
                              sampler.sample_positions(5, seed=4))


def test_sample_positions_are_centred_angstrom_float32(sampler):
    positions = sampler.sample_positions(20, seed=0)
    assert positions.shape == (20, 3, 3) and positions.dtype == np.float32
    assert np.abs(positions.mean(axis=1)).max() < 1e-5
    assert sampler.sample_positions(0, seed=0).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="non-negative"):
        sampler.sample_positions(-1)


def test_trainer_is_seeded_without_touching_the_global_rng(data):
    """Same seed, same initial weights; building a Trainer leaves torch's global RNG alone
    (DESIGN.md: no global state)."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = Trainer(data, small_config(seed=5))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    second = Trainer(data, small_config(seed=5))
    for a, b in zip(params(first.model), params(second.model), strict=True):
        assert torch.equal(a, b)
    other = Trainer(data, small_config(seed=6))
    assert not torch.equal(params(first.model)[0], params(other.model)[0])


# ----------------------------------------------------------------------------- (b) resume
@pytest.mark.parametrize("field, space", [("drift", "distance"), ("fi+fk", "cartesian")])
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, data, field, space):
    """N steps in one go == N/2 steps, checkpoint, fresh Trainer, load, N/2 more steps:
    weights, optimiser state, history and random state all identical (torch.equal)."""
    n = 16
    config = small_config(field=field, space=space, steps=n)
    straight = Trainer(data, config)
    straight.run()

    path = tmp_path / "run.ckpt"
    interrupted = Trainer(data, config).attach(Checkpointer(path), n // 2)
    interrupted.run(steps=n // 2)  # then the process "dies"
    assert load_checkpoint(path)["state_dict"]["step"] == n // 2

    resumed = Trainer(data, config).load_checkpoint(path)
    assert resumed.step_count == n // 2
    resumed.run()
    assert resumed.step_count == straight.step_count == n
    for a, b in zip(params(straight.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    assert resumed.history == straight.history
    assert torch.equal(resumed.rng.get_state(), straight.rng.get_state())
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[key][name], opt_b[key][name])
    assert straight.schedule.get_last_lr() == resumed.schedule.get_last_lr()


def test_resume_with_more_steps_extends_the_run_on_the_new_schedule(tmp_path, data):
    """A checkpoint of an 8-step run resumed with steps=16 runs 8 more steps; from the resumed
    step on, the learning rate is the 16-step warm-up-cosine plan's, not the old plan's (which
    had decayed to zero)."""
    from ase_drift.training import warmup_cosine

    path = tmp_path / "run.ckpt"
    Trainer(data, small_config(steps=8)).attach(Checkpointer(path), 8).run()
    extended = Trainer(data, small_config(steps=16)).load_checkpoint(path)
    assert extended.step_count == 8
    plan = warmup_cosine(5, 16)
    (lr,) = [group["lr"] for group in extended.optimizer.param_groups]
    assert lr == pytest.approx(3e-3 * plan(8), rel=1e-12)
    assert plan(8) > 0.1 and warmup_cosine(5, 8)(8) == 0.0  # the old plan had ended
    before = [p.clone() for p in params(extended.model)]
    extended.run()
    assert extended.step_count == 16
    assert any(not torch.equal(a, b) for a, b in zip(before, params(extended.model), strict=True))
    (lr,) = extended.schedule.get_last_lr()
    assert lr == pytest.approx(3e-3 * plan(16), abs=1e-15)


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, data):
    path = tmp_path / "run.ckpt"
    Trainer(data, small_config(steps=8)).attach(Checkpointer(path), 8).run()
    with pytest.raises(CheckpointError, match="at step 8, beyond the 4 steps"):
        Trainer(data, small_config(steps=4)).load_checkpoint(path)


def test_progress_log_prints_a_line_every_n_steps_and_at_the_end(data):
    """Not on a terminal, progress is a line per 10 % (here every 3 of 10 steps: 3, 6, 9, 10)."""
    import io

    from ase_drift.training import ProgressBar, ProgressLog, progress_hook

    stream = io.StringIO()
    hook = progress_hook(10, desc="run", stream=stream)
    assert isinstance(hook, ProgressLog) and hook.every == 1
    hook = progress_hook(10, desc="run", every=3, stream=stream)
    Trainer(data, small_config(steps=10)).attach(hook, 1).run()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"run: step {k}/10" for k in (3, 6, 9, 10)]
    assert lines[-1].startswith("run: step 10/10 (100 %), loss ")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_hook(10, stream=Terminal()), ProgressBar)
    assert isinstance(progress_hook(10, every=5, stream=Terminal()), ProgressLog)


def test_trainer_checkpoint_loads_as_sampler(tmp_path, data):
    trainer = Trainer(data, small_config(steps=4))
    trainer.run()
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    loaded = DriftSampler.load(tmp_path / "t.ckpt")
    np.testing.assert_array_equal(loaded.sample_positions(8, seed=1),
                                  trainer.sampler().sample_positions(8, seed=1))


# ----------------------------------------------------------------------------- (c) bad inputs
def test_missing_temperature_raises():
    data = triatomic_data(50, temperature_K=None)
    with pytest.raises(ValueError, match="temperature is unknown"):
        Trainer(data, small_config())
    assert Trainer(data, small_config(temperature_K=450.0)).config.temperature_K == 450.0


@pytest.mark.parametrize("field", ["fi", "fk", "fi+fk"])
def test_force_fields_on_unlabelled_data_raise_mentioning_forces(field):
    data = triatomic_data(50, labels=False)
    expected = f"has no forces (field '{field}'; fields that train on these labels: drift, deng)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Trainer(data, small_config(field=field))


def test_fk_energy_form_needs_energies():
    labelled = triatomic_data(50)
    no_energies = Conformations(labelled.numbers, labelled.positions, labelled.forces,
                                temperature_K=TEMPERATURE_K)
    with pytest.raises(ValueError, match="has no energies"):
        Trainer(no_energies, small_config(field="fk-energy"))
    Trainer(no_energies, small_config(field="fk"))  # the force form needs forces only


@pytest.mark.parametrize(("field", "options", "tilt"), [
    ("fk", {}, "ForceTilt"), ("fk-energy", {}, "EnergyTilt"),
    ("fk-energy", {"beta": 1.0, "density_correction": True}, "EnergyTilt"),
])
@pytest.mark.parametrize("labels", ["forces+energies", "exactly what the field needs"])
def test_the_trainer_uses_the_form_the_field_names_whatever_labels_the_data_has(
        field, options, tilt, labels):
    """The field, not the label set, decides the form: 'fk' is the force form even when the
    data carries energies (no 'auto' switch), and the trainer prepares exactly the labels the
    field requires (no density estimate unless asked for)."""
    full = triatomic_data(200)
    if labels == "forces+energies":
        data = full
    elif field == "fk":
        data = Conformations(full.numbers, full.positions, full.forces,
                             temperature_K=TEMPERATURE_K)
    else:
        data = Conformations(full.numbers, full.positions, energies=full.energies,
                             temperature_K=TEMPERATURE_K)
    trainer = Trainer(data, small_config(field=field, **options))
    (used,) = trainer.field.tilts
    assert type(used).__name__ == tilt
    assert (trainer.log_density is not None) == bool(options.get("density_correction"))
    positives = trainer.positives()
    assert (positives.log_density is not None) == bool(options.get("density_correction"))
    drift = trainer.field(trainer.representation.features(
        trainer.model(trainer.model.noise(8, trainer.rng))).detach(), positives)
    assert torch.isfinite(drift).all()


def test_truncated_checkpoint_raises_checkpoint_error(tmp_path, data):
    trainer = Trainer(data, small_config(steps=2))
    trainer.run()
    path = trainer.save_checkpoint(tmp_path / "good.ckpt")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(data, small_config(steps=2)).load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        DriftSampler.load(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        DriftSampler.load(tmp_path / "missing.ckpt")


def test_checkpoint_with_other_config_or_data_raises(tmp_path, data):
    trainer = Trainer(data, small_config(steps=2))
    trainer.run()
    path = trainer.save_checkpoint(tmp_path / "run.ckpt")
    with pytest.raises(CheckpointError, match="another configuration.*learning_rate"):
        Trainer(data, small_config(steps=2, learning_rate=1e-4)).load_checkpoint(path)
    with pytest.raises(CheckpointError, match="other data"):
        Trainer(triatomic_data(400, seed=9), small_config(steps=2)).load_checkpoint(path)
    sampler_file = trainer.sampler().save(tmp_path / "sampler.pt")
    with pytest.raises(CheckpointError, match="not a 'drift-trainer'"):
        Trainer(data, small_config(steps=2)).load_checkpoint(sampler_file)


def test_sampler_rejects_template_with_wrong_species_or_order(sampler):
    with pytest.raises(ValueError, match="template atom 0 is H, but the model's atom 0 is O"):
        sampler.sample(Atoms("HOH", positions=np.zeros((3, 3))), 2)
    with pytest.raises(ValueError, match="template has 4 atoms"):
        sampler.sample(Atoms("OHHH", positions=np.zeros((4, 3))), 2)


def test_config_validation():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        TrainConfig(steps=0)
    config = TrainConfig(bandwidths=[0.1, 0.2])
    assert config.bandwidths == (0.1, 0.2)
    assert TrainConfig.from_dict(dict(config.as_dict(), unknown=1)) == config


# ----------------------------------------------------------------------------- (d) sample(atoms)
def test_sample_returns_template_copies_without_calculator(sampler):
    template = Atoms("OH2", positions=[[5.0, 5.0, 5.0], [6.0, 5.0, 5.0], [5.0, 6.0, 5.0]],
                     cell=[10, 10, 10], pbc=True, info={"name": "water"})
    template.calc = SinglePointCalculator(template, energy=-1.0, forces=np.ones((3, 3)))
    frames = sampler.sample(template, 7, seed=2)
    assert len(frames) == 7
    expected = sampler.sample_positions(7, seed=2) + template.positions.mean(axis=0)
    for atoms, positions in zip(frames, expected, strict=True):
        assert atoms.get_chemical_symbols() == ["O", "H", "H"]
        assert atoms.calc is None
        np.testing.assert_allclose(atoms.positions, positions, atol=1e-6)
        assert atoms.info["name"] == "water" and atoms.pbc.all()
        np.testing.assert_array_equal(atoms.cell.array, template.cell.array)
    assert template.calc is not None and template.positions[0, 0] == 5.0  # untouched
    frames[0].positions += 1.0
    assert not np.allclose(frames[0].positions, frames[1].positions)  # independent copies


# ----------------------------------------------------------------------------- (e) end to end
def test_end_to_end_learns_bond_lengths_and_spread():
    """Seeded 300-step run (MLP 2×64, batch 128, 256 positives, field 'drift', distance space)
    on 2000 exactly sampled frames, from a generator NOT initialised from the data: the
    generated mean O–H and H–H distances match the data within 0.05 Å and their standard
    deviations within 30 % (measured: means within 0.01 Å, spreads within 14 %). The untrained
    generator fails both (its atoms sit within ≈ 0.1 Å of each other: mean errors ≥ 0.94 Å), so
    the test passes only by training."""
    data = triatomic_data(2000)
    config = small_config(steps=300, batch_size=128, n_positives=256, learning_rate=1e-2,
                          warmup_steps=20, noise_dim=64, initialize_from_data=False)
    trainer = Trainer(data, config)
    reference = pair_distances(data.positions)

    def matches(sampler):
        generated = pair_distances(sampler.sample_positions(4000, seed=1))
        assert np.isfinite(generated).all()
        return (np.allclose(generated.mean(0), reference.mean(0), rtol=0, atol=0.05)
                and np.allclose(generated.std(0), reference.std(0), rtol=0.3, atol=0))

    assert not matches(trainer.sampler())  # step 0
    assert matches(trainer.run())


def test_fi_chooses_omega_from_the_data_rho_unless_given(data):
    """omega=None: ω = FI_OMEGA_RHO/ρ, recorded in the field spec and ρ in the metadata; forces
    ten times larger give a ten times smaller ω; an explicit ω is kept."""
    from dataclasses import replace

    from ase_drift.drift import FI_OMEGA_RHO

    trainer = Trainer(data, small_config(field="fi", space="cartesian"))
    rho = trainer.metadata()["force_scale_ratio"]
    assert trainer.field.omega == pytest.approx(FI_OMEGA_RHO["cartesian"] / rho)
    assert trainer.field_spec()["omega"] == trainer.field.omega
    stronger = Trainer(replace(data, forces=10 * data.forces),
                       small_config(field="fi", space="cartesian"))
    assert stronger.field.omega == pytest.approx(trainer.field.omega / 10, rel=1e-6)
    fixed = Trainer(data, small_config(field="fi", space="cartesian", omega=0.3))
    assert fixed.field.omega == 0.3 and fixed.metadata()["force_scale_ratio"] is None


def test_streamed_batches_are_the_conformations_drawn_at_once(data, monkeypatch):
    sampler = Trainer(data, small_config(steps=2)).run()
    at_once = sampler.sample_positions(10, seed=4)
    monkeypatch.setattr(sampler, "batch_size", 4)
    batches = list(sampler.iter_positions(10, seed=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_allclose(np.concatenate(batches), at_once, rtol=0, atol=1e-6)  # BLAS
    assert sampler.sample_positions(0).shape == (0, 3, 3)
    fast = sampler.sample_positions(10, seed=4, precision="bf16")
    assert fast.dtype == np.float32 and 0 < np.abs(fast - at_once).max() < 0.05  # Å


def test_resume_keeps_the_runs_automatic_omega_when_labels_differ_by_round_off(tmp_path, data):
    """FI's ω comes from the labels; labels recomputed with round-off give an ω that differs in
    the last digits: resuming continues with the checkpoint's ω, bit for bit."""
    from dataclasses import replace

    path = tmp_path / "run.ckpt"
    config = small_config(field="fi", space="cartesian", steps=4)
    Trainer(data, config).attach(Checkpointer(path), 4).run()
    noisy = replace(data, forces=data.forces * (1 + 1e-9))
    resumed = Trainer(noisy, config)
    recomputed = resumed.field.omega
    resumed.load_checkpoint(path)
    stored = load_checkpoint(path)["config"]["field"]["omega"]
    assert recomputed != stored and resumed.field.omega == stored


# ----------------------------------------------------------------------------- EMA of weights
def test_ema_weights_follow_the_exponential_moving_average_and_the_sampler_uses_them(data):
    """ema_decay=d: after step 1 the average is the weights, then ā ← d·ā + (1 − d)·θ_k; the
    sampler draws with ā, not θ."""
    decay = 0.9
    trainer = Trainer(data, small_config(steps=6, ema_decay=decay))
    expected = None
    for _ in range(6):
        trainer.step()
        current = [p.detach().clone() for p in params(trainer.model)]
        expected = current if expected is None else [
            decay * a + (1 - decay) * p for a, p in zip(expected, current, strict=True)]
    for a, b in zip(params(trainer.ema.module), expected, strict=True):
        torch.testing.assert_close(a, b)
    sampler = trainer.sampler()
    for a, b in zip(params(sampler.generator), expected, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(params(sampler.generator)[0], params(trainer.model)[0])


def test_resume_restores_the_weight_average(tmp_path, data):
    config = small_config(steps=8, ema_decay=0.9)
    straight = Trainer(data, config)
    straight.run()
    path = tmp_path / "run.ckpt"
    Trainer(data, config).attach(Checkpointer(path), 4).run(steps=4)
    resumed = Trainer(data, config).load_checkpoint(path)
    resumed.run()
    for a, b in zip(params(straight.ema.module), params(resumed.ema.module), strict=True):
        assert torch.equal(a, b)


def test_ema_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        TrainConfig(ema_decay=1.0)


def test_pair_scale_exponent_weights_the_training_features(data):
    """With pair_scale_exponent = 1 the prepared positives spread equally in every pair (the
    O–H bonds as much as the H–H distance), and checkpoints say how features were made."""
    plain = Trainer(data, small_config(pair_scale_exponent=0)).prepared.features.std(0)
    assert plain.max() / plain.min() > 1.5  # the triatomic's pairs differ in stiffness
    trainer = Trainer(data, small_config(pair_scale_exponent=1.0))
    weighted = trainer.prepared.features.std(0)
    torch.testing.assert_close(weighted, torch.full_like(weighted, weighted.mean().item()))
    assert "std over the data" in trainer.metadata()["normalization"]
    with pytest.raises(ValueError, match="space='distance'"):
        small_config(space="cartesian", pair_scale_exponent=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small_config(pair_scale_exponent=-0.1)


def test_stacked_pair_scale_exponents_train_blockwise_and_round_trip(tmp_path, data):
    """(0, 1): two blocks of the triatomic's 3 distances, the field called once per block, and
    the tuple survives the checkpoint's JSON config."""
    config = small_config(pair_scale_exponent=[0, 1], steps=4)
    assert config.pair_scale_exponent == (0.0, 1.0)
    trainer = Trainer(data, config)
    assert trainer.prepared.features.shape[-1] == 6
    calls = []
    field = trainer.field
    trainer.field = lambda x, positives: calls.append(x.shape[-1]) or field(x, positives)
    trainer.step()
    assert calls == [3, 3]
    trainer.field = field
    path = trainer.run().save(tmp_path / "stacked.pt")
    stored = TrainConfig.from_dict(load_checkpoint(path)["config"]["train"])
    assert stored.pair_scale_exponent == (0.0, 1.0)


def test_pair_scale_exponent_default_per_space_and_for_old_checkpoints():
    """None: the default exponent in distance space, 0 in Cartesian space; a stored config
    without the field (written before it existed) reads back as 0, what it was trained with."""
    from ase_drift.training import DEFAULT_PAIR_SCALE_EXPONENT

    assert TrainConfig().pair_scale_exponent == DEFAULT_PAIR_SCALE_EXPONENT > 0
    assert TrainConfig(space="cartesian").pair_scale_exponent == 0.0
    old = TrainConfig().as_dict()
    del old["pair_scale_exponent"]
    assert TrainConfig.from_dict(old).pair_scale_exponent == 0.0


def test_canonical_rotors_relabel_the_training_methyl_and_round_trip(tmp_path):
    """Ethanol with canonical rotors: the prepared positives are the distances of the canonical
    frames (each methyl hydrogen's spread over the data shrinks once the rotamers coincide), the
    option survives the checkpoint and is refused in Cartesian space; old configs read False."""
    from ase_drift.datasets import load

    reference = load("ethanol-gfn2-500K")[1][:300]
    config = small_config(steps=2, pair_scale_exponent=0.0, canonical_rotors=True)
    trainer = Trainer(reference, config)
    representation = trainer.representation
    assert representation.rotors.shape == (1, 6)
    plain = Trainer(reference, small_config(steps=2, pair_scale_exponent=0.0,
                                            canonical_rotors=False))
    hydrogens = set(representation.rotors[0, 3:].tolist())
    h_pairs = [k for k, (i, j) in enumerate(zip(representation.pair_i.tolist(),
                                                representation.pair_j.tolist()))
               if i in hydrogens or j in hydrogens]
    spread = trainer.prepared.features.std(0)[h_pairs]
    assert (spread < 0.8 * plain.prepared.features.std(0)[h_pairs]).float().mean() > 0.5
    path = trainer.run().save(tmp_path / "rotors.pt")
    assert TrainConfig.from_dict(load_checkpoint(path)["config"]["train"]).canonical_rotors
    old = TrainConfig().as_dict()
    del old["canonical_rotors"]
    assert TrainConfig.from_dict(old).canonical_rotors is False
    assert TrainConfig().canonical_rotors is True  # the default in distance space…
    assert TrainConfig(space="cartesian").canonical_rotors is False  # …not in Cartesian space
    with pytest.raises(ValueError, match="distance"):
        small_config(space="cartesian", canonical_rotors=True)
