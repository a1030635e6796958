"""Whole sequences: buffers, GEMMs and the order of work (DESIGN.md "Speed plan").

Generic over the array module `xp` and the backend's per-step `ops`
(`rnncells._numpy`; the CUDA kernels through `rnncells.cuda`), so one
orchestration serves every backend and CI checks it with host-run kernels:

forward   xw = x Wihᵀ (+ biases)                  one GEMM over all T·B rows
          per step: ops.gemm(h, Whhᵀ) (peephole="full": and c Wchᵀ); ops.*_forward_step
          (GRU reset before: two GEMMs and two kernels)
backward  per step: ops.*_backward_step; ops.gemm(da, Wrec) -> the next step's dmm
          then dWih = daᵀ x, dWrec = daᵀ states, db = ops.column_sum(da), dx = da Wih

Every buffer the loops touch is allocated before them.  h is stored once:
the output y is the state, y[t] being the h that step t+1 reads (0 past an
item's length; its last h is kept in h_last).  So besides x, the initial
states and y, a forward keeps (G+1)·T·B·H elements for its backward: the
LSTM's gates [T, B, 4H] and c [T, B, H], the GRU's gates [T, B, 4H] (reset
before: [T, B, 3H] and r∘h [T, B, H]).  The backward reads y: it must not be
written to in between.
"""

from typing import NamedTuple


class LSTMContext(NamedTuple):
    """What an LSTM forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    h0: object  # [B, H]
    c0: object  # [B, H]
    y: object  # [T, B, H]: h after each step, the h of the next
    cs: object  # [T, B, H]: c after each step
    gates: object  # [T, B, 4H]: i, f, g, o
    lengths: object  # [B] as the ops read them, or None
    peephole: object
    candidate: str


class GRUContext(NamedTuple):
    """What a GRU forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    h0: object  # [B, H]
    y: object  # [T, B, H]: h after each step, the h of the next
    gates: object  # [T, B, 4H]: r, z, n, gh_n + b_hn  (reset before: [T, B, 3H]: r, z, n)
    rh: object  # [T, B, H]: r∘h (reset before only), else None
    lengths: object
    reset_after: bool


def _prev(s0, states, t):
    """The state before step t: s0, then the one after step t − 1."""
    return s0 if t == 0 else states[t - 1]


def _input_gemm(x, w, bias=None):
    """[T, B, G·H] = x Wᵀ (+ bias), as one GEMM over all T·B rows."""
    T, B, I = x.shape
    xw = (x.reshape(T * B, I) @ w.T).reshape(T, B, w.shape[0])
    if bias is not None:
        xw += bias
    return xw


def _weight_grad(da, inp):
    """Σ over all steps and items of daᵀ inp: one GEMM, [G·H, K]."""
    return da.reshape(-1, da.shape[-1]).T @ inp.reshape(-1, inp.shape[-1])


def _rows(a):
    """A [T, B, K] buffer as [T·B, K] rows."""
    return a.reshape(-1, a.shape[-1])


def _state_grad(xp, da, s0, states):
    """Σ_t da[t]ᵀ (the state before step t): the gradient of a weight applied to the previous state."""
    g = xp.zeros((da.shape[-1], s0.shape[-1]), dtype=da.dtype) if da.shape[0] == 0 else da[0].T @ s0
    if da.shape[0] > 1:
        g += _weight_grad(da[1:], states[:-1])
    return g


def _state_dot(xp, d, s0, states):
    """Σ over steps and items of d[t] ∘ (the state before step t): a diagonal weight's gradient."""
    if d.shape[0] == 0:
        return xp.zeros(d.shape[-1], dtype=d.dtype)
    return (d[0] * s0).sum(0) + (d[1:] * states[:-1]).sum((0, 1))


def _last(y0, ys, h_last, T):
    """The final state: h_last with lengths, else the last step's (y0 when there are no steps)."""
    if h_last is not None:
        return h_last
    return (y0 if T == 0 else ys[T - 1]).copy()


