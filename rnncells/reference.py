"""The seed's derivative procedure, automated: the float64 reference.

The seed (lecture slides on LSTM/GRU derivatives) differentiates a cell by hand:

1. write the cell as a numbered list of unary and binary equations
       1. z1 = W_fC C_{t-1}     2. z2 = W_fh h_{t-1}     3. z3 = z1 + z2   ...
2. walk the list backward, one `deriv` rule per operator
       [dW_fC, dC_{t-1}] += deriv(dz1, W_fC, C_{t-1}, "matmul")
3. accumulate every derivative with `+=` into buffers set to zero first
   (the slides' "cheap trick": a variable used twice just gets two `+=`).

`deriv` is step 2's table, `Tape` does steps 1 and 3, and the cells below are
the LSTM and GRU variants (the README's table) written on the tape equation by
equation.  `equations()` prints what the tape recorded and derived, in the
slides' notation.

Layout: the seed's column convention.  A batch of B items is B columns, so
x_t is (I, B), W_fx is (H, I) and z = W_fx x_t is an ordinary matrix product.
Gradients have the shape of their variable (dW_fx is (H, I)); the slides'
transposed row-vector notation is a notation, not a storage layout.  The
backend functions at the bottom take and return the library's row layout
(rows are batch items) and transpose at that boundary.
"""

from typing import Callable, NamedTuple

import numpy as np

from .params import init_params
from .variants import GRUSpec, LSTMSpec


def sigmoid(a):
    """σ(a) = 1 / (1 + e^-a), without overflow for any |a| (e^-|a| <= 1)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _T(m):
    return np.swapaxes(m, -1, -2)


class Rule(NamedTuple):
    """One operator: z = fwd(x, y) and its derivative, each with its notation.

    A unary operator's `bwd` returns (dx,), a binary one's (dx, dy); a
    constant `y` (scale, offset) gets no derivative.
    """

    fwd: Callable  # z = fwd(x, y)
    text: str  # the right-hand side of z, in the slides' notation
    bwd: Callable  # (dx,) or (dx, dy) = bwd(dz, x, y)
    dtext: tuple  # one `+=` line per differentiable operand


# fmt: off
RULES = {
    # matrix product (the slides' "*"): z = x y
    "matmul": Rule(lambda x, y: x @ y, "{x} {y}",
                   lambda dz, x, y: (dz @ _T(y), _T(x) @ dz),
                   ("d{x} += d{z} {y}ᵀ", "d{y} += {x}ᵀ d{z}")),
    # component-wise product (the slides' "∘")
    "mul": Rule(lambda x, y: x * y, "{x} ∘ {y}",
                lambda dz, x, y: (dz * y, dz * x),
                ("d{x} += d{z} ∘ {y}", "d{y} += d{z} ∘ {x}")),
    "add": Rule(lambda x, y: x + y, "{x} + {y}",
                lambda dz, x, y: (dz, dz),
                ("d{x} += d{z}", "d{y} += d{z}")),
    "sub": Rule(lambda x, y: x - y, "{x} − {y}",
                lambda dz, x, y: (dz, -dz),
                ("d{x} += d{z}", "d{y} += −d{z}")),
    "div": Rule(lambda x, y: x / y, "{x} / {y}",
                lambda dz, x, y: (dz / y, -dz * x / (y * y)),
                ("d{x} += d{z} / {y}", "d{y} += −d{z} ∘ {x} / {y}²")),
    "tanh": Rule(lambda x, y: np.tanh(x), "tanh({x})",
                 lambda dz, x, y: (dz * (1.0 - np.tanh(x) ** 2),),
                 ("d{x} += d{z} ∘ (1 − tanh²({x}))",)),
    "sigmoid": Rule(lambda x, y: sigmoid(x), "σ({x})",
                    lambda dz, x, y: (dz * sigmoid(x) * (1.0 - sigmoid(x)),),
                    ("d{x} += d{z} ∘ σ({x}) ∘ (1 − σ({x}))",)),
    # over the last axis; its Jacobian diag(s) − s sᵀ, not the sigmoid's
    "softmax": Rule(lambda x, y: _softmax(x), "softmax({x})",
                    lambda dz, x, y: ((dz - np.sum(dz * _softmax(x), -1, keepdims=True)) * _softmax(x),),
                    ("d{x} += (d{z} − Σ(d{z} ∘ {z})) ∘ {z}",)),
    "reciprocal": Rule(lambda x, y: 1.0 / x, "1 / {x}",
                       lambda dz, x, y: (-dz / (x * x),),
                       ("d{x} += −d{z} / {x}²",)),
    # matrix inverse: d(X⁻¹) = −X⁻¹ dX X⁻¹
    "inverse": Rule(lambda x, y: np.linalg.inv(x), "{x}⁻¹",
                    lambda dz, x, y: (-_T(np.linalg.inv(x)) @ dz @ _T(np.linalg.inv(x)),),
                    ("d{x} += −{z}ᵀ d{z} {z}ᵀ",)),
    # the constant forms; the constant a is passed as y
    "scale": Rule(lambda x, a: a * x, "{y}·{x}",
                  lambda dz, x, a: (a * dz,),
                  ("d{x} += {y}·d{z}",)),
    "offset": Rule(lambda x, a: a + x, "{y} + {x}",
                   lambda dz, x, a: (dz,),
                   ("d{x} += d{z}",)),
}
# fmt: on


def _rule(op):
    if op not in RULES:
        raise ValueError(f"unknown operator {op!r}; the operators are {', '.join(map(repr, RULES))}")
    return RULES[op]


def _sum_to(g, shape):
    """Reduce a broadcast gradient back to its operand's shape."""
    g = np.sum(g, axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and g.shape[k] != 1)
    return np.sum(g, axis=axes, keepdims=True) if axes else g


