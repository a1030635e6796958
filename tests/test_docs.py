"""Every public name carries a docstring."""

import inspect

import rnncells as rc
from rnncells import reference, verify


def _public(obj):
    for name, member in inspect.getmembers(obj):
        if not name.startswith("_") and (inspect.isfunction(member) or inspect.isclass(member)):
            yield f"{obj.__name__}.{name}", member


def test_every_public_name_has_a_docstring():
    names = [(f"rnncells.{n}", getattr(rc, n)) for n in rc.__all__]
    names += list(_public(reference)) + list(_public(verify))
    for cls in (rc.LSTM, rc.GRU, rc.LSTMCell, rc.GRUCell):
        names += [(f"{cls.__name__}.{n}", m) for n, m in inspect.getmembers(cls, inspect.isfunction)
                  if not n.startswith("_")]  # fmt: skip
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
