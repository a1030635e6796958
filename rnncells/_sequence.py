"""Whole sequences: buffers, GEMMs and the order of work (DESIGN.md "Speed plan").

Generic over the array module `xp` and the per-step pointwise kernels `K`
(`rnncells._numpy` today), so one orchestration serves every backend:

forward   xw = x Wihᵀ (+ biases)                 one GEMM over all T·B rows
          per step: hw = state Wrecᵀ; K.*_forward_step      (GRU reset before: two of each)
backward  per step: K.*_backward_step; d(state)_prev += da Wrec
          then dWih = daᵀ x, dWrec = daᵀ states, db = Σ da, dx = da Wih  (single GEMMs)

For peephole="full" the recurrent GEMM is [h | c] against
Wrec = [[Whh_i, Wch_i], [Whh_f, Wch_f], [Whh_g, 0], [Whh_o, Wch_o]], so the
state is kept as one (B, 2H) buffer [h | c] for every LSTM variant.
"""

from typing import NamedTuple


class LSTMContext(NamedTuple):
    """What an LSTM forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    w_rec: object  # [4H, H], or [4H, 2H] for peephole="full"
    hc: object  # [T+1, B, 2H]: [h | c] before each step, and the final state
    gates: object  # [T, B, 4H]: i, f, g, o
    lengths: object  # [B] host ints, or None
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


def _input_gemm(xp, x, w, bias=None):
    """[T, B, G·H] = x Wᵀ (+ bias), as one GEMM over all T·B rows."""
    T, B, I = x.shape
    xw = (x.reshape(T * B, I) @ w.T).reshape(T, B, w.shape[0])
    if bias is not None:
        xw += bias
    return xw


def _weight_grad(da, inp):
    """Σ over all steps and items of daᵀ inp: one GEMM, [G·H, K]."""
    return da.reshape(-1, da.shape[-1]).T @ inp.reshape(-1, inp.shape[-1])


def lstm_forward(K, xp, x, p, h0, c0, lengths, peephole, candidate):
    """y [T, B, H], hT, cT [B, H], ctx."""
    T, B, _ = x.shape
    H = h0.shape[1]
    bias = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else None
    xw = _input_gemm(xp, x, p["weight_ih"], bias)  # [T, B, 4H]
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
    y = xp.empty((T, B, H), dtype=x.dtype)
    gates = xp.empty((T, B, 4 * H), dtype=x.dtype)
    hw = xp.empty((B, 4 * H), dtype=x.dtype)  # [B, 4H]
    for t in range(T):
        xp.matmul(hc[t, :, :n_rec], w_rec.T, out=hw)
        K.lstm_forward_step(t, xw[t], hw, hc[t], hc[t + 1], y[t], gates[t], w_peep, lengths, peephole, candidate)
    ctx = LSTMContext(x, p, w_rec, hc, gates, lengths, peephole, candidate)
    return y, hc[T, :, :H].copy(), hc[T, :, H:].copy(), ctx


def lstm_backward(K, xp, ctx, dy, dhT, dcT):
    """dx [T, B, I], dh0, dc0 [B, H], dparams."""
    x, p, hc, H = ctx.x, ctx.params, ctx.hc, dhT.shape[1]
    T, B, _ = x.shape
    n_rec = ctx.w_rec.shape[1]
    w_peep = p["weight_ch"] if ctx.peephole == "diagonal" else None
    da = xp.empty((T, B, 4 * H), dtype=x.dtype)  # [T, B, 4H]
    dhc = xp.empty((2, B, 2 * H), dtype=x.dtype)  # [2, B, 2H]: d[h | c], ping-pong
    dhc[T % 2, :, :H], dhc[T % 2, :, H:] = dhT, dcT
    for t in reversed(range(T)):
        nxt, cur = dhc[(t + 1) % 2], dhc[t % 2]
        K.lstm_backward_step(
            t, ctx.gates[t], hc[t], hc[t + 1], dy[t], nxt, cur, da[t], w_peep, ctx.lengths, ctx.peephole, ctx.candidate
        )
        cur[:, :n_rec] += da[t] @ ctx.w_rec
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
        dp["bias_ih"] = da.sum((0, 1))
        dp["bias_hh"] = dp["bias_ih"].copy()
    dx = da @ p["weight_ih"]
    return dx, dhc[0, :, :H].copy(), dhc[0, :, H:].copy(), dp


def gru_forward(K, xp, x, p, h0, lengths, reset_after):
    """y [T, B, H], hT [B, H], ctx."""
    T, B, _ = x.shape
    H = h0.shape[1]
    bias = "bias_ih" in p
    hs = xp.empty((T + 1, B, H), dtype=x.dtype)  # [T+1, B, H]
    hs[0] = h0
    y = xp.empty((T, B, H), dtype=x.dtype)
    w_hh = p["weight_hh"]  # [3H, H]
    if reset_after:
        # bias_hh's r, z parts fold into xw; its n part stays inside r∘(gh_n + b_hn)
        b = None
        if bias:
            b = p["bias_ih"].copy()
            b[: 2 * H] += p["bias_hh"][: 2 * H]
        b_hn = p["bias_hh"][2 * H :] if bias else xp.zeros(H, dtype=x.dtype)
        xw = _input_gemm(xp, x, p["weight_ih"], b)  # [T, B, 3H]
        gates = xp.empty((T, B, 4 * H), dtype=x.dtype)
        gh = xp.empty((B, 3 * H), dtype=x.dtype)
        for t in range(T):
            xp.matmul(hs[t], w_hh.T, out=gh)
            K.gru_forward_step(t, xw[t], gh, b_hn, hs[t], hs[t + 1], y[t], gates[t], lengths)
        rh = None
    else:
        xw = _input_gemm(xp, x, p["weight_ih"], p["bias_ih"] + p["bias_hh"] if bias else None)
        gates = xp.empty((T, B, 3 * H), dtype=x.dtype)
        rh = xp.empty((T, B, H), dtype=x.dtype)
        ghrz = xp.empty((B, 2 * H), dtype=x.dtype)
        ghn = xp.empty((B, H), dtype=x.dtype)
        for t in range(T):
            xp.matmul(hs[t], w_hh[: 2 * H].T, out=ghrz)
            K.gru_rz_step(xw[t], ghrz, hs[t], gates[t], rh[t])
            xp.matmul(rh[t], w_hh[2 * H :].T, out=ghn)
            K.gru_n_step(t, xw[t], ghn, hs[t], hs[t + 1], y[t], gates[t], lengths)
    return y, hs[T].copy(), GRUContext(x, p, hs, gates, rh, lengths, reset_after)


def gru_backward(K, xp, ctx, dy, dhT):
    """dx [T, B, I], dh0 [B, H], dparams."""
    x, p, hs, H = ctx.x, ctx.params, ctx.hs, dhT.shape[1]
    T, B, _ = x.shape
    w_hh = p["weight_hh"]
    dg = xp.empty((T, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]: gradient of xw
    dh = xp.empty((2, B, H), dtype=x.dtype)  # [2, B, H] ping-pong
    dh[T % 2] = dhT
    if ctx.reset_after:
        dgh = xp.empty((T, B, 3 * H), dtype=x.dtype)  # [T, B, 3H]: gradient of gh
        for t in reversed(range(T)):
            nxt, cur = dh[(t + 1) % 2], dh[t % 2]
            K.gru_backward_step(t, ctx.gates[t], hs[t], dy[t], nxt, cur, dg[t], dgh[t], ctx.lengths)
            cur += dgh[t] @ w_hh
        dp = {"weight_hh": _weight_grad(dgh, hs[:T])}
    else:
        dgh = dg
        drh = xp.empty((B, H), dtype=x.dtype)
        for t in reversed(range(T)):
            nxt, cur = dh[(t + 1) % 2], dh[t % 2]
            K.gru_n_backward_step(t, ctx.gates[t], hs[t], dy[t], nxt, cur, dg[t], ctx.lengths)
            xp.matmul(dg[t, :, 2 * H :], w_hh[2 * H :], out=drh)
            K.gru_rz_backward_step(t, ctx.gates[t], hs[t], drh, cur, dg[t], ctx.lengths)
            cur += dg[t, :, : 2 * H] @ w_hh[: 2 * H]
        dp = {
            "weight_hh": xp.concatenate(
                [_weight_grad(dg[:, :, : 2 * H], hs[:T]), _weight_grad(dg[:, :, 2 * H :], ctx.rh)]
            )
        }
    dp["weight_ih"] = _weight_grad(dg, x)
    if "bias_ih" in p:
        dp["bias_ih"] = dg.sum((0, 1))
        dp["bias_hh"] = dgh.sum((0, 1))
    dx = dg @ p["weight_ih"]
    return dx, dh[0].copy(), dp
