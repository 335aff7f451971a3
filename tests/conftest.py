"""Test-session settings.

The test machine's cores are shared with long MD and training jobs. Tiny matrices on an
oversubscribed OpenMP pool spin for milliseconds per op (a 300-step toy training run takes
~30 s with the default pool and ~3 s with one thread), so the suite asks for one OpenMP thread
unless the caller set OMP_NUM_THREADS. This must run before torch is first imported, which is
why it lives here and not in a test module. It never calls torch.set_num_threads.
"""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A drift sampler of ethanol after two training steps, saved to a file."""
    from ase_drift.datasets import load
    from ase_drift.training import TrainConfig, Trainer

    train, _ = load("ethanol-gfn2-500K")
    config = TrainConfig(steps=2, hidden=16, depth=1, batch_size=16, n_positives=32,
                         noise_dim=4)
    return Trainer(train, config).run().save(tmp_path_factory.mktemp("model") / "tiny.pt")
