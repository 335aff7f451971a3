"""Bundled reference data: shapes, units, provenance, and deterministic regeneration."""

from dataclasses import replace

import numpy as np
import pytest

from ase_drift.datasets import available, load, reference_runs, topology_pdb
from ase_drift.metrics import evaluate, noise_floor
from ase_drift.peptides import (
    alpha_carbon_chirality,
    backbone_dihedrals,
    ramachandran_reference,
    topology_from_pdb,
)


def test_ethanol_bundle_is_labelled_in_ase_units():
    train, reference = load("ethanol-gfn2-500K")
    assert len(train) == 3000 and len(reference) == 10_000
    assert train.symbols == ["C", "C", "O", "H", "H", "H", "H", "H", "H"]  # MD17 order
    assert train.temperature_K == reference.temperature_K == 500.0
    # GFN2-xTB total energies of ethanol are ≈ −309.6 eV (−11.38 Hartree); eV/Å forces ~ 1
    assert reference.energies.mean() == pytest.approx(-309.59, abs=0.05)
    assert 0.5 < np.sqrt((reference.forces ** 2).mean()) < 2.0
    assert set(np.unique(reference_runs("ethanol-gfn2-500K"))) == {0, 1}


def test_ethanol_training_set_is_biased_beyond_the_noise_floor():
    train, reference = load("ethanol-gfn2-500K")
    bias = evaluate(train.positions, reference.positions, reference.numbers).tvd
    floor = noise_floor(reference.positions, reference.numbers, len(train),
                        groups=reference_runs("ethanol-gfn2-500K")).mean.tvd
    assert bias > 5 * floor


def test_butane_bundle_lacks_one_gauche_minimum_in_training_only():
    """n-butane, GFN2-xTB 500 K: the biased training run visits trans (C–C–C–C dihedral 180°)
    and gauche− (300°) but never gauche+ (60°), which the reference populates: the conformer
    the training set lacks."""
    from ase.geometry import get_dihedrals

    train, reference = load("butane-gfn2-500K")
    assert len(train) == 3000 and len(reference) == 6000 and train.formula == "C4H10"
    assert train.forces is not None and reference.forces is None and reference.energies is not None
    assert train.temperature_K == reference.temperature_K == 500.0
    carbons = np.flatnonzero(train.numbers == 6)  # C1–C2–C3–C4 in this order
    first = train.positions[0, carbons]
    assert np.allclose([np.linalg.norm(first[k + 1] - first[k]) for k in range(3)], 1.53,
                       atol=0.05)

    def fraction_in(positions, low, high):
        p = positions[:, carbons]
        angles = get_dihedrals(p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2])
        return np.mean((angles > low) & (angles < high))

    assert fraction_in(train.positions, 0, 120) == 0  # no gauche+
    assert fraction_in(train.positions, 240, 360) > 0.1  # gauche− visited
    assert fraction_in(reference.positions, 0, 120) > 0.15
    assert set(np.unique(reference_runs("butane-gfn2-500K"))) == {0, 1}


def test_alanine_subset_has_topology_and_stays_left_handed():
    name = "alanine-dipeptide-amber99sbildn-300K-small"
    train, reference = load(name)
    topology = topology_from_pdb(topology_pdb(name))
    assert topology.n_atoms == train.n_atoms == 22
    phi, psi = backbone_dihedrals(reference.positions, topology)
    assert np.all(np.abs(phi) <= np.pi) and np.mean(phi < 0) > 0.9
    train_phi, _ = backbone_dihedrals(train.positions, topology)
    assert np.all(train_phi < 0)  # the biased run stays in the starting basin
    assert np.all(alpha_carbon_chirality(reference.positions, topology) == 1)
    surface = ramachandran_reference(phi, psi, n_boot=20)
    assert np.nanmin(surface.free_energy) == 0
    # the φ > 0 basin is too rare for the bundled 40 ns: ΔF is either large or unresolved
    assert np.isnan(surface.delta_f) or surface.delta_f > 3


def test_registry_lists_every_set():
    assert {"ethanol-gfn2-500K", "alanine-dipeptide-amber99sbildn-300K",
            "alanine-dipeptide-amber99sbildn-300K-small"} <= set(available())
    with pytest.raises(KeyError, match="unknown data set"):
        load("no-such-set")


