"""Whole sequences: buffers, GEMMs and the order of work.

Generic over the array module `xp` and the backend's per-step `ops`
(`rnncells._numpy`; the CUDA kernels through `rnncells._kernels`), so one
orchestration serves every backend and CI checks it with host-run kernels:

forward   xw = x Wihᵀ (+ biases)                  one GEMM over all T·B rows
          per step: ops.gemm(h, Whhᵀ) (peephole="full": and c Wchᵀ); ops.*_forward_step
          (GRU reset before: two GEMMs and two kernels)
backward  per step: ops.*_backward_step; ops.gemm(da, Wrec) -> the next step's drec
          then dWih = daᵀ x, dWrec = daᵀ states, db = ops.column_sum(da), dx = da Wih

Every GEMM, inside the loops and out, is an `ops.gemm`, so the backend
decides how all of them run (on a GPU: one cuBLAS binding, one math mode).
A backend may also run a whole step loop in one call (`ops.run_compiled`:
the "cpu" backend's C++ twins of the `_*_steps` functions, kernels/cpu_loops.h).

Buffers hold one of two dtypes: the storage dtype of the call (`dt`: x,
the weights, y and the other [T, B, ·] buffers) and its compute dtype (`ct`,
float32 for half storage, see `rnncells._dtypes`): c, the gradients'
carries, and the per-step GEMM outputs that feed them.  Every GEMM reads
`dt` and computes in float32 or float64; the weight gradients are summed in
`ct` and returned in `dt`.

Every buffer the loops touch is allocated before them.  h is stored once:
the output y is the state, y[t] being the h that step t+1 reads (0 past an
item's length; its last h is kept in h_last).  So besides x, the initial
states and y, a forward keeps (G+1)·T·B·H elements for its backward: the
LSTM's gates [T, B, 4H] and c [T, B, H] (c in `ct`), the GRU's gates
[T, B, 4H] (reset before: [T, B, 3H] and r∘h [T, B, H]); with zoneout in
training, also its masks, uint8 [T, B, H] per zoned-out state (`masks`,
drawn by the caller; None or {} for zoneout's expectation, which needs
none), and recurrent dropout's one mask, uint8 [B, H] ("rdrop"): its
forward kernels also write d∘h, the next step's GEMM input, into a [B, H]
buffer, and its backward rebuilds d∘h of every step from y for dW_hh.  The
backward reads y: it must not be written to in between.

A projected LSTM (proj_size P: h = W_hr h', h' = o∘tanh c') breaks "y is
the state" only in width: y [T, B, P] is still every h, and the kernels run
on h' instead, which a per-step GEMM projects into y[t].  Its backward needs
h' for dW_hr, so the forward also keeps h' [T, B, H]: (G+2)·T·B·H elements.
Its backward takes each step's dh [B, P] = dy[t] + da[t+1] Whh (the output
gradient past an item's length dropped, dhT added at its last step) and
hands the kernel dh' = dh W_hr.

With layer_norm, x Wihᵀ is normalised once, before the loop (in the
compute dtype, then stored in xw, the biases its shift), and h Whhᵀ every
step, between its GEMM and the cell's kernel (`ops.layer_norm_forward`, in
place in gh or hw).  The forward also keeps each normalised row, x̂ and ĥ
[T, B, G·H], and their 1/√(σ² + ε) [T, B] each: (3G+1)·T·B·H + 2·T·B
elements for the GRU.  The LSTM's kernels (`ops.lstm_ln_*_step`) also
normalise c' before the output's tanh and keep ĉ [T, B, H] and its
1/√(σ² + ε) [T, B]: (3G+2)·T·B·H + 3·T·B.  The backward runs
`ops.layer_norm_backward` on each step's gradient of h Whhᵀ before the
recurrent GEMM reads it, and once over every row of the gradient of xw
before dWih and dx; the LSTM's kernels also write dn [T, B, H], the
gradient of γ_c∘ĉ + β_c, for the gradients of c's gain and shift.

With a persistent plan (`rnncells._kernels.PersistentPlan`, persistent=),
each step loop is one cooperative launch of the persistent kernels
(`ops.*_persistent_*`), on the same buffers but for recurrent dropout's
d∘h, which they double-buffer ([2, B, H]); it runs eagerly, also under
graphs= (one launch has nothing to replay).

With a `rnncells._graphs.GraphCache` (graphs=), the loops run as CUDA graphs:
the buffers come from a slot of the cache, each call copies its inputs
(initial states, recurrent weights, lengths) into the slot's own input
buffers, and the loop is captured on the slot's first call and replayed
after.  Without one, the same buffers are allocated per call and the inputs
are read where they are.
"""

import functools
from types import SimpleNamespace as Buffers
from typing import NamedTuple

from ._dtypes import compute
from .variants import LAYER_NORM_EPS, LSTMSpec