def deriv(dz, x, y=None, op=None):
    """The derivative of a scalar L through one equation z = op(x, y).

    Given dz = dL/dz, returns (dx,) for a unary operator or (dx, dy) for a
    binary one, each with its operand's shape (broadcast operands, such as a
    bias column added to a batch, get the summed gradient).  For "scale" and
    "offset", y is the constant a in z = a·x or z = a + x and gets no gradient.
    An unknown operator raises ValueError naming it.
    """
    rule = _rule(op)
    grads = rule.bwd(dz, x, y)
    return tuple(_sum_to(g, np.shape(v)) for g, v in zip(grads, (x, y)))


class Var:
    """A variable on the tape: a printable name and its value."""

    __slots__ = ("name", "value")

    def __init__(self, name, value):
        self.name, self.value = name, value


class Tape:
    """Records equations z = op(x, y) as they run and walks them backward.

    `tape(op, x, y)` computes and records one equation and returns z, named
    z1, z2, ... unless given a name.  `backward(seeds)` initialises a zero
    buffer per variable, adds the seeds (dL/d of the outputs), then walks the
    equations in reverse, `+=`-ing each `deriv` result into its operand.
    """

    def __init__(self):
        self.eqs = []  # (z, op, x, y) in the order they ran
        self._count = 0

    def __call__(self, op, x, y=None, name=None):
        rule = _rule(op)
        if name is None:
            self._count += 1
            name = f"z{self._count}"
        z = Var(name, rule.fwd(x.value, y.value if isinstance(y, Var) else y))
        self.eqs.append((z, op, x, y))
        return z

    def backward(self, seeds):
        """dL/dv for every variable v on the tape, given {output Var: dL/doutput}."""
        d = {}
        for eq in self.eqs:
            for v in eq:
                if isinstance(v, Var):
                    d.setdefault(v, np.zeros_like(v.value))
        for v, g in seeds.items():
            d.setdefault(v, np.zeros_like(v.value))
            d[v] += g
        for z, op, x, y in reversed(self.eqs):
            yv = y.value if isinstance(y, Var) else y
            for v, g in zip((x, y), deriv(d[z], x.value, yv, op)):
                d[v] += g
        return d

    def lines(self, start=0, stop=None, number_from=1):
        """(forward, backward) equations of eqs[start:stop] in the slides' notation."""
        fwd, bwd = [], []
        eqs = self.eqs[start:stop]
        for k, (z, op, x, y) in enumerate(eqs):
            fwd.append(f"{k + number_from}. {z.name} = {_text(RULES[op].text, z, x, y)}")
        for k in reversed(range(len(eqs))):
            z, op, x, y = eqs[k]
            bwd.append(f"# {k + number_from}. {z.name} = {_text(RULES[op].text, z, x, y)}")
            bwd += ["   " + _text(t, z, x, y) for t in RULES[op].dtext]
        return fwd, bwd


