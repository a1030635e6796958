"""The first minutes on a GPU: one check per item, each on its own, so one failure hides nothing.

    python bench/smoke.py        # prints one line per item; exit 1 if any failed

Items: the versions; the eager CuPy backend against the reference (LSTM and
GRU, float32, float64, float16 and bfloat16); one TF32 GEMM; one half GEMM
per half type (cublasGemmEx); one CUDA-graph capture and replay per cell
against the eager loop; the torch adapter against cuDNN.
bench/gpu_session.sh runs it before the gpu-marked suite.
"""

import functools
import sys
import time
import traceback

import numpy as np


def versions():
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    text = (f"{name}, driver {cupy.cuda.runtime.driverGetVersion()}, runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
            f"CuPy {cupy.__version__}")
    try:
        import torch

        text += f", torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    except ImportError:
        text += ", no torch"
    return text


def _problem(cell, dtype, **kw):
    from rnncells import verify
    from rnncells.variants import GRUSpec, LSTMSpec

    spec = LSTMSpec() if cell == "lstm" else GRUSpec()
    return verify.problem(spec, dtype=dtype, **{**dict(T=20, B=64, I=128, H=256), **kw})


def _eager(cell, dtype):
    from rnncells import verify

    err, dtypes = verify.backend_error(_problem(cell, dtype), "cupy")
    assert err <= verify.BOUNDS[dtype] and dtypes == {np.dtype(dtype)}, f"error {err:.2e}, dtypes {dtypes}"
    return f"error {err:.2e}"


def tf32_gemm():
    import cupy

    from rnncells import _cupy, verify

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((512, 512)).astype(np.float32) for _ in range(2))
    out = cupy.empty((512, 512), cupy.float32)
    _cupy.gemm(cupy.asarray(a), cupy.asarray(b), out, tf32=True)
    err = verify.rel_err(out.get(), a.astype(np.float64) @ b)
    assert 1e-5 < err <= verify.BOUNDS["float32-tf32"], f"error {err:.2e}: TF32 did not run, or ran wrong"
    return f"error {err:.2e}"


def half_gemm(dtype):
    """S inputs, a float32 output: float32 accumulation of the exact products (so within float32's error)."""
    import cupy

    from rnncells import _cupy, verify

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((512, 512)).astype(dtype) for _ in range(2))
    out = cupy.empty((512, 512), cupy.float32)
    _cupy.gemm(cupy.asarray(a), cupy.asarray(b), out)
    err = verify.rel_err(out.get(), a.astype(np.float64) @ b.astype(np.float64))
    assert err <= verify.BOUNDS["float32"], f"error {err:.2e}: not float32 accumulation of {dtype} inputs"
    return f"error {err:.2e}"


def _graphs(cell):
    from rnncells import GraphCache, verify

    p = verify.on_device(_problem(cell, "float32", lengths=np.arange(64) % 21))
    cache = GraphCache()
    want = {k: v.get() for k, v in verify.run(p, "cupy").items()}
    for _ in range(2):  # capture, then replay (the copies to the host free the slot for the replay)
        got = {k: v.get() for k, v in verify.run(p, "cupy", graphs=cache).items()}
        bad = [k for k in want if not np.array_equal(got[k], want[k])]
        assert not bad, f"replay differs from the eager loop in {bad}"
    assert cache.captures == 2, f"{cache.captures} captures, expected a forward and a backward graph"
    return "replays equal the eager loop bit for bit"


def _adapter(kind):
    import torch

    import rnncells.torch as rt
    from rnncells import verify

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ref = getattr(torch.nn, kind)(64, 128, num_layers=2).cuda()
    ours = getattr(rt, kind)(64, 128, num_layers=2).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(30, 8, 64, device="cuda")
    results = []
    for m in (ref, ours):
        y = m(x)[0]
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
        results.append([y.detach(), *(p.grad for p in m.parameters())])
    worst = verify.worst_of(verify.rel_err(a.cpu().numpy(), b.cpu().numpy()) for a, b in zip(*reversed(results)))
    assert worst <= verify.BOUNDS["float32"], f"error {worst:.2e}"
    return f"error {worst:.2e}"


ITEMS = {
    "versions": versions,
    **{f"eager {c} {d}": functools.partial(_eager, c, d) for c in ("lstm", "gru")
       for d in ("float32", "float64", "float16", "bfloat16")},
    "tf32 gemm": tf32_gemm,
    **{f"{d} gemm": functools.partial(half_gemm, d) for d in ("float16", "bfloat16")},
    **{f"graph capture {c}": functools.partial(_graphs, c) for c in ("lstm", "gru")},
    **{f"adapter {k} vs cuDNN": functools.partial(_adapter, k) for k in ("LSTM", "GRU")},
}


def main():
    failed = 0
    for name, fn in ITEMS.items():
        start = time.perf_counter()
        try:
            result = f"ok    {fn()}"
        except Exception:  # every item reports, whatever it raised
            failed += 1
            result = "FAIL  " + " | ".join(traceback.format_exc().strip().splitlines()[-3:])
        print(f"{name:<28}{time.perf_counter() - start:>6.1f}s  {result}", flush=True)
    print(f"{failed} item(s) failed" if failed else "all items passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