class LSTMContext(NamedTuple):
    """What an LSTM forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    h0: object  # [B, H]
    c0: object  # [B, H] in the compute dtype
    y: object  # [T, B, H]: h after each step, the h of the next
    cs: object  # [T, B, H]: c after each step, in the compute dtype
    gates: object  # [T, B, 4H]: i, f, g, o
    lengths: object  # [B] as the ops read them, or None
    w_hh: object  # [4H, H] the recurrent weights the forward used
    w_ch: object  # [3H, H] (peephole="full") or None, in the compute dtype
    w_peep: object  # [3H] (peephole="diagonal") or None
    zone_h: object  # [T, B, H] uint8 zoneout masks of h (training with zoneout_h), or None
    zone_c: object  # [T, B, H] uint8 zoneout masks of c, or None
    rdrop: object  # [B, H] uint8 recurrent dropout mask (training with recurrent_dropout), or None
    ms: object  # [T, B, H] h' = o∘tanh c' before the projection (proj_size), or None
    w_hr: object  # [P, H] the projection the forward used, or None
    x_hat: object  # [T, B, 4H] x Wihᵀ normalised (layer_norm), or None
    rstd_x: object  # [T, B] its rows' 1/√(σ² + ε), in the compute dtype, or None
    h_hat: object  # [T, B, 4H] h Whhᵀ normalised (layer_norm), or None
    rstd_h: object  # [T, B] in the compute dtype, or None
    c_hat: object  # [T, B, H] c' normalised (layer_norm), or None
    rstd_c: object  # [T, B] in the compute dtype, or None
    ln_h: object  # [4H] the recurrent normalisation's gain the forward used (layer_norm), or None
    gamma_c: object  # [H] c's gain (layer_norm), or None
    beta_c: object  # [H] c's shift (layer_norm), or None
    slot: object  # the graph slot that holds these buffers, or None
    spec: object  # the LSTMSpec
    plan: object  # the persistent kernels' PersistentPlan the forward ran with (its backward runs with it), or None


class GRUContext(NamedTuple):
    """What a GRU forward keeps for its backward (buffers with their shapes)."""

    x: object  # [T, B, I]
    params: dict
    h0: object  # [B, H]
    y: object  # [T, B, H]: h after each step, the h of the next
    gates: object  # [T, B, 4H]: r, z, n, gh_n + b_hn  (reset before: [T, B, 3H]: r, z, n)
    rh: object  # [T, B, H]: r∘h (reset before only), else None
    lengths: object
    w_hh: object  # [3H, H]
    zone_h: object  # [T, B, H] uint8 zoneout masks of h, or None
    rdrop: object  # [B, H] uint8 recurrent dropout mask, or None
    x_hat: object  # [T, B, 3H] x Wihᵀ normalised (layer_norm), or None
    rstd_x: object  # [T, B] its rows' 1/√(σ² + ε), in the compute dtype, or None
    h_hat: object  # [T, B, 3H] h Whhᵀ normalised (layer_norm), or None
    rstd_h: object  # [T, B] its rows' 1/√(σ² + ε), in the compute dtype, or None
    ln_h: object  # [3H] the recurrent normalisation's gain the forward used (layer_norm), or None
    slot: object
    spec: object  # the GRUSpec
    plan: object  # the persistent kernels' PersistentPlan, or None


def _prev(s0, states, t):
    """The state before step t: s0, then the one after step t − 1."""
    return s0 if t == 0 else states[t - 1]


def _input_gemm(ops, x, w, bias, out):
    """out [T, B, G·H] = x Wᵀ (+ bias), as one GEMM over all T·B rows (the bias added in it, before its one
    rounding to out's dtype)."""
    if bias is None:
        ops.gemm(_rows(x), w.T, _rows(out))
    else:
        out[...] = bias
        ops.gemm(_rows(x), w.T, _rows(out), accumulate=True)


def _bias_sum(b_ih, b_hh):
    """b_ih + b_hh as a new array in the compute dtype (rounded once, with the GEMM it is added in)."""
    ct = compute(b_ih.dtype)
    return b_ih.astype(ct) + b_hh.astype(ct, copy=False)


def _rows(a):
    """A [T, B, K] buffer as [T·B, K] rows."""
    return a.reshape(-1, a.shape[-1])


def _weight_grad(ops, xp, da, inp):
    """Σ over all steps and items of daᵀ inp: one GEMM, [G·H, K], summed in the compute dtype."""
    g = xp.empty((da.shape[-1], inp.shape[-1]), dtype=compute(da.dtype))
    ops.gemm(_rows(da).T, _rows(inp), g)
    return g.astype(da.dtype, copy=False)


def _state_grad(ops, xp, da, s0, states):
    """Σ_t da[t]ᵀ (the state before step t): the gradient of a weight applied to the previous state, summed in
    the compute dtype.  s0 and states are in da's dtype (GEMM inputs)."""
    if da.shape[0] == 0:
        return xp.zeros((da.shape[-1], s0.shape[-1]), dtype=da.dtype)
    g = xp.empty((da.shape[-1], s0.shape[-1]), dtype=compute(da.dtype))
    ops.gemm(da[0].T, s0, g)
    ops.gemm(_rows(da[1:]).T, _rows(states[:-1]), g, accumulate=True)
    return g.astype(da.dtype, copy=False)


def _input_grad(ops, xp, da, w):
    """dx [T, B, I] = da W, one GEMM over all T·B rows."""
    dx = xp.empty((*da.shape[:2], w.shape[1]), dtype=da.dtype)
    ops.gemm(_rows(da), w, _rows(dx))
    return dx


def _normalised_input(ops, x, w, gain, bias, b):
    """b.xw [T, B, G·H] = LN(x Wᵀ)∘gain + bias, normalised in the compute dtype (in b.x_raw when xw is not in it),
    keeping b.x_hat and b.rstd_x where the buffers have them (training)."""
    raw = b.xw if b.x_raw is None else b.x_raw
    ops.gemm(_rows(x), w.T, _rows(raw))
    ops.layer_norm_forward(_rows(raw), gain, bias, None if b.x_hat is None else _rows(b.x_hat),
                           None if b.rstd_x is None else b.rstd_x.reshape(-1), LAYER_NORM_EPS)
    if raw is not b.xw:
        b.xw[...] = raw


def _normalised_input_grad(ops, d, ctx, gain, out):
    """out [T, B, G·H], the gradient of x Wᵀ before its normalisation, from d, that of xw: `_normalised_input`'s
    backward, through the x̂ and 1/√(σ² + ε) the forward kept in ctx."""
    ops.layer_norm_backward(_rows(d), _rows(ctx.x_hat), ctx.rstd_x.reshape(-1), gain, _rows(out))
    return out


def _normalised_buffers(xp, dt, T, B, widths, kept):
    """The normalised rows kept for the backward, {name: [T, B, width]} in dt, and each one's 1/√(σ² + ε) [T, B]
    in the compute dtype, as attributes (x_hat, rstd_x, ...); None each when not kept."""
    rstd = xp.empty((len(widths), T, B), dtype=compute(dt)) if kept else [None] * len(widths)
    out = {}
    for (name, width), r in zip(widths.items(), rstd):
        out[f"{name}_hat"] = xp.empty((T, B, width), dtype=dt) if kept else None
        out[f"rstd_{name}"] = r
    return out


def _raw_input(xp, dt, T, B, GH, layer_norm):
    """[T, B, G·H] x Wihᵀ before its normalisation, in the compute dtype, where xw is not in it (layer_norm)."""
    return xp.empty((T, B, GH), dtype=compute(dt)) if layer_norm and compute(dt) != dt else None


def _gain_grad(ops, d, x_hat):
    """A LayerNorm gain's gradient: Σ over all steps and items of d∘x̂, summed in the compute dtype."""
    ct = compute(d.dtype)
    return ops.column_sum(_rows(d.astype(ct) * x_hat.astype(ct, copy=False))).astype(d.dtype, copy=False)


def _state_dot(xp, d, s0, states):
    """Σ over steps and items of d[t] ∘ (the state before step t): a diagonal weight's gradient, in the compute
    dtype (s0 and states are)."""
    d = d.astype(s0.dtype, copy=False)
    if d.shape[0] == 0:
        return xp.zeros(d.shape[-1], dtype=d.dtype)
    return (d[0] * s0).sum(0) + (d[1:] * states[:-1]).sum((0, 1))


# --- buffers, and graphs over them --------------------------------------------


def _bind(b, slot, **inputs):
    """The loop's inputs: copied into a graph slot's buffers (its graph reads them there), else used as they are."""
    for name, value in inputs.items():
        if slot is None:
            setattr(b, name, value)
        elif value is not None:
            getattr(b, name)[...] = value


def _buffers(graphs, ops, key, make, make_work):
    """(slot, buffers): a free slot of the cache for this loop, or no slot and buffers of our own.

    make(static) gives what a call hands out or its backward reads (a slot's
    own, with the inputs' copies when static), make_work() what lives only
    within the call (a slot shares it with the other slots of its shape).
    """
    slot = None if graphs is None else graphs.slot((*ops.graph_key(), *key), lambda: make(True), make_work)
    if slot is not None:
        return slot, slot.buffers
    b = make(False)
    vars(b).update(vars(make_work()))
    return None, b


def _workspace(slot, make):
    """The backward's buffers: the slot's shape's shared ones (made with static inputs), or our own."""
    return make(False) if slot is None else slot.workspace("backward", lambda: make(True))


def _run(slot, ops, steps, *args):
    """The step loop steps(ops, *args): whole in one call where the backend has it compiled
    (ops.run_compiled), else the slot's graph of it, else step by step."""
    if ops.run_compiled(steps, *args):
        return
    if slot is None:
        steps(ops, *args)
    else:
        slot.run(steps.__name__, ops, lambda ops: steps(ops, *args))


def _threads(batch_and_recurrent_weight):
    """Run the decorated call under the backend's CPU threads for its problem size (ops.threads), which is
    B times the recurrent weight's size: the multiply-adds of one step's GEMM."""

    def decorate(fn):
        @functools.wraps(fn)
        def call(ops, xp, *args, **kwargs):
            B, w = batch_and_recurrent_weight(*args)
            with ops.threads(B * w.size):
                return fn(ops, xp, *args, **kwargs)

        return call

    return decorate


_forward_size = _threads(lambda spec, x, p, *_: (x.shape[1], p["weight_hh"]))
_backward_size = _threads(lambda ctx, *_: (ctx.x.shape[1], ctx.w_hh))


def _lengths(xp, lengths):
    """The host lengths as every backend's step functions read them: int32 [B] beside the buffers."""
    return None if lengths is None else xp.asarray(lengths, dtype="int32")


def _input_buffers(b, xp, dt, static, **shapes):
    """A graph slot's copies of the loop's inputs: dtype dt, but int32 `lengths` [B], uint8 masks, and c0
    and w_ch in the compute dtype (c is, and c Wchᵀ is a GEMM of c)."""
    kind = {"lengths": "int32", "c0": compute(dt), "w_ch": compute(dt), "zone_h": "uint8", "zone_c": "uint8",
            "rdrop": "uint8"}
    if static:
        for name, shape in shapes.items():
            setattr(b, name, None if shape is None else xp.empty(shape, dtype=kind.get(name, dt)))
    return b


# --- LSTM -----------------------------------------------------------------------


def _mask(masks, name):
    """The zoneout masks of one state (uint8 [T, B, H]), or None: evaluation, or no zoneout on it."""
    return None if masks is None else masks.get(name)


def _at(a, t):
    """Step t's part of a [T, ...] buffer (a mask [B, H], a row of statistics [B]), or None."""
    return None if a is None else a[t]


def _dropped(spec, mask, h):
    """d∘h in h's dtype, d = mask / (1 − recurrent_dropout), as the kernels compute it (common.cuh's kept())."""
    ct = compute(h.dtype)
    return (h.astype(ct) * (mask.astype(ct) * ct.type(spec.rdrop_scale()))).astype(h.dtype)


def _double_buffered(xp, hd):
    """Recurrent dropout's d∘h for the persistent kernels, [2, B, H]: hd (d∘h0) then room for the next step's; None
    without recurrent dropout."""
    if hd is None:
        return None
    out = xp.empty((2, *hd.shape), dtype=hd.dtype)
    out[0] = hd
    return out


def _dropped_inputs(spec, g, h0, y, mask):
    """g.hd [T, B, H]: the recurrent GEMM's input of every step under recurrent dropout, d∘h0 then d∘y[t − 1]."""
    if g.hd is not None and len(g.hd):
        g.hd[0] = _dropped(spec, mask, h0)
        g.hd[1:] = _dropped(spec, mask, y[:-1])


def _lstm_buffers(xp, dt, T, B, H, P, peephole, training, has_lengths, zoned, layer_norm, static):
    """P: the projection's width (proj_size), or 0."""
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    b = Buffers(
        y=e(T, B, P or H),  # [T, B, P or H]
        cs=xp.empty((T if training else min(T, 2), B, H), dtype=compute(dt)),  # [T, B, H] (inference: ping-pong)
        gates=e(T, B, 4 * H) if training else None,  # [T, B, 4H]
        ms=e(T if training else min(T, 1), B, H) if P else None,  # [T, B, H] h' before the projection
        # x_hat, h_hat [T, B, 4H], c_hat [T, B, H] and their rstd_* [T, B] (layer_norm, training)
        **_normalised_buffers(xp, dt, T, B, {"x": 4 * H, "h": 4 * H, "c": H}, training and layer_norm),
    )
    ln = {"ln_h": (4 * H,), "gamma_c": (H,), "beta_c": (H,)}  # the normalisations' parameters the loop reads
    return _input_buffers(b, xp, dt, static, **{k: v if layer_norm else None for k, v in ln.items()},
                          h0=(B, P or H), c0=(B, H), w_hh=(4 * H, P or H),
                          w_ch=(3 * H, H) if peephole == "full" else None,
                          w_peep=(3 * H,) if peephole == "diagonal" else None, w_hr=(P, H) if P else None,
                          lengths=(B,) if has_lengths else None, rdrop=(B, H) if "rdrop" in zoned else None,
                          **{f"zone_{n}": (T, B, H) if n in zoned else None for n in ("h", "c")})


def _lstm_work(xp, dt, T, B, H, P, peephole, has_lengths, dropped, layer_norm):
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    ec = lambda *shape: xp.empty(shape, dtype=compute(dt))  # noqa: E731
    return Buffers(
        xw=e(T, B, 4 * H),  # [T, B, 4H] x Wihᵀ + biases (layer_norm: normalised first)
        x_raw=_raw_input(xp, dt, T, B, 4 * H, layer_norm),  # [T, B, 4H] or None
        h_last=e(B, H) if has_lengths and not P else None,  # [B, H] (projected: hT is gathered from y)
        hw=ec(B, 4 * H),  # [B, 4H] h Whhᵀ
        cw=ec(B, 3 * H) if peephole == "full" else None,  # [B, 3H] c Wchᵀ
        hd=e(B, H) if dropped else None,  # [B, H] d∘h, the recurrent GEMM's input (recurrent dropout)
    )


def _lstm_forward_steps(ops, b, T, spec, training):
    for t in range(T):
        s = t if training else t % 2
        c = b.c0 if t == 0 else b.cs[s - 1]  # inference: cs[-1] is the other row
        h = _prev(b.h0, b.y, t)
        ops.gemm(h if b.rdrop is None else b.hd, b.w_hh.T, b.hw)
        if b.cw is not None:
            ops.gemm(c, b.w_ch.T, b.cw)
        g_t = b.gates[t] if training else None
        if spec.layer_norm:
            ops.layer_norm_forward(b.hw, b.ln_h, None, _at(b.h_hat, t), _at(b.rstd_h, t), LAYER_NORM_EPS)
            ops.lstm_ln_forward_step(spec, t, b.xw[t], b.hw, h, c, b.cs[s], b.y[t], b.h_last, g_t, _at(b.zone_h, t),
                                     _at(b.zone_c, t), b.rdrop, b.hd, b.lengths, b.gamma_c, b.beta_c,
                                     _at(b.c_hat, t), _at(b.rstd_c, t), LAYER_NORM_EPS)
        else:
            ops.lstm_forward_step(spec, t, b.xw[t], b.hw, b.cw, h, c, b.cs[s], b.y[t], b.h_last, g_t, b.w_peep,
                                  _at(b.zone_h, t), _at(b.zone_c, t), b.rdrop, b.hd, b.lengths)


def _projected_lstm_forward_steps(ops, b, T, spec, training):
    """_lstm_forward_steps with proj_size: the kernel writes h' (no zoneout of h), a GEMM projects it into y."""
    for t in range(T):
        s = t if training else t % 2
        c = b.c0 if t == 0 else b.cs[s - 1]
        ops.gemm(_prev(b.h0, b.y, t), b.w_hh.T, b.hw)
        if b.cw is not None:
            ops.gemm(c, b.w_ch.T, b.cw)
        g_t, m = (b.gates[t], b.ms[t]) if training else (None, b.ms[0])
        ops.lstm_forward_step(spec, t, b.xw[t], b.hw, b.cw, None, c, b.cs[s], m, None, g_t, b.w_peep, None,
                              _at(b.zone_c, t), None, None, b.lengths)
        ops.gemm(m, b.w_hr.T, b.y[t])  # 0 past an item's length, where h' is


def _last_outputs(xp, h0, y, lengths):
    """Each item's last h [B, P]: y at its last step, h0 where it ran none."""
    T, B = y.shape[:2]
    if T == 0:
        return h0.copy()
    if lengths is None:
        return y[T - 1].copy()
    last = y[xp.maximum(lengths - 1, 0), xp.arange(B)]
    return xp.where((lengths > 0)[:, None], last, h0)


@_forward_size
def lstm_forward(ops, xp, spec, x, p, states, lengths, training=True, graphs=None, masks=None, plan=None):
    """y [T, B, P or H], (hT [B, P or H], cT [B, H]), ctx (None when not training); masks (training):
    zoneout's {"h", "c": uint8 [T, B, H]} and recurrent dropout's {"rdrop": uint8 [B, H]}, or None; plan: a
    PersistentPlan to run the step loop with, or None."""
    (T, B, _), (h0, c0) = x.shape, states
    H, P, peephole = c0.shape[1], spec.proj_size, spec.peephole
    shape = (x.dtype, T, B, H, P, peephole, training, lengths is not None, tuple(sorted(masks or ())),
             spec.layer_norm)
    slot, b = _buffers(graphs, ops, (spec, *shape), lambda static: _lstm_buffers(xp, *shape, static),
                       lambda: _lstm_work(xp, x.dtype, T, B, H, P, peephole, lengths is not None,
                                          "rdrop" in (masks or ()), spec.layer_norm))
    ct = compute(x.dtype)
    _bind(b, slot, h0=h0, c0=c0.astype(ct, copy=False), w_hh=p["weight_hh"],
          w_ch=p["weight_ch"].astype(ct, copy=False) if peephole == "full" else None,
          w_peep=p["weight_ch"] if peephole == "diagonal" else None, w_hr=p.get("weight_hr"),
          lengths=_lengths(xp, lengths), zone_h=_mask(masks, "h"), zone_c=_mask(masks, "c"),
          rdrop=_mask(masks, "rdrop"), ln_h=p.get("ln_weight_hh"), gamma_c=p.get("ln_weight_c"),
          beta_c=p.get("ln_bias_c"))
    bias = _bias_sum(p["bias_ih"], p["bias_hh"]) if "bias_ih" in p else None
    if spec.layer_norm:  # xw = LN(x Wihᵀ) with the biases as its shift
        _normalised_input(ops, x, p["weight_ih"], p["ln_weight_ih"], bias, b)
    else:
        _input_gemm(ops, x, p["weight_ih"], bias, b.xw)
    if b.h_last is not None:
        b.h_last[...] = b.h0
    if b.rdrop is not None:
        b.hd[...] = _dropped(spec, b.rdrop, b.h0)
    if plan is not None and spec.layer_norm:
        ops.lstm_ln_persistent_forward(plan, spec, b.xw, b.w_hh, b.ln_h, b.h0, b.c0, b.cs, b.y, b.h_last, b.gates,
                                       b.zone_h, b.zone_c, b.rdrop, _double_buffered(xp, b.hd), b.lengths, b.gamma_c,
                                       b.beta_c, b.h_hat, b.rstd_h, b.c_hat, b.rstd_c, b.hw)
    elif plan is not None:
        ops.lstm_persistent_forward(plan, spec, b.xw, b.w_hh, b.w_ch, b.w_hr, b.h0, b.c0, b.cs, b.y, b.ms, b.h_last,
                                    b.gates, b.w_peep, b.zone_h, b.zone_c, b.rdrop, _double_buffered(xp, b.hd),
                                    b.lengths, b.hw, b.cw)
    else:
        _run(slot, ops, _projected_lstm_forward_steps if P else _lstm_forward_steps, b, T, spec, training)
    if P:
        hT = _last_outputs(xp, b.h0, b.y, b.lengths)
    else:
        hT = (b.h_last if b.h_last is not None else _prev(b.h0, b.y, T)).copy()
    cT = b.c0 if T == 0 else b.cs[T - 1 if training else (T - 1) % 2]
    ctx = None
    if training:
        ctx = LSTMContext(x=x, params=p, h0=b.h0, c0=b.c0, y=b.y, cs=b.cs, gates=b.gates, lengths=b.lengths,
                          w_hh=b.w_hh, w_ch=b.w_ch, w_peep=b.w_peep, zone_h=b.zone_h, zone_c=b.zone_c,
                          rdrop=b.rdrop, ms=b.ms, w_hr=b.w_hr, x_hat=b.x_hat, rstd_x=b.rstd_x, h_hat=b.h_hat,
                          rstd_h=b.rstd_h, c_hat=b.c_hat, rstd_c=b.rstd_c, ln_h=b.ln_h, gamma_c=b.gamma_c,
                          beta_c=b.beta_c, slot=slot, spec=spec, plan=plan)
    return b.y, (hT, cT.astype(x.dtype)), ctx


def _lstm_backward_buffers(xp, dt, T, B, H, P, full, dropped, layer_norm, static):
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    ec = lambda *shape: xp.empty(shape, dtype=compute(dt))  # noqa: E731
    b = Buffers(
        da=e(T, B, 4 * H),  # [T, B, 4H]
        dcarry=ec(2, B, 2 * H),  # [2, B, 2H] d[h | c], the kernels' part, ping-pong
        drec=ec(2, B, 2 * H if full else H),  # [2, B, n_rec] d[h | c], the recurrent GEMM's part, ping-pong
        # [4H, 2H] [[Whh, Wch]], zeros for g; projected: [4H, H], [Wch] alone (dh comes from dh W_hr)
        w_rec=e(4 * H, H if P else 2 * H) if full else None,
        dhp=ec(T, B, P) if P else None,  # [T, B, P] dh of each step, projected
        w_hr=ec(P, H) if P else None,  # [P, H] W_hr in the compute dtype, which dh is in
        hd=e(T, B, H) if dropped else None,  # [T, B, H] each step's recurrent GEMM input d∘h (recurrent dropout)
        dn=e(T, B, H) if layer_norm else None,  # [T, B, H] d(γ_c∘ĉ + β_c), for c's gain and shift
        # [T, B, 4H] the gradient of h Whhᵀ before its normalisation, each step's, then (after dWhh) x Wihᵀ's
        da_raw=e(T, B, 4 * H) if layer_norm else None,
    )
    return _input_buffers(b, xp, dt, static, dy=None if P else (T, B, H))


def _new_cells(xp, ctx):
    """c' of every step [T, B, H] (compute dtype): the state kept, or, with zoneout on c, c' before it,
    f∘c + i∘g (clipped) from the saved gates, as the backward kernel recomputes it."""
    if "c" not in ctx.spec.zoneout():
        return ctx.cs
    H, clip = ctx.cs.shape[-1], ctx.spec.cell_clip
    i, f, g = (ctx.gates[..., k * H : (k + 1) * H].astype(ctx.cs.dtype) for k in range(3))
    c1 = f * xp.concatenate([ctx.c0[None], ctx.cs[:-1]]) + i * g
    return c1 if clip is None else xp.clip(c1, -clip, clip)


def _lstm_backward_steps(ops, ctx, g, w_rec, T):
    for t in reversed(range(T)):
        nxt, cur = (t + 1) % 2, t % 2
        args = (ctx.spec, t, ctx.gates[t], _prev(ctx.c0, ctx.cs, t), ctx.cs[t], g.dy[t], g.dcarry[nxt], g.drec[nxt],
                g.dcarry[cur], g.da[t])
        if ctx.spec.layer_norm:  # then the gradient of h Whhᵀ before its normalisation, which the GEMM reads
            ops.lstm_ln_backward_step(*args, _at(ctx.zone_h, t), _at(ctx.zone_c, t), ctx.rdrop, ctx.lengths,
                                      ctx.c_hat[t], ctx.rstd_c[t], ctx.gamma_c, ctx.beta_c, g.dn[t])
            ops.layer_norm_backward(g.da[t], ctx.h_hat[t], ctx.rstd_h[t], ctx.ln_h, g.da_raw[t])
            ops.gemm(g.da_raw[t], w_rec, g.drec[cur])
        else:
            ops.lstm_backward_step(*args, ctx.w_peep, _at(ctx.zone_h, t), _at(ctx.zone_c, t), ctx.rdrop, ctx.lengths)
            ops.gemm(g.da[t], w_rec, g.drec[cur])


def _projected_lstm_backward_steps(ops, ctx, g, w_rec, T):
    """_lstm_backward_steps with proj_size: dh [B, P] = dy + da' Whh is completed in g.dhp[t], projected back into
    drec's dh part; the GEMM after the kernel gives only dc (full peephole)."""
    H = ctx.cs.shape[-1]
    for t in reversed(range(T)):
        nxt, cur = (t + 1) % 2, t % 2
        if t + 1 < T:
            ops.gemm(g.da[t + 1], ctx.w_hh, g.dhp[t], accumulate=True)
        ops.gemm(g.dhp[t], g.w_hr, g.drec[nxt][:, :H])  # dh' = dh W_hr
        ops.lstm_backward_step(ctx.spec, t, ctx.gates[t], _prev(ctx.c0, ctx.cs, t), ctx.cs[t], None, g.dcarry[nxt],
                               g.drec[nxt], g.dcarry[cur], g.da[t], ctx.w_peep, None, _at(ctx.zone_c, t), None,
                               ctx.lengths)
        if w_rec is not None:
            ops.gemm(g.da[t], w_rec, g.drec[cur][:, H:])


def _projected_output_grads(xp, g, dy, dhT, lengths):
    """g.dhp [T, B, P] = dy, without the gradient of outputs past an item's length (zeros, whatever dy holds
    there) and with dhT added at its last step; returns the part of dhT that goes straight to h0 (items that ran
    no step)."""
    T = dy.shape[0]
    g.dhp[...] = dy
    if lengths is None:
        if T:
            g.dhp[T - 1] += dhT
        return dhT if T == 0 else None
    g.dhp[xp.arange(T)[:, None] >= lengths[None, :]] = 0
    ran = xp.flatnonzero(lengths > 0)
    g.dhp[lengths[ran] - 1, ran] += dhT[ran]
    return xp.where((lengths > 0)[:, None], 0, dhT)


@_backward_size
def lstm_backward(ops, xp, ctx, dy, dstates):
    """dx [T, B, I], (dh0 [B, P or H], dc0 [B, H]), dparams."""
    dhT, dcT = dstates
    x, p, H, P, full = ctx.x, ctx.params, dcT.shape[1], ctx.spec.proj_size, ctx.spec.peephole == "full"
    T, B, _ = x.shape
    layer_norm = ctx.spec.layer_norm
    make = lambda static: _lstm_backward_buffers(xp, x.dtype, T, B, H, P, full, ctx.rdrop is not None,  # noqa: E731
                                                 layer_norm, static)
    slot = ctx.slot
    g = _workspace(slot, make)
    if P:
        dh0_direct = _projected_output_grads(xp, g, dy, dhT, ctx.lengths)
        g.w_hr[...] = ctx.w_hr
    else:
        _bind(g, slot, dy=dy if slot else xp.ascontiguousarray(dy))
    if full:  # da [B, 4H] against [[Whh, Wch]]: d[h | c] in one GEMM (projected: d c alone)
        g.w_rec[...] = 0
        if not P:
            g.w_rec[:, :H] = ctx.w_hh
        for k, gate in ((0, 0), (1, 1), (2, 3)):  # weight_ch rows i, f, o -> gates i, f, o
            g.w_rec[gate * H : (gate + 1) * H, -H:] = ctx.w_ch[k * H : (k + 1) * H]
    w_rec = g.w_rec if full else (None if P else ctx.w_hh)
    g.dcarry[T % 2, :, :H], g.dcarry[T % 2, :, H:] = (0 if P else dhT), dcT
    g.drec[T % 2] = 0
    if ctx.plan is not None and layer_norm:
        ops.lstm_ln_persistent_backward(ctx.plan, ctx.spec, ctx.gates, ctx.c0, ctx.cs, g.dy, g.dcarry, g.drec, g.da,
                                        g.da_raw, ctx.w_hh, ctx.ln_h, ctx.h_hat, ctx.rstd_h, ctx.c_hat, ctx.rstd_c,
                                        ctx.gamma_c, ctx.beta_c, g.dn, ctx.zone_h, ctx.zone_c, ctx.rdrop, ctx.lengths)
    elif ctx.plan is not None:
        ops.lstm_persistent_backward(ctx.plan, ctx.spec, ctx.gates, ctx.c0, ctx.cs, None if P else g.dy, g.dcarry,
                                     g.drec, g.da, w_rec, ctx.w_hh if P else None, g.w_hr, g.dhp, ctx.w_peep,
                                     ctx.zone_h, ctx.zone_c, ctx.rdrop, ctx.lengths)
    else:
        _run(slot, ops, _projected_lstm_backward_steps if P else _lstm_backward_steps, ctx, g, w_rec, T)
    da, dt = g.da, x.dtype
    dc0 = g.dcarry[0, :, H:] + g.drec[0, :, H:] if full else g.dcarry[0, :, H:]
    if P:  # dh0 = da[0] Whh, and dhT itself for an item that ran no step
        dh0 = xp.zeros((B, P), dtype=compute(dt))
        if T:
            ops.gemm(da[0], ctx.w_hh, dh0)
        if dh0_direct is not None:
            dh0 += dh0_direct
    elif ctx.rdrop is not None:  # the GEMM's part of dh0 is d(d∘h0)
        dh0 = g.dcarry[0, :, :H] + _dropped(ctx.spec, ctx.rdrop, g.drec[0, :, :H])
    else:
        dh0 = g.dcarry[0, :, :H] + g.drec[0, :, :H]
    da_h = g.da_raw if layer_norm else da  # the gradient of h Whhᵀ
    if ctx.rdrop is None:
        dw_hh = _state_grad(ops, xp, da_h, ctx.h0, ctx.y)
    else:  # Whh met d∘h
        _dropped_inputs(ctx.spec, g, ctx.h0, ctx.y, ctx.rdrop)
        dw_hh = _weight_grad(ops, xp, da_h, g.hd)
    # the gradient of x Wihᵀ (layer_norm: into da_raw, whose h side dw_hh has read)
    da_x = _normalised_input_grad(ops, da, ctx, p["ln_weight_ih"], g.da_raw) if layer_norm else da
    dp = {"weight_ih": _weight_grad(ops, xp, da_x, x), "weight_hh": dw_hh}
    if full:  # c is in the compute dtype, so this GEMM is too
        dw_ch = _state_grad(ops, xp, da.astype(ctx.cs.dtype, copy=False), ctx.c0, ctx.cs)  # [4H, H]
        dp["weight_ch"] = xp.concatenate([dw_ch[k * H : (k + 1) * H] for k in (0, 1, 3)]).astype(dt, copy=False)
    elif ctx.spec.peephole == "diagonal":
        d_i, d_f, d_o = (da[:, :, k * H : (k + 1) * H] for k in (0, 1, 3))
        w_i, w_f = (_state_dot(xp, d, ctx.c0, ctx.cs) for d in (d_i, d_f))
        w_o = (d_o.astype(ctx.cs.dtype, copy=False) * _new_cells(xp, ctx)).sum((0, 1))  # w_o meets c', not c
        dp["weight_ch"] = xp.concatenate([w_i, w_f, w_o]).astype(dt, copy=False)
    if "bias_ih" in p:
        dp["bias_ih"] = ops.column_sum(_rows(da))
        dp["bias_hh"] = dp["bias_ih"].copy()
    if P:  # Σ dhᵀ h' over every step, dh rounded to the storage dtype as da is
        dp["weight_hr"] = _weight_grad(ops, xp, g.dhp.astype(dt, copy=False), ctx.ms)
    if layer_norm:
        dp["ln_weight_ih"], dp["ln_weight_hh"] = _gain_grad(ops, da, ctx.x_hat), _gain_grad(ops, da, ctx.h_hat)
        dp["ln_weight_c"], dp["ln_bias_c"] = _gain_grad(ops, g.dn, ctx.c_hat), ops.column_sum(_rows(g.dn))
    dx = _input_grad(ops, xp, da_x, p["weight_ih"])
    return dx, (dh0.astype(dt), dc0.astype(dt)), dp


# --- GRU ------------------------------------------------------------------------


def _gru_buffers(xp, dt, T, B, H, reset_after, training, has_lengths, zoned, layer_norm, static):
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    b = Buffers(y=e(T, B, H))  # [T, B, H]
    if reset_after:
        b.gates = e(T, B, 4 * H) if training else None  # [T, B, 4H]
    else:  # r, z pass to the n kernel through gates even when not training
        b.gates = e(T if training else 1, B, 3 * H)  # [T, B, 3H]
        b.rh = e(T if training else 1, B, H)  # [T, B, H] r∘h
    # x_hat, h_hat [T, B, 3H] and their rstd_* [T, B] (training)
    vars(b).update(_normalised_buffers(xp, dt, T, B, {"x": 3 * H, "h": 3 * H}, training and layer_norm))
    return _input_buffers(b, xp, dt, static, h0=(B, H), w_hh=(3 * H, H), b_hn=(H,) if reset_after else None,
                          lengths=(B,) if has_lengths else None, zone_h=(T, B, H) if "h" in zoned else None,
                          rdrop=(B, H) if "rdrop" in zoned else None, ln_h=(3 * H,) if layer_norm else None)


def _gru_work(xp, dt, T, B, H, reset_after, has_lengths, dropped, layer_norm):
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    b = Buffers(
        xw=e(T, B, 3 * H),  # [T, B, 3H] x Wihᵀ + biases (reset_after: all but b_hn; layer_norm: normalised first)
        h_last=e(B, H) if has_lengths else None,  # [B, H]
        hd=e(B, H) if dropped else None,  # [B, H] d∘h, the recurrent GEMMs' input (recurrent dropout)
        x_raw=_raw_input(xp, dt, T, B, 3 * H, layer_norm),  # [T, B, 3H] or None
    )
    ec = lambda *shape: xp.empty(shape, dtype=compute(dt))  # noqa: E731
    if reset_after:
        b.gh = ec(B, 3 * H)  # [B, 3H] h Whhᵀ
    else:
        b.ghrz = ec(B, 2 * H)  # [B, 2H] h Whh_rzᵀ
        b.ghn = ec(B, H)  # [B, H] (r∘h) Whnᵀ
    return b


def _gru_forward_steps(ops, b, T, spec, training):
    for t in range(T):
        h = _prev(b.h0, b.y, t)
        h_in = h if b.rdrop is None else b.hd  # what the recurrent GEMMs (and r∘h) read
        if spec.reset_after:
            ops.gemm(h_in, b.w_hh.T, b.gh)
            if spec.layer_norm:
                ops.layer_norm_forward(b.gh, b.ln_h, None, _at(b.h_hat, t), _at(b.rstd_h, t), LAYER_NORM_EPS)
            ops.gru_forward_step(spec, t, b.xw[t], b.gh, b.b_hn, h, b.y[t], b.h_last,
                                 b.gates[t] if training else None, _at(b.zone_h, t), b.rdrop, b.hd, b.lengths)
        else:
            s, H = (t if training else 0), h.shape[1]
            ops.gemm(h_in, b.w_hh[: 2 * H].T, b.ghrz)
            ops.gru_rz_step(b.xw[t], b.ghrz, h_in, b.gates[s], b.rh[s])
            ops.gemm(b.rh[s], b.w_hh[2 * H :].T, b.ghn)
            ops.gru_n_step(spec, t, b.xw[t], b.ghn, h, b.y[t], b.h_last, b.gates[s], _at(b.zone_h, t), b.rdrop, b.hd,
                           b.lengths)


@_forward_size
def gru_forward(ops, xp, spec, x, p, states, lengths, training=True, graphs=None, masks=None, plan=None):
    """y [T, B, H], (hT,) [B, H], ctx (None when not training); masks {"h": uint8 [T, B, H], "rdrop": uint8
    [B, H]} or None and plan as in lstm_forward."""
    (T, B, _), (h0,) = x.shape, states
    H, reset_after = h0.shape[1], spec.reset_after
    shape = (x.dtype, T, B, H, reset_after, training, lengths is not None, tuple(sorted(masks or ())),
             spec.layer_norm)
    slot, b = _buffers(graphs, ops, (spec, *shape), lambda static: _gru_buffers(xp, *shape, static),
                       lambda: _gru_work(xp, x.dtype, T, B, H, reset_after, lengths is not None,
                                         "rdrop" in (masks or ()), spec.layer_norm))
    bias = None
    if "bias_ih" in p:
        bias = _bias_sum(p["bias_ih"], p["bias_hh"])
        if reset_after:  # bias_hh's n part stays inside r∘(gh_n + b_hn)
            bias[2 * H :] = p["bias_ih"][2 * H :]
    b_hn = None
    if reset_after:
        b_hn = p["bias_hh"][2 * H :] if "bias_hh" in p else xp.zeros(H, dtype=x.dtype)  # [H]
    _bind(b, slot, h0=h0, w_hh=p["weight_hh"], b_hn=b_hn, lengths=_lengths(xp, lengths), zone_h=_mask(masks, "h"),
          rdrop=_mask(masks, "rdrop"), ln_h=p.get("ln_weight_hh"))
    if spec.layer_norm:  # xw = LN(x Wihᵀ) with the biases as its shift
        _normalised_input(ops, x, p["weight_ih"], p["ln_weight_ih"], bias, b)
    else:
        _input_gemm(ops, x, p["weight_ih"], bias, b.xw)
    if b.h_last is not None:
        b.h_last[...] = b.h0
    if b.rdrop is not None:
        b.hd[...] = _dropped(spec, b.rdrop, b.h0)
    if plan is not None and reset_after:
        ops.gru_persistent_forward(plan, spec, b.xw, b.w_hh, b.b_hn, b.h0, b.y, b.h_last, b.gates, b.zone_h, b.rdrop,
                                   _double_buffered(xp, b.hd), b.lengths, b.gh, b.ln_h, b.h_hat, b.rstd_h)
    elif plan is not None:
        ops.gru_rb_persistent_forward(plan, spec, training, b.xw, b.w_hh, b.h0, b.y, b.h_last, b.gates, b.rh, b.zone_h,
                                      b.rdrop, _double_buffered(xp, b.hd), b.lengths, b.ghrz, b.ghn)
    else:
        _run(slot, ops, _gru_forward_steps, b, T, spec, training)
    hT = b.h_last if b.h_last is not None else _prev(b.h0, b.y, T)
    ctx = None
    if training:
        ctx = GRUContext(x=x, params=p, h0=b.h0, y=b.y, gates=b.gates, rh=None if reset_after else b.rh,
                         lengths=b.lengths, w_hh=b.w_hh, zone_h=b.zone_h, rdrop=b.rdrop, x_hat=b.x_hat,
                         rstd_x=b.rstd_x, h_hat=b.h_hat, rstd_h=b.rstd_h, ln_h=b.ln_h, slot=slot, spec=spec, plan=plan)
    return b.y, (hT.copy(),), ctx


def _gru_backward_buffers(xp, dt, T, B, H, reset_after, dropped, layer_norm, static):
    e = lambda *shape: xp.empty(shape, dtype=dt)  # noqa: E731
    ec = lambda *shape: xp.empty(shape, dtype=compute(dt))  # noqa: E731
    b = Buffers(
        dg=e(T, B, 3 * H),  # [T, B, 3H] gradient of xw
        dgh=e(T, B, 3 * H) if reset_after else None,  # [T, B, 3H] gradient of gh (reset before: dg itself)
        drh=None if reset_after else ec(B, H),  # [B, H] d(r∘h)
        dcarry=ec(2, B, H),  # [2, B, H] dh, the kernels' part, ping-pong
        drec=ec(2, B, H),  # [2, B, H] dh, the recurrent GEMM's part, ping-pong
        hd=e(T, B, H) if dropped else None,  # [T, B, H] each step's recurrent GEMM input d∘h (recurrent dropout)
        # [T, B, 3H] each the gradient of h Whhᵀ and of x Wihᵀ before their normalisation (layer_norm)
        dgh_raw=e(T, B, 3 * H) if layer_norm else None,
        dg_raw=e(T, B, 3 * H) if layer_norm else None,
    )
    return _input_buffers(b, xp, dt, static, dy=(T, B, H))


def _gru_backward_steps(ops, ctx, g, T):
    w_hh = ctx.w_hh
    for t in reversed(range(T)):
        nxt, cur = (t + 1) % 2, t % 2
        h, H = _prev(ctx.h0, ctx.y, t), w_hh.shape[1]
        if ctx.spec.reset_after:
            ops.gru_backward_step(ctx.spec, t, ctx.gates[t], h, g.dy[t], g.dcarry[nxt], g.drec[nxt], g.dcarry[cur],
                                  g.dg[t], g.dgh[t], _at(ctx.zone_h, t), ctx.rdrop, ctx.lengths)
            d_gh = g.dgh[t]
            if ctx.spec.layer_norm:  # the gradient of h Whhᵀ before its normalisation
                ops.layer_norm_backward(d_gh, ctx.h_hat[t], ctx.rstd_h[t], ctx.ln_h, g.dgh_raw[t])
                d_gh = g.dgh_raw[t]
            ops.gemm(d_gh, w_hh, g.drec[cur])
        else:
            ops.gru_n_backward_step(ctx.spec, t, ctx.gates[t], h, g.dy[t], g.dcarry[nxt], g.drec[nxt],
                                    g.dcarry[cur], g.dg[t], _at(ctx.zone_h, t), ctx.rdrop, ctx.lengths)
            ops.gemm(g.dg[t, :, 2 * H :], w_hh[2 * H :], g.drh)
            ops.gru_rz_backward_step(ctx.spec, t, ctx.gates[t], h if ctx.rdrop is None else g.hd[t], g.drh,
                                     g.dcarry[cur], g.dg[t], ctx.rdrop, ctx.lengths)
            ops.gemm(g.dg[t, :, : 2 * H], w_hh[: 2 * H], g.drec[cur])


@_backward_size
def gru_backward(ops, xp, ctx, dy, dstates):
    """dx [T, B, I], (dh0,) [B, H], dparams."""
    (dhT,) = dstates
    x, p, H = ctx.x, ctx.params, dhT.shape[1]
    T, B, _ = x.shape
    dropped, layer_norm = ctx.rdrop is not None, ctx.spec.layer_norm
    make = lambda static: _gru_backward_buffers(xp, x.dtype, T, B, H, ctx.spec.reset_after, dropped,  # noqa: E731
                                                layer_norm, static)
    slot = ctx.slot
    g = _workspace(slot, make)
    _bind(g, slot, dy=dy if slot else xp.ascontiguousarray(dy))
    g.dcarry[T % 2] = dhT
    g.drec[T % 2] = 0
    if dropped:  # read by the reset-before loop, and by dWhh
        _dropped_inputs(ctx.spec, g, ctx.h0, ctx.y, ctx.rdrop)
    if ctx.plan is not None and ctx.spec.reset_after:
        ops.gru_persistent_backward(ctx.plan, ctx.spec, ctx.gates, ctx.h0, ctx.y, g.dy, g.dcarry, g.drec, g.dg, g.dgh,
                                    ctx.w_hh, ctx.zone_h, ctx.rdrop, ctx.lengths, ctx.ln_h, ctx.h_hat, ctx.rstd_h,
                                    g.dgh_raw)
    elif ctx.plan is not None:
        ops.gru_rb_persistent_backward(ctx.plan, ctx.spec, ctx.gates, ctx.h0, ctx.y, g.hd, g.dy, g.dcarry, g.drec,
                                       g.dg, ctx.w_hh, g.drh, ctx.zone_h, ctx.rdrop, ctx.lengths)
    else:
        _run(slot, ops, _gru_backward_steps, ctx, g, T)
    dg = g.dg

    def recurrent_grad(d):  # Σ dᵀ (what the recurrent GEMM read): h, or d∘h under recurrent dropout
        return _weight_grad(ops, xp, d, g.hd) if dropped else _state_grad(ops, xp, d, ctx.h0, ctx.y)

    if ctx.spec.reset_after:
        dgh = g.dgh
        dp = {"weight_hh": recurrent_grad(g.dgh_raw if layer_norm else dgh)}
    else:
        dgh = dg
        dp = {"weight_hh": xp.concatenate([recurrent_grad(dg[:, :, : 2 * H]),
                                           _weight_grad(ops, xp, dg[:, :, 2 * H :], ctx.rh)])}
    dg_raw = _normalised_input_grad(ops, dg, ctx, p["ln_weight_ih"], g.dg_raw) if layer_norm else dg  # of x Wihᵀ
    dp["weight_ih"] = _weight_grad(ops, xp, dg_raw, x)
    if "bias_ih" in p:
        dp["bias_ih"] = ops.column_sum(_rows(dg))
        dp["bias_hh"] = ops.column_sum(_rows(dgh))
    if layer_norm:
        dp["ln_weight_ih"], dp["ln_weight_hh"] = _gain_grad(ops, dg, ctx.x_hat), _gain_grad(ops, dgh, ctx.h_hat)
    dx = _input_grad(ops, xp, dg_raw, p["weight_ih"])
    drec0 = _dropped(ctx.spec, ctx.rdrop, g.drec[0]) if dropped else g.drec[0]  # d(d∘h0) under recurrent dropout
    return dx, ((g.dcarry[0] + drec0).astype(x.dtype, copy=False),), dp


# --- dispatch on the variant ------------------------------------------------------


def forward(ops, xp, spec, x, p, states, lengths, training=True, graphs=None, masks=None, plan=None):
    """y [T, B, H], the final states (a tuple) and a ctx (None when not training), for a spec of either family;
    masks: `rnncells.api.training_masks`'s (training), or None (evaluation); plan: a PersistentPlan (ops' own,
    `ops.persistent_plan`) to run the step loops as persistent kernels, or None."""
    run = lstm_forward if isinstance(spec, LSTMSpec) else gru_forward
    return run(ops, xp, spec, x, p, states, lengths, training, graphs, masks, plan)


def backward(ops, xp, ctx, dy, dstates):
    """dx [T, B, I], the initial states' gradients (a tuple) and dparams of the forward that made ctx."""
    run = lstm_backward if isinstance(ctx, LSTMContext) else gru_backward
    return run(ops, xp, ctx, dy, dstates)
