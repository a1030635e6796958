"""Per-step pointwise work in vectorised NumPy: the CPU twin of kernels/*.cu.

Each function is one fused kernel of the speed plan: it reads the GEMM
results of one step, writes every output element (no caller-side zeroing),
and handles `lengths` itself: an item with t >= lengths[b] writes a zero
output, keeps its cell state, and gets a zero pre-activation gradient while
its state's gradient passes through.

LSTM (a = xw + hw, split a_i a_f a_g a_o; full peepholes add cw = c Wchᵀ to
a_i a_f a_o; diagonal peepholes w_i, w_f, w_o):
    i = σ(a_i + w_i∘c)  f = σ(a_f + w_f∘c)  g = act(a_g)
    c' = f∘c + i∘g      (cell_clip: clipped to [−clip, clip])
    o = σ(a_o + w_o∘c') h' = o∘tanh(c')
GRU, reset_after (gh = h Whhᵀ, b_hn the n part of bias_hh):
    r = σ(xw_r + gh_r)  z = σ(xw_z + gh_z)  n = tanh(xw_n + r∘(gh_n + b_hn))
    h' = (1 − z)∘n + z∘h
GRU, reset before (two GEMMs per step, so two kernels):
    r, z as above; rh = r∘h;  then n = tanh(xw_n + rh Whnᵀ), h' as above.
Layer normalisation (layer_norm=True) is a kernel of its own, run on a GEMM's
output before the cell's kernel reads it: `layer_norm_forward`, each row
normalised over its G·H values, and its `layer_norm_backward`.  The LayerNorm
LSTM's cell steps (`lstm_ln_*_step`) also normalise c' over each row's H
units before the output's tanh: h' = o∘tanh(γ_c∘ĉ + β_c), c' the state.
Zoneout (both cells): the new h (and the LSTM's c) zoned out, `_zone`: each
unit keeps its previous value where the step's mask (uint8 [B, H]) is set,
or, without a mask, mixes the two by the probability (the expectation).

Buffers: h' is written once, to y (B, H), which is also the next step's h
(so past an item's length h reads as 0) and, with lengths, to h_last (B, H)
while the item runs; c and c_next (B, H) are the cell states; gates (B, 4H)
the activations saved for backward (None: inference, nothing saved); da
(B, 4H) the gradient of the pre-activations.  A state's gradient travels in
two parts: `dcarry`, written by the later step's backward kernel, and
`drec`, the recurrent GEMM's output; the next backward kernel adds them, so
no GEMM has to accumulate.

Each function is the twin of the kernel of the same name in kernels/lstm.cu
or kernels/gru.cu, with the same arguments (the LSTM's take the spec, which
the kernels get as template arguments) and the same dtypes: half storage
(float16, bfloat16) is read as float32 (`_c`, the kernels' C(...)), the
arithmetic runs in float32, and assigning into a half buffer rounds to
nearest even, as the kernels' S(...) does.

Besides the kernels, a backend's ops provide `gemm` (out = a @ b, or out += a @ b, into a
preallocated buffer: every GEMM of the orchestration goes through it),
`column_sum` (the bias gradients), `threads` (the CPU threads a forward or
backward may use, by the size of its steps) and `run_compiled(steps, *args)`,
which runs a whole step loop of `rnncells._sequence` in one call and says
whether it did.
"""

import contextlib
import functools
import threading

import numpy as np

from ._dtypes import HALVES, compute


