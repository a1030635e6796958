"""GPU tests carry the `gpu` marker and skip cleanly where CuPy sees no CUDA device; tests that build the kernels
for the CPU carry `host` and skip without g++; tests that need torch skip without it, and the summary then says so
in one line."""

import shutil

import pytest

from rnncells import verify


def pytest_collection_modifyitems(config, items):
    missing = {"gpu": None if verify.gpu_available() else "needs a CUDA GPU with CuPy",
               "host": None if shutil.which("g++") else "the host build of the kernels needs g++"}  # fmt: skip
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter):
    """Say it plainly when torch is missing: the adapter's tests skip then, which the skip list alone hides."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "could not import 'torch'" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "=", f"torch is not installed: {len(skipped)} skipped (the PyTorch adapter's tests and the comparisons "
            "with torch.nn); pip install '.[test,torch]' runs them", yellow=True, bold=True)  # fmt: skip