def _name(v):
    """A variable's name, or a constant's value."""
    return v.name if isinstance(v, Var) else f"{v:g}"


def _text(template, z, x, y):
    return template.format(z=z.name, x=_name(x), y=_name(y) if y is not None else "")


# --- the cells, written on the tape ------------------------------------------
#
# Parameter leaves follow the slides' names: W_fx is the f-gate block of
# weight_ih, W_fh of weight_hh, W_fC of weight_ch (full peephole), w_fC the
# diagonal peephole, and the gate bias b_f = b_fx + b_fh merges torch's
# bias_ih and bias_hh (the seed has one bias per gate).  Gate rows in torch's
# storage: LSTM i, f, g(=C), o; peepholes i, f, o; GRU r, z, n.

_LSTM_ROWS = {"weight_ih": "ifCo", "weight_hh": "ifCo", "bias_ih": "ifCo", "bias_hh": "ifCo", "weight_ch": "ifo"}
_GRU_ROWS = {"weight_ih": "rzn", "weight_hh": "rzn", "bias_ih": "rzn", "bias_hh": "rzn"}
_LEAF = {"weight_ih": "W_{}x", "weight_hh": "W_{}h", "bias_ih": "b_{}x", "bias_hh": "b_{}h"}


def _param_leaves(params, rows, H, peephole=None):
    """One leaf per gate block of every parameter, as (H, ·) column-layout arrays."""
    leaves = {}  # (param key, gate) -> Var
    for key, gates in rows.items():
        if key not in params:
            continue
        for k, g in enumerate(gates):
            block = np.asarray(params[key][k * H : (k + 1) * H], dtype=np.float64).reshape(H, -1)
            name = ("W_{}C" if peephole == "full" else "w_{}C").format(g) if key == "weight_ch" else _LEAF[key].format(g)
            leaves[key, g] = Var(name, block)
    return leaves


def _merged_biases(tape, leaves, gates):
    """b_g = b_gx + b_gh: the one extra equation per gate that torch's two biases need."""
    if ("bias_ih", gates[0]) not in leaves:
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


def _lstm_step(tape, P, b, x, h, c, peephole, candidate):
    """Record one LSTM step; for the seed's cell these are its equations 1-31."""

    def peep(g, state):
        if peephole is None:
            return []
        return [("matmul" if peephole == "full" else "mul", P["weight_ch", g], state)]

    def rec(g):
        return [("matmul", P["weight_hh", g], h), ("matmul", P["weight_ih", g], x)]

    f = _gate(tape, peep("f", c) + rec("f"), b.get("f"), "sigmoid", "f_t")
    i = _gate(tape, peep("i", c) + rec("i"), b.get("i"), "sigmoid", "i_t")
    g = _gate(tape, rec("C"), b.get("C"), candidate, "C̃_t")
    c1 = tape("add", tape("mul", f, c), tape("mul", i, g), name="C_t")
    o = _gate(tape, peep("o", c if peephole == "full" else c1) + rec("o"), b.get("o"), "sigmoid", "o_t")
    h1 = tape("mul", o, tape("tanh", c1), name="h_t")
    return h1, c1


def _gru_step(tape, P, b, x, h, reset_after):
    """Record one GRU step: r, z, n, then h_t = (1 − z_t) ∘ n_t + z_t ∘ h_{t-1}."""

    def rec(g, state=h):
        return [("matmul", P["weight_hh", g], state), ("matmul", P["weight_ih", g], x)]

    r = _gate(tape, rec("r"), b.get("r"), "sigmoid", "r_t")
    z = _gate(tape, rec("z"), b.get("z"), "sigmoid", "z_t")
    if reset_after:  # n = tanh(W_nx x + b_nx + r ∘ (W_nh h + b_nh))
        gh = tape("matmul", P["weight_hh", "n"], h)
        if b:
            gh = tape("add", gh, P["bias_hh", "n"])
        gi = tape("matmul", P["weight_ih", "n"], x)
        if b:
            gi = tape("add", gi, P["bias_ih", "n"])
        n = tape("tanh", tape("add", gi, tape("mul", r, gh)), name="n_t")
    else:  # n = tanh(W_nh (r ∘ h) + W_nx x + b_n)
        n = _gate(tape, rec("n", tape("mul", r, h)), b.get("n"), "tanh", "n_t")
    one_minus_z = tape("offset", tape("scale", z, -1.0), 1.0)
    h1 = tape("add", tape("mul", one_minus_z, n), tape("mul", z, h), name="h_t")
    return h1


