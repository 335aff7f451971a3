"""Batched neural force sources (MACEForces, SchNetPackForces) against the per-frame ASE
calculators of the same model file.

Tiny models with random weights: agreement does not depend on training. The frames are
perturbed so that every frame's labels differ from every other's by far more than the
tolerance, so a frame mix-up across the batch or a wrong unit factor fails the comparison.
"""

import numpy as np
import pytest
import torch
from ase.build import molecule

from ase_drift import potentials
from ase_drift.datasets import load
from ase_drift.forces import (
    CalculatorForces,
    LabelingError,
    _module_sha256,
    label_positions,
    source_fingerprint,
    source_from_spec,
)

TOL = 1e-5  # eV/Å and eV: batched and per-frame must agree to this (float64)
FRAMES = 20
BATCH = 8  # 20 frames: chunks of 8, 8 and 4
PERTURBATION_ANGSTROM = 0.05
DISTINCT = 1e-3  # eV/Å: every two frames' forces differ by at least this somewhere
KINDS = ("mace", "schnetpack")


def _perturbed(numbers, positions, seed):
    """Atomic numbers ``[A]`` and ``FRAMES`` frames ``[FRAMES, A, 3]`` (Å): ``positions``
    ``[N, A, 3]`` cycled, each frame moved by Gaussian noise of ``PERTURBATION_ANGSTROM``."""
    start = positions[np.arange(FRAMES) % len(positions)]  # [FRAMES, A, 3] Å
    noise = np.random.default_rng(seed).normal(0.0, PERTURBATION_ANGSTROM, start.shape)
    return np.asarray(numbers), start + noise


def ethanol_frames():
    """Bundled GFN2-xTB MD frames of ethanol (C, H, O; 9 atoms), perturbed."""
    md = load("ethanol-gfn2-500K")[0]
    return _perturbed(md.numbers, md.positions, seed=0)


def ethylamine_frames():
    """ASE's ethylamine geometry (C, H, N; 10 atoms), perturbed."""
    atoms = molecule("CH3CH2NH2")
    return _perturbed(atoms.numbers, atoms.positions[None], seed=1)


MOLECULES = {"ethanol": ethanol_frames, "ethylamine": ethylamine_frames}


