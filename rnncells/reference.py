"""The float64 reference: every LSTM and GRU variant written on the tape (`rnncells.tape`), equation by equation.

The tape records each cell as the seed's numbered list of unary and binary
equations and walks it backward with one `deriv` rule per operator; its
gradients are how every backend is verified.  `equations()` prints what the
tape recorded and derived, in the slides' notation.

Layout: the seed's column convention.  A batch of B items is B columns, so
x_t is (I, B), W_fx is (H, I) and z = W_fx x_t is an ordinary matrix product.
Gradients have the shape of their variable (dW_fx is (H, I)); the slides'
transposed row-vector notation is a notation, not a storage layout.  The
backend functions at the bottom take and return the library's row layout
(rows are batch items) and transpose at that boundary.
"""

from typing import NamedTuple

import numpy as np

from .params import init_params
from .tape import Tape, Var
from .variants import LAYER_NORM_EPS, GRUSpec, LSTMSpec


# --- the cells, written on the tape ------------------------------------------
#
# Parameter leaves follow the slides' names: W_fx is the f-gate block of
# weight_ih, W_fh of weight_hh, W_fC of weight_ch (full peephole), w_fC the
# diagonal peephole, and the gate bias b_f = b_fx + b_fh merges torch's
# bias_ih and bias_hh (the seed has one bias per gate).  Gate rows in torch's
# storage: LSTM i, f, g(=C), o; peepholes i, f, o; GRU r, z, n.  The
# projection (proj_size) is one block, W_hr, of proj_size rows.

_LSTM_ROWS = {"weight_ih": "ifCo", "weight_hh": "ifCo", "bias_ih": "ifCo", "bias_hh": "ifCo", "weight_ch": "ifo",
              "weight_hr": "r"}
_GRU_ROWS = {"weight_ih": "rzn", "weight_hh": "rzn", "bias_ih": "rzn", "bias_hh": "rzn"}
_LEAF = {"weight_ih": "W_{}x", "weight_hh": "W_{}h", "bias_ih": "b_{}x", "bias_hh": "b_{}h"}
# layer_norm normalises a whole GEMM output, so its parameters are whole leaves ("x": the input side, "h": the
# recurrent), the gates taken from the normalised column by rows
# (the LSTM's "C": c's gain and shift)
_LAYER_NORM_ROWS = {"weight_ih": "x", "weight_hh": "h", "bias_ih": "x", "bias_hh": "h", "ln_weight_ih": "x",
                    "ln_weight_hh": "h", "ln_weight_c": "C", "ln_bias_c": "C"}
_LAYER_NORM_LEAF = {"weight_ih": "W_x", "weight_hh": "W_h", "bias_ih": "b_x", "bias_hh": "b_h", "ln_weight_ih": "γ_x",
                    "ln_weight_hh": "γ_h", "ln_weight_c": "γ_C", "ln_bias_c": "β_C"}


def _rows(spec):
    """The gate of each row block of each parameter, in torch's storage order."""
    if spec.layer_norm:
        return _LAYER_NORM_ROWS
    return _LSTM_ROWS if isinstance(spec, LSTMSpec) else _GRU_ROWS


def _block_rows(params, key, rows):
    """The rows of one block of a parameter: its rows over its blocks (H for a gate's, all of weight_hr's)."""
    return len(params[key]) // len(rows[key])


def _param_leaves(params, spec):
    """One leaf per gate block of every parameter, as (rows, ·) column-layout arrays."""
    peephole = getattr(spec, "peephole", None)
    names = {**_LEAF, "weight_ch": "W_{}C" if peephole == "full" else "w_{}C", "weight_hr": "W_h{}"}
    if spec.layer_norm:
        names = _LAYER_NORM_LEAF
    leaves = {}  # (param key, gate) -> Var
    for key, gates in _rows(spec).items():
        if key not in params:
            continue
        n = _block_rows(params, key, _rows(spec))
        for k, g in enumerate(gates):
            block = np.asarray(params[key][k * n : (k + 1) * n], dtype=np.float64).reshape(n, -1)
            leaves[key, g] = Var(names[key].format(g), block)
    return leaves


