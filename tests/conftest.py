"""pytest settings shared by the tests.

The suite runs on 2 cores as two pytest-xdist workers (``-n 2``, README): every test process and
the fairseq processes the tests start use one torch thread, since two workers each running two
threads on two cores slow every test down several-fold (measured: 0.34 vs 1.07 updates/s).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; skipped without one (scripts/gpu_check.sh runs them "
                   "with pytest -m cuda)")
