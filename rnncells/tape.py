"""The seed's derivative procedure: one `deriv` rule per operator, and the tape that applies them.

The seed (lecture slides on LSTM/GRU derivatives) differentiates a cell by hand:

1. write the cell as a numbered list of unary and binary equations
       1. z1 = W_fC C_{t-1}     2. z2 = W_fh h_{t-1}     3. z3 = z1 + z2   ...
2. walk the list backward, one `deriv` rule per operator
       [dW_fC, dC_{t-1}] += deriv(dz1, W_fC, C_{t-1}, "matmul")
3. accumulate every derivative with `+=` into buffers set to zero first
   (the slides' "cheap trick": a variable used twice just gets two `+=`).

`RULES` is step 2's table, each operator's derivative right under it; `Tape`
does steps 1 and 3.  A rule may read the equation's output z (σ' = z∘(1 − z),
tanh' = 1 − z²), which the tape keeps, instead of computing it again.  The
cells written on the tape are in `rnncells.reference`.
"""

from typing import Callable, NamedTuple

import numpy as np

from ._numpy import sigmoid


def _softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _T(m):
    return np.swapaxes(m, -1, -2)


def _into_rows(dz, shape, r):
    """Zeros of `shape` with dz in rows r[0]:r[1]."""
    dx = np.zeros(shape)
    dx[r[0] : r[1]] = dz
    return dx


class Rule(NamedTuple):
    """One operator: z = fwd(x, y) and its derivative, each with its notation.

    A unary operator's `bwd` returns (dx,), a binary one's (dx, dy); a
    constant `y` (scale, offset) gets no derivative.
    """

    fwd: Callable  # z = fwd(x, y)
    text: str  # the right-hand side of z, in the slides' notation
    bwd: Callable  # (dx,) or (dx, dy) = bwd(dz, x, y, z)
    dtext: tuple  # one `+=` line per differentiable operand


