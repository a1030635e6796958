"""Every public name carries a docstring; the repository stands alone (license, image, no outside references)."""

import inspect
import re
from pathlib import Path

import rnncells as rc
from rnncells import api, reference, tape, variants, verify


def _public(obj):
    for name, member in inspect.getmembers(obj):
        if not name.startswith("_") and (inspect.isfunction(member) or inspect.isclass(member)):
            yield f"{obj.__name__}.{name}", member


def test_every_public_name_has_a_docstring():
    names = [(f"rnncells.{n}", getattr(rc, n)) for n in rc.__all__]
    for module in (api, reference, tape, variants, verify):
        names += list(_public(module))
    for cls in (variants.LSTMSpec, variants.GRUSpec):
        names += [(f"{cls.__name__}.{n}", m) for n, m in inspect.getmembers(cls, inspect.isfunction)
                  if not n.startswith("_")]
    for cls in (rc.LSTM, rc.GRU, rc.LSTMCell, rc.GRUCell):
        names += [(f"{cls.__name__}.{n}", m) for n, m in inspect.getmembers(cls, inspect.isfunction)
                  if not n.startswith("_")]
    missing = [n for n, m in names if not (m.__doc__ or "").strip()]
    assert not missing, missing


def test_torch_adapter_names_have_docstrings():
    import pytest

    pytest.importorskip("torch")
    import rnncells.torch as rt

    names = [(f"rnncells.torch.{n}", getattr(rt, n)) for n in ("LSTM", "GRU", "LSTMCell", "GRUCell")]
    for n, cls in list(names):
        names += [(f"{n}.{m}", f) for m, f in vars(cls).items() if callable(f) and not m.startswith("_")]
    missing = [n for n, m in names if not (m.__doc__ or "").strip()]
    assert not missing, missing


ROOT = Path(__file__).resolve().parent.parent
TEXT = ("*.py", "*.cu", "*.cuh", "*.h", "*.md", "*.toml", "*.sh", "Dockerfile", ".dockerignore", "run")


def _project_files():
    for folder in ("rnncells", "kernels", "tests", "bench", ".ci"):
        for pattern in TEXT:
            yield from (ROOT / folder).rglob(pattern)
    yield from (ROOT / name for name in ("README.md", "pyproject.toml", "Dockerfile", "LICENSE"))


def test_the_project_stands_alone():
    """What a user or contributor reads points at nothing outside the repository: no design card, no issue."""
    outside = re.compile(r"DESIGN\.md|TOOLCHAIN\.md|\.\./shared|\bissues? #?\d+", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}: {m.group()}" for p in _project_files() if ".venv" not in p.parts
             for m in outside.finditer(p.read_text(errors="replace"))]
    assert not found, found


def test_the_license_is_the_one_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_the_image_leaves_out_history_and_build_outputs_and_keeps_what_it_writes():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for entry in (ROOT / ".gitignore").read_text().split():  # what a build or a test run makes
        assert entry.rstrip("/") in ignored or f"**/{entry.rstrip('/')}" in ignored, entry
    assert ".git" in ignored
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD"))
    assert "--plot" not in cmd  # a --rm container's files are lost: plots go to a mounted folder
    readme = (ROOT / "README.md").read_text()
    assert 'docker run --rm -v "$PWD:/out" rnncells rnncells demo --plot /out/curves.png' in readme