def sigmoid(a):
    """σ(a) = 1 / (1 + e^-a), without overflow for any |a| (e^-|a| <= 1); NaN stays NaN (common.cuh's twin)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


ACT = {"tanh": np.tanh, "sigmoid": sigmoid}
# d act / d a, written in terms of the activation's output
DACT = {"tanh": lambda g: 1.0 - g * g, "sigmoid": lambda g: g * (1.0 - g)}


# A forward or backward whose step GEMM does fewer multiply-adds than this runs all its GEMMs on one BLAS thread.
# Measured on 2 cores (OpenBLAS 0.3.31): on the CPU bench's quick shapes (steps of 2^18) BLAS's threads are at
# most 11% faster on idle cores and 1.3-2.5x slower in training when another process holds a core (each
# multi-threaded GEMM then waits for a time slice); the demo runs 1.5-1.7x faster there.  On idle cores, threads
# gain 5-12% at 2^20 per step and 27-85% at 2^22 and beyond, so those problems keep BLAS's own threads.
SMALL_STEP_MACS = 1 << 20


def threads(step_macs):
    """One BLAS thread for a call of small steps (see SMALL_STEP_MACS); BLAS's own choice otherwise."""
    return _ONE_BLAS_THREAD if step_macs < SMALL_STEP_MACS else contextlib.nullcontext()


class _OneBlasThread:
    """BLAS on one thread while any small call runs, restored when the last one ends.

    The thread count is the process's, not the calling thread's: small calls in several Python threads
    share one lowering of it (each restoring on its own would leave the count at 1 when they overlap),
    and other threads' GEMMs run on one thread while a small call runs.
    """

    def __init__(self):
        self._lock, self._inside, self._limiter = threading.Lock(), 0, None

    def __enter__(self):
        with self._lock:
            if self._inside == 0:
                self._limiter = blas().limit(limits=1)  # applies now; restore_original_limits undoes it
            self._inside += 1

    def __exit__(self, *exc):
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._limiter.restore_original_limits()


_ONE_BLAS_THREAD = _OneBlasThread()  # one per process, as the count it guards


@functools.cache
def blas():
    """The process's BLAS thread pools (threadpoolctl), found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _c(a):
    """An array as the arithmetic reads it: half storage as float32, float32 and float64 as they are."""
    return a.astype(np.float32) if a.dtype in HALVES else a


def gemm(a, b, out, accumulate=False):
    """out = a @ b, or out += a @ b when accumulate.

    Half inputs are multiplied in float32 and the result (with out added, when
    accumulating) rounded once to out's dtype, as cuBLAS's GemmEx does with a
    float32 compute type.
    """
    if a.dtype in HALVES:
        product = _c(a) @ _c(b)
        out[...] = _c(out) + product if accumulate else product
    elif accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


def run_compiled(steps, *args):
    """False: this backend runs every step loop step by step, in Python (the "cpu" backend compiles them)."""
    return False


def column_sum(a):
    """reduce.cu's column sums: Σ over the rows of a [rows, cols] matrix, in the compute dtype."""
    return a.sum(axis=0, dtype=compute(a.dtype)).astype(a.dtype, copy=False)


def layer_norm_forward(x, gamma, beta, x_hat, rstd, eps):
    """layernorm.cu's layer_norm_forward: each row of x [R, n] (the compute dtype) normalised in place,
    x ← γ∘x̂ (+ β), x̂ = (x − μ) / √(σ² + ε); x̂ [R, n] and rstd [R] = 1/√(σ² + ε) saved when given."""
    dev = x - x.mean(axis=1, keepdims=True)
    r = 1.0 / np.sqrt((dev * dev).mean(axis=1, keepdims=True) + x.dtype.type(eps))
    x_hat1 = dev * r
    if x_hat is not None:
        x_hat[...] = x_hat1
        rstd[...] = r[:, 0]
    x[...] = _c(gamma) * x_hat1 if beta is None else _c(gamma) * x_hat1 + beta


def layer_norm_backward(dy, x_hat, rstd, gamma, dx):
    """layernorm.cu's layer_norm_backward: dx [R, n] from the gradient dy of γ∘x̂ (+ β), with dx̂ = γ∘dy:
    dx = (dx̂ − mean(dx̂) − x̂∘mean(dx̂∘x̂)) / √(σ² + ε), the means over each row."""
    d_hat, x_hat = _c(dy) * _c(gamma), _c(x_hat)
    mean_d, mean_dx = d_hat.mean(axis=1, keepdims=True), (d_hat * x_hat).mean(axis=1, keepdims=True)
    dx[...] = rstd[:, None] * (d_hat - mean_d - x_hat * mean_dx)