def lstm_forward(ops, xp, x, p, h0, c0, lengths, peephole, candidate, training=True):
    """y [T, B, H], hT, cT [B, H], ctx (None when not training)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    lengths = None if lengths is None else ops.lengths(lengths)
    bias = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
    xw = _input_gemm(x, p["weight_ih"], bias)  # [T, B, 4H]
    w_hh = p["weight_hh"]  # [4H, H]
    w_ch = p["weight_ch"] if peephole == "full" else None  # [3H, H]
    w_peep = p["weight_ch"] if peephole == "diagonal" else None  # [3H]
    y = xp.empty((T, B, H), dtype=x.dtype)  # [T, B, H]
    cs = xp.empty((T if training else min(T, 2), B, H), dtype=x.dtype)  # [T, B, H] (inference: ping-pong)
    gates = xp.empty((T, B, 4 * H), dtype=x.dtype) if training else None  # [T, B, 4H]
    h_last = None if lengths is None else h0.copy()  # [B, H]
    hw = xp.empty((B, 4 * H), dtype=x.dtype)  # [B, 4H]
    cw = xp.empty((B, 3 * H), dtype=x.dtype) if w_ch is not None else None  # [B, 3H]
    for t in range(T):
        s = t if training else t % 2
        c = c0 if t == 0 else cs[s - 1]  # cs[-1] is the other ping-pong row
        ops.gemm(_prev(h0, y, t), w_hh.T, hw)
        if cw is not None:
            ops.gemm(c, w_ch.T, cw)
        g_t = gates[t] if training else None
        ops.lstm_forward_step(t, xw[t], hw, cw, c, cs[s], y[t], h_last, g_t, w_peep, lengths, peephole, candidate)
    cT = c0.copy() if T == 0 else cs[T - 1 if training else (T - 1) % 2].copy()
    ctx = LSTMContext(x, p, h0, c0, y, cs, gates, lengths, peephole, candidate) if training else None
    return y, _last(h0, y, h_last, T), cT, ctx


def lstm_backward(ops, xp, ctx, dy, dhT, dcT):
    """dx [T, B, I], dh0, dc0 [B, H], dparams."""
    x, p, y, cs, H = ctx.x, ctx.params, ctx.y, ctx.cs, dhT.shape[1]
    T, B, _ = x.shape
    if ctx.peephole == "full":  # da [B, 4H] against [[Whh, Wch]] with zeros for g: d[h | c] in one GEMM
        w_rec = xp.zeros((4 * H, 2 * H), dtype=x.dtype)  # [4H, 2H]
        w_rec[:, :H] = p["weight_hh"]
        for k, g in ((0, 0), (1, 1), (2, 3)):  # weight_ch rows i, f, o -> gates i, f, o
            w_rec[g * H : (g + 1) * H, H:] = p["weight_ch"][k * H : (k + 1) * H]
    else:
        w_rec = p["weight_hh"]  # [4H, H]
    n_rec = w_rec.shape[1]
    w_peep = p["weight_ch"] if ctx.peephole == "diagonal" else None
    dy = xp.ascontiguousarray(dy)  # [T, B, H]
    da = xp.empty((T, B, 4 * H), dtype=x.dtype)  # [T, B, 4H]
    dpw = xp.empty((2, B, 2 * H), dtype=x.dtype)  # [2, B, 2H] d[h | c], pointwise part, ping-pong
    dmm = xp.zeros((2, B, n_rec), dtype=x.dtype)  # [2, B, n_rec] d[h | c], GEMM part, ping-pong
    dpw[T % 2, :, :H], dpw[T % 2, :, H:] = dhT, dcT
    for t in reversed(range(T)):
        nxt, cur = (t + 1) % 2, t % 2
        ops.lstm_backward_step(t, ctx.gates[t], _prev(ctx.c0, cs, t), cs[t], dy[t], dpw[nxt], dmm[nxt], dpw[cur], da[t],
                               w_peep, ctx.lengths, ctx.peephole, ctx.candidate)  # fmt: skip
        ops.gemm(da[t], w_rec, dmm[cur])
    dhc0 = dpw[0]
    dhc0[:, :n_rec] += dmm[0]
    dp = {"weight_ih": _weight_grad(da, x), "weight_hh": _state_grad(xp, da, ctx.h0, y)}
    if ctx.peephole == "full":
        dw_ch = _state_grad(xp, da, ctx.c0, cs)  # [4H, H]
        dp["weight_ch"] = xp.concatenate([dw_ch[g * H : (g + 1) * H] for g in (0, 1, 3)])
    elif ctx.peephole == "diagonal":
        d_i, d_f, d_o = (da[:, :, g * H : (g + 1) * H] for g in (0, 1, 3))
        w_i, w_f = (_state_dot(xp, d, ctx.c0, cs) for d in (d_i, d_f))
        dp["weight_ch"] = xp.concatenate([w_i, w_f, (d_o * cs).sum((0, 1))])  # w_o meets c', not c
    if "bias_ih" in p:
        dp["bias_ih"] = ops.column_sum(_rows(da))
        dp["bias_hh"] = dp["bias_ih"].copy()
    dx = da @ p["weight_ih"]
    return dx, dhc0[:, :H].copy(), dhc0[:, H:].copy(), dp


def gru_forward(ops, xp, x, p, h0, lengths, reset_after, training=True):
    """y [T, B, H], hT [B, H], ctx (None when not training)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    lengths = None if lengths is None else ops.lengths(lengths)
    bias = "bias_ih" in p
    y = xp.empty((T, B, H), dtype=x.dtype)  # [T, B, H]
    h_last = None if lengths is None else h0.copy()  # [B, H]
    w_hh = p["weight_hh"]  # [3H, H]
    if reset_after:
        # bias_hh's r, z parts fold into xw; its n part stays inside r∘(gh_n + b_hn)
        b = None
        if bias:
            b = p["bias_ih"].copy()
            b[: 2 * H] += p["bias_hh"][: 2 * H]
        b_hn = p["bias_hh"][2 * H :] if bias else xp.zeros(H, dtype=x.dtype)  # [H]
        xw = _input_gemm(x, p["weight_ih"], b)  # [T, B, 3H]
        gates = xp.empty((T, B, 4 * H), dtype=x.dtype) if training else None  # [T, B, 4H]
        gh = xp.empty((B, 3 * H), dtype=x.dtype)  # [B, 3H]
        for t in range(T):
            h = _prev(h0, y, t)
            ops.gemm(h, w_hh.T, gh)
            ops.gru_forward_step(t, xw[t], gh, b_hn, h, y[t], h_last, gates[t] if training else None, lengths)
        rh = None
    else:
        xw = _input_gemm(x, p["weight_ih"], p["bias_ih"] + p["bias_hh"] if bias else None)  # [T, B, 3H]
        # r, z pass to the n kernel through gates even when not training
        gates = xp.empty((T if training else 1, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]
        rh = xp.empty((T if training else 1, B, H), dtype=x.dtype)  # [T, B, H]
        ghrz = xp.empty((B, 2 * H), dtype=x.dtype)  # [B, 2H]
        ghn = xp.empty((B, H), dtype=x.dtype)  # [B, H]
        for t in range(T):
            s, h = (t if training else 0), _prev(h0, y, t)
            ops.gemm(h, w_hh[: 2 * H].T, ghrz)
            ops.gru_rz_step(xw[t], ghrz, h, gates[s], rh[s])
            ops.gemm(rh[s], w_hh[2 * H :].T, ghn)
            ops.gru_n_step(t, xw[t], ghn, h, y[t], h_last, gates[s], lengths)
    ctx = GRUContext(x, p, h0, y, gates, rh, lengths, reset_after) if training else None
    return y, _last(h0, y, h_last, T), ctx


def gru_backward(ops, xp, ctx, dy, dhT):
    """dx [T, B, I], dh0 [B, H], dparams."""
    x, p, y, H = ctx.x, ctx.params, ctx.y, dhT.shape[1]
    T, B, _ = x.shape
    w_hh = p["weight_hh"]
    dy = xp.ascontiguousarray(dy)  # [T, B, H]
    dg = xp.empty((T, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]: gradient of xw
    dpw = xp.empty((2, B, H), dtype=x.dtype)  # [2, B, H] dh, pointwise part, ping-pong
    dmm = xp.zeros((2, B, H), dtype=x.dtype)  # [2, B, H] dh, GEMM part, ping-pong
    dpw[T % 2] = dhT
    if ctx.reset_after:
        dgh = xp.empty((T, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]: gradient of gh
        for t in reversed(range(T)):
            nxt, cur = (t + 1) % 2, t % 2
            ops.gru_backward_step(t, ctx.gates[t], _prev(ctx.h0, y, t), dy[t], dpw[nxt], dmm[nxt], dpw[cur], dg[t],
                                  dgh[t], ctx.lengths)  # fmt: skip
            ops.gemm(dgh[t], w_hh, dmm[cur])
        dp = {"weight_hh": _state_grad(xp, dgh, ctx.h0, y)}
    else:
        dgh = dg
        drh = xp.empty((B, H), dtype=x.dtype)  # [B, H]
        for t in reversed(range(T)):
            nxt, cur = (t + 1) % 2, t % 2
            h = _prev(ctx.h0, y, t)
            ops.gru_n_backward_step(t, ctx.gates[t], h, dy[t], dpw[nxt], dmm[nxt], dpw[cur], dg[t], ctx.lengths)
            ops.gemm(dg[t, :, 2 * H :], w_hh[2 * H :], drh)
            ops.gru_rz_backward_step(t, ctx.gates[t], h, drh, dpw[cur], dg[t], ctx.lengths)
            ops.gemm(dg[t, :, : 2 * H], w_hh[: 2 * H], dmm[cur])
        dp = {
            "weight_hh": xp.concatenate(
                [_state_grad(xp, dg[:, :, : 2 * H], ctx.h0, y), _weight_grad(dg[:, :, 2 * H :], ctx.rh)]
            )
        }
    dp["weight_ih"] = _weight_grad(dg, x)
    if "bias_ih" in p:
        dp["bias_ih"] = ops.column_sum(_rows(dg))
        dp["bias_hh"] = ops.column_sum(_rows(dgh))
    dx = dg @ p["weight_ih"]
    return dx, dpw[0] + dmm[0], dp
