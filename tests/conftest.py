"""GPU tests carry the `gpu` marker and skip cleanly where CuPy sees no CUDA device; tests that build the kernels
for the CPU carry `host` and skip without g++; tests that need torch skip without it, and the summary then says so
in one line.

A test that takes an argument `spec` runs once per cell variant (`rnncells.verify.VARIANTS`); one that takes
`kernel_backend` once per backend that launches the CUDA kernels: "cuda-host" (marked `host`) and "cupy" (`gpu`);
one that takes `cpu_backend` once per fast backend on NumPy arrays: "numpy", "cpu" and "cuda-host" (both `host`).
`poisoned_numpy` is NumPy with NaN-filled `empty`, for backends whose every output element must be written.
`edited_host_ops` builds the kernels for the CPU with one line of one source edited, for tests that a check fails;
`host_launches` names the instantiations a run launches, so that such a build can compile only those.
"""

import shutil

import numpy as np
import pytest

from rnncells import _backends, _host, _kernels, _numpy, verify

KERNEL_BACKENDS = [pytest.param("cuda-host", marks=pytest.mark.host), pytest.param("cupy", marks=pytest.mark.gpu)]
CPU_BACKENDS = ["numpy", *(pytest.param(b, marks=pytest.mark.host) for b in ("cpu", "cuda-host"))]


def pytest_generate_tests(metafunc):
    if "spec" in metafunc.fixturenames:
        metafunc.parametrize("spec", verify.VARIANTS, ids=[str(s).replace(" ", "-") for s in verify.VARIANTS])
    if "kernel_backend" in metafunc.fixturenames:
        metafunc.parametrize("kernel_backend", KERNEL_BACKENDS)
    if "cpu_backend" in metafunc.fixturenames:
        metafunc.parametrize("cpu_backend", CPU_BACKENDS)


class PoisonedNumpy:
    """NumPy whose `empty` is NaN-filled: an element a kernel or loop fails to write shows up as NaN."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.full(shape, np.nan, dtype=dtype)


@pytest.fixture
def poisoned_numpy():
    """PoisonedNumpy, as a backend's array module (`rnncells._backends.Orchestrated`'s xp)."""
    return PoisonedNumpy()


@pytest.fixture
def edited_host_ops(tmp_path):
    """build(file, line, edited, dtype=None, only=every name): KernelOps on NumPy running the kernels built for the
    CPU from a copy of kernels/ in which `line`, found exactly once in `file`, reads `edited` (only the
    instantiations whose storage is `dtype`, if given: a quarter of the compile, and of those only the ones
    `only(name)` takes; `only` applies with a dtype); persistent plans as for "cuda-host"."""

    def build(file, line, edited, dtype=None, only=lambda name: True):
        storage = None if dtype is None else _kernels.TYPES[np.dtype(dtype)][0]
        names = None if dtype is None else [n for n in _kernels.instantiations() if n.split("<")[1].split(",")[0]
                                            == storage and only(n)]
        for f in _kernels.kernel_dir().iterdir():
            if f.suffix in (".cu", ".cuh", ".h"):
                text = f.read_text()
                if f.name == file:
                    assert text.count(line) == 1, f"{line!r} is not in {file} exactly once: update the edit"
                    text = text.replace(line, edited)
                (tmp_path / f.name).write_text(text)
        launcher = _host.HostLauncher(_host.build_host_library(tmp_path, source_dir=tmp_path, names=names), names)
        return _kernels.KernelOps(launcher, np, _numpy.gemm, device=lambda: _host.HOST_DEVICE)

    return build


@pytest.fixture
def host_launches():
    """launches(run): the instantiations run(ops) launches, `ops` the host kernels behind a launcher that notes
    each name (for edited_host_ops' `only`)."""

    def launches(run):
        host, names = _host.ops(), set()

        def note(name, *args, **kw):
            names.add(name)
            host.launcher(name, *args, **kw)

        run(_kernels.KernelOps(note, np, _numpy.gemm, device=lambda: _host.HOST_DEVICE))
        return names

    return launches


def pytest_collection_modifyitems(config, items):
    missing = {"gpu": None if _backends.gpu_available() else "needs a CUDA GPU with CuPy",
               "host": None if shutil.which("g++") else "the host builds of the kernels need g++"}
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
            "with torch.nn); pip install '.[test,torch]' runs them", yellow=True, bold=True)