def _save_model(kind, numbers, path):
    """A tiny model of ``kind`` for the elements of ``numbers``, random weights, saved as its
    package saves models; its file."""
    mean_energy_per_atom = -10.0  # eV: any offset; only the fluctuations differ between frames
    if kind == "schnetpack":
        torch.save(potentials.build_painn(16, 2, mean_energy_per_atom, seed=0), path)
    else:
        from mace.tools import AtomicNumberTable

        z_table = AtomicNumberTable(sorted(set(numbers.tolist())))
        model = potentials.build_mace(8, z_table, mean_energy_per_atom, force_rms=1.0,
                                      avg_num_neighbors=8.0, seed=0)
        torch.save(model.double(), path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _per_frame(kind, path):
    """``CalculatorForces`` around the package's ASE calculator of the model file ``path``.
    ``MACECalculator`` loads it by ``torch.load`` without ``weights_only`` and relies on the
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 that importing mace sets once per process (another test
    may have removed it since): set here while it loads, restored after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        if kind == "mace":
            return CalculatorForces(potentials.mace_calculator(path), model_file=path)
        return CalculatorForces(potentials.painn_calculator(path), model_file=path)


@pytest.fixture(scope="module", params=[(kind, name) for kind in KINDS for name in MOLECULES],
                ids=lambda param: "-".join(param))
def case(request, tmp_path_factory):
    """(kind, numbers [A], frames [FRAMES, A, 3] Å, model file, per-frame calculator labels)."""
    kind, name = request.param
    pytest.importorskip(kind)
    numbers, frames = MOLECULES[name]()
    path = _save_model(kind, numbers, tmp_path_factory.mktemp(f"{kind}-{name}") / "model.pt")
    return kind, numbers, frames, path, _per_frame(kind, path).compute(numbers, frames)


def _batched(kind, model, **options):
    from ase_drift.neural_forces import MACEForces, SchNetPackForces

    return (MACEForces if kind == "mace" else SchNetPackForces)(model, **options)


def test_batched_labels_equal_the_per_frame_calculator(case):
    kind, numbers, frames, path, reference = case
    # the comparison has teeth: distinct frames, forces far above the tolerance
    pairwise = np.abs(reference.forces[:, None] - reference.forces[None]).max(axis=(2, 3))
    assert pairwise[~np.eye(FRAMES, dtype=bool)].min() > DISTINCT
    assert np.abs(reference.forces).max() > 100 * TOL

    got = _batched(kind, path, batch_size=BATCH).compute(numbers, frames)
    assert got.energies.shape == (FRAMES,) and got.forces.shape == frames.shape
    np.testing.assert_allclose(got.forces, reference.forces, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.energies, reference.energies, rtol=0, atol=TOL)


@pytest.mark.parametrize("batch_size", [1, 7, FRAMES, 64])
def test_every_chunking_gives_the_same_labels(case, batch_size):
    kind, numbers, frames, path, reference = case
    source = _batched(kind, path, batch_size=batch_size)
    got = source.compute(numbers, frames)
    np.testing.assert_allclose(got.forces, reference.forces, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.energies, reference.energies, rtol=0, atol=TOL)
    one = source.compute(numbers, frames[5:6])  # B = 1
    alone = source.compute(numbers, frames[5])  # a single frame [A, 3]
    for result in (one, alone):
        assert result.forces.shape == (1, *frames.shape[1:])
        np.testing.assert_allclose(result.forces[0], reference.forces[5], rtol=0, atol=TOL)
        np.testing.assert_allclose(result.energies[0], reference.energies[5], rtol=0, atol=TOL)


def test_a_module_is_copied_and_fingerprinted_by_its_weights(case):
    kind, numbers, frames, path, reference = case
    module = torch.load(path, weights_only=False)
    saved_dtype, saved_weights = next(module.parameters()).dtype, _module_sha256(module)
    other_dtype = torch.float32 if saved_dtype == torch.float64 else torch.float64
    _batched(kind, module, dtype=other_dtype)
    assert next(module.parameters()).dtype == saved_dtype  # the caller's module unchanged
    assert _module_sha256(module) == saved_weights
    assert all(parameter.requires_grad for parameter in module.parameters())

    from_module, from_file = _batched(kind, module), _batched(kind, path)
    np.testing.assert_allclose(from_module.compute(numbers, frames).forces, reference.forces,
                               rtol=0, atol=TOL)
    by_file, by_module = from_file.fingerprint(), from_module.fingerprint()
    assert "model_file_sha256" in by_file and "model_file_sha256" not in by_module
    assert by_module["model_weights_sha256"] == by_file["model_weights_sha256"]
    # batch_size does not change the labels, the dtype does
    assert source_fingerprint(_batched(kind, path, batch_size=3)) == source_fingerprint(from_file)
    assert source_fingerprint(_batched(kind, path, dtype=torch.float32)) != source_fingerprint(
        from_file)


def test_schnetpack_pairs_end_at_the_cutoff(case):
    """With a neighbour cutoff inside the model's own (5 Å), pairs between the two are left
    out, as ASE's neighbour list leaves them out for the calculator."""
    kind, numbers, frames, path, reference = case
    if kind != "schnetpack":
        pytest.skip("MACE's graph is cut at the model's r_max")
    import schnetpack.transform as trn
    from schnetpack.interfaces import SpkCalculator

    cutoff = 2.5  # Å: ethanol's and ethylamine's longest distances are 3.7-4.1 Å
    calculator = SpkCalculator(model=str(path), neighbor_list=trn.ASENeighborList(cutoff=cutoff),
                               energy_unit="eV", position_unit="Ang", dtype=torch.float64)
    want = CalculatorForces(calculator).compute(numbers, frames)
    source = _batched(kind, path, cutoff=cutoff, batch_size=BATCH)
    got = source.compute(numbers, frames)
    np.testing.assert_allclose(got.forces, want.forces, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.energies, want.energies, rtol=0, atol=TOL)
    assert np.abs(want.forces - reference.forces).max() > DISTINCT  # the cutoff matters
    assert source.fingerprint()["cutoff"] == cutoff


def test_one_source_follows_a_change_of_atom_order(case):
    """A source reused on the same molecule with its atoms in another order (a graph built
    for the first order must not be reused) gives the permuted labels."""
    kind, numbers, frames, path, reference = case
    order = np.random.default_rng(2).permutation(len(numbers))
    source = _batched(kind, path, batch_size=BATCH)
    source.compute(numbers, frames)
    got = source.compute(numbers[order], frames[:, order])
    np.testing.assert_allclose(got.forces, reference.forces[:, order], rtol=0, atol=TOL)
    np.testing.assert_allclose(got.energies, reference.energies, rtol=0, atol=TOL)


def test_wrong_shapes_and_elements_raise_value_error(case):
    kind, numbers, frames, path, _ = case
    source = _batched(kind, path)
    with pytest.raises(ValueError, match="shape"):
        source.compute(numbers, frames[:, 1:])  # one atom short
    with pytest.raises(ValueError, match="shape"):
        source.compute(numbers[1:], frames)
    foreign = numbers.copy()
    # an element the MACE model was not built for; beyond SchNetPack's embedding table
    foreign[0] = 9 if kind == "mace" else 100
    with pytest.raises(ValueError, match=r"atomic numbers \[(9|100)\]"):
        source.compute(foreign, frames)
    with pytest.raises(ValueError, match="batch_size"):
        _batched(kind, path, batch_size=0)


def test_non_finite_inputs_and_outputs_raise_labeling_error_naming_the_frame(case):
    kind, numbers, frames, path, _ = case
    source = _batched(kind, path, batch_size=4)
    coincident = frames[:6].copy()
    coincident[5, 1] = coincident[5, 0]  # two atoms on one spot: the models divide by 0
    with pytest.raises(LabelingError, match="frame 5 of the batch: .*non-finite"):
        source.compute(numbers, coincident)
    unplaced = frames[:6].copy()
    unplaced[2, 3, 1] = np.nan
    with pytest.raises(LabelingError, match="frame 2 of the batch: its positions"):
        source.compute(numbers, unplaced)


def test_specs_build_batched_sources_whose_cache_the_calculator_may_not_use(case, tmp_path):
    kind, numbers, frames, path, reference = case
    from ase_drift.neural_forces import MACEForces, SchNetPackForces

    source = source_from_spec(f"{kind}:{path}")
    assert isinstance(source, MACEForces if kind == "mace" else SchNetPackForces)
    cache = tmp_path / "labels.h5"
    labelled = label_positions(source, numbers, frames, cache=cache, batch_size=BATCH,
                               progress=False)
    np.testing.assert_allclose(labelled.forces, reference.forces, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="another source"):
        label_positions(_per_frame(kind, path), numbers, frames, cache=cache, progress=False)
