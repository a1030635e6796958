"""rnncells.torch against torch.nn: constructor, names, state dicts, calls, values and every gradient."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnncells.torch as rt  # noqa: E402
from rnncells import api, verify  # noqa: E402

BOUND = 1e-10
PAIRS = {"lstm": (nn.LSTM, rt.LSTM), "gru": (nn.GRU, rt.GRU)}
CELLS = {"lstm": (nn.LSTMCell, rt.LSTMCell), "gru": (nn.GRUCell, rt.GRUCell)}


def close(a, b, bound=BOUND):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape
    assert (a - b).abs().max() <= bound * max(b.abs().max(), 1e-300)


def twins(kind, *args, **kw):
    """A torch.nn module and ours with the same weights (ours loads torch's state dict)."""
    ref = PAIRS[kind][0](*args, dtype=torch.float64, **kw)
    ours = PAIRS[kind][1](*args, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def grads_of(module, inputs, outputs, seed):
    """Backpropagate a random projection of every output; the gradients of inputs and parameters."""
    g = torch.Generator().manual_seed(seed)
    flat = [o.data if isinstance(o, nn.utils.rnn.PackedSequence) else o for o in outputs]
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in flat)
    tensors = [t for t in inputs if t is not None] + list(module.parameters())
    return torch.autograd.grad(loss, tensors)


def flatten(out):
    y, state = out
    return [y, *(state if isinstance(state, tuple) else (state,))]


CONFIGS = [
    dict(T=5, B=3, I=4, H=6, num_layers=1, bidirectional=False, batch_first=False, packed=False, hx=True),
    dict(T=7, B=4, I=3, H=5, num_layers=2, bidirectional=True, batch_first=False, packed=False, hx=False),
    dict(T=6, B=5, I=2, H=3, num_layers=3, bidirectional=False, batch_first=True, packed=False, hx=True),
    dict(T=6, B=5, I=3, H=4, num_layers=2, bidirectional=True, batch_first=True, packed=True, hx=True),
    dict(T=4, B=4, I=5, H=2, num_layers=1, bidirectional=True, batch_first=False, packed=True, hx=False),
    dict(T=1, B=1, I=1, H=1, num_layers=2, bidirectional=True, batch_first=False, packed=False, hx=True),
    dict(T=6, B=1, I=3, H=4, num_layers=2, bidirectional=True, batch_first=False, packed="unbatched", hx=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm-proj_size"])
def test_values_and_every_gradient_match_torch(kind, cfg):
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first")}
    widths = [H, H]  # h0, c0
    if kind == "lstm-proj_size":
        if H < 2:
            pytest.skip("torch.nn.LSTM takes 0 < proj_size < hidden_size: none for hidden_size=1")
        kind, kw["proj_size"] = "lstm", max(H - 2, 1)
        widths[0] = kw["proj_size"]
    ref, ours = twins(kind, I, H, **kw)
    g = torch.Generator().manual_seed(T * 100 + B)
    L = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    if cfg["packed"] == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=torch.float64, requires_grad=True)
        states = [torch.randn(L, w, generator=g, dtype=torch.float64, requires_grad=True) for w in widths]
    else:
        x = torch.randn((B, T, I) if cfg["batch_first"] else (T, B, I), generator=g, dtype=torch.float64,
                        requires_grad=True)
        states = [torch.randn(L, B, w, generator=g, dtype=torch.float64, requires_grad=True) for w in widths]
    hx = (tuple(states) if kind == "lstm" else states[0]) if cfg["hx"] else None
    lengths = torch.randint(1, T + 1, (B,), generator=g)

    def inp():  # a graph of its own for each model: the first backward frees the packing's
        if cfg["packed"] is True:
            return pack_padded_sequence(x, lengths, batch_first=cfg["batch_first"], enforce_sorted=False)
        return x

    out_ref, out_ours = ref(inp(), hx), ours(inp(), hx)
    for a, b in zip(flatten(out_ours), flatten(out_ref)):
        if isinstance(b, nn.utils.rnn.PackedSequence):
            assert torch.equal(a.batch_sizes, b.batch_sizes) and torch.equal(a.sorted_indices, b.sorted_indices)
            a, b = a.data, b.data
        close(a, b)
    inputs = [x, *(states[: 2 if kind == "lstm" else 1] if cfg["hx"] else [])]
    for a, b in zip(grads_of(ours, inputs, flatten(out_ours), 7), grads_of(ref, inputs, flatten(out_ref), 7)):
        close(a, b)


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_match_torch_cells(kind, with_hx, unbatched):
    ref = CELLS[kind][0](4, 3, dtype=torch.float64)
    ours = CELLS[kind][1](4, 3, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    lead = () if unbatched else (5,)
    x = torch.randn(*lead, 4, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(*lead, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    hx = (tuple(states) if kind == "lstm" else states[0]) if with_hx else None
    a, b = ours(x, hx), ref(x, hx)
    a, b = (list(a), list(b)) if kind == "lstm" else ([a], [b])
    for u, v in zip(a, b):
        close(u, v)
    inputs = [x, *(states[: 2 if kind == "lstm" else 1] if with_hx else [])]
    for u, v in zip(grads_of(ours, inputs, a, 3), grads_of(ref, inputs, b, 3)):
        close(u, v)


@pytest.mark.parametrize("kind,kw", [("lstm", {}), ("gru", {}), ("lstm", {"proj_size": 3})])
def test_state_dicts_round_trip_and_seeded_init_matches_torch(kind, kw):
    torch.manual_seed(0)
    ref = PAIRS[kind][0](3, 4, num_layers=2, bidirectional=True, **kw)
    torch.manual_seed(0)
    ours = PAIRS[kind][1](3, 4, num_layers=2, bidirectional=True, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k  # same registration order: same draws
    back = PAIRS[kind][0](3, 4, num_layers=2, bidirectional=True, **kw)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(1.5)
    back.load_state_dict(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_peephole_weights_are_named_like_the_others():
    m = rt.LSTM(3, 4, num_layers=2, bidirectional=True, peephole="full")
    names = [n for n, _ in m.named_parameters()]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ch_l0"]
    assert "weight_ch_l1_reverse" in names and m.weight_ch_l1.shape == (12, 4)
    assert rt.LSTMCell(3, 4, peephole="diagonal").weight_ch.shape == (12,)
    assert "peephole='full'" in repr(m)


@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True, "proj_size": 2}, {"bias": False}])
def test_a_module_without_our_variants_reads_as_torch_nns(kw):
    assert repr(rt.LSTM(3, 6, **kw)) == repr(nn.LSTM(3, 6, **kw))
    assert repr(rt.LSTM(3, 6, cell_clip=1.0, **kw)) == repr(nn.LSTM(3, 6, **kw))[:-1] + ", cell_clip=1.0)"


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_optimizer_steps_follow_torch(kind, opt):
    ref, ours = twins(kind, 3, 5, num_layers=2, bidirectional=True)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}
    opts = [make[opt](m.parameters()) for m in (ref, ours)]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
        target = torch.randn(6, 4, 10, generator=g, dtype=torch.float64)
        for m, o in zip((ref, ours), opts):
            o.zero_grad()
            ((m(x)[0] - target) ** 2).mean().backward()
            o.step()
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert (a - b).abs().max() <= 1e-8, k


def test_dropout_between_layers_follows_train_and_eval_and_the_seed():
    m = rt.LSTM(3, 4, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    m.train()
    torch.manual_seed(11)
    a = m(x)[0]
    torch.manual_seed(11)
    b = m(x)[0]
    torch.manual_seed(12)
    c = m(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    m.eval()
    plain = rt.LSTM(3, 4, num_layers=3, dtype=torch.float64)
    plain.load_state_dict(m.state_dict())
    assert torch.equal(m(x)[0], plain(x)[0])
    assert not torch.equal(a, plain(x)[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: rt.LSTM(2, 3, peephole="full", candidate="sigmoid", dtype=torch.float64),
        lambda: rt.LSTM(2, 3, peephole="diagonal", bidirectional=True, dtype=torch.float64),
        lambda: rt.GRU(2, 3, reset_after=False, num_layers=2, dtype=torch.float64),
    ],
)
def test_our_variants_pass_torch_gradcheck(make):
    m = make()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: m(x)[0], (x, *m.parameters()), eps=1e-6, atol=1e-7)


def test_backward_can_run_twice_on_a_retained_graph():
    m = rt.LSTM(3, 4)
    y = m(torch.randn(5, 2, 3))[0].sum()
    (g1,) = torch.autograd.grad(y, m.weight_hh_l0, retain_graph=True)
    (g2,) = torch.autograd.grad(y, m.weight_hh_l0)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_writing_into_the_output_before_backward_is_refused(kind):
    """Our backward reads the hidden states from y's memory, so autograd must refuse a modified y."""
    m = PAIRS[kind][1](3, 4)
    y = m(torch.randn(5, 2, 3))[0]
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_autograd_runs_our_backward_once_per_layer_and_direction(monkeypatch):
    calls = []
    real = api.backward
    monkeypatch.setattr(api, "backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = rt.LSTM(3, 4, num_layers=2, bidirectional=True)
    m(torch.randn(5, 2, 3))[0].sum().backward()
    assert len(calls) == 4


def _record_forwards(monkeypatch):
    """Every call of api.forward: (the training= it was given, the ctx it returned)."""
    seen = []

    def spy(*a, real=api.forward, **k):
        out = real(*a, **k)
        seen.append((k["training"], out[-1]))
        return out

    monkeypatch.setattr(api, "forward", spy)
    return seen


MODELS = {
    "LSTM": lambda: rt.LSTM(3, 4, num_layers=2, bidirectional=True),
    "GRU": lambda: rt.GRU(3, 4, reset_after=False),
    "LSTMCell": lambda: rt.LSTMCell(3, 4, peephole="diagonal"),
    "GRUCell": lambda: rt.GRUCell(3, 4),
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "nothing_requires_grad"])
@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_inference_runs_the_inference_path_and_keeps_no_context(make, mode, monkeypatch):
    """Under no_grad / inference_mode, or when nothing requires grad, our forward must not train: it would
    save every activation for a backward that cannot come.  Then, with grad, it must."""
    m = make()
    x = torch.randn(2, 3) if isinstance(m, (rt.LSTMCell, rt.GRUCell)) else torch.randn(5, 2, 3)
    seen = _record_forwards(monkeypatch)
    if mode == "nothing_requires_grad":
        m.requires_grad_(False)
        context = torch.enable_grad()
    else:
        context = getattr(torch, mode)()
    with context:
        out = m(x)
    assert seen and all(training is False and ctx is None for training, ctx in seen)
    seen.clear()
    want = out[0] if isinstance(out, tuple) else out
    m.requires_grad_(True)
    got = m(x)
    got = got[0] if isinstance(got, tuple) else got
    assert seen and all(training is True and ctx is not None for training, ctx in seen)
    assert torch.equal(want, got.detach())


@pytest.mark.parametrize(
    "make,exc,message",
    [
        (lambda: rt.GRU(3, 4, proj_size=2), ValueError, "proj_size=2: projections are an LSTM's"),
        (lambda: rt.LSTM(3, 4, 1, True, False, 0.0, False, 2, zoneout_h=0.1), ValueError,
         "zoneout_h=0.1 with proj_size=2 is not supported"),
        (lambda: rt.LSTM(3, 4, proj_size=2)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))),
         ValueError, r"h0 has shape \(1, 2, 4\); expected \(1, 2, 2\) = \(num_layers\*num_directions, batch, "
         r"proj_size\)"),
        (lambda: rt.GRU(3, 4, dtype=torch.int32), NotImplementedError, "dtype=torch.int32 is not supported by "
         "rnncells.torch"),
        (lambda: rt.LSTM(3, 4, dropout=1.5), ValueError, r"dropout=1.5 must be a number in \[0, 1\]"),
        (lambda: rt.LSTM(3, 4, peephole="ful"), ValueError, "peephole='ful'"),
        (lambda: rt.GRUCell(3, 0), ValueError, "hidden_size=0 must be a positive integer"),
        (lambda: rt.LSTM(3, 4)(torch.randn(5, 2, 4)), ValueError, "input has 4 features; expected input_size=3"),
        (lambda: rt.GRU(3, 4, num_layers=2)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), ValueError,
         r"h0 has shape \(1, 2, 4\); expected \(2, 2, 4\)"),
    ],
)
def test_unsupported_options_and_bad_calls_are_named(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_an_expanded_hx_gives_torchs_values_and_gradients(kind):
    """hx.expand(): one state broadcast over the batch, stride 0 (the kernels get it contiguous)."""
    ref, ours = twins(kind, 3, 4, num_layers=2)
    x = torch.randn(5, 6, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 1, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for m in (ref, ours):
        hx = h.expand(2, 6, 4)
        hx = (hx, 2 * hx) if kind == "lstm" else hx
        out = m(x, hx)
        results.append((flatten(out), grads_of(m, [x, h], flatten(out), seed=1)))
    (outs_ref, g_ref), (outs, g) = results
    for a, b in [*zip(outs, outs_ref), *zip(g, g_ref)]:
        close(a, b)


def test_tf32_follows_cudnns_switch_on_cuda_only(monkeypatch):
    import rnncells.torch as adapter

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert adapter._tf32(torch.zeros(1)) is False  # a CPU tensor: no TF32, whatever the switch


def _penalised_loss(m, x, hx):
    """A gradient penalty: the loss differentiates a gradient taken through m with create_graph=True."""
    y = m(x, hx)[0] if hx is not None else m(x)[0]
    (g,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    return (g * g).sum() + y.sum()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_double_backward_is_refused_where_it_would_be_wrong(kind):
    """The second backward raises; before it was refused, it returned a dW_ih off by about a fifth of its norm."""
    m = PAIRS[kind][1](3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    loss = _penalised_loss(m, x, None)
    with pytest.raises(RuntimeError, match="rnncells.torch does not support double backward"):
        loss.backward()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_create_graph_gradient_used_as_data_is_torchs(kind):
    """create_graph=True alone is allowed: the first-order gradient is right, only differentiating it raises."""
    ref, ours = twins(kind, 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    g_ref, g = (torch.autograd.grad(m(x)[0].pow(2).sum(), [x, *m.parameters()], create_graph=True) for m in (ref, ours))
    for a, b in zip(g, g_ref):
        close(a, b)
    assert g[0].requires_grad  # it carries the refusing node, not a silently constant gradient


def test_a_cells_double_backward_is_refused():
    m = rt.LSTMCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        g.sum().backward()


def _write_into(kind, target):
    """Forward, write into one tensor the backward reads, then backward."""
    m = PAIRS[kind][1](3, 4, dtype=torch.float64)
    shapes = ((5, 2, 3), (1, 2, 4), (1, 2, 4))
    x, h0, c0 = (torch.randn(s, dtype=torch.float64, requires_grad=True) * 1 for s in shapes)  # like a layer's output
    y = m(x, (h0, c0) if kind == "lstm" else h0)[0]
    written = {"x": x, "h0": h0, "c0": c0}.get(target)
    if written is None:  # a parameter, as an optimizer step before the backward would
        with torch.no_grad():
            getattr(m, target).add_(1.0)
    else:
        written.relu_()
    y.sum().backward()


@pytest.mark.parametrize(
    "kind,target",
    [("lstm", "x"), ("lstm", "h0"), ("lstm", "c0"), ("lstm", "weight_hh_l0"), ("lstm", "weight_ih_l0"),
     ("gru", "x"), ("gru", "h0"), ("gru", "weight_hh_l0")],
)
def test_writing_into_what_the_backward_reads_is_refused(kind, target):
    """torch.nn raises here; before the check our backward read the new values and gave dW_ih off by 5x its norm."""
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _write_into(kind, target)


def test_writing_into_a_cells_input_is_refused():
    m = rt.GRUCell(3, 4)
    x = torch.randn(2, 3, requires_grad=True) * 1
    h = m(x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [(5, 0, 3), (0, 2, 3)], ids=["B=0", "T=0"])
def test_empty_batches_and_sequences(kind, shape):
    """B = 0: torch.nn's empty outputs and gradients.  T = 0 (torch.nn refuses it): y is empty, the final
    state is the initial one, and its gradient flows straight back to h0."""
    ref, ours = twins(kind, 3, 4, num_layers=2, bidirectional=True)
    T, B, _ = shape
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, 4, dtype=torch.float64, requires_grad=True)

    def run(m):
        out = flatten(m(x, (h0, h0 * 2) if kind == "lstm" else h0))
        return out, grads_of(m, [x, h0], out, seed=2)

    out, grads = run(ours)
    assert out[0].shape == (T, B, 8) and grads[0].shape == shape
    if T == 0:
        assert torch.equal(out[1], h0)
        g = torch.Generator().manual_seed(2)
        _ = torch.randn(out[0].shape, generator=g, dtype=torch.float64)  # grads_of's draws, in its order
        dh = torch.randn(out[1].shape, generator=g, dtype=torch.float64)
        dh = dh + 2 * torch.randn(out[2].shape, generator=g, dtype=torch.float64) if kind == "lstm" else dh
        close(grads[1], dh)
        assert all(not p.any() for p in grads[2:])
    else:
        out_ref, grads_ref = run(ref)
        for a, b in [*zip(out, out_ref), *zip(grads, grads_ref)]:
            assert a.shape == b.shape
            if a.numel():  # the parameters' gradients: zeros, as torch's
                close(a, b)


BAD_CALLS = [
    (lambda: rt.LSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)), TypeError,
     r"hx must be the pair \(h0, c0\) or None, got a tuple of 1"),
    (lambda: rt.GRU(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)), TypeError,
     r"h0 must be a tensor or None, got a tuple: a GRU has one state"),
    (lambda: rt.LSTMCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 4)), TypeError, r"hx must be the pair \(h, c\)"),
    (lambda: rt.LSTM(3, 4)(torch.randn(5, 2, 3).numpy()), TypeError, "input must be a tensor or a PackedSequence"),
    (lambda: rt.LSTM(3, 4).half()(torch.randn(5, 2, 3)), TypeError,
     r"input has dtype torch.float32; expected torch.float16, the parameters' dtype"),
    (lambda: rt.GRUCell(3, 4).to(torch.bfloat16)(torch.randn(2, 3, dtype=torch.float16)), TypeError,
     r"input has dtype torch.float16; expected torch.bfloat16"),
    (lambda: rt.GRU(3, 4)(torch.randn(5, 2, 3, dtype=torch.bfloat16)), TypeError,
     r"input has dtype torch.bfloat16; expected torch.float32, the parameters' dtype"),
    (lambda: rt.LSTM(3, 4, foo=1), TypeError, "unexpected keyword argument 'foo'"),
    (lambda: rt.GRU(3, 4, peephole="full"), TypeError, "unexpected keyword argument 'peephole'"),
    (lambda: rt.GRUCell(3, 4, candidate="tanh"), TypeError, "unexpected keyword argument 'candidate'"),
    (lambda: rt.LSTM(3, 4, bidirectional="yes"), TypeError, "bidirectional='yes' must be True or False"),
    (lambda: rt.GRU(3, 4, batch_first=None), TypeError, "batch_first=None must be True or False"),
    (lambda: rt.LSTMCell(3, 4, bias=0), TypeError, "bias=0 must be True or False"),
    (lambda: rt.LSTM(3, 4, graphs="yes"), TypeError, "graphs='yes' must be True or False"),
    (lambda: rt.GRU(3, 4, cpu_backend="reference"), ValueError, "cpu_backend='reference' is not one of 'cpu', 'numpy', "
     "'cuda-host'"),
    (lambda: rt.LSTMCell(3, 4, cpu_backend=None), ValueError, "cpu_backend=None is not one of"),
]


