"""Test-session settings.

The test machine's cores are shared with long MD and training jobs. Tiny matrices on an
oversubscribed OpenMP pool spin for milliseconds per op (a 300-step toy training run takes
~30 s with the default pool and ~3 s with one thread), so the suite asks for one OpenMP thread
unless the caller set OMP_NUM_THREADS. This must run before torch is first imported, which is
why it lives here and not in a test module. It never calls torch.set_num_threads.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
