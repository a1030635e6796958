"""Verification tiers shared by `rnncells check` and the tests.

Tier 1: the reference against float64 central differences.
Tier 2: a backend against the reference, on the same random problem.
Errors are relative to the largest magnitude of the expected array:
max|got − want| / max|want|, the worst over every output and gradient.
"""

import itertools
from typing import NamedTuple

import numpy as np

from . import api, reference, tape, variants
from ._dtypes import unit_roundoff
from .params import init_params
from .variants import LAYER_NORM_EPS

VARIANTS = variants.covering()

# float32 with TF32: GEMM inputs keep 10 of 23 mantissa bits (truncated: ≤ 2⁻¹⁰ ≈ 1e-3 relative each, ≤ 2e-3 per
# product); through the recurrence and the backward the host emulation (cuda-host, tf32=True) gives at most 5.0e-3
# over the variants and the modes of `rnncells check` and of the gpu tests, so 1e-2 leaves 2× headroom while a
# wrong gate or index (errors of order 1) still fails.
# float16 and bfloat16 storage (float32 arithmetic): every stored value is rounded once (u = 2⁻¹¹, 2⁻⁸ relative;
# tests/test_half.py checks that per kernel), but this error is relative to an output's largest magnitude, and
# on these tiny problems (H of 1 or 2, doubled weights) a gradient that sums a few terms of both signs can lose
# most of its magnitude to cancellation while each term keeps its own rounding: the worst measured over every
# variant and mode of `rnncells check` and of the CPU tests is 25u (float16 21u, bfloat16 25u).  50u leaves 2×.
BOUNDS = {"fd": 1e-7, "float64": 1e-10, "float32": 1e-5, "float32-tf32": 1e-2,
          "float16": 50 * unit_roundoff("float16"), "bfloat16": 50 * unit_roundoff("bfloat16")}


def rel_err(got, want):
    """max|got − want| / max|want| (0 for two empty or two all-zero arrays)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {want.shape}")
    diff = np.max(np.abs(got - want), initial=0.0)
    scale = np.max(np.abs(want), initial=0.0)
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


def worst_of(errors):
    """The largest of some errors, NaN if any is NaN (Python's max keeps whichever of a NaN and a number it meets
    first, so a NaN error could pass a bound); 0 for none."""
    return float(np.max(np.asarray(list(errors), dtype=np.float64), initial=0.0))


class Problem(NamedTuple):
    """A random call: inputs, the incoming gradients and the variant."""

    spec: object  # a rnncells.variants spec
    step: bool  # one step (*_cell_*) rather than a sequence
    x: np.ndarray
    states: dict  # "h0"/"c0" (sequence) or "h"/"c" (step)
    params: dict
    lengths: object
    douts: dict  # "dy", "dhT", "dcT" (sequence) or "dh1", "dc1" (step)


def problem(spec, *, T=4, B=3, I=3, H=2, lengths=None, step=False, dtype="float64", seed=0):
    """A random problem; the arrays are drawn in float64 and then cast, so dtypes share values."""
    rng = np.random.default_rng(seed)
    params = init_params(spec, I, H, dtype="float64", seed=seed)
    params = {k: (v * 2.0).astype(dtype) for k, v in params.items()}  # larger weights: richer nonlinearity
    # LayerNorm's gains and shifts within 0.5 of where they start (1 and 0), a different one per unit
    ln = np.random.default_rng([seed, 1])
    params.update({k: (spec.initial_value(k) + ln.uniform(-0.5, 0.5, v.shape)).astype(dtype)
                   for k, v in params.items() if spec.initial_value(k) is not None})
    widths = spec.state_sizes(H)  # {state: H}, h proj_size wide when projected
    if step:
        x = rng.standard_normal((B, I))
        states = {n: rng.standard_normal((B, w)).astype(dtype) for n, w in widths.items()}
        douts = {f"d{n}1": rng.standard_normal((B, w)).astype(dtype) for n, w in widths.items()}
    else:
        x = rng.standard_normal((T, B, I))
        states = {f"{n}0": rng.standard_normal((B, w)).astype(dtype) for n, w in widths.items()}
        douts = {"dy": rng.standard_normal((T, B, widths["h"])).astype(dtype)}
        douts.update({f"d{n}T": rng.standard_normal((B, w)).astype(dtype) for n, w in widths.items()})
    return Problem(spec, step, x.astype(dtype), states, params, lengths, douts)


_PUBLIC = {
    variants.LSTMSpec: (api.lstm_forward, api.lstm_backward, api.lstm_cell_forward, api.lstm_cell_backward),
    variants.GRUSpec: (api.gru_forward, api.gru_backward, api.gru_cell_forward, api.gru_cell_backward),
}


def public_functions(spec):
    """The public functions of a spec's family: forward, backward, one-step forward, one-step backward."""
    return _PUBLIC[type(spec)]


