"""Tier 2: the NumPy backend against the reference."""

import numpy as np
import pytest

from rnncells import _numpy, api, verify
from rnncells.variants import LSTMSpec

SHAPES = [
    dict(T=5, B=3, I=4, H=3),
    dict(T=1, B=1, I=1, H=1),
    dict(T=7, B=5, I=2, H=1),
    dict(T=3, B=1, I=6, H=5),
]


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{T}B{B}I{I}H{H}".format(**s))
def test_sequence_matches_reference(spec, shape, dtype):
    rng = np.random.default_rng(shape["T"] * 10 + shape["B"])
    lengths = rng.integers(0, shape["T"] + 1, size=shape["B"])
    for kw in ({}, {"lengths": lengths}):
        err, dtypes = verify.backend_error(verify.problem(spec, dtype=dtype, **shape, **kw))
        assert err <= verify.BOUNDS[dtype]
        assert dtypes == {np.dtype(dtype)}  # float32 stays float32


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_one_step_matches_reference(spec, dtype):
    err, dtypes = verify.backend_error(verify.problem(spec, dtype=dtype, step=True, B=4, I=3, H=5))
    assert err <= verify.BOUNDS[dtype]
    assert dtypes == {np.dtype(dtype)}


def test_backend_comparison_can_fail(monkeypatch):
    """Break the NumPy candidate activation and tier 2 must see it."""

    monkeypatch.setitem(_numpy.ACT, "tanh", lambda a: np.tanh(1.01 * a))
    p = verify.problem(LSTMSpec())
    assert verify.backend_error(p)[0] > 1e-4


def test_inference_gives_the_training_outputs_and_no_ctx(spec):
    """The NumPy inference loop (two rows of c, no gates kept) against its training loop (zoneout: both with its
    expectation, masks={})."""
    p = verify.problem(spec, T=5, B=3, lengths=np.array([5, 2, 0]))
    fwd, bwd, *_ = verify.public_functions(spec)
    train = api.forward(spec, p.x, p.params, p.states, lengths=p.lengths, masks={})
    infer = fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **spec.kwargs(), training=False)
    assert infer[-1] is None
    for a, b in zip(train[:-1], infer[:-1]):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(TypeError, match="ctx must be the Context returned by the forward, got NoneType"):
        bwd(infer[-1], None)


@pytest.mark.parametrize("B,H,threads", [(4, 8, 1), (64, 128, 2)])
def test_small_problems_run_on_one_blas_thread(B, H, threads, monkeypatch):
    """Every GEMM of a call with small steps on one BLAS thread (threads waiting for a time slice cost up to
    3.8x on a busy machine); a call whose step GEMM reaches _numpy.SMALL_STEP_MACS keeps BLAS's own threads."""
    import rnncells as rc

    blas = _numpy.blas()
    assert (B * 4 * H * H < _numpy.SMALL_STEP_MACS) == (threads == 1)
    with blas.limit(limits=2):
        if blas.info()[0]["num_threads"] != 2:
            pytest.skip("this BLAS will not run two threads here")
        seen = []
        real = _numpy.gemm
        monkeypatch.setattr(_numpy, "gemm", lambda *a, **k: seen.append(blas.info()[0]["num_threads"]) or real(*a, **k))
        x = np.ones((3, B, H), dtype=np.float32)
        y, _, ctx = rc.lstm_forward(x, rc.init_lstm_params(H, H), backend="numpy")  # every GEMM from Python
        rc.lstm_backward(ctx, y)
        assert blas.info()[0]["num_threads"] == 2  # restored after each call
    assert len(seen) > 6 and set(seen) == {threads}


def test_small_calls_in_several_threads_restore_blas_threads_once_all_end():
    """Overlapping small calls share one lowering of the process-wide count; the last one out restores it."""
    import threading

    import rnncells as rc

    blas = _numpy.blas()
    with blas.limit(limits=2):
        if blas.info()[0]["num_threads"] != 2:
            pytest.skip("this BLAS will not run two threads here")
        x, p = np.ones((50, 4, 8), dtype=np.float32), rc.init_lstm_params(8, 8)
        want = rc.lstm_forward(x, p)[0]
        results, start = [], threading.Barrier(4)

        def work():
            start.wait()
            results.extend(rc.lstm_forward(x, p)[0] for _ in range(20))

        workers = [threading.Thread(target=work) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert blas.info()[0]["num_threads"] == 2
    assert len(results) == 80 and all(np.array_equal(y, want) for y in results)


def test_overlapping_small_calls_restore_blas_threads_when_the_last_one_ends():
    """Two threads' calls overlap as enter A, enter B, exit A, exit B: B still runs on one thread after A ends,
    and the count comes back when B ends (restoring per call would leave it at 1 for good)."""

    blas = _numpy.blas()
    small = _numpy.SMALL_STEP_MACS - 1
    with blas.limit(limits=2):
        if blas.info()[0]["num_threads"] != 2:
            pytest.skip("this BLAS will not run two threads here")
        a, b = _numpy.threads(small), _numpy.threads(small)
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        assert blas.info()[0]["num_threads"] == 1
        b.__exit__(None, None, None)
        assert blas.info()[0]["num_threads"] == 2


def test_sigmoid_saturates_without_overflow():
    a = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    with np.errstate(over="raise", invalid="raise"):
        s = _numpy.sigmoid(a)
    np.testing.assert_allclose(s, [0.0, np.exp(-50.0) / (1 + np.exp(-50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0])
    assert np.isnan(_numpy.sigmoid(np.array([np.nan])))[0]
