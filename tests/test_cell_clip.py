"""cell_clip: c' clipped to [−clip, clip] after each update (TensorFlow's LSTMCell), no gradient where clipped.

Every test that takes `spec` already runs the clipped variants (`LSTMSpec.every()`); here: the tape's rule, that
those problems really clip, NaN, the flag's checks, and a few lines of plain torch autograd as an independent
implementation, against every CPU backend and the adapter.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import verify
from rnncells._dtypes import unit_roundoff
from rnncells.tape import deriv
from rnncells.variants import LSTMSpec

CLIPPED = [s for s in verify.VARIANTS if getattr(s, "cell_clip", None) is not None]


def test_the_clip_rule_passes_the_gradient_strictly_inside_and_nan_through():
    x = np.array([-2.0, -0.5, 0.0, 0.7, 1.0, 3.0, np.nan])
    (dx,) = deriv(np.full(7, 5.0), x, 1.0, "clip")
    np.testing.assert_array_equal(dx[:6], [0.0, 5.0, 5.0, 5.0, 0.0, 0.0])  # at the bound: clipped
    assert np.isnan(np.clip(x, -1.0, 1.0)[6]) and dx[6] == 5.0


@pytest.mark.parametrize("clipped", CLIPPED, ids=str)
@pytest.mark.parametrize("mode", [{}, {"step": True}, {"lengths": np.array([4, 0, 2])}], ids=["seq", "step", "len"])
def test_the_variant_problems_clip_some_cells_and_not_others(clipped, mode):
    """So the spec-parametrized tests see both sides of the clip, with room for float32 and float16 from its kink
    (a LayerNorm LSTM's rows of c' clipped to one value are ill-posed in any case: `verify.layer_norm_well_posed`)."""
    p = verify.problem(clipped, **mode)
    c = np.abs(verify.unclipped_cells(p))
    assert (c > clipped.cell_clip).any() and (c < clipped.cell_clip).any()
    assert verify.clip_margin(p) > verify.KINK_MARGIN_U * unit_roundoff("float16")


@pytest.mark.parametrize("backend", ["reference", "numpy", "cpu", "cuda-host"])
def test_nan_in_a_cell_stays_nan(backend):
    p = verify.problem(LSTMSpec(cell_clip=0.4), T=3, B=3, H=2)
    c0 = p.states["c0"].copy()
    c0[1, 0] = np.nan
    y, (_, cT), ctx = rc.lstm_forward(p.x, p.params, p.states["h0"], c0, cell_clip=0.4, backend=backend)
    dx, (_, dc0), dp = rc.lstm_backward(ctx, p.douts["dy"], p.douts["dhT"], p.douts["dcT"])
    assert np.isnan(y[:, 1]).any() and np.isnan(cT[1, 0]) and np.isnan(dc0[1, 0])
    assert not np.isnan(y[:, [0, 2]]).any() and not np.isnan(dx[:, [0, 2]]).any()
    assert np.isnan(dp["weight_hh"]).any()  # summed over the items: the NaN shows


@pytest.mark.parametrize("clip", [0, -1.0, float("nan"), float("inf"), True, "1", np.array([1.0])])
def test_a_clip_that_is_not_a_positive_number_is_refused(clip):
    with pytest.raises(ValueError, match=r"cell_clip=.* must be None or a positive finite number"):
        LSTMSpec(cell_clip=clip)


def test_the_clip_is_kept_as_a_float_and_shown():
    spec = LSTMSpec(cell_clip=np.float32(2))
    assert type(spec.cell_clip) is float and spec == LSTMSpec(cell_clip=2)
    assert str(spec) == "lstm peephole=None candidate=tanh cell_clip=2.0"
    assert rc.LSTM(3, 4, cell_clip=3).cell_clip == 3.0


# --- an independent implementation: plain torch autograd ------------------------------------------------------------


def _torch_lstm(torch, x, h, c, p, clip, peephole):
    """TensorFlow's LSTMCell(cell_clip=, use_peepholes=) in torch.nn's gate layout, step by step."""
    ys = []
    for x_t in x:
        a_i, a_f, a_g, a_o = (x_t @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]).chunk(4, 1)
        w_i, w_f, w_o = p["weight_ch"].chunk(3) if peephole else (0, 0, 0)
        c = torch.sigmoid(a_f + w_f * c) * c + torch.sigmoid(a_i + w_i * c) * torch.tanh(a_g)
        c = c.clamp(-clip, clip)
        h = torch.sigmoid(a_o + w_o * c) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


@pytest.mark.parametrize("peephole", [None, "diagonal"])
@pytest.mark.parametrize("backend", ["reference", "numpy", "cpu", "cuda-host"])
def test_values_and_gradients_match_plain_torch_autograd(backend, peephole):
    torch = pytest.importorskip("torch")
    spec = LSTMSpec(peephole, cell_clip=0.4)
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=1)
    c = np.abs(verify.unclipped_cells(p))
    assert (c > 0.4).any() and (c < 0.4).any() and verify.comparable_gradients(p, "float32")
    y, (hT, cT), ctx = rc.lstm_forward(p.x, p.params, *p.states.values(), **spec.kwargs(), backend=backend)
    dx, (dh0, dc0), dp = rc.lstm_backward(ctx, *p.douts.values())

    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in {"x": p.x, **p.states, **p.params}.items()}
    outs = _torch_lstm(torch, leaves["x"], leaves["h0"], leaves["c0"], leaves, 0.4, peephole)
    loss = sum((o * torch.tensor(d)).sum() for o, d in zip(outs, p.douts.values()))
    loss.backward()
    ours = {"y": y, "hT": hT, "cT": cT, "x": dx, "h0": dh0, "c0": dc0, **dp}
    theirs = {"y": outs[0], "hT": outs[1], "cT": outs[2], **{k: t.grad for k, t in leaves.items()}}
    for k, want in theirs.items():
        assert verify.rel_err(ours[k], want.detach().numpy()) <= 1e-10, k


def test_the_adapter_takes_the_clip_and_matches_plain_torch_autograd():
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    ours = rt.LSTM(3, 5, cell_clip=0.3, dtype=torch.float64)
    assert ours.state_dict().keys() == torch.nn.LSTM(3, 5).state_dict().keys()
    assert "cell_clip=0.3" in repr(ours)
    x = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    params = {k[:-3]: v for k, v in ours.named_parameters()}  # weight_ih_l0 -> weight_ih
    zeros = torch.zeros(4, 5, dtype=torch.float64)
    want = _torch_lstm(torch, x, zeros, zeros, params, 0.3, None)
    y, (h, c) = ours(x)
    assert (c.abs() == 0.3).any() and (c.abs() < 0.3).any()
    for got, w in zip((y, h[0], c[0]), want):
        assert verify.rel_err(got.detach().numpy(), w.detach().numpy()) <= 1e-10
    g_ours = torch.autograd.grad(y.square().sum(), [x, *ours.parameters()])
    g_want = torch.autograd.grad(want[0].square().sum(), [x, *ours.parameters()])
    for a, b in zip(g_ours, g_want):
        assert verify.rel_err(a.numpy(), b.numpy()) <= 1e-10