def _tuple(s):
    return s if isinstance(s, tuple) else (s,)


# Zoneout's and recurrent dropout's masks: every run of a problem draws the same ones, whatever its backend; a
# seed whose masks on the problems of `problem()` both drop and keep units (tests check it, and that they clip).
MASK_SEED = 3


def run(p, backend, graphs=None, tf32=False, persistent=False):
    """Forward and backward of a problem through the public functions: {name: array} of every output and
    gradient (graphs and persistent: sequences only).  `backend` is a name or a backend object."""
    fwd, bwd, cell_fwd, cell_bwd = public_functions(p.spec)
    generator = np.random.default_rng(MASK_SEED)
    if p.step:
        *outs, ctx = cell_fwd(p.x, *p.states.values(), p.params, **p.spec.kwargs(), tf32=tf32, backend=backend,
                              generator=generator)
        *grads, dparams = cell_bwd(ctx, *p.douts.values())
        names = [n + "1" for n in p.states] + ["dx"] + ["d" + n for n in p.states]
    else:
        y, state, ctx = fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **p.spec.kwargs(),
                            backend=backend, graphs=graphs, tf32=tf32, generator=generator, persistent=persistent)
        dx, dstate, dparams = bwd(ctx, *p.douts.values())
        outs, grads = [y, *_tuple(state)], [dx, *_tuple(dstate)]
        names = ["y"] + [n[0] + "T" for n in p.states] + ["dx"] + ["d" + n for n in p.states]
    got = dict(zip(names, [*outs, *grads]))
    got.update({f"d{k}": v for k, v in dparams.items()})
    return got


def _loss(p, **inputs):
    """L = Σ dout ∘ out over every output, on the reference."""
    q = p._replace(**inputs)
    out = run(q, "reference")
    outs = [out["y"], *(out[n[0] + "T"] for n in p.states)] if not p.step else [out[n + "1"] for n in p.states]
    return sum(float(np.sum(d * o)) for d, o in zip(p.douts.values(), outs))


# Central differences carry an absolute error of about |L|·2⁻⁵²/eps from the loss's own rounding, which a
# gradient array far smaller than the others cannot rise above (a c0 that the clip and zoneout cut off from the
# loss: 2e-5 against 2.6, whose differences came out 9e-7 apart relatively at eps 1e-6, 4e-4 at eps 1e-7).  So
# each array is compared on at least this fraction of the largest gradient's scale.
FD_FLOOR = 1e-3


def fd_error(p, eps=1e-6):
    """Tier 1: worst relative error of the reference's gradients against central differences, each array's on
    the scale of its largest value or FD_FLOOR times the largest gradient's, whichever is larger."""
    got = run(p, "reference")
    floor = FD_FLOOR * max(np.max(np.abs(v), initial=0.0) for k, v in got.items() if k.startswith("d"))
    worst = 0.0
    wrt = {"x": ("dx", p.x)}
    wrt.update({n: ("d" + n, a) for n, a in p.states.items()})
    wrt.update({k: ("d" + k, a) for k, a in p.params.items()})
    for name, (gname, a) in wrt.items():
        fd = np.zeros(a.shape)
        for idx in itertools.product(*map(range, a.shape)):
            for sign in (1, -1):
                b = a.copy()
                b[idx] += sign * eps
                if name == "x":
                    fd[idx] += sign * _loss(p, x=b)
                elif name in p.states:
                    fd[idx] += sign * _loss(p, states={**p.states, name: b})
                else:
                    fd[idx] += sign * _loss(p, params={**p.params, name: b})
        fd /= 2 * eps
        if floor == 0:  # every gradient is 0: the differences must be too
            worst = worst_of([worst, rel_err(got[gname], fd)])
        else:
            diff = np.max(np.abs(got[gname] - fd), initial=0.0)
            worst = worst_of([worst, float(diff / max(np.max(np.abs(fd), initial=0.0), floor))])
    return worst


def on_device(p):
    """The problem's arrays copied to the current CUDA device (lengths stay on the host)."""
    import cupy

    def put(d):
        return {k: cupy.asarray(v) for k, v in d.items()}

    return p._replace(x=cupy.asarray(p.x), states=put(p.states), params=put(p.params), douts=put(p.douts))