def _active(t, lengths):
    return None if lengths is None else (t < lengths)[:, None]


def _commit(out, new, old, active):
    """out = new where the item is active, else old (a carried state or 0)."""
    if active is None:
        out[...] = new
    else:
        out[...] = np.where(active, new, old)


def _commit_h(t, h1, y, h_last, lengths):
    """h' to y (0 past the item's length) and, while the item runs, to h_last (if given)."""
    active = _active(t, lengths)
    _commit(y, h1, 0.0, active)
    if h_last is not None:
        _commit(h_last, h1, h_last, active)


def _split(a, H):
    return [a[:, k * H : (k + 1) * H] for k in range(a.shape[1] // H)]


def _zone(mask, p, prev, new):
    """common.cuh's zone(): prev where the mask is set (training), else p·prev + (1 − p)·new (evaluation); prev
    is read (in the compute dtype) only then, so a state without zoneout may pass None."""
    if mask is not None:
        return np.where(mask != 0, _c(prev), new)
    p = new.dtype.type(p)  # in the compute dtype, as the kernels' C(p)
    return new if p == 0 else p * _c(prev) + (1 - p) * new


def _zone_grad(mask, p, d):
    """common.cuh's zone_grad(): d split into (the previous state's part, the new value's part)."""
    if mask is not None:
        keep = mask != 0
        return np.where(keep, d, 0.0), np.where(keep, 0.0, d)
    p = d.dtype.type(p)
    return (np.zeros_like(d), d) if p == 0 else (p * d, (1 - p) * d)


def _dropped(spec, mask, a):
    """common.cuh's kept(): a∘d, d = mask·(1 / (1 − recurrent_dropout)) in a's dtype (the compute dtype), or a
    itself without a mask (evaluation, or no recurrent dropout)."""
    if mask is None:
        return a
    return a * (mask.astype(a.dtype) * a.dtype.type(spec.rdrop_scale()))


def _write_dropped(spec, mask, y, h_drop):
    """h_drop = d∘y, the next step's GEMM input under recurrent dropout, from y as stored (nothing without)."""
    if mask is not None:
        h_drop[...] = _dropped(spec, mask, _c(y))


def _clip(spec, c1):
    """c' clipped to [−cell_clip, cell_clip] (NaN stays NaN), or as it is."""
    return c1 if spec.cell_clip is None else np.clip(c1, -spec.cell_clip, spec.cell_clip)


def _lstm_unit(spec, xw, hw, cw, c, w_peep):
    """lstm.cu's lstm_unit: the gates i, f, g, o and c' (clipped) of every unit."""
    H, peephole = c.shape[1], spec.peephole
    a_i, a_f, a_g, a_o = _split(_c(xw) + hw, H)
    if peephole == "full":
        a_i, a_f, a_o = a_i + cw[:, :H], a_f + cw[:, H : 2 * H], a_o + cw[:, 2 * H :]
    if peephole == "diagonal":
        w = _c(w_peep)
        w_i, w_f, w_o = w[:H], w[H : 2 * H], w[2 * H :]
        a_i, a_f = a_i + w_i * c, a_f + w_f * c
    i, f, g = sigmoid(a_i), sigmoid(a_f), ACT[spec.candidate](a_g)
    c1 = _clip(spec, f * c + i * g)
    if peephole == "diagonal":
        a_o = a_o + w_o * c1
    return i, f, g, sigmoid(a_o), c1


def _lstm_commit(spec, t, unit, h1, h, c, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop, lengths):
    """lstm.cu's lstm_commit: zoneout of h' and c', then the gates (when kept), c, y, h_last and d∘y."""
    i, f, g, o, c1 = unit
    H = c.shape[1]
    if spec.zoneout():
        h1, c1 = _zone(zone_h, spec.zoneout_h, h, h1), _zone(zone_c, spec.zoneout_c, c, c1)
    if gates is not None:
        for k, v in enumerate((i, f, g, o)):
            gates[:, k * H : (k + 1) * H] = v
    _commit(c_next, c1, c, _active(t, lengths))
    _commit_h(t, h1, y, h_last, lengths)
    _write_dropped(spec, rdrop, y, h_drop)


def lstm_forward_step(spec, t, xw, hw, cw, h, c, c_next, y, h_last, gates, w_peep, zone_h, zone_c, rdrop, h_drop,
                      lengths):
    """lstm.cu's lstm_forward_step.  xw, hw [B, 4H]; cw [B, 3H] (full); h, c, c_next, y, h_last [B, H];
    gates [B, 4H]; w_peep [3H] (diagonal); zone_h, zone_c [B, H] zoneout masks or None; rdrop [B, H] recurrent
    dropout's mask or None, and h_drop [B, H] = d∘y then."""
    unit = _lstm_unit(spec, xw, hw, cw, c, w_peep)
    *_, o, c1 = unit
    _lstm_commit(spec, t, unit, o * np.tanh(c1), h, c, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop,
                 lengths)


def lstm_ln_forward_step(spec, t, xw, hw, h, c, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop, lengths,
                         gamma_c, beta_c, c_hat, rstd_c, eps):
    """lstm.cu's lstm_ln_forward_step (layer_norm): lstm_forward_step with h' = o∘tanh(γ_c∘ĉ + β_c), ĉ c'
    normalised over each row; c_hat [B, H] and rstd_c [B] kept when gates are."""
    unit = _lstm_unit(spec, xw, hw, None, c, None)
    *_, o, c1 = unit
    n = c1.copy()  # c' stays the state; n = γ_c∘ĉ + β_c is for the tanh
    layer_norm_forward(n, gamma_c, _c(beta_c), c_hat if gates is not None else None, rstd_c, eps)
    _lstm_commit(spec, t, unit, o * np.tanh(n), h, c, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop,
                 lengths)


def _lstm_backward(spec, t, gates, c, c1, dy, dcarry, drec, dcarry_out, da, w_peep, zone_h, zone_c, rdrop, lengths,
                   ln=None):
    """lstm_backward_step, and with ln = (c_hat, rstd_c, gamma_c, beta_c, dn) lstm_ln_backward_step."""
    H, peephole = c.shape[1], spec.peephole
    i, f, g, o = _split(_c(gates), H)
    dh_in = dcarry[:, :H] + _dropped(spec, rdrop, drec[:, :H])
    dc_in = dcarry[:, H:] + drec[:, H:] if peephole == "full" else dcarry[:, H:]
    dh = dh_in if dy is None else dh_in + _c(dy)
    dh_prev = 0.0  # no zoneout: dh_prev is all the next step's GEMM
    if spec.zoneout():  # c1 is the state, c' zoned out: c' itself from the saved gates
        c1 = _clip(spec, f * c + i * g)
        dh_prev, dh = _zone_grad(zone_h, spec.zoneout_h, dh)
        dc_zoned, dc_new = _zone_grad(zone_c, spec.zoneout_c, dc_in)
    else:
        dc_new = dc_in
    active = _active(t, lengths)
    if ln is None:  # h' = o∘tanh(c')
        tc = np.tanh(c1)
        dc = dc_new + dh * o * (1.0 - tc * tc)
    else:  # h' = o∘tanh(n), n = γ_c∘ĉ + β_c
        c_hat, rstd_c, gamma_c, beta_c, dn = ln
        tc = np.tanh(_c(gamma_c) * _c(c_hat) + _c(beta_c))
        dn1 = dh * o * (1.0 - tc * tc)
        _commit(dn, dn1, 0.0, active)
        dc_ln = np.empty_like(dn1)
        layer_norm_backward(dn1, c_hat, rstd_c, gamma_c, dc_ln)
        dc = dc_new + dc_ln
    da_o = dh * tc * o * (1.0 - o)
    if peephole == "diagonal":
        w = _c(w_peep)
        w_i, w_f, w_o = w[:H], w[H : 2 * H], w[2 * H :]
        dc = dc + da_o * w_o
    if spec.cell_clip is not None:  # no gradient where c' reached the clip (|c'| = clip); NaN passes
        dc = np.where(np.abs(c1) >= spec.cell_clip, 0.0, dc)
    da_i = dc * g * i * (1.0 - i)
    da_f = dc * c * f * (1.0 - f)
    da_g = dc * i * DACT[spec.candidate](g)
    dc_prev = dc * f
    if spec.zoneout():  # as the kernels' `if constexpr (ZONEOUT)`: no pass over zeros without it
        dc_prev = dc_prev + dc_zoned
    if peephole == "diagonal":
        dc_prev = dc_prev + da_i * w_i + da_f * w_f
    for k, v in enumerate((da_i, da_f, da_g, da_o)):
        _commit(da[:, k * H : (k + 1) * H], v, 0.0, active)
    _commit(dcarry_out[:, :H], dh_prev, dh_in, active)
    _commit(dcarry_out[:, H:], dc_prev, dc_in, active)


def lstm_backward_step(spec, t, gates, c, c1, dy, dcarry, drec, dcarry_out, da, w_peep, zone_h, zone_c, rdrop,
                       lengths):
    """lstm.cu's lstm_backward_step: da [B, 4H] and dcarry_out [B, 2H] from dy [B, H] (or None: a projected
    LSTM's dh arrives whole in drec) and d[h | c] = dcarry [B, 2H] + drec [B, H or 2H] (its dh part times d
    under recurrent dropout, rdrop [B, H] its mask)."""
    _lstm_backward(spec, t, gates, c, c1, dy, dcarry, drec, dcarry_out, da, w_peep, zone_h, zone_c, rdrop, lengths)


def lstm_ln_backward_step(spec, t, gates, c, c1, dy, dcarry, drec, dcarry_out, da, zone_h, zone_c, rdrop, lengths,
                          c_hat, rstd_c, gamma_c, beta_c, dn):
    """lstm.cu's lstm_ln_backward_step (layer_norm): lstm_backward_step through n = γ_c∘ĉ + β_c, whose gradient
    dn [B, H] it also writes (0 past an item's length)."""
    _lstm_backward(spec, t, gates, c, c1, dy, dcarry, drec, dcarry_out, da, None, zone_h, zone_c, rdrop, lengths,
                   (c_hat, rstd_c, gamma_c, beta_c, dn))


def gru_forward_step(spec, t, xw, gh, b_hn, h, y, h_last, gates, zone_h, rdrop, h_drop, lengths):
    """gru.cu's gru_forward_step (reset_after).  xw, gh [B, 3H]; b_hn [H]; h, y, h_last [B, H];
    gates [B, 4H] = r, z, n, gh_n + b_hn; zone_h [B, H] zoneout mask or None; rdrop, h_drop as the LSTM's."""
    H, h = h.shape[1], _c(h)
    x_r, x_z, x_n = _split(_c(xw), H)
    h_r, h_z, h_n = _split(gh, H)
    r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
    ghn = h_n + _c(b_hn)
    n = np.tanh(x_n + r * ghn)
    h1 = (1.0 - z) * n + z * h
    if spec.zoneout():
        h1 = _zone(zone_h, spec.zoneout_h, h, h1)
    if gates is not None:
        for k, v in enumerate((r, z, n, ghn)):
            gates[:, k * H : (k + 1) * H] = v
    _commit_h(t, h1, y, h_last, lengths)
    _write_dropped(spec, rdrop, y, h_drop)


def gru_backward_step(spec, t, gates, h, dy, dcarry, drec, dcarry_out, dgi, dgh, zone_h, rdrop, lengths):
    """gru.cu's gru_backward_step (reset_after).  dgi, dgh [B, 3H]: gradients of xw and of gh;
    dh = dcarry + drec [B, H] (drec times d under recurrent dropout)."""
    H, h = h.shape[1], _c(h)
    r, z, n, ghn = _split(_c(gates), H)
    dh_in = dcarry + _dropped(spec, rdrop, drec)
    dh1 = dh_in + _c(dy)
    if spec.zoneout():
        dh_zoned, dh1 = _zone_grad(zone_h, spec.zoneout_h, dh1)
    da_n = dh1 * (1.0 - z) * (1.0 - n * n)
    da_z = dh1 * (h - n) * z * (1.0 - z)
    da_r = da_n * ghn * r * (1.0 - r)
    active = _active(t, lengths)
    for k, v in enumerate((da_r, da_z, da_n)):
        _commit(dgi[:, k * H : (k + 1) * H], v, 0.0, active)
    for k, v in enumerate((da_r, da_z, da_n * r)):
        _commit(dgh[:, k * H : (k + 1) * H], v, 0.0, active)
    _commit(dcarry_out, dh1 * z + dh_zoned if spec.zoneout() else dh1 * z, dh_in, active)


def gru_rz_step(xw, ghrz, h, gates, rh):
    """gru.cu's gru_rz_step (reset before, first half).  ghrz [B, 2H] = h Whh_rzᵀ; gates [B, 3H] gets r, z;
    rh [B, H] = r∘h."""
    H, xw = h.shape[1], _c(xw)
    r = sigmoid(xw[:, :H] + ghrz[:, :H])
    gates[:, :H] = r
    gates[:, H : 2 * H] = sigmoid(xw[:, H : 2 * H] + ghrz[:, H:])
    rh[...] = r * _c(h)


def gru_n_step(spec, t, xw, ghn, h, y, h_last, gates, zone_h, rdrop, h_drop, lengths):
    """gru.cu's gru_n_step (reset before, second half).  ghn [B, H] = rh Whnᵀ; gates [B, 3H] gets n; h_drop
    [B, H] = d∘y under recurrent dropout (rdrop its mask)."""
    H = h.shape[1]
    z = _c(gates[:, H : 2 * H])
    n = np.tanh(_c(xw[:, 2 * H :]) + ghn)
    gates[:, 2 * H :] = n
    h1 = (1.0 - z) * n + z * _c(h)
    if spec.zoneout():
        h1 = _zone(zone_h, spec.zoneout_h, h, h1)
    _commit_h(t, h1, y, h_last, lengths)
    _write_dropped(spec, rdrop, y, h_drop)


def gru_n_backward_step(spec, t, gates, h, dy, dcarry, drec, dcarry_out, dg, zone_h, rdrop, lengths):
    """gru.cu's gru_n_backward_step (reset before, first half).  dg [B, 3H] gets da_z and da_n;
    dcarry_out [B, H] = z∘dh1 (or the carry); drec times d under recurrent dropout."""
    H, h = h.shape[1], _c(h)
    r, z, n = _split(_c(gates), H)
    dh_in = dcarry + _dropped(spec, rdrop, drec)
    dh1 = dh_in + _c(dy)
    if spec.zoneout():
        dh_zoned, dh1 = _zone_grad(zone_h, spec.zoneout_h, dh1)
    active = _active(t, lengths)
    _commit(dg[:, H : 2 * H], dh1 * (h - n) * z * (1.0 - z), 0.0, active)
    _commit(dg[:, 2 * H :], dh1 * (1.0 - z) * (1.0 - n * n), 0.0, active)
    _commit(dcarry_out, dh1 * z + dh_zoned if spec.zoneout() else dh1 * z, dh_in, active)


def gru_rz_backward_step(spec, t, gates, h, drh, dcarry_out, dg, rdrop, lengths):
    """gru.cu's gru_rz_backward_step (reset before, second half).  h [B, H] the rz GEMM's input (d∘h under
    recurrent dropout); drh [B, H] = da_n Whn; dg gets da_r; dcarry_out += r∘drh (times d)."""
    H = h.shape[1]
    r = _c(gates[:, :H])
    active = _active(t, lengths)
    _commit(dg[:, :H], drh * _c(h) * r * (1.0 - r), 0.0, active)
    _commit(dcarry_out, dcarry_out + _dropped(spec, rdrop, r * drh), dcarry_out, active)