_PREV = {"h": "h_{t-1}", "c": "C_{t-1}"}


def equations(cell, *, peephole=None, candidate="tanh", reset_after=True, bias=True):
    """The tape's forward and backward equations for one step, as text.

    `equations("lstm", peephole="full", candidate="sigmoid")` is the seed's
    own cell: its forward list is the slides' equations 1-31 in their order,
    and its backward list is what the tape derived from them, one `deriv`
    rule per equation, in the slides' notation.  Notation: column vectors,
    "∘" component-wise, juxtaposition a matrix product, "ᵀ" a transpose.
    """
    if cell not in ("lstm", "gru"):
        raise ValueError(f"cell={cell!r} is not one of 'lstm', 'gru'")
    spec = LSTMSpec(peephole, candidate) if cell == "lstm" else GRUSpec(reset_after)
    params = init_params(spec, 1, 1, bias=bias, dtype="float64")  # H = I = 1
    tape = Tape()
    if cell == "lstm":
        P = _param_leaves(params, _LSTM_ROWS, 1, peephole)
        b = _merged_biases(tape, P, "ifCo")
    else:
        P = _param_leaves(params, _GRU_ROWS, 1)
        b = _merged_biases(tape, P, "rz" if reset_after else "rzn")
    pre = len(tape.eqs)
    x, h, c = (Var(n, np.zeros((1, 1))) for n in ("x_t", _PREV["h"], _PREV["c"]))
    if cell == "lstm":
        _lstm_step(tape, P, b, x, h, c, peephole, candidate)
    else:
        _gru_step(tape, P, b, x, h, reset_after)
    fwd, bwd = tape.lines(pre)
    bias_fwd, bias_bwd = tape.lines(0, pre)
    flags = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs().items())
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


def forward(spec, x, params, states, lengths, training=True):
    """y, the final states (a tuple) and a ctx, for validated row-layout inputs, computed on the tape in float64."""
    if isinstance(spec, LSTMSpec):
        rows, merged = _LSTM_ROWS, "ifCo"

        def step(tape, P, b, x_t, h, c):
            return _lstm_step(tape, P, b, x_t, h, c, spec.peephole, spec.candidate)

    else:
        rows, merged = _GRU_ROWS, "rz" if spec.reset_after else "rzn"

        def step(tape, P, b, x_t, h):
            return (_gru_step(tape, P, b, x_t, h, spec.reset_after),)

    return _run(x, params, states, lengths, rows, merged, getattr(spec, "peephole", None), step, training)


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
    params: dict
    rows: dict
    groups: list


def _run(x, params, states, lengths, rows, merged, peephole, step, training):
    x = np.asarray(x, dtype=np.float64)
    T, B, I = x.shape
    H = states[0].shape[1]
    lengths = np.full(B, T) if lengths is None else lengths
    y = np.zeros((T, B, H))
    final = [np.array(s, dtype=np.float64) for s in states]
    groups = []
    for L in np.unique(lengths):
        cols = np.flatnonzero(lengths == L)
        tape = Tape()
        leaves = _param_leaves(params, rows, H, peephole)
        b = _merged_biases(tape, leaves, merged)
        xs = [Var("x_t", x[t, cols].T) for t in range(L)]
        s0 = tuple(Var(n, np.asarray(s[cols], dtype=np.float64).T) for n, s in zip("hc", states))
        s, ys = s0, []
        for t in range(L):
            s = step(tape, leaves, b, xs[t], *s)
            ys.append(s[0])
            y[t, cols] = s[0].value.T
        for out, v in zip(final, s):
            out[cols] = v.value.T
        groups.append(_Group(cols, tape, leaves, xs, s0, ys, s))
    return y, tuple(final), _Context((T, B, I, H), params, rows, groups) if training else None


def _backprop(ctx, dy, dstates):
    T, B, I, H = ctx.shapes
    dx = np.zeros((T, B, I))
    ds0 = [np.zeros((B, H)) for _ in dstates]
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
                k = ctx.rows[key].index(g)
                block = dparams[key][k * H : (k + 1) * H]
                block += d[v].reshape(block.shape)
    return dx, tuple(ds0), dparams
