"""GPU tests carry the `gpu` marker and skip cleanly where CuPy sees no CUDA device."""

import pytest

from rnncells import verify


def pytest_collection_modifyitems(config, items):
    if verify.gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
