"""Tier 3: the CuPy backend on a real GPU (marked `gpu`), against the reference and against cuDNN.

Where a check means something without a GPU, it also runs on the host-built
kernels ("cuda-host"), with torch.nn on the CPU standing in for cuDNN: the
same orchestration, launches and graph path, so only what the device itself
does is left to the GPU run.
"""

import numpy as np
import pytest

from rnncells import verify
from rnncells.variants import LSTMSpec

gpu = pytest.mark.gpu
MODES = [
    dict(step=True, B=4, I=3, H=5),
    dict(T=6, B=3, I=4, H=5),
    dict(T=6, B=5, I=4, H=300, lengths=np.array([6, 0, 3, 1, 6])),
    dict(T=20, B=64, I=128, H=256),
]


def _numpy(a):
    """A NumPy copy of a CuPy array; a NumPy array as it is."""
    return a if isinstance(a, np.ndarray) else a.get()


def _device(p, backend):
    """A problem's arrays where `backend` reads them."""
    return verify.on_device(p) if backend == "cupy" else p


def _torch_device(backend):
    """Where torch.nn runs beside a backend: cuDNN beside CuPy, the CPU beside the host kernels."""
    return "cuda" if backend == "cupy" else "cpu"


@pytest.fixture
def torch_float32():
    """torch, with TF32 off in torch.nn for the test (its defaults allow it in cuDNN), so float32 bounds apply."""
    torch = pytest.importorskip("torch")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_kernels_match_reference_tf32_off(spec, dtype, kernel_backend, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")  # CuPy's own switch: none of our GEMMs may follow it
    for m in MODES:
        # the same blocks over 3 steps: the LayerNorm LSTM's (see verify.expansive), and every variant's on the
        # host, where the long sequence would only repeat the launches the short one checks
        if (verify.expansive(spec) or kernel_backend == "cuda-host") and m.get("T", 1) > 6:
            m = {**m, "T": 3}
        err, dtypes = verify.backend_error(verify.problem(spec, dtype=dtype, **m), kernel_backend)
        assert err <= verify.BOUNDS[dtype], m
        assert dtypes == {np.dtype(dtype)}


@gpu
def test_cupy_backend_matches_reference_tf32_on(spec):
    for m in MODES:
        p = verify.problem(spec, dtype="float32", **m)
        err, _ = verify.backend_error(p, "cupy", tf32=True)
        assert err <= verify.BOUNDS["float32-tf32"], m
        if m.get("B") == 64:  # big enough for tensor cores: TF32 really ran (exact float32 stays within 1e-5)
            assert err > 10 * verify.BOUNDS["float32"], m


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_kernels_match_torch_nn(cell, kernel_backend, torch_float32):
    """The functions against torch.nn (cuDNN on a GPU, torch's own CPU kernels beside cuda-host)."""
    torch = torch_float32
    xp = pytest.importorskip("cupy") if kernel_backend == "cupy" else np
    import rnncells as rc

    dev = _torch_device(kernel_backend)
    T, B, I, H = 50, 32, 64, 128
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).to(dev)
    params = {k[:-3]: xp.asarray(v.detach().cpu().numpy()) for k, v in mod.named_parameters()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    tx = torch.tensor(x, device=dev, requires_grad=True)
    ty = mod(tx)[0]
    (ty * torch.tensor(dy, device=dev)).sum().backward()
    fwd, bwd = (rc.lstm_forward, rc.lstm_backward) if cell == "lstm" else (rc.gru_forward, rc.gru_backward)
    y, _, ctx = fwd(xp.asarray(x), params, backend=kernel_backend)
    dx, _, dp = bwd(ctx, xp.asarray(dy))
    assert verify.rel_err(_numpy(y), ty.detach().cpu().numpy()) <= 1e-5
    assert verify.rel_err(_numpy(dx), tx.grad.cpu().numpy()) <= 1e-5
    for k, v in mod.named_parameters():
        assert verify.rel_err(_numpy(dp[k[:-3]]), v.grad.cpu().numpy()) <= 1e-5, k


def test_training_step_gradients_are_bitwise_repeatable(spec, kernel_backend):
    # on the host, whose threads run in one order, what can differ between runs is what a kernel reads unwritten
    T, runs = (30, 3) if kernel_backend == "cupy" else (6, 1)
    p = _device(verify.problem(spec, T=T, B=16, I=32, H=64, dtype="float32"), kernel_backend)
    first = {k: _numpy(v).tobytes() for k, v in verify.run(p, kernel_backend).items()}
    for _ in range(runs):
        assert {k: _numpy(v).tobytes() for k, v in verify.run(p, kernel_backend).items()} == first


# The persistent kernels' shapes on the device: one unit a block, 38 units a block with a partial last slice (300 on
# 132 SMs: 3 units, 100 blocks), the standard hidden size at batch 4, and H = 1024 past the 48 KiB of shared
# memory a block gets without opting in (float32: 129 KiB; float64 does not fit and is refused).
PERSISTENT_MODES = [
    dict(T=6, B=3, I=4, H=5),
    dict(T=6, B=5, I=4, H=300, lengths=np.array([6, 0, 3, 1, 6])),
    dict(T=20, B=4, I=64, H=512),
    dict(T=5, B=1, I=16, H=1024),
]


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_persistent_kernels_match_the_reference_on_the_gpu(spec, dtype):
    import cupy

    from rnncells import _cupy, _kernels

    for m in PERSISTENT_MODES:
        if verify.expansive(spec) and m["T"] > 6:  # the same blocks over 3 steps (see verify.expansive)
            m = {**m, "T": 3}
        p = verify.problem(spec, dtype=dtype, **m)
        plan, _ = _kernels.persistent_plan(spec, dtype, m["H"], _cupy.device(cupy.cuda.Device().id))
        if plan is None:  # float64 at H = 1024 (but for a projection, whose W_hh is [4H, P])
            assert dtype == "float64" and m["H"] == 1024
            with pytest.raises(ValueError, match="needs .* bytes of shared memory per block"):
                verify.run(verify.on_device(p), "cupy", persistent=True)
            continue
        err, dtypes = verify.backend_error(p, "cupy", persistent=True)
        assert err <= verify.BOUNDS[dtype], m
        assert dtypes == {np.dtype(dtype)}
        first = {k: v.get().tobytes() for k, v in verify.run(verify.on_device(p), "cupy", persistent=True).items()}
        again = {k: v.get().tobytes() for k, v in verify.run(verify.on_device(p), "cupy", persistent=True).items()}
        assert first == again, m


def _adapter(cls, backend, *args, **kw):
    """One of rnncells.torch's modules where `backend` runs it: on the GPU, or on the CPU through cuda-host."""
    return cls(*args, **kw).cuda() if backend == "cupy" else cls(*args, cpu_backend="cuda-host", **kw)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_adapter_matches_torch_nn(kind, kernel_backend, torch_float32):
    torch = torch_float32
    import rnncells.torch as rt

    dev = _torch_device(kernel_backend)
    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(64, 128, num_layers=2, bidirectional=True).to(dev)
    ours = _adapter(rt.LSTM if kind == "lstm" else rt.GRU, kernel_backend, 64, 128, num_layers=2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(40, 16, 64, device=dev)
    lengths = torch.randint(1, 41, (16,))
    outs = []
    for m in (ref, ours):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y = torch.nn.utils.rnn.pad_packed_sequence(m(packed)[0], total_length=40)[0]
        m.zero_grad()
        (y * torch.linspace(-1, 1, y.numel(), device=dev).view_as(y)).sum().backward()
        outs.append((y.detach(), {n: p.grad.detach() for n, p in m.named_parameters()}))
    (y_ref, g_ref), (y_ours, g_ours) = outs
    assert verify.rel_err(y_ours.cpu().numpy(), y_ref.cpu().numpy()) <= 1e-5
    for n in g_ref:
        assert verify.rel_err(g_ours[n].cpu().numpy(), g_ref[n].cpu().numpy()) <= 1e-5, n


@gpu
def test_cuda_graph_replays_equal_the_uncaptured_loop_bit_for_bit():
    """One cache for every variant, as a program holds one (tests/test_graphs.py runs the same on the host)."""
    import rnncells as rc

    cache = rc.GraphCache()
    for spec in verify.VARIANTS:
        for seed in range(3):
            for lengths in (None, np.array([9, 3, 0, 9, 5])):
                p = verify.on_device(verify.problem(spec, T=9, B=5, I=7, H=33, dtype="float32", seed=seed,
                                                     lengths=lengths))
                want = {k: v.get() for k, v in verify.run(p, "cupy").items()}
                got = {k: v.get() for k, v in verify.run(p, "cupy", graphs=cache).items()}
                assert got.keys() == want.keys()
                for k in want:
                    np.testing.assert_array_equal(got[k], want[k], err_msg=f"{spec} {k}")
    # a forward and a backward graph per variant and lengths setting: replays reuse their slot
    assert cache.captures == 4 * len(verify.VARIANTS)


@gpu
def test_cuda_graph_slot_is_held_by_a_view_and_by_a_torch_tensor():
    torch = pytest.importorskip("torch")
    import cupy

    import rnncells as rc

    cache = rc.GraphCache()
    p = verify.on_device(verify.problem(LSTMSpec(), T=5, B=3, dtype="float32"))
    run = lambda: rc.lstm_forward(p.x, p.params, training=False, graphs=cache)[0]  # noqa: E731
    view = run()[2:]
    tensor = torch.from_dlpack(run())
    kept = (view.copy(), tensor.clone())
    for _ in range(3):
        run()
    cupy.cuda.Device().synchronize()
    assert cache.captures == 3
    assert (view == kept[0]).all() and torch.equal(tensor, kept[1])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_modules_with_graphs_train_like_without(kind, kernel_backend):
    """Two training steps of the torch adapter and of rnncells' own module, graphs on and off: equal bit for bit."""
    torch = pytest.importorskip("torch")
    xp = pytest.importorskip("cupy") if kernel_backend == "cupy" else np

    import rnncells as rc
    import rnncells.torch as rt

    cls, dev = (rt.LSTM if kind == "lstm" else rt.GRU), _torch_device(kernel_backend)
    plain, graphed = (_adapter(cls, kernel_backend, 16, 32, num_layers=2, graphs=g) for g in (False, True))
    graphed.load_state_dict(plain.state_dict())
    for seed in range(2):
        x = torch.randn(7, 3, 16, device=dev, generator=torch.Generator(dev).manual_seed(seed))
        for m in (plain, graphed):
            m.zero_grad()
            m(x)[0].square().sum().backward()
        for (k, a), b in zip(plain.named_parameters(), graphed.parameters()):
            assert torch.equal(a.grad, b.grad), k
    assert graphed._graphs.captures == 4  # two layers, a forward and a backward graph each

    own = {g: (rc.LSTM if kind == "lstm" else rc.GRU)(16, 32, num_layers=2, xp=xp, graphs=g,
                                                      backend=kernel_backend) for g in (False, True)}
    x = xp.asarray(np.random.default_rng(0).standard_normal((7, 3, 16)).astype(np.float32))
    for m in own.values():
        y, _, ctx = m(x)
        m.backward(ctx, 2 * y)
    for k in own[False].grads:
        assert (own[False].grads[k] == own[True].grads[k]).all(), k
    assert own[True].graphs.captures == 4


@gpu
def test_column_sum_past_the_grid_y_limit_on_the_device():
    """More chunks of rows than CUDA's 65,535 grid.y: the kernel strides over the rest."""
    import cupy

    from rnncells import _cupy, _kernels

    rows = (_kernels.GRID_LIMITS[1] + 2) * _kernels.CHUNK + 5
    a = np.random.default_rng(0).integers(-4, 5, size=(rows, 3)).astype(np.float64)  # integers: exact sums
    np.testing.assert_array_equal(_cupy.ops().column_sum(cupy.asarray(a)).get(), a.sum(0))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_adapter_with_an_expanded_hx_matches_torch_nn(kind, kernel_backend, torch_float32):
    """hx.expand() has stride 0: the kernels read raw memory, so it must reach them contiguous."""
    torch = torch_float32
    import rnncells.torch as rt

    dev = _torch_device(kernel_backend)
    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(16, 32).to(dev)
    ours = _adapter(rt.LSTM if kind == "lstm" else rt.GRU, kernel_backend, 16, 32)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 5, 16, device=dev)
    h = torch.randn(1, 1, 32, device=dev).expand(1, 5, 32)
    hx = (h, 2 * h) if kind == "lstm" else h
    y_ref, y = ref(x, hx)[0], ours(x, hx)[0]
    assert verify.rel_err(y.detach().cpu().numpy(), y_ref.detach().cpu().numpy()) <= verify.BOUNDS["float32"]


@gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_adapter_under_autocast_matches_cudnn(kind, dtype, torch_float32):
    """torch.autocast("cuda") on float32 modules: ours and torch.nn (cuDNN) both run in `dtype`; outputs and the
    float32 parameters' gradients within the half bound."""
    torch = torch_float32
    import rnncells.torch as rt

    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(64, 128, num_layers=2).cuda()
    ours = (rt.LSTM if kind == "lstm" else rt.GRU)(64, 128, num_layers=2).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(50, 16, 64, device="cuda")
    dy = torch.randn(50, 16, 128, device="cuda")
    results = []
    for m in (ref, ours):
        m.zero_grad()
        with torch.autocast("cuda", dtype=getattr(torch, dtype)):
            y = m(x)[0]
        assert y.dtype == getattr(torch, dtype)
        (y.float() * dy).sum().backward()
        results.append([y] + [p.grad for p in m.parameters()])
    for want, got in zip(*results):
        assert verify.rel_err(got.float().cpu().numpy(), want.float().cpu().numpy()) <= verify.BOUNDS[dtype]