def _merged_biases(tape, leaves, spec):
    """b_g = b_gx + b_gh: the one extra equation per gate that torch's two biases need (not for the GRU's n after
    the reset, where b_nh stays inside r ∘ (W_nh h + b_nh); none with layer_norm, which adds each after its
    normalisation)."""
    gates = "ifCo" if isinstance(spec, LSTMSpec) else ("rz" if spec.reset_after else "rzn")
    if spec.layer_norm or ("bias_ih", gates[0]) not in leaves:  # layer_norm: added after it
        return {}
    return {g: tape("add", leaves["bias_ih", g], leaves["bias_hh", g], name=f"b_{g}") for g in gates}


def _gate(tape, terms, bias, act, name):
    """act(Σ terms + bias): the terms summed in the order given, as the slides do."""
    acc = None
    for op, w, v in terms:
        term = tape(op, w, v)
        acc = term if acc is None else tape("add", acc, term)
    if bias is not None:
        acc = tape("add", acc, bias)
    return tape(act, acc, name=name)


def _step(tape, spec, P, b, x, states, zone=None, drop=None):
    """Record one step of a variant: the states after it (a tuple).  zone: {state: its zoneout mask (a Var of
    0s and 1s: training) or probability (evaluation)} for the zoned-out states; drop: recurrent dropout's d
    (a Var of 0s and 1/(1 − p)s, the same every step: training), or None."""
    zone = zone or {}
    if isinstance(spec, LSTMSpec):
        return _lstm_step(tape, spec, P, b, x, *states, zone, drop)
    return (_gru_step(tape, spec, P, b, x, *states, zone, drop),)


def _recurrent_input(tape, drop, h):
    """What the recurrent weights multiply: h, or d ∘ h under recurrent dropout (Gal & Ghahramani 2016)."""
    return h if drop is None else tape("mul", drop, h, name="h̃_{t-1}")


def _zone(tape, d, prev, new, name):
    """Zoneout (Krueger et al. 2016): d ∘ prev + (1 − d) ∘ new, d a mask (training) or a probability (its
    expectation, evaluation); `new` as it is without d."""
    if d is None:
        return new
    if isinstance(d, Var):
        return tape("add", tape("mul", d, prev), tape("mul", Var(f"(1 − {d.name})", 1.0 - d.value), new), name=name)
    return tape("add", tape("scale", prev, d), tape("scale", new, 1.0 - d), name=name)


def _lstm_step(tape, spec, P, b, x, h, c, zone, drop):
    """Record one LSTM step; for the seed's cell these are its equations 1-31."""
    peephole = spec.peephole
    h_in = _recurrent_input(tape, drop, h)

    def peep(g, state):
        if peephole is None:
            return []
        return [("matmul" if peephole == "full" else "mul", P["weight_ch", g], state)]

    def rec(g):
        return [("matmul", P["weight_hh", g], h_in), ("matmul", P["weight_ih", g], x)]

    if spec.layer_norm:  # haste's LayerNormLSTM: the gates from the rows of two normalised GEMM outputs
        g_x, g_h = _normalised_gemms(tape, P, x, h_in)
        H = len(c.value)

        def ln_gate(k, act, name):
            return tape(act, tape("add", _gate_rows(tape, g_x, k, H), _gate_rows(tape, g_h, k, H)), name=name)

        f, i, g = ln_gate(1, "sigmoid", "f_t"), ln_gate(0, "sigmoid", "i_t"), ln_gate(2, spec.candidate, "C̃_t")
    else:
        f = _gate(tape, peep("f", c) + rec("f"), b.get("f"), "sigmoid", "f_t")
        i = _gate(tape, peep("i", c) + rec("i"), b.get("i"), "sigmoid", "i_t")
        g = _gate(tape, rec("C"), b.get("C"), spec.candidate, "C̃_t")
    clip, c_name = spec.cell_clip, "C'_t" if "c" in zone else "C_t"
    c1 = tape("add", tape("mul", f, c), tape("mul", i, g), name=None if clip else c_name)
    if clip is not None:  # TensorFlow's LSTMCell(cell_clip=): before the o peephole and tanh read c'
        c1 = tape("clip", c1, clip, name=c_name)
    if spec.layer_norm:  # the output's tanh reads c' normalised; the state stays c'
        o = ln_gate(3, "sigmoid", "o_t")
        c_out = _layer_norm(tape, c1, P["ln_weight_c", "C"], P["ln_bias_c", "C"], "C")
    else:
        o = _gate(tape, peep("o", c if peephole == "full" else c1) + rec("o"), b.get("o"), "sigmoid", "o_t")
        c_out = c1
    if spec.proj_size:  # torch.nn.LSTM(proj_size=): h_t = W_hr m_t (Sak et al. 2014's m_t; no zoneout of h)
        h1 = tape("matmul", P["weight_hr", "r"], tape("mul", o, tape("tanh", c_out), name="m_t"), name="h_t")
    else:
        h1 = tape("mul", o, tape("tanh", c_out), name="h'_t" if "h" in zone else "h_t")
    return _zone(tape, zone.get("h"), h, h1, "h_t"), _zone(tape, zone.get("c"), c, c1, "C_t")


