"""Whole sequences: buffers, GEMMs and the order of work (DESIGN.md "Speed plan").

Generic over the array module `xp` and the backend's per-step `ops`
(`rnncells._numpy`; the CUDA kernels through `rnncells.cuda`), so one
orchestration serves every backend and CI checks it with host-run kernels:

forward   xw = x Wihᵀ (+ biases)                  one GEMM over all T·B rows
          per step: ops.gemm(state, Wrecᵀ); ops.*_forward_step      (GRU reset before: two of each)
backward  per step: ops.*_backward_step; ops.gemm(da, Wrec) -> the next step's dmm
          then dWih = daᵀ x, dWrec = daᵀ states, db = ops.column_sum(da), dx = da Wih

Every buffer the loops touch is allocated before them.  For
peephole="full" the recurrent GEMM is [h | c] against
Wrec = [[Whh_i, Wch_i], [Whh_f, Wch_f], [Whh_g, 0], [Whh_o, Wch_o]], so the
LSTM state is one (B, 2H) buffer [h | c] for every variant.
"""

from typing import NamedTuple


class LSTMContext(NamedTuple):
    """What an LSTM forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    w_rec: object  # [4H, H], or [4H, 2H] for peephole="full"
    hc: object  # [T+1, B, 2H]: [h | c] before each step, and the final state
    gates: object  # [T, B, 4H]: i, f, g, o
    lengths: object  # [B] as the ops read them, or None
    peephole: object
    candidate: str


class GRUContext(NamedTuple):
    """What a GRU forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    hs: object  # [T+1, B, H]
    gates: object  # [T, B, 4H]: r, z, n, gh_n + b_hn  (reset before: [T, B, 3H]: r, z, n)
    rh: object  # [T, B, H]: r∘h (reset before only), else None
    lengths: object
    reset_after: bool


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