def test_ethanol_generation_is_deterministic_from_its_seed():
    pytest.importorskip("tblite")
    from ase_drift.datasets import ethanol

    tiny = replace(ethanol.EthanolProtocol(), n_train=5, n_reference_runs=1,
                   equilibration_ps=0.002, production_ps=0.004, reference_stride_fs=1.0)
    first, second = ethanol.generate(tiny, processes=1), ethanol.generate(tiny, processes=1)
    # Not bit for bit: with OMP_NUM_THREADS > 1 tblite's OpenMP reductions sum in a
    # run-dependent order, so two runs of the same seed differ by round-off (measured with 2
    # threads: ≤ 1e-15 Å, 3e-14 eV/Å, 3e-13 eV over this run). 1e-8 (Å, eV/Å, eV) is far above
    # that and far below what another seed changes (0.1 Å, 2.7 eV/Å, 0.1 eV).
    for key in ("train_R", "train_F", "reference_R", "reference_E"):
        np.testing.assert_allclose(first[key], second[key], rtol=0, atol=1e-8, err_msg=key)
    assert first["reference_R"].shape == (4, 9, 3)


def test_alanine_generation_is_deterministic_from_its_seed():
    pytest.importorskip("openmmtools")
    from ase_drift.datasets import alanine

    tiny = replace(alanine.AlanineProtocol(), train_ps=0.002, train_stride_ps=0.001, n_runs=1,
                   run_ns=0.000003, equilibration_ps=0.001, stride_ps=0.001)
    first, second = alanine.generate(tiny, processes=1), alanine.generate(tiny, processes=1)
    for key in ("train_R", "train_F", "reference_R", "reference_E"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["train_R"].shape == (2, 22, 3)


def test_alanine_run_from_a_start_labels_its_frames_and_refuses_bad_starts():
    pytest.importorskip("openmmtools")
    from ase_drift.datasets import alanine, data_path, load_npz
    from ase_drift.forces import OpenMMForces

    train, _ = load_npz(data_path("alanine-dipeptide-amber99sbildn-300K-small"))
    start = train.positions[0]
    protocol = replace(alanine.AlanineProtocol(), train_stride_ps=0.002)
    positions, forces, energies = alanine.run_from(start, 0.006, seed=3, protocol=protocol)
    assert positions.shape == forces.shape == (3, 22, 3) and energies.shape == (3,)
    # 2 fs per frame move atoms by ~0.02 Å (hydrogens at 300 K): the run starts where it was put
    assert 0 < np.abs(positions[0] - start).max() < 0.1
    assert np.abs(positions[2] - start).max() > np.abs(positions[0] - start).max()
    source = OpenMMForces(alanine.make_system(alanine.starting_structure()[0]))
    labels = source.compute(train.numbers, positions)
    np.testing.assert_allclose(energies, labels.energies, rtol=0, atol=1e-4)
    np.testing.assert_allclose(forces, labels.forces, rtol=0, atol=1e-3)
    again = alanine.run_from(start, 0.006, seed=3, protocol=protocol)
    np.testing.assert_array_equal(positions, again[0])
    with pytest.raises(ValueError, match=r"^start_angstrom must be finite positions \[22, 3\]"):
        alanine.run_from(start[:21], 0.006, seed=3)
    with pytest.raises(ValueError, match="^start_angstrom must be finite"):
        alanine.run_from(np.full_like(start, np.nan), 0.006, seed=3)
    with pytest.raises(ValueError, match="^ps=0.0001 is shorter than one frame"):
        alanine.run_from(start, 0.0001, seed=3)


def test_a_further_training_stage_continues_the_record_of_the_model_it_starts_from():
    from ase_drift.datasets.make_gpff_qm9 import continued_record
    from ase_drift.diffusion.pseudoforce import PseudoForceConfig, TrainingConfig

    earlier = {"steps": 100, "wall_time_s": 60.04, "training": {"seed": 0},
               "history": {"step": [50, 100], "loss": [3.0, 2.0], "validation_step": [100],
                           "validation_loss": [2.5]}}
    new = {"steps": 40, "wall_time_s": 30.03,
           "history": {"step": [20, 40], "loss": [1.9, 1.8], "validation_step": [40],
                       "validation_loss": [2.1]}}
    low_noise = PseudoForceConfig(p_mean=-1.2)
    record = continued_record(earlier, new, "dir/model.pt", TrainingConfig(seed=1), low_noise,
                              "subset 1")
    assert record["steps"] == 140 and record["wall_time_s"] == 90.1  # rounded to 0.1 s
    assert record["history"] == {"step": [50, 100, 120, 140], "loss": [3.0, 2.0, 1.9, 1.8],
                                 "validation_step": [100, 140], "validation_loss": [2.5, 2.1]}
    first, second = record["stages"]
    assert first == {"from_step": 0, "steps": 100, "wall_time_s": 60.04,
                     "training": {"seed": 0}}
    assert (second["from_step"], second["steps"], second["wall_time_s"]) == (100, 40, 30.03)
    assert second["initial"] == "model.pt" and second["training"]["seed"] == 1
    assert second["subset"] == "subset 1"
    assert second["noise"] == {"p_mean": -1.2, "p_std": 1.5, "sigma_min": 0.01, "sigma_max": 30.0}
    third = continued_record(record, new, "model.pt", TrainingConfig(seed=2), PseudoForceConfig(),
                             "subset 2")["stages"]
    assert [s["from_step"] for s in third] == [0, 100, 140]
    assert earlier["history"]["step"] == [50, 100]  # the earlier record is not modified


def test_noise_mean_is_refused_without_a_model_to_train_further(capsys):
    from ase_drift.datasets.make_gpff_qm9 import main

    with pytest.raises(SystemExit):
        main(["--noise-mean", "-1.2", "--minutes", "0.01"])
    assert "--noise-mean changes the noise of a further stage: it needs --init" in (
        capsys.readouterr().err)


def test_training_script_writes_both_models_with_records_and_trains_a_further_stage(
        tmp_path, monkeypatch):
    # a stand-in for QM9 (2,600 jittered small molecules: the split's validation part needs
    # 256), so the script's bookkeeping is tested in seconds
    import json

    from ase.build import molecule

    from ase_drift.datasets import make_gpff_qm9
    from ase_drift.datasets.qm9 import QM9
    from ase_drift.diffusion.pseudoforce import PseudoForceField

    rng = np.random.default_rng(0)
    shapes = [molecule(name) for name in ("H2O", "CH4", "NH3", "CH3OH")]
    frames = [shapes[m % 4] for m in range(2600)]
    sizes = [len(a) for a in frames]
    qm9 = QM9(np.concatenate([a.numbers for a in frames]),
              np.concatenate([a.positions + rng.normal(0, 0.05, a.positions.shape)
                              for a in frames]),
              np.concatenate([[0], np.cumsum(sizes)]), np.arange(2600))
    monkeypatch.setattr(make_gpff_qm9, "load_qm9", lambda: qm9)
    tiny = ["--subset", "64", "--features", "8", "--interactions", "1", "--rbf", "8",
            "--workdir", str(tmp_path / "work")]
    make_gpff_qm9.main([*tiny, "--minutes", "0.003", "--baseline-minutes", "0.003",
                        "--output", str(tmp_path / "g.pt"),
                        "--baseline-output", str(tmp_path / "b.pt")])
    gpff, baseline = (PseudoForceField.load(tmp_path / f"{n}.pt") for n in "gb")
    record = json.loads((tmp_path / "g.json").read_text())
    assert gpff.shape_prior is not None and baseline.shape_prior is None
    assert baseline.config.time_conditioned and not gpff.config.time_conditioned
    assert gpff.config.n_features == 8 and record["model"] == gpff.config.as_dict()
    assert gpff.metadata["elements"] == [1, 6, 7, 8]
    assert gpff.metadata["training"]["steps"] == record["steps"] > 0
    assert record["subset"].startswith("64 molecules drawn uniformly from the 2080 training")

    make_gpff_qm9.main([*tiny, "--init", str(tmp_path / "g.pt"), "--minutes", "0.003",
                        "--baseline-minutes", "0", "--noise-mean", "-1.2", "--seed", "5",
                        "--features", "64", "--output", str(tmp_path / "g2.pt"),
                        "--baseline-output", str(tmp_path / "b2.pt")])
    further = PseudoForceField.load(tmp_path / "g2.pt")
    record2 = json.loads((tmp_path / "g2.json").read_text())
    assert further.config == replace(gpff.config, p_mean=-1.2)  # the network is the init's
    first, second = record2["stages"]
    assert first["steps"] == record["steps"]
    assert second["initial"] == "g.pt" and second["from_step"] == record["steps"]
    assert second["training"]["seed"] == 5 + 1  # stage 1 draws new batches and noise
    assert record2["steps"] == record["steps"] + second["steps"]
    assert not (tmp_path / "b2.pt").exists()  # --baseline-minutes 0: no baseline