def _layer_norm(tape, a, gain, bias, side):
    """γ ∘ (a − μ) / √(σ² + ε) (+ b) over each column's n values (Ba et al. 2016), σ² the mean square of a − μ."""
    dev = tape("sub", a, tape("mean", a, name=f"μ_{side}"))
    s = tape("rsqrt", tape("offset", tape("mean", tape("mul", dev, dev), name=f"σ²_{side}"), LAYER_NORM_EPS))
    out = tape("mul", gain, tape("mul", dev, s, name=f"â_{side}"))
    return out if bias is None else tape("add", out, bias, name=f"g_{side}")


def _normalised_gemms(tape, P, x, h_in):
    """g_x = LN(W_x x_t) + b_x and g_h = LN(W_h h̃_{t-1}) + b_h, each with its own gain (layer_norm)."""
    g_x = _layer_norm(tape, tape("matmul", P["weight_ih", "x"], x), P["ln_weight_ih", "x"], P.get(("bias_ih", "x")),
                      "x")
    g_h = _layer_norm(tape, tape("matmul", P["weight_hh", "h"], h_in), P["ln_weight_hh", "h"],
                      P.get(("bias_hh", "h")), "h")
    return g_x, g_h


def _gate_rows(tape, g, k, H):
    """Gate k's rows of a normalised GEMM output."""
    return tape("rows", g, (k * H, (k + 1) * H))


def _layer_norm_gru_step(tape, P, x, h, h_in):
    """haste's LayerNormGRU (reset after): r, z, n from the gate rows of g_x and g_h (`_normalised_gemms`), as
    torch.nn.GRU's cell takes them from its two GEMMs."""
    g_x, g_h = _normalised_gemms(tape, P, x, h_in)
    H = len(h.value)

    def gate(g, k):
        return _gate_rows(tape, g, k, H)

    r = tape("sigmoid", tape("add", gate(g_x, 0), gate(g_h, 0)), name="r_t")
    z = tape("sigmoid", tape("add", gate(g_x, 1), gate(g_h, 1)), name="z_t")
    n = tape("tanh", tape("add", gate(g_x, 2), tape("mul", r, gate(g_h, 2))), name="n_t")
    return z, n


