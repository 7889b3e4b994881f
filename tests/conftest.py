"""pytest settings shared by the tests.

The suite runs on 2 cores as two pytest-xdist workers (``-n 2``, README): every test process and
the fairseq processes the tests start use one torch thread, since two workers each running two
threads on two cores slow every test down several-fold (measured: 0.34 vs 1.07 updates/s).

The test folders (unit/, fairseq/, pipeline/) have no ``__init__.py``: pytest imports each test
file with its own folder first on the import path, and this file's folder, ``tests/``, too, so a
test imports a helper of its folder or one of ``tests/`` (``fairseq_helpers``, ``recipe_configs``)
by its plain name.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; skipped without one (scripts/gpu_check.sh runs them "
                   "with pytest -m cuda)")
