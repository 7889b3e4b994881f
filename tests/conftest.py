"""pytest settings shared by the tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; skipped without one (scripts/gpu_check.sh runs them "
                   "with pytest -m cuda)")
