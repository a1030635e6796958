"""The training-loop objects, without torch: composition, accumulation, reversal."""

import numpy as np
import pytest

import rnncells as rc
from rnncells.modules import _reverse


def test_reverse_reads_each_item_backward_from_its_own_last_step():
    x = np.arange(4 * 3).reshape(4, 3, 1)  # x[t, b] = 3t + b
    got = _reverse(np, x, np.array([4, 2, 0]))[:, :, 0]
    np.testing.assert_array_equal(got, [[9, 4, 2], [6, 1, 5], [3, 7, 8], [0, 10, 11]])
    np.testing.assert_array_equal(_reverse(np, _reverse(np, x, np.array([1, 3, 2])), np.array([1, 3, 2])), x)


@pytest.mark.parametrize("cls,fwd,bwd", [(rc.LSTM, rc.lstm_forward, rc.lstm_backward),
                                         (rc.GRU, rc.gru_forward, rc.gru_backward)])
def test_one_layer_object_is_the_function_on_its_params(cls, fwd, bwd):
    """Outputs, final states, input and state gradients, and the accumulated parameter gradients."""
    m = cls(3, 4, dtype="float64", seed=7)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    n = 2 if cls is rc.LSTM else 1  # states: h and c, or h
    states, dstates = ([rng.standard_normal((1, 2, 4)) for _ in range(n)] for _ in range(2))
    lengths = np.array([5, 3])
    params = {k[: -len("_l0")]: v for k, v in m.params.items()}
    y, sT, ctx = fwd(x, params, *(s[0] for s in states), lengths=lengths)
    dx, ds0, dp = bwd(ctx, dy, *(d[0] for d in dstates))
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    want = [y, *flat(sT), dx, *flat(ds0), *(dp[k[: -len("_l0")]] for k in m.params)]

    hx = tuple(states) if len(states) == 2 else states[0]
    y, sT, ctx = m(x, hx, lengths=lengths)
    dx, ds0 = m.backward(ctx, dy, *dstates)
    got = [y, *(s[0] for s in flat(sT)), dx, *(d[0] for d in flat(ds0)), *(m.grads[k] for k in m.params)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_batch_first_is_a_transpose():
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    a, b = rc.GRU(3, 4, dtype="float64", bidirectional=True), rc.GRU(3, 4, dtype="float64", bidirectional=True,
                                                                     batch_first=True)
    ya, ha, _ = a(x)
    yb, hb, _ = b(x.swapaxes(0, 1))
    np.testing.assert_array_equal(ya, yb.swapaxes(0, 1))
    np.testing.assert_array_equal(ha, hb)


def test_gradients_accumulate_until_zero_grad():
    cell = rc.LSTMCell(3, 2, dtype="float64", peephole="diagonal")
    rng = np.random.default_rng(2)
    x, h, c, dh = (rng.standard_normal(s) for s in [(4, 3), (4, 2), (4, 2), (4, 2)])
    _, _, ctx = cell(x, (h, c))  # a nonzero state, so every parameter gets a gradient
    cell.backward(ctx, dh)
    once = {k: v.copy() for k, v in cell.grads.items()}
    assert all(v.any() for v in once.values())
    cell.backward(ctx, dh)
    for k in once:
        np.testing.assert_allclose(cell.grads[k], 2 * once[k], rtol=1e-15)
    cell.zero_grad()
    assert not any(v.any() for v in cell.grads.values())


def test_peephole_stack_names_its_extra_weights_like_torch():
    m = rc.LSTM(3, 4, num_layers=2, bidirectional=True, peephole="full")
    assert {"weight_ch_l0", "weight_ch_l1_reverse"} <= set(m.params)
    assert m.params["weight_ch_l1"].shape == (12, 4) and m.params["weight_ih_l1"].shape == (16, 8)


def test_float32_objects_stay_float32():
    m = rc.LSTM(3, 4, num_layers=2, peephole="full", candidate="sigmoid")
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype("float32")
    y, (h, c), ctx = m(x)
    dx, (dh, dc) = m.backward(ctx, np.ones_like(y))
    assert {a.dtype for a in (y, h, c, dx, dh, dc, *m.grads.values())} == {np.dtype("float32")}


@pytest.mark.parametrize("make, flags", [
    (lambda: rc.LSTM(3, 4, peephole="full", candidate="sigmoid"), {"peephole": "full", "candidate": "sigmoid"}),
    (lambda: rc.LSTMCell(3, 4, peephole="diagonal"), {"peephole": "diagonal", "candidate": "tanh", "cell_clip": None}),
    (lambda: rc.LSTM(3, 4, cell_clip=5), {"peephole": None, "cell_clip": 5.0}),
    (lambda: rc.GRU(3, 4, reset_after=False), {"reset_after": False}),
    (lambda: rc.GRUCell(3, 4), {"reset_after": True}),
])
def test_objects_show_their_variant_flags_as_attributes(make, flags):
    m = make()
    assert {k: getattr(m, k) for k in flags} == flags
    with pytest.raises(AttributeError, match="has no attribute 'dropout'"):
        m.dropout



def test_a_stacked_projected_lstm_is_torch_nn_lstm_with_proj_size():
    """Layer widths (the next layer reads 2·proj_size), state shapes and weight_hr_l{k}[_reverse], as torch's."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    m = rc.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype="float64")
    assert list(m.params) == [k for k, _ in ref.named_parameters()]
    for k, v in ref.named_parameters():
        m.params[k][...] = v.detach().numpy()
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((6, 4, 3)), rng.standard_normal((6, 4, 4))
    h0, c0, dhT, dcT = (rng.standard_normal((4, 4, w)) for w in (2, 5, 2, 5))
    y, (hT, cT), ctx = m(x, (h0, c0))
    dx, (dh0, dc0) = m.backward(ctx, dy, dhT, dcT)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    ty, (thT, tcT) = ref(tx, (th0, tc0))
    ((ty * torch.tensor(dy)).sum() + (thT * torch.tensor(dhT)).sum() + (tcT * torch.tensor(dcT)).sum()).backward()
    for got, want in [(y, ty), (hT, thT), (cT, tcT), (dx, tx.grad), (dh0, th0.grad), (dc0, tc0.grad),
                      *((m.grads[k], v.grad) for k, v in ref.named_parameters())]:
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
