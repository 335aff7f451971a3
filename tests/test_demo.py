"""`make demo` end to end, with a handful of training steps: every promised output exists."""

from ase.io import read

from ase_drift.demo import run_demo


def test_demo_writes_samples_metrics_and_plots(tmp_path, capsys):
    result = run_demo(out_dir=tmp_path, steps=20)
    frames = read(tmp_path / "samples.extxyz", index=":")
    assert len(frames) == 1000
    assert frames[0].get_chemical_symbols() == ["C", "C", "O", "H", "H", "H", "H", "H", "H"]
    assert frames[0].calc is None  # positions only, no invented energies
    for name in ("metrics.md", "distance_histograms.png", "training_curve.png",
                 "ethanol-distance.pt"):
        assert (tmp_path / name).stat().st_size > 0
    table = capsys.readouterr().out
    assert "noise floor" in table and "training set" in table and "wall times" in table
    assert set(result["timings"]) == {"train", "sample 1,000", "evaluate"}
