"""TF32: one switch (`tf32=`), every GEMM of a forward and its backward, emulated on the host.

On a GPU, TF32 tensor cores read float32 GEMM inputs with a 10-bit mantissa.
The cuda-host backend truncates the GEMM inputs the same way, so the TF32
bound of the gpu tests is checked here against that emulation.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import _host, verify
from rnncells.variants import GRUSpec, LSTMSpec


def test_tf32_keeps_ten_mantissa_bits_by_truncation():
    ulp = 2.0**-10  # the last mantissa bit TF32 keeps, at 1.0
    x = np.array([1 + ulp, 1 + ulp / 2, 1 + ulp - 2.0**-23, -(1 + ulp / 2), 3.0, np.inf, -np.inf, 0.0], np.float32)
    np.testing.assert_array_equal(_host.to_tf32(x), np.array([1 + ulp, 1, 1, -1, 3, np.inf, -np.inf, 0], np.float32))
    assert np.isnan(_host.to_tf32(np.float32(np.nan)))


def test_host_tf32_is_within_its_bound_and_changes_float32_only(spec):
    p = verify.problem(spec, T=20, B=8, I=16, H=33, lengths=np.array([20, 3, 0, 7, 20, 1, 19, 20]),
                       dtype="float32")
    err, _ = verify.backend_error(p, "cuda-host", tf32=True)
    assert err <= verify.BOUNDS["float32-tf32"]
    assert err > 10 * verify.BOUNDS["float32"]  # TF32 really ran: exact float32 stays within 1e-5
    p64 = verify.problem(spec, T=5, B=3, I=4, H=6, dtype="float64")
    on, off = verify.run(p64, "cuda-host", tf32=True), verify.run(p64, "cuda-host")
    for k in off:
        np.testing.assert_array_equal(on[k], off[k], err_msg=k)


@pytest.fixture
def counted_tf32_gemms(monkeypatch):
    """Counts the GEMMs that run in TF32 on the host, from fresh backend objects."""
    calls = []
    real = _host.tf32_gemm
    monkeypatch.setattr(_host, "tf32_gemm", lambda *a, **k: (calls.append(a[2].shape), real(*a, **k))[1])
    _host.ops.cache_clear()
    yield calls
    _host.ops.cache_clear()


@pytest.mark.parametrize("family", [LSTMSpec(), GRUSpec()], ids=str)
def test_every_gemm_of_forward_and_backward_follows_the_forwards_tf32(counted_tf32_gemms, family):
    T, B, I, H = 3, 2, 4, 5
    p = verify.problem(family, T=T, B=B, I=I, H=H, dtype="float32")
    fwd, bwd, *_ = verify.public_functions(family)
    G = family.gates
    y, _, ctx = fwd(p.x, p.params, backend="cuda-host", tf32=True)
    assert counted_tf32_gemms == [(T * B, G * H)] + [(B, G * H)] * T  # the input GEMM, then one per step
    counted_tf32_gemms.clear()
    bwd(ctx, p.douts["dy"])
    # one per step (dh), then dW_ih, dW_hh (first step, then the rest accumulated) and dx
    assert counted_tf32_gemms[:T] == [(B, H)] * T
    assert sorted(counted_tf32_gemms[T:]) == sorted([(G * H, I), (G * H, H), (G * H, H), (T * B, I)])
    counted_tf32_gemms.clear()
    _, _, ctx = fwd(p.x, p.params, backend="cuda-host")
    bwd(ctx, p.douts["dy"])
    assert counted_tf32_gemms == []


def test_tf32_must_be_a_bool():
    p = verify.problem(GRUSpec())
    with pytest.raises(TypeError, match=r"tf32='yes' must be True or False"):
        rc.gru_forward(p.x, p.params, tf32="yes")