def backend_error(p, backend="numpy", graphs=None, tf32=False, persistent=False):
    """Tiers 2 and 3: worst relative error of a backend against the reference, and the dtypes it returned.

    With cell_clip, the gradients count only when the problem keeps clear of
    the clip's kink at the call's precision, and with layer_norm below
    float64 only when its rows are well-posed (`comparable_gradients`); the
    outputs count always.
    """
    want = run(p, "reference")
    if getattr(backend, "arrays", backend) == "cupy":
        got = {k: v.get() for k, v in run(on_device(p), backend, graphs, tf32, persistent).items()}
    else:
        got = run(p, backend, graphs, tf32, persistent)
    if set(want) != set(got):
        raise AssertionError(f"backend {backend} returned {sorted(got)}, the reference {sorted(want)}")
    dtypes = {np.asarray(v).dtype for v in got.values()}
    gradients = comparable_gradients(p, np.asarray(p.x).dtype, tf32)  # a reference forward for clipped variants
    keys = [k for k in want if gradients or not k.startswith("d")]
    return worst_of(rel_err(got[k], want[k]) for k in keys), dtypes


# A gradient of a clipped variant is compared with the reference's only where every c' lies further than this
# many unit roundoffs of the call's precision from the clip: nearer, a rounding may decide whether it clips.
KINK_MARGIN_U = 8.0


def comparable_gradients(p, dtype, tf32=False):
    """Whether a run of p in `dtype` (float32 GEMMs in TF32 when tf32) keeps every c' clear of the clip's kink
    (`clip_margin` above KINK_MARGIN_U unit roundoffs; always, without cell_clip), and, with layer_norm below
    float64, whether its normalised rows are well-posed (`layer_norm_well_posed`)."""
    u = 2.0**-11 if tf32 and np.dtype(dtype) == np.float32 else unit_roundoff(dtype)
    if p.spec.layer_norm and np.dtype(dtype) != np.float64 and not layer_norm_well_posed(p):
        return False
    return clip_margin(p) > KINK_MARGIN_U * u


# A LayerNorm LSTM's gradients are compared below float64 only where every normalised row of c' has
# `cell_norm_condition` at most this: about the factor by which the normalisation amplifies c''s rounding.
# Measured in float32 on the verification problems (both LayerNorm LSTMs of `covering`, 12 seeds, hidden_size 2
# and 64): at most 29 unit roundoffs up to 4, up to 600 and more beyond (rows of 2 values that nearly agree, and
# rows clipped to one value, whose factor is then clip/√ε).
CELL_NORM_CONDITION = 4.0


def expansive(spec):
    """Whether a variant's recurrence amplifies perturbations over the steps, roundings too: the LayerNorm LSTM,
    whose LN(c') divides the differences between c''s units by their row's σ.  At the default initialisation, in
    float64, a relative change of 1e-9 in x moves y 1600 times as much after 100 steps (the plain LSTM's and the
    LayerNorm GRU's stay within 2x); on the verification problems' doubled weights, float32's rounding of x alone
    moves hT by 4e-6 after 20 steps (the plain cell's: 6e-8).  Errors of such a variant over many steps measure
    the model's conditioning, not an implementation: the tests compare it over a few steps."""
    return spec.cell == "lstm" and spec.layer_norm


def layer_norm_well_posed(p):
    """Whether a problem's normalised rows give gradients a rounding cannot swamp: not with input_size 1, where
    LN(x Wihᵀ) = LN(Wihᵀ) sign(x) does not depend on |x| (dx is ε-small, all of it rounding), nor with
    hidden_size 1, where a row of 3 values may have σ far below its values, which 1/σ then amplifies; for the
    LSTM, not where a row of c' has `cell_norm_condition` above CELL_NORM_CONDITION.  The gradients of such
    problems are compared in float64 (and against finite differences) only."""
    if p.x.shape[-1] == 1 or p.spec.hidden_size(p.params["weight_hh"].shape) == 1:
        return False
    return p.spec.cell != "lstm" or cell_norm_condition(p) <= CELL_NORM_CONDITION


def cell_norm_condition(p):
    """max over the reference's normalised rows of c' (a LayerNorm LSTM's) of their root mean square over
    √(σ² + ε): √(1 + μ²/σ²) but for ε, how far the rows sit from 0 for their spread."""
    rows = [x.value for x in _reference_operands(p, "mean", "μ_C")]  # each [H, items]
    return max((float(np.max(np.sqrt((c * c).mean(0)) / np.sqrt(c.var(0) + LAYER_NORM_EPS))) for c in rows),
               default=0.0)