@pytest.mark.parametrize("make,exc,message", BAD_CALLS)
def test_bad_hx_dtypes_and_constructor_arguments_are_named(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


TRACERS = {
    "jit.script": lambda m, x: torch.jit.script(m),
    "jit.trace": lambda m, x: torch.jit.trace(m, (x,)),
    "export": lambda m, x: torch.export.export(m, (x,)),
    "export strict": lambda m, x: torch.export.export(m, (x,), strict=True),
    "compile fullgraph": lambda m, x: torch.compile(m, fullgraph=True, backend="eager")(x),
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("make", [lambda: rt.LSTM(3, 4), lambda: rt.GRUCell(3, 4)], ids=["LSTM", "GRUCell"])
def test_tracers_that_cannot_see_numpy_say_so(tracer, make):
    m = make()
    x = torch.randn(5, 2, 3) if isinstance(m, rt.LSTM) else torch.randn(2, 3)
    with pytest.raises(Exception, match="NumPy/CuPy"):
        TRACERS[tracer](m, x)


# dynamo looks into the Function's forward before it gives up at NumPy (and warns about a cache it passes)
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_calls_our_layers_as_they_are():
    ref, ours = twins("lstm", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(ours, backend="eager")
    out, out_ref = flatten(compiled(x)), flatten(ref(x))
    for a, b in [*zip(out, out_ref), *zip(grads_of(ours, [x], out, 3), grads_of(ref, [x], out_ref, 3))]:
        close(a, b)


def test_running_a_layer_does_not_load_dynamo():
    """torch._dynamo loaded in a DistributedDataParallel worker made gloo deadlock at exit (9 runs in 25):
    our layers must not load it; only a program that compiles does."""
    import subprocess
    import sys

    code = ("import sys, torch, rnncells.torch as rt\n"
            "rt.LSTM(3, 4)(torch.zeros(5, 2, 3, requires_grad=True))[0].sum().backward()\n"
            "rt.GRUCell(3, 4)(torch.zeros(2, 3)).sum().backward()\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was loaded'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# --- half precision -------------------------------------------------------------------

HALF = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _outputs_and_grads(module, x, hx, seed=0):
    """The outputs, and the gradients of x, hx and the parameters of a random projection of them drawn in float64
    (so modules that output different dtypes get the same projection)."""
    x = x.detach().requires_grad_()
    hx = None if hx is None else tuple(h.detach().requires_grad_() for h in hx)
    out = flatten(module(x, hx if hx is None or len(hx) == 2 else hx[0]))
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in out)
    return out, torch.autograd.grad(loss, [x, *(hx or ()), *module.parameters()])


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_half_modules_match_torch_in_half(kind, dtype):
    """.to(dtype) on both sides (torch.nn's own CPU kernels in half): values and every gradient within the
    half bound, and ours in that dtype throughout."""
    ref, ours = twins(kind, 4, 6, num_layers=2, bidirectional=True)
    ref, ours = ref.to(dtype), ours.to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, generator=g, dtype=torch.float64).to(dtype)
    hx = tuple(torch.randn(4, 3, 6, generator=g, dtype=torch.float64).to(dtype) for _ in range(2 if kind == "lstm"
                                                                                            else 1))
    (want, dwant), (got, dgot) = _outputs_and_grads(ref, x, hx), _outputs_and_grads(ours, x, hx)
    for a, b in zip([*got, *dgot], [*want, *dwant]):
        assert a.dtype == dtype
        close(a, b, verify.BOUNDS[HALF[dtype]])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_autocast_runs_in_its_dtype_and_carries_gradients_to_float32_weights(kind):
    """Under autocast a float32 module runs exactly as its bfloat16 copy does on the input cast once, and the
    gradients reach the float32 parameters and input; against torch.nn under the same autocast (which on the
    CPU runs its LSTM in bfloat16 and its GRU in float32) within the bfloat16 bound."""
    ref, ours = twins(kind, 4, 6, num_layers=2)
    ref, ours = ref.float(), ours.float()
    x = torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, dgot = _outputs_and_grads(ours, x, None)
        want, dwant = _outputs_and_grads(ref, x, None)
    half = PAIRS[kind][1](4, 6, num_layers=2, dtype=torch.bfloat16)
    half.load_state_dict(ours.state_dict())
    same, dsame = _outputs_and_grads(half, x.to(torch.bfloat16), None)
    for a, b in zip(got, same):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    for a, b in zip(dgot, dsame):  # x and every parameter: float32, the bfloat16 run's gradients cast up
        assert a.dtype == torch.float32 and torch.equal(a, b.float())
    for a, b in zip([*got, *dgot], [*want, *dwant]):
        close(a, b, verify.BOUNDS["bfloat16"])


def test_half_cells_and_dtype_construction():
    for kind, dtype in (("lstm", torch.bfloat16), ("gru", torch.float16)):
        ref = CELLS[kind][0](4, 6, dtype=torch.float64)
        ours = CELLS[kind][1](4, 6, dtype=dtype)
        assert all(p.dtype == dtype for p in ours.parameters())
        ours.load_state_dict(ref.state_dict())
        ref = ref.to(dtype)
        x = torch.randn(3, 4, dtype=torch.float64).to(dtype)
        got, want = ours(x), ref(x)
        for a, b in zip(got if kind == "lstm" else [got], want if kind == "lstm" else [want]):
            assert a.dtype == dtype
            close(a, b, verify.BOUNDS[HALF[dtype]])