def _gru_step(tape, spec, P, b, x, h, zone, drop):
    """Record one GRU step: r, z, n, then h_t = (1 − z_t) ∘ n_t + z_t ∘ h_{t-1} (h itself, not d ∘ h)."""
    h_in = _recurrent_input(tape, drop, h)
    if spec.layer_norm:
        z, n = _layer_norm_gru_step(tape, P, x, h, h_in)
        return _gru_update(tape, z, n, h, zone)

    def rec(g, state=h_in):
        return [("matmul", P["weight_hh", g], state), ("matmul", P["weight_ih", g], x)]

    r = _gate(tape, rec("r"), b.get("r"), "sigmoid", "r_t")
    z = _gate(tape, rec("z"), b.get("z"), "sigmoid", "z_t")
    if spec.reset_after:  # n = tanh(W_nx x + b_nx + r ∘ (W_nh h + b_nh))
        gh = tape("matmul", P["weight_hh", "n"], h_in)
        if b:
            gh = tape("add", gh, P["bias_hh", "n"])
        gi = tape("matmul", P["weight_ih", "n"], x)
        if b:
            gi = tape("add", gi, P["bias_ih", "n"])
        n = tape("tanh", tape("add", gi, tape("mul", r, gh)), name="n_t")
    else:  # n = tanh(W_nh (r ∘ h) + W_nx x + b_n)
        n = _gate(tape, rec("n", tape("mul", r, h_in)), b.get("n"), "tanh", "n_t")
    return _gru_update(tape, z, n, h, zone)


def _gru_update(tape, z, n, h, zone):
    """h_t = (1 − z_t) ∘ n_t + z_t ∘ h_{t-1}, zoned out."""
    one_minus_z = tape("offset", tape("scale", z, -1.0), 1.0)
    h1 = tape("add", tape("mul", one_minus_z, n), tape("mul", z, h), name="h'_t" if "h" in zone else "h_t")
    return _zone(tape, zone.get("h"), h, h1, "h_t")


_PREV = {"h": "h_{t-1}", "c": "C_{t-1}"}


def equations(cell, *, peephole=None, candidate="tanh", reset_after=True, bias=True, **variant):
    """The tape's forward and backward equations for one step, as text (any other flag of the cell's spec in
    `variant`; zoneout and recurrent dropout in their training form, with masks d^h_t, d^C_t and d^r).

    `equations("lstm", peephole="full", candidate="sigmoid")` is the seed's
    own cell: its forward list is the slides' equations 1-31 in their order,
    and its backward list is what the tape derived from them, one `deriv`
    rule per equation, in the slides' notation.  Notation: column vectors,
    "∘" component-wise, juxtaposition a matrix product, "ᵀ" a transpose.
    """
    if cell not in ("lstm", "gru"):
        raise ValueError(f"cell={cell!r} is not one of 'lstm', 'gru'")
    spec = (LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant}) if cell == "lstm"
            else GRUSpec.of({"reset_after": reset_after, **variant}))
    params = init_params(spec, 1, 1, bias=bias, dtype="float64")  # H = I = 1 (and proj_size as given)
    tape = Tape()
    P = _param_leaves(params, spec)
    b = _merged_biases(tape, P, spec)
    pre = len(tape.eqs)
    zone = {n: Var(f"d^{n.upper() if n == 'c' else n}_t", np.zeros((1, 1))) for n in spec.zoneout()}
    states = [Var(_PREV[n], np.zeros((w, 1))) for n, w in spec.state_sizes(1).items()]
    drop = Var("d^r", np.ones((1, 1))) if spec.recurrent_dropout else None
    _step(tape, spec, P, b, Var("x_t", np.zeros((1, 1))), states, zone, drop)
    fwd, bwd = tape.lines(pre)
    bias_fwd, bias_bwd = tape.lines(0, pre)
    flags = ", ".join(f"{k}={v!r}" for k, v in spec.shown().items())
    out = [f"# {cell.upper()} {flags}: forward"]
    if pre:
        out.append("# torch keeps two biases per gate (bias_ih, bias_hh), the seed one; merged first:")
        out += ["   " + s.split(". ", 1)[1] for s in bias_fwd]
    out += fwd + ["", "# backward: every d(·) starts at 0; dh_t (and dC_t) are given"] + bwd
    if pre:
        out += ["# the merged biases:"] + [s for s in bias_bwd if not s.startswith("#")]
    return "\n".join(out)


# --- the reference as a backend: whole sequences, row layout at the boundary -
#
# Packed-sequence semantics by definition: the items that share a length L
# run exactly L steps on a tape of their own; nothing is masked.