def clip_margin(p):
    """How far from the clip the reference's c' come, before clipping: min over steps and items of
    | |c'| − cell_clip | / cell_clip (inf without cell_clip).

    The clip's gradient jumps at the bound, so a computation whose relative
    error in c' exceeds this margin may clip a c' the reference did not (or
    the other way), and its gradient then differs there by all of dc: the
    kink's doing, not an error.  Comparisons of gradients at a precision need
    a margin well above that precision's error in c'.
    """
    clip = getattr(p.spec, "cell_clip", None)
    c = unclipped_cells(p)
    return float(np.min(np.abs(np.abs(c) - clip))) / clip if c.size else float("inf")


def unclipped_cells(p):
    """Every c' of the reference's forward of p before its clip, flattened (empty without cell_clip)."""
    if getattr(p.spec, "cell_clip", None) is None:
        return np.zeros(0)
    return np.concatenate([np.ravel(x.value) for x in _reference_operands(p, "clip")] + [np.zeros(0)])


def _reference_operands(p, op, name=None):
    """The first operand (a Var) of every equation of operator `op` (whose result is named `name`, if given) on
    the reference's tapes of p's forward, with the masks `run` draws."""
    x = p.x[None] if p.step else p.x
    H = p.spec.hidden_size(p.params["weight_hh"].shape)
    masks = api.training_masks(p.spec, np.random.default_rng(MASK_SEED), np, (*x.shape[:2], H))  # as `run` draws
    _, _, ctx = reference.forward(p.spec, x, p.params, tuple(p.states.values()), p.lengths, masks=masks)
    return [a for g in ctx.groups for z, o, a, _ in g.tape.eqs if o == op and (name is None or z.name == name)]


def deriv_error(op, seed=0, eps=1e-6):
    """Tier 1 for one `deriv` rule: its gradients against central differences, broadcast operands included."""
    rng = np.random.default_rng(seed)
    x, y = operands(op, rng)
    z = tape.RULES[op].fwd(x, y)
    dz = rng.standard_normal(np.shape(z))
    grads = tape.deriv(dz, x, y, op)
    worst = 0.0
    for k, (g, a) in enumerate(zip(grads, (x, y))):
        fd = np.zeros(np.shape(a))
        for idx in itertools.product(*map(range, np.shape(a))):
            for sign in (1, -1):
                b = a.copy()
                b[idx] += sign * eps
                args = (b, y) if k == 0 else (x, b)
                fd[idx] += sign * np.sum(dz * tape.RULES[op].fwd(*args))
        if g.shape != np.shape(a):
            raise AssertionError(f"deriv({op!r}) gave a gradient of shape {g.shape} for an operand of {np.shape(a)}")
        worst = worst_of([worst, rel_err(g, fd / (2 * eps))])
    return worst


def operands(op, rng):
    """Random operands of random shapes for one operator.

    Binary component-wise operators get, by turns, a same-shape y, a column
    y (m, 1) broadcast across the batch, and a row y (n,) broadcast down it.
    """
    m, n, k = rng.integers(1, 6, size=3)
    r = rng.standard_normal
    y_shape = [(m, n), (m, 1), (n,)][rng.integers(3)]
    if op == "matmul":
        return r((m, k)), r((k, n))
    if op in ("mul", "add", "sub"):
        return r((m, n)), r(y_shape)
    if op == "div":
        return r((m, n)), rng.choice([-1, 1], size=y_shape) * (0.5 + rng.random(y_shape))
    if op == "reciprocal":
        return rng.choice([-1, 1], size=(m, n)) * (0.5 + rng.random((m, n))), None
    if op == "inverse":
        return r((m, m)) + 2 * m * np.eye(m), None
    if op in ("scale", "offset"):
        return r((m, n)), float(r())
    if op == "rsqrt":
        return 0.5 + rng.random((m, n)), None
    if op == "rows":  # a block of rows, possibly all of them
        start = int(rng.integers(m))
        return r((m, n)), (start, int(rng.integers(start + 1, m + 1)))
    if op == "clip":  # both sides of the bounds, none within 0.05 of one (a difference would straddle the kink)
        x = rng.choice([-1, 1], size=(m, n)) * rng.choice([0.3, 1.7], size=(m, n)) * (1 + 0.5 * rng.random((m, n)))
        return x, 1.0
    return r((m, n)), None
