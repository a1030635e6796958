"""The standard cells against torch.nn (CPU, float64): forward values and every gradient."""

import numpy as np
import pytest

import rnncells as rc

torch = pytest.importorskip("torch")

BOUND = 1e-10


def _close(got, want):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    scale = max(np.max(np.abs(want), initial=0.0), 1e-300)
    assert np.max(np.abs(np.asarray(got) - want), initial=0.0) / scale <= BOUND


def _t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _seq_case(seed, T=5, B=4, I=3, H=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_functional_sequence_matches_torch(cell, bias):
    T, B, I, H = 5, 4, 3, 6
    x, h0, c0 = _seq_case(0, T, B, I, H)
    tmod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, bias=bias).double()
    params = {k[:-3]: v.detach().numpy().copy() for k, v in tmod.named_parameters()}  # strip "_l0"
    rng = np.random.default_rng(1)
    dy, dhT, dcT = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    tx, th, tc = _t(x), _t(h0[None]), _t(c0[None])
    if cell == "lstm":
        ty, (thT, tcT) = tmod(tx, (th, tc))
        loss = (ty * _t(dy)).sum() + (thT[0] * _t(dhT)).sum() + (tcT[0] * _t(dcT)).sum()
        y, (hT, cT), ctx = rc.lstm_forward(x, params, h0, c0)
        dx, (dh0, dc0), dp = rc.lstm_backward(ctx, dy, dhT, dcT)
        _close(cT, tcT[0])
    else:
        ty, thT = tmod(tx, th)
        loss = (ty * _t(dy)).sum() + (thT[0] * _t(dhT)).sum()
        y, hT, ctx = rc.gru_forward(x, params, h0)
        dx, dh0, dp = rc.gru_backward(ctx, dy, dhT)
    loss.backward()
    _close(y, ty)
    _close(hT, thT[0])
    _close(dx, tx.grad)
    _close(dh0, th.grad[0])
    if cell == "lstm":
        _close(dc0, tc.grad[0])
    for k, v in tmod.named_parameters():
        _close(dp[k[:-3]], v.grad)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells_match_torch_cells(cell):
    B, I, H = 3, 5, 4
    rng = np.random.default_rng(2)
    x, h, c, dh1, dc1 = (rng.standard_normal(s) for s in [(B, I), (B, H), (B, H), (B, H), (B, H)])
    tcell = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(I, H).double()
    ours = (rc.LSTMCell if cell == "lstm" else rc.GRUCell)(I, H, dtype="float64")
    ours.params = {k: v.detach().numpy().copy() for k, v in tcell.named_parameters()}
    ours.grads = {k: np.zeros_like(v) for k, v in ours.params.items()}
    tx, th, tc = _t(x), _t(h), _t(c)
    if cell == "lstm":
        th1, tc1 = tcell(tx, (th, tc))
        ((th1 * _t(dh1)).sum() + (tc1 * _t(dc1)).sum()).backward()
        h1, c1, ctx = ours(x, (h, c))
        dx, dh, dc = ours.backward(ctx, dh1, dc1)
        _close(c1, tc1)
        _close(dc, tc.grad)
    else:
        th1 = tcell(tx, th)
        (th1 * _t(dh1)).sum().backward()
        h1, ctx = ours(x, h)
        dx, dh = ours.backward(ctx, dh1)
    _close(h1, th1)
    _close(dx, tx.grad)
    _close(dh, th.grad)
    for k, v in tcell.named_parameters():
        _close(ours.grads[k], v.grad)


CONFIGS = [
    dict(num_layers=1, bidirectional=False, batch_first=False, packed=False),
    dict(num_layers=2, bidirectional=True, batch_first=False, packed=False),
    dict(num_layers=3, bidirectional=False, batch_first=True, packed=True),
    dict(num_layers=2, bidirectional=True, batch_first=True, packed=True),
    dict(num_layers=1, bidirectional=True, batch_first=False, packed=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stacked_modules_match_torch(cell, cfg):
    T, B, I, H = 6, 5, 3, 4
    L, D = cfg["num_layers"], 2 if cfg["bidirectional"] else 1
    kw = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first")}
    tmod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, **kw).double()
    ours = (rc.LSTM if cell == "lstm" else rc.GRU)(I, H, dtype="float64", **kw)
    assert set(ours.params) == {k for k, _ in tmod.named_parameters()}
    for k, v in tmod.named_parameters():
        ours.params[k][...] = v.detach().numpy()

    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, I) if cfg["batch_first"] else (T, B, I))
    h0, c0 = rng.standard_normal((L * D, B, H)), rng.standard_normal((L * D, B, H))
    lengths = np.array([6, 2, 5, 1, 6]) if cfg["packed"] else None
    tx, th, tc = _t(x), _t(h0), _t(c0)
    tin = tx
    if cfg["packed"]:
        tin = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.tensor(lengths), batch_first=cfg["batch_first"], enforce_sorted=False
        )
    tout = tmod(tin, (th, tc) if cell == "lstm" else th)
    ty, tstate = tout
    if cfg["packed"]:
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, batch_first=cfg["batch_first"], total_length=T)

    dy = rng.standard_normal(tuple(ty.shape))
    dhT, dcT = rng.standard_normal((L * D, B, H)), rng.standard_normal((L * D, B, H))
    if cell == "lstm":
        thT, tcT = tstate
        loss = (ty * _t(dy)).sum() + (thT * _t(dhT)).sum() + (tcT * _t(dcT)).sum()
        y, (hT, cT), ctx = ours(x, (h0, c0), lengths=lengths)
        dx, (dh0, dc0) = ours.backward(ctx, dy, dhT, dcT)
        _close(cT, tcT)
    else:
        thT = tstate
        loss = (ty * _t(dy)).sum() + (thT * _t(dhT)).sum()
        y, hT, ctx = ours(x, h0, lengths=lengths)
        dx, dh0 = ours.backward(ctx, dy, dhT)
    loss.backward()
    _close(y, ty)
    _close(hT, thT)
    _close(dx, tx.grad)
    _close(dh0, th.grad)
    if cell == "lstm":
        _close(dc0, tc.grad)
    for k, v in tmod.named_parameters():
        _close(ours.grads[k], v.grad)
