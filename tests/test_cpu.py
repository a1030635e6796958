"""The "cpu" backend: the step loops compiled whole (kernels/cpu_loops.h) against the reference, on NaN-poisoned
buffers, and the rules that choose them over the NumPy loops."""

import numpy as np
import pytest

import rnncells as rc
from rnncells import _backends, _cpu, _numpy, variants, verify
from rnncells.variants import LSTMSpec

pytestmark = pytest.mark.host

STEP_FUNCTIONS = [n for n in dir(_numpy) if n.endswith("_step")]


@pytest.fixture
def poisoned_cpu(poisoned_numpy):
    assert _cpu.load() is not None, "g++ is here, so the loops must build"
    return _backends.Orchestrated("cpu", lambda tf32: _cpu.ops(), poisoned_numpy, kernels=False)


@pytest.fixture
def numpy_steps(monkeypatch):
    """The NumPy backend's step functions, counting their calls: {name: calls}."""
    calls = dict.fromkeys(STEP_FUNCTIONS, 0)
    for name in STEP_FUNCTIONS:
        real = getattr(_numpy, name)

        def counted(*a, _name=name, _real=real, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(_numpy, name, counted)
    return calls


SHAPES = [
    dict(T=4, B=3, I=3, H=2),
    dict(T=1, B=1, I=1, H=1),
    dict(T=3, B=2, I=5, H=100),  # B <= 2: the recurrent GEMMs are GEMVs, one per row
    dict(T=2, B=1, I=2, H=257),
    dict(T=3, B=4, I=3, H=256),  # B·H = COMPILED_MAX_STEP, the largest compiled step
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{T}B{B}I{I}H{H}".format(**s))
def test_compiled_loops_match_reference(poisoned_cpu, numpy_steps, spec, shape, dtype):
    assert shape["B"] * shape["H"] <= _cpu.COMPILED_MAX_STEP
    lengths = np.random.default_rng(shape["H"]).integers(0, shape["T"] + 1, size=shape["B"])
    for kw in ({}, {"lengths": lengths}, {"step": True}):
        err, dtypes = verify.backend_error(verify.problem(spec, dtype=dtype, **shape, **kw), poisoned_cpu)
        assert err <= verify.BOUNDS[dtype]
        assert dtypes == {np.dtype(dtype)}
    assert set(numpy_steps.values()) == {0}, "every loop ran compiled"


@pytest.mark.parametrize("dtype,B,H", [("float32", 1, _cpu.COMPILED_MAX_STEP + 1), ("float16", 2, 3),
                                       ("bfloat16", 2, 3)])
def test_large_steps_and_half_storage_keep_the_numpy_loops(numpy_steps, dtype, B, H):
    p = verify.problem(LSTMSpec(), T=3, B=B, H=H, dtype=dtype)
    err, _ = verify.backend_error(p, "cpu")
    assert err <= verify.BOUNDS[dtype]
    assert numpy_steps["lstm_forward_step"] == 3 and numpy_steps["lstm_backward_step"] == 3


def test_numpy_arrays_run_on_the_cpu_backend_by_default():
    x = np.ones((2, 1, 3), dtype=np.float32)
    assert rc.lstm_forward(x, rc.init_lstm_params(3, 4))[-1].backend.name == "cpu"


def test_every_loop_is_exported_with_its_dtype():
    loops = _cpu.load()
    keys = list(_cpu.loops())
    for spec in variants.every():
        flags, cell = _cpu.flags(spec), spec.cell
        for dt in _cpu.DTYPES:
            assert {(f"{cell}_forward", dt, flags, True), (f"{cell}_forward", dt, flags, False),
                    (f"{cell}_backward", dt, flags)} <= set(keys)
    assert len(keys) == len(set(keys)) == len(loops.signatures)
    for key, signature in loops.signatures.items():
        s = {np.dtype("float32"): "float", np.dtype("float64"): "double"}[key[1]]
        assert signature[0] == "Blas" and {t for t in signature if t.endswith("*")} == {s + "*", "int*",
                                                                                        "unsigned char*"}, key
        assert set(signature[1:]) - {s + "*", "int*", "unsigned char*"} <= {"int", s}, key


def test_a_loop_refuses_arguments_of_the_wrong_type():
    loops = _cpu.load()
    b = dict(T=1, B=1, H=1)
    f64 = np.zeros((1, 1, 4))
    wanted = r"lstm_forward loop takes \(Blas, int, int, int, float, float, float, float, float\*.* given \(Blas, " \
             r"int, int, int, float, float, float, float, double\*"
    with pytest.raises(TypeError, match=wanted):
        loops.call(("lstm_forward", np.dtype("float32"), LSTMSpec().template_args(), True), np.dtype("float32"),
                   *b.values(), *[np.float32(0)] * 4, *([f64] * 17))


def test_the_build_is_cached_by_what_it_is_built_from(tmp_path):
    gxx, version = _cpu._compiler()
    first = _cpu.build(tmp_path, gxx, version)
    stamp = first.stat().st_mtime_ns
    assert _cpu.build(tmp_path, gxx, version) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert _cpu.build(tmp_path, gxx, version + " (another)") != first


def test_without_compiled_loops_the_cpu_backend_is_the_numpy_backend(monkeypatch):
    monkeypatch.setattr(_cpu.shutil, "which", lambda name: None)
    assert _cpu.load.__wrapped__() is None
    monkeypatch.setattr(_cpu, "load", lambda: None)
    assert _cpu.ops.__wrapped__() is _numpy
