"""Tier 3, on a real GPU (marked `gpu`): the CuPy backend against the reference and against cuDNN."""

import numpy as np
import pytest

from rnncells import verify

pytestmark = pytest.mark.gpu
VARIANTS = [pytest.param(c, v, id=verify.variant_name(c, v).replace(" ", "-")) for c, v in verify.VARIANTS]
MODES = [
    dict(step=True, B=4, I=3, H=5),
    dict(T=6, B=3, I=4, H=5),
    dict(T=6, B=5, I=4, H=300, lengths=np.array([6, 0, 3, 1, 6])),
    dict(T=20, B=64, I=128, H=256),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_cupy_backend_matches_reference_tf32_off(cell, variant, dtype, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")  # CuPy's own switch: none of our GEMMs may follow it
    for m in MODES:
        err, dtypes = verify.backend_error(verify.problem(cell, variant, dtype=dtype, **m), "cupy")
        assert err <= verify.BOUNDS[dtype], m
        assert dtypes == {np.dtype(dtype)}


@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_cupy_backend_matches_reference_tf32_on(cell, variant):
    for m in MODES:
        p = verify.problem(cell, variant, dtype="float32", **m)
        err, _ = verify.backend_error(p, "cupy", tf32=True)
        assert err <= verify.BOUNDS["float32-tf32"], m
        if m.get("B") == 64:  # big enough for tensor cores: TF32 really ran (exact float32 stays within 1e-5)
            assert err > 10 * verify.BOUNDS["float32"], m


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cupy_backend_matches_cudnn(cell):
    torch = pytest.importorskip("torch")
    import cupy

    import rnncells as rc

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    T, B, I, H = 50, 32, 64, 128
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).cuda()
    params = {k[:-3]: cupy.asarray(v.detach()) for k, v in mod.named_parameters()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    tx = torch.tensor(x, device="cuda", requires_grad=True)
    ty = mod(tx)[0]
    (ty * torch.tensor(dy, device="cuda")).sum().backward()
    fwd, bwd = (rc.lstm_forward, rc.lstm_backward) if cell == "lstm" else (rc.gru_forward, rc.gru_backward)
    y, _, ctx = fwd(cupy.asarray(x), params)
    dx, _, dp = bwd(ctx, cupy.asarray(dy))
    assert verify.rel_err(y.get(), ty.detach().cpu().numpy()) <= 1e-5
    assert verify.rel_err(dx.get(), tx.grad.cpu().numpy()) <= 1e-5
    for k, v in mod.named_parameters():
        assert verify.rel_err(dp[k[:-3]].get(), v.grad.cpu().numpy()) <= 1e-5, k


@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_training_step_gradients_are_bitwise_repeatable(cell, variant):
    p = verify._on_device(verify.problem(cell, variant, T=30, B=16, I=32, H=64, dtype="float32"))
    first = {k: v.get().tobytes() for k, v in verify.run(p, "cupy").items()}
    for _ in range(3):
        assert {k: v.get().tobytes() for k, v in verify.run(p, "cupy").items()} == first


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_adapter_on_cuda_matches_cudnn(kind):
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(64, 128, num_layers=2, bidirectional=True).cuda()
    ours = (rt.LSTM if kind == "lstm" else rt.GRU)(64, 128, num_layers=2, bidirectional=True).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(40, 16, 64, device="cuda")
    lengths = torch.randint(1, 41, (16,))
    outs = []
    for m in (ref, ours):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y = torch.nn.utils.rnn.pad_packed_sequence(m(packed)[0], total_length=40)[0]
        m.zero_grad()
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
        outs.append((y.detach(), {n: p.grad.detach() for n, p in m.named_parameters()}))
    (y_ref, g_ref), (y_ours, g_ours) = outs
    assert verify.rel_err(y_ours.cpu().numpy(), y_ref.cpu().numpy()) <= 1e-5
    for n in g_ref:
        assert verify.rel_err(g_ours[n].cpu().numpy(), g_ref[n].cpu().numpy()) <= 1e-5, n


@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_cuda_graph_replays_equal_the_uncaptured_loop_bit_for_bit(cell, variant):
    import rnncells as rc

    cache = rc.GraphCache()
    for seed in range(3):
        for lengths in (None, np.array([9, 3, 0, 9, 5])):
            p = verify._on_device(verify.problem(cell, variant, T=9, B=5, I=7, H=33, dtype="float32", seed=seed,
                                                 lengths=lengths))  # fmt: skip
            want = {k: v.get() for k, v in verify.run(p, "cupy").items()}
            got = {k: v.get() for k, v in verify.run(p, "cupy", graphs=cache).items()}
            assert got.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert cache.captures == 4  # a forward and a backward graph per lengths setting: replays reuse their slot


def test_cuda_graph_slot_is_held_by_a_view_and_by_a_torch_tensor():
    torch = pytest.importorskip("torch")
    import cupy

    import rnncells as rc

    cache = rc.GraphCache()
    p = verify._on_device(verify.problem("lstm", {"peephole": None, "candidate": "tanh"}, T=5, B=3, dtype="float32"))
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
def test_modules_with_graphs_train_like_without(kind):
    """Two training steps of the torch adapter and of rnncells' own module, graphs on and off: equal bit for bit."""
    torch = pytest.importorskip("torch")
    import cupy

    import rnncells as rc
    import rnncells.torch as rt

    cls = rt.LSTM if kind == "lstm" else rt.GRU
    plain, graphed = cls(16, 32, num_layers=2).cuda(), cls(16, 32, num_layers=2, graphs=True).cuda()
    graphed.load_state_dict(plain.state_dict())
    for seed in range(2):
        x = torch.randn(7, 3, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        for m in (plain, graphed):
            m.zero_grad()
            m(x)[0].square().sum().backward()
        for (k, a), b in zip(plain.named_parameters(), graphed.parameters()):
            assert torch.equal(a.grad, b.grad), k
    assert graphed._graphs.captures == 4  # two layers, a forward and a backward graph each

    own = {g: (rc.LSTM if kind == "lstm" else rc.GRU)(16, 32, num_layers=2, xp=cupy, graphs=g) for g in (False, True)}
    x = cupy.random.default_rng(0).standard_normal((7, 3, 16), dtype=cupy.float32)
    for m in own.values():
        y, _, ctx = m(x)
        m.backward(ctx, 2 * y)
    for k in own[False].grads:
        assert (own[False].grads[k] == own[True].grads[k]).all(), k


def test_column_sum_past_the_grid_y_limit_on_the_device():
    """More chunks of rows than CUDA's 65,535 grid.y: the kernel strides over the rest."""
    import cupy

    from rnncells import _cupy, cuda

    rows = (cuda.GRID_LIMITS[1] + 2) * cuda.CHUNK + 5
    a = np.random.default_rng(0).integers(-4, 5, size=(rows, 3)).astype(np.float64)  # integers: exact sums
    np.testing.assert_array_equal(_cupy.ops().column_sum(cupy.asarray(a)).get(), a.sum(0))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_adapter_on_cuda_with_an_expanded_hx_matches_cudnn(kind):
    """hx.expand() has stride 0: the kernels read raw memory, so it must reach them contiguous."""
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(16, 32).cuda()
    ours = (rt.LSTM if kind == "lstm" else rt.GRU)(16, 32).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 5, 16, device="cuda")
    h = torch.randn(1, 1, 32, device="cuda").expand(1, 5, 32)
    hx = (h, 2 * h) if kind == "lstm" else h
    y_ref, y = ref(x, hx)[0], ours(x, hx)[0]
    assert verify.rel_err(y.detach().cpu().numpy(), y_ref.detach().cpu().numpy()) <= verify.BOUNDS["float32"]