def lstm_forward(ops, xp, x, p, h0, c0, lengths, peephole, candidate, training=True):
    """y [T, B, H], hT, cT [B, H], ctx (None when not training)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    lengths = None if lengths is None else ops.lengths(lengths)
    bias = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
    xw = _input_gemm(x, p["weight_ih"], bias)  # [T, B, 4H]
    if peephole == "full":
        w_rec = xp.zeros((4 * H, 2 * H), dtype=x.dtype)  # [4H, 2H]
        w_rec[:, :H] = p["weight_hh"]
        for k, g in ((0, 0), (1, 1), (2, 3)):  # weight_ch rows i, f, o -> gates i, f, o
            w_rec[g * H : (g + 1) * H, H:] = p["weight_ch"][k * H : (k + 1) * H]
    else:
        w_rec = p["weight_hh"]  # [4H, H]
    w_peep = p["weight_ch"] if peephole == "diagonal" else None  # [3H]
    n_rec = w_rec.shape[1]
    hc = xp.empty((T + 1, B, 2 * H), dtype=x.dtype)  # [T+1, B, 2H]
    hc[0, :, :H], hc[0, :, H:] = h0, c0
    y = xp.empty((T, B, H), dtype=x.dtype)  # [T, B, H]
    gates = xp.empty((T, B, 4 * H), dtype=x.dtype) if training else None  # [T, B, 4H]
    hw = xp.empty((B, 4 * H), dtype=x.dtype)  # [B, 4H]
    for t in range(T):
        ops.gemm(hc[t, :, :n_rec], w_rec.T, hw)
        g_t = gates[t] if training else None
        ops.lstm_forward_step(t, xw[t], hw, hc[t], hc[t + 1], y[t], g_t, w_peep, lengths, peephole, candidate)
    ctx = LSTMContext(x, p, w_rec, hc, gates, lengths, peephole, candidate) if training else None
    return y, hc[T, :, :H].copy(), hc[T, :, H:].copy(), ctx


def lstm_backward(ops, xp, ctx, dy, dhT, dcT):
    """dx [T, B, I], dh0, dc0 [B, H], dparams."""
    x, p, hc, H = ctx.x, ctx.params, ctx.hc, dhT.shape[1]
    T, B, _ = x.shape
    n_rec = ctx.w_rec.shape[1]
    w_peep = p["weight_ch"] if ctx.peephole == "diagonal" else None
    dy = xp.ascontiguousarray(dy)  # [T, B, H]
    da = xp.empty((T, B, 4 * H), dtype=x.dtype)  # [T, B, 4H]
    dpw = xp.empty((2, B, 2 * H), dtype=x.dtype)  # [2, B, 2H] d[h | c], pointwise part, ping-pong
    dmm = xp.zeros((2, B, n_rec), dtype=x.dtype)  # [2, B, n_rec] d[h | c], GEMM part, ping-pong
    dpw[T % 2, :, :H], dpw[T % 2, :, H:] = dhT, dcT
    for t in reversed(range(T)):
        nxt, cur = (t + 1) % 2, t % 2
        ops.lstm_backward_step(t, ctx.gates[t], hc[t], hc[t + 1], dy[t], dpw[nxt], dmm[nxt], dpw[cur], da[t], w_peep,
                               ctx.lengths, ctx.peephole, ctx.candidate)  # fmt: skip
        ops.gemm(da[t], ctx.w_rec, dmm[cur])
    dhc0 = dpw[0]
    dhc0[:, :n_rec] += dmm[0]
    dp = {"weight_ih": _weight_grad(da, x)}
    dw_rec = _weight_grad(da, hc[:T, :, :n_rec])  # [4H, n_rec]
    dp["weight_hh"] = dw_rec[:, :H]
    if ctx.peephole == "full":
        dp["weight_ch"] = xp.concatenate([dw_rec[g * H : (g + 1) * H, H:] for g in (0, 1, 3)])
    elif ctx.peephole == "diagonal":
        c, c1 = hc[:T, :, H:], hc[1:, :, H:]
        d_i, d_f, d_o = (da[:, :, g * H : (g + 1) * H] for g in (0, 1, 3))
        dp["weight_ch"] = xp.concatenate([(d_i * c).sum((0, 1)), (d_f * c).sum((0, 1)), (d_o * c1).sum((0, 1))])
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
    hs = xp.empty((T + 1, B, H), dtype=x.dtype)  # [T+1, B, H]
    hs[0] = h0
    y = xp.empty((T, B, H), dtype=x.dtype)  # [T, B, H]
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
            ops.gemm(hs[t], w_hh.T, gh)
            ops.gru_forward_step(t, xw[t], gh, b_hn, hs[t], hs[t + 1], y[t], gates[t] if training else None, lengths)
        rh = None
    else:
        xw = _input_gemm(x, p["weight_ih"], p["bias_ih"] + p["bias_hh"] if bias else None)  # [T, B, 3H]
        # r, z pass to the n kernel through gates even when not training
        gates = xp.empty((T if training else 1, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]
        rh = xp.empty((T if training else 1, B, H), dtype=x.dtype)  # [T, B, H]
        ghrz = xp.empty((B, 2 * H), dtype=x.dtype)  # [B, 2H]
        ghn = xp.empty((B, H), dtype=x.dtype)  # [B, H]
        for t in range(T):
            s = t if training else 0
            ops.gemm(hs[t], w_hh[: 2 * H].T, ghrz)
            ops.gru_rz_step(xw[t], ghrz, hs[t], gates[s], rh[s])
            ops.gemm(rh[s], w_hh[2 * H :].T, ghn)
            ops.gru_n_step(t, xw[t], ghn, hs[t], hs[t + 1], y[t], gates[s], lengths)
    ctx = GRUContext(x, p, hs, gates, rh, lengths, reset_after) if training else None
    return y, hs[T].copy(), ctx


def gru_backward(ops, xp, ctx, dy, dhT):
    """dx [T, B, I], dh0 [B, H], dparams."""
    x, p, hs, H = ctx.x, ctx.params, ctx.hs, dhT.shape[1]
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
            ops.gru_backward_step(t, ctx.gates[t], hs[t], dy[t], dpw[nxt], dmm[nxt], dpw[cur], dg[t], dgh[t],
                                  ctx.lengths)  # fmt: skip
            ops.gemm(dgh[t], w_hh, dmm[cur])
        dp = {"weight_hh": _weight_grad(dgh, hs[:T])}
    else:
        dgh = dg
        drh = xp.empty((B, H), dtype=x.dtype)  # [B, H]
        for t in reversed(range(T)):
            nxt, cur = (t + 1) % 2, t % 2
            ops.gru_n_backward_step(t, ctx.gates[t], hs[t], dy[t], dpw[nxt], dmm[nxt], dpw[cur], dg[t], ctx.lengths)
            ops.gemm(dg[t, :, 2 * H :], w_hh[2 * H :], drh)
            ops.gru_rz_backward_step(t, ctx.gates[t], hs[t], drh, dpw[cur], dg[t], ctx.lengths)
            ops.gemm(dg[t, :, : 2 * H], w_hh[: 2 * H], dmm[cur])
        dp = {
            "weight_hh": xp.concatenate(
                [_weight_grad(dg[:, :, : 2 * H], hs[:T]), _weight_grad(dg[:, :, 2 * H :], ctx.rh)]
            )
        }
    dp["weight_ih"] = _weight_grad(dg, x)
    if "bias_ih" in p:
        dp["bias_ih"] = ops.column_sum(_rows(dg))
        dp["bias_hh"] = ops.column_sum(_rows(dgh))
    dx = dg @ p["weight_ih"]
    return dx, dpw[0] + dmm[0], dp