# The operators the cells are written with, those layer normalisation adds, then (marked) the rest of the seed's
# table, which no cell uses: its softmax, and the division and inversion its closing slide says `deriv` is missing.
# Tier 1 checks every rule.
# fmt: off
RULES = {
    # matrix product (the slides' "*"): z = x y
    "matmul": Rule(lambda x, y: x @ y, "{x} {y}",
                   lambda dz, x, y, z: (dz @ _T(y), _T(x) @ dz),
                   ("d{x} += d{z} {y}ᵀ", "d{y} += {x}ᵀ d{z}")),
    # component-wise product (the slides' "∘")
    "mul": Rule(lambda x, y: x * y, "{x} ∘ {y}",
                lambda dz, x, y, z: (dz * y, dz * x),
                ("d{x} += d{z} ∘ {y}", "d{y} += d{z} ∘ {x}")),
    "add": Rule(lambda x, y: x + y, "{x} + {y}",
                lambda dz, x, y, z: (dz, dz),
                ("d{x} += d{z}", "d{y} += d{z}")),
    "tanh": Rule(lambda x, y: np.tanh(x), "tanh({x})",
                 lambda dz, x, y, z: (dz * (1.0 - z * z),),
                 ("d{x} += d{z} ∘ (1 − {z}²)",)),
    "sigmoid": Rule(lambda x, y: sigmoid(x), "σ({x})",
                    lambda dz, x, y, z: (dz * z * (1.0 - z),),
                    ("d{x} += d{z} ∘ {z} ∘ (1 − {z})",)),
    # the constant forms; the constant a is passed as y
    "scale": Rule(lambda x, a: a * x, "{y}·{x}",
                  lambda dz, x, a, z: (a * dz,),
                  ("d{x} += {y}·d{z}",)),
    "offset": Rule(lambda x, a: a + x, "{y} + {x}",
                   lambda dz, x, a, z: (dz,),
                   ("d{x} += d{z}",)),
    # z = x clipped to [−a, a]; the gradient is zero where x reached a bound (|x| ≥ a), and NaN passes through
    "clip": Rule(lambda x, a: np.clip(x, -a, a), "clip({x}, ±{y})",
                 lambda dz, x, a, z: (np.where(np.abs(x) >= a, 0.0, dz),),
                 ("d{x} += d{z} ∘ [|{x}| < {y}]",)),
    # --- layer normalisation (layer_norm=True): a column's mean, its deviations and 1/√ of their mean square ---
    "sub": Rule(lambda x, y: x - y, "{x} − {y}",
                lambda dz, x, y, z: (dz, -dz),
                ("d{x} += d{z}", "d{y} += −d{z}")),
    # the mean of each column (one item's n values): a row of B means, each spread back over its n values
    "mean": Rule(lambda x, y: np.mean(x, axis=0, keepdims=True), "mean({x})",
                 lambda dz, x, y, z: (np.broadcast_to(dz / len(x), np.shape(x)),),
                 ("d{x} += d{z} / n",)),
    "rsqrt": Rule(lambda x, y: 1.0 / np.sqrt(x), "1/√{x}",
                  lambda dz, x, y, z: (-0.5 * dz * z**3,),
                  ("d{x} += −½ d{z} ∘ {z}³",)),
    # rows y = (start, stop) of x: one gate's block of a normalised column; its gradient lands in those rows
    "rows": Rule(lambda x, r: x[r[0] : r[1]], "{x}[{y}]",
                 lambda dz, x, r, z: (_into_rows(dz, np.shape(x), r),),
                 ("d{x}[{y}] += d{z}",)),
    # --- the seed's table beyond what the cells use ---
    "div": Rule(lambda x, y: x / y, "{x} / {y}",
                lambda dz, x, y, z: (dz / y, -dz * z / y),
                ("d{x} += d{z} / {y}", "d{y} += −d{z} ∘ {z} / {y}")),
    # over the last axis; its Jacobian diag(z) − z zᵀ, not the sigmoid's
    "softmax": Rule(lambda x, y: _softmax(x), "softmax({x})",
                    lambda dz, x, y, z: ((dz - np.sum(dz * z, -1, keepdims=True)) * z,),
                    ("d{x} += (d{z} − Σ(d{z} ∘ {z})) ∘ {z}",)),
    "reciprocal": Rule(lambda x, y: 1.0 / x, "1 / {x}",
                       lambda dz, x, y, z: (-dz * z * z,),
                       ("d{x} += −d{z} ∘ {z}²",)),
    # matrix inverse: d(X⁻¹) = −X⁻¹ dX X⁻¹
    "inverse": Rule(lambda x, y: np.linalg.inv(x), "{x}⁻¹",
                    lambda dz, x, y, z: (-_T(z) @ dz @ _T(z),),
                    ("d{x} += −{z}ᵀ d{z} {z}ᵀ",)),
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


def deriv(dz, x, y=None, op=None, z=None):
    """The derivative of a scalar L through one equation z = op(x, y).

    Given dz = dL/dz, returns (dx,) for a unary operator or (dx, dy) for a
    binary one, each with its operand's shape (broadcast operands, such as a
    bias column added to a batch, get the summed gradient).  For "scale" and
    "offset", y is the constant a in z = a·x or z = a + x and gets no gradient.
    `z` is the equation's output, computed here when not given (the tape
    passes the one it kept).  An unknown operator raises ValueError naming it.
    """
    rule = _rule(op)
    grads = rule.bwd(dz, x, y, rule.fwd(x, y) if z is None else z)
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
            for v, g in zip((x, y), deriv(d[z], x.value, yv, op, z.value)):
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
    """A variable's name, or a constant's value (a row range as 'start:stop')."""
    if isinstance(v, tuple):
        return f"{v[0]}:{v[1]}"
    return v.name if isinstance(v, Var) else f"{v:g}"


def _text(template, z, x, y):
    return template.format(z=z.name, x=_name(x), y=_name(y) if y is not None else "")