def forward(spec, x, params, states, lengths, training=True, masks=None):
    """y, the final states (a tuple) and a ctx, for validated row-layout inputs, computed on the tape in float64;
    masks: `rnncells.api.training_masks`'s (training), or None (evaluation)."""
    return _run(spec, x, params, states, lengths, training, masks)


def backward(ctx, dy, dstates):
    """dx, the initial states' gradients (a tuple) and dparams, for the forward that made ctx."""
    return _backprop(ctx, dy, dstates)


class _Group(NamedTuple):
    cols: np.ndarray  # the batch items of this length
    tape: Tape
    leaves: dict  # (param key, gate) -> Var
    xs: list  # x_t per step
    s0: tuple  # initial state Vars
    ys: list  # h_t per step
    sT: tuple  # final state Vars


class _Context(NamedTuple):
    shapes: tuple  # (T, B, I, H)
    state_shapes: tuple  # (B, width) of each state
    params: dict
    rows: dict
    groups: list


def _zones(spec, masks, t, cols):
    """Step t's zoneout for the items `cols`: {state: a mask leaf d^h_t, or the probability}."""
    return {n: Var(f"d^{n}_t", np.asarray(masks[n][t, cols], dtype=np.float64).T) if masks and n in masks else p
            for n, p in spec.zoneout().items()}


def _run(spec, x, params, states, lengths, training, masks):
    x = np.asarray(x, dtype=np.float64)
    T, B, I = x.shape
    H = spec.hidden_size(params["weight_hh"].shape)
    lengths = np.full(B, T) if lengths is None else lengths
    y = np.zeros((T, B, states[0].shape[1]))
    final = [np.array(s, dtype=np.float64) for s in states]
    groups = []
    for L in np.unique(lengths):
        cols = np.flatnonzero(lengths == L)
        tape = Tape()
        leaves = _param_leaves(params, spec)
        b = _merged_biases(tape, leaves, spec)
        xs = [Var("x_t", x[t, cols].T) for t in range(L)]
        s0 = tuple(Var(n, np.asarray(s[cols], dtype=np.float64).T) for n, s in zip(spec.states, states))
        s, ys = s0, []
        drop = None
        if masks and "rdrop" in masks:  # d = mask / (1 − p), one leaf for every step of the group
            drop = Var("d^r", np.asarray(masks["rdrop"][cols], dtype=np.float64).T * spec.rdrop_scale())
        for t in range(L):
            s = _step(tape, spec, leaves, b, xs[t], s, _zones(spec, masks, t, cols), drop)
            ys.append(s[0])
            y[t, cols] = s[0].value.T
        for out, v in zip(final, s):
            out[cols] = v.value.T
        groups.append(_Group(cols, tape, leaves, xs, s0, ys, s))
    shapes = tuple(s.shape for s in states)
    return y, tuple(final), _Context((T, B, I, H), shapes, params, _rows(spec), groups) if training else None


def _backprop(ctx, dy, dstates):
    T, B, I, H = ctx.shapes
    dx = np.zeros((T, B, I))
    ds0 = [np.zeros(shape) for shape in ctx.state_shapes]
    dparams = {k: np.zeros(np.shape(v)) for k, v in ctx.params.items()}
    for grp in ctx.groups:
        seeds = {}
        for v, g in [*zip(grp.ys, dy), *zip(grp.sT, dstates)]:
            seeds[v] = seeds.get(v, 0.0) + np.asarray(g, dtype=np.float64)[grp.cols].T
        d = grp.tape.backward(seeds)
        for t, v in enumerate(grp.xs):
            dx[t, grp.cols] = d[v].T
        for out, v in zip(ds0, grp.s0):
            out[grp.cols] = d[v].T  # on the tape, or seeded directly when L = 0
        for (key, g), v in grp.leaves.items():
            if v in d:  # a group of length 0 uses no parameter
                k, n = ctx.rows[key].index(g), _block_rows(ctx.params, key, ctx.rows)
                block = dparams[key][k * n : (k + 1) * n]
                block += d[v].reshape(block.shape)
    return dx, tuple(ds0), dparams
