"""The public functions: check the arguments once, then dispatch.

The backend follows the arrays (NumPy arrays -> the NumPy backend).  Every
function also takes `backend=`: "reference" runs the float64 tape reference,
which is how the other backends are verified, and "cuda-host" runs the CUDA
kernels compiled for the CPU (g++) on NumPy arrays, which is how the kernels
and their orchestration are verified without a GPU.  A one-step cell is the
sequence path with T = 1.

Arrays are float64, float32, float16 or bfloat16 (ml_dtypes' bfloat16,
which CuPy shares), one dtype per call; float16 and bfloat16 are storage
types, computed in float32 (see `rnncells._dtypes`), on every backend but
the reference, which computes in float64 whatever it is given.

`tf32=` is the one switch for TF32: it allows float32 GEMMs to use TF32
tensor cores (inputs read with a 10-bit mantissa), in every GEMM of the
forward and of its backward, which follows the forward's choice.  It
changes nothing on the NumPy backend (a CPU has no TF32) and nothing in
float64; on "cuda-host" the GEMMs emulate TF32's input truncation, so its
effect on accuracy can be checked without a GPU.

The kernel backends ("cuda-host", "cupy") index with 32-bit ints: a call
where batch·4·hidden_size, seq_len·batch or input_size passes 2³¹ − 1 is
refused there (the NumPy backend has no such limit).

`persistent=` runs a sequence's step loops as the persistent kernels
(kernels/persistent.cu): one cooperative launch per loop, each block of
the GPU holding its slice of W_hh in shared memory for all T steps, on
"cupy" and "cuda-host" (where every block's threads run as fibers).
False (the default, until a GPU has measured the kernels) runs today's
loops; True runs the persistent kernels (every variant) or raises
ValueError saying why not (a backend without them, weights too large for
the device, a device without cooperative launch);
"auto" runs them where they can and batch <= 16, else today's loops.  The
backward follows its forward's choice.

`backend=` also takes a backend object (`rnncells._backends.Backend`): the
tests run the host kernels on NaN-poisoned buffers that way.

Arrays are made C-contiguous once, here: the kernels read raw memory and
would misread a strided view (an expanded h0, a transposed weight).
"""

from typing import NamedTuple

import numpy as np

from . import _backends, _checks, _kernels
from ._graphs import GraphCache
from .variants import GRUSpec, LSTMSpec


class Context(NamedTuple):
    """What a forward keeps for its backward; pass it back unchanged."""

    spec: object  # the variant: a rnncells.variants.LSTMSpec or GRUSpec
    step: bool  # made by a one-step *_cell_forward
    backend: object  # the backend that ran the forward (and runs the backward)
    xp: object
    dtype: object
    y_shape: tuple  # (T, B, width of h): H, or proj_size
    state_shapes: tuple  # ((B, width),) per state: (B, proj_size or H), (B, H) for an LSTM
    tf32: bool  # the forward's math mode, which its backward keeps
    inner: object  # the backend's own saved buffers


def forward(spec, x, params, states, *, lengths=None, training=True, graphs=None, tf32=False, backend=None,
            step=False, generator=None, masks=None, persistent=False):
    """The forward of any variant: `spec` a `rnncells.variants` spec, `states` {name: array or None} in the
    spec's order ("h0", "c0"; "h", "c" with step=True, where x is (B, I)).

    Returns y (T, B, width of h), the final states (a tuple) and a ctx for `backward`
    (None with training=False); the cell functions below are this call for
    one family, and the objects and the PyTorch adapter call it.  Zoneout's
    and recurrent dropout's masks are drawn from `generator` in training
    (`training_masks`); a caller that draws its own (the adapter, from torch's
    generator) passes them as `masks` (as `training_masks` returns them, or {}
    for evaluation: zoneout's expectation, no dropout) instead.  `persistent`
    as in the module docstring: False, True or "auto".
    """
    training = _checks.flag("training", training)
    xp, H, lengths = _checks.call(spec, x, params, states, lengths=lengths, sequence=not step)
    if masks is None and training:
        masks = training_masks(spec, generator, xp, (1 if step else x.shape[0], x.shape[-2], H))
    tf32 = _checks.flag("tf32", tf32)
    runner = _backends.resolve(backend, xp.__name__)
    if runner.kernels:
        _checks.index_range(x.shape, H)
    graphs = _graphs(graphs, runner)
    x = x[None] if step else x
    T, B, _ = x.shape
    plan = _persistent(persistent, runner, spec, x.dtype, B, H, tf32)
    x, params, *states = _contiguous(xp, x, params, *states.values())
    shapes = tuple((B, w) for w in spec.state_sizes(H).values())
    states = tuple(xp.zeros(shape, dtype=x.dtype) if s is None else s for s, shape in zip(states, shapes))
    y, finals, inner = runner.forward(spec, x, params, states, lengths, training, graphs, tf32, masks, plan)
    ctx = Context(spec, step, runner, xp, x.dtype, (T, B, shapes[0][1]), shapes, tf32, inner) if training else None
    return y, finals, ctx


def backward(ctx, spec_type, dy, dstates, *, step=False):
    """The backward of `forward`: dx, the initial states' gradients (a tuple) and dparams.

    `spec_type` and `step` say which public function was called, so a ctx
    from another one is refused by name; `dstates` is {name: array or None}
    in the spec's order ("dhT", "dcT"; "dh1", "dc1" with step=True), and dy
    None (or, for one step, no dy at all) means zero.
    """
    _check_context(ctx, spec_type, step)
    dt = ctx.backend.grad_dtypes(ctx.dtype)
    dy = _checks.grad("dy", dy, ctx.y_shape, dt, ctx.xp)
    dstates = tuple(_checks.grad(n, g, shape, dt, ctx.xp) for (n, g), shape in zip(dstates.items(), ctx.state_shapes))
    dx, d0, dparams = ctx.backend.backward(ctx.inner, dy, dstates, ctx.tf32)
    return (dx[0] if step else dx), d0, dparams


def training_masks(spec, generator, xp, shape):
    """The random masks of a forward in training, drawn from `generator`; None when the variant has none.

    {state: uint8 array of `shape` (T, B, H), 1 (the unit keeps its previous
    value) with the state's zoneout probability} for zoneout, and "rdrop":
    uint8 (B, H), 1 (the unit is kept) with 1 − recurrent_dropout, one mask
    for the whole sequence.  generator: a numpy.random.Generator (its masks
    copied to the device for CuPy arrays) or, for CuPy arrays, a
    cupy.random.Generator (cupy.random.default_rng()); one uniform float32
    draw per unit (and step), h's zoneout first, then c's, then the dropout
    mask, so a seeded generator gives the same masks every run.
    """
    zoned, flags = spec.zoneout(), spec.random_flags()
    if not flags:
        return None
    if generator is None:
        raise ValueError(f"{flags} in training needs generator= (a numpy.random.Generator, or a cupy.random."
                         "Generator for cupy arrays) to draw its masks; training=False needs none")
    kind = "numpy" if isinstance(generator, np.random.Generator) else type(generator).__module__.split(".")[0]
    if kind not in ("numpy", "cupy") or type(generator).__name__ != "Generator":
        raise TypeError(f"generator must be a numpy.random.Generator or a cupy.random.Generator, got "
                        f"{type(generator).__name__}")
    if kind == "cupy" and xp.__name__ != "cupy":
        raise TypeError("generator is a cupy Generator but x is a numpy array; draw masks for numpy arrays with a "
                        "numpy.random.Generator")
    masks = {n: xp.asarray(generator.random(shape, dtype="float32") < p).astype("uint8") for n, p in zoned.items()}
    if spec.recurrent_dropout:
        masks["rdrop"] = xp.asarray(generator.random(shape[1:], dtype="float32") >= spec.recurrent_dropout).astype(
            "uint8")
    return masks


def _graphs(graphs, runner):
    """graphs= checked: None, or a GraphCache on a backend whose loops launch kernels."""
    if graphs is None:
        return None
    if not isinstance(graphs, GraphCache):
        raise TypeError(f"graphs must be a rnncells.GraphCache or None, got {type(graphs).__name__}")
    if not runner.kernels:
        raise ValueError(f"graphs= needs backend 'cupy' or 'cuda-host' (the {runner.name!r} loop launches no kernels)")
    return graphs


def _persistent(persistent, runner, spec, dtype, B, H, tf32):
    """persistent= checked: the persistent kernels' plan for this call, or None for today's step loops."""
    persistent = _checks.persistent(persistent)
    if persistent is False:
        return None
    plan, why = runner.persistent_plan(spec, dtype, H, tf32)
    if persistent == "auto":
        return plan if B <= _kernels.PERSISTENT_AUTO_BATCH else None
    if plan is None:
        raise ValueError(f"persistent=True: {why}; persistent='auto' runs the step loops instead")
    return plan


def _contiguous(xp, x, params, *states):
    """x, params and the states C-contiguous (the arrays themselves when they already are)."""
    contiguous = lambda a: None if a is None else xp.ascontiguousarray(a)  # noqa: E731
    return (contiguous(x), {k: contiguous(v) for k, v in params.items()}, *map(contiguous, states))


def _check_context(ctx, spec_type, step):
    cell = spec_type.cell
    fn = f"{cell}_cell_backward" if step else f"{cell}_backward"
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be the Context returned by the forward, got {type(ctx).__name__}")
    if type(ctx.spec) is not spec_type or ctx.step != step:
        made = f"{ctx.spec.cell}_cell_forward" if ctx.step else f"{ctx.spec.cell}_forward"
        raise ValueError(f"{fn} was given the ctx of {made}")


def lstm_forward(x, params, h0=None, c0=None, lengths=None, peephole=None, candidate="tanh", *, training=True,
                 graphs=None, tf32=False, backend=None, generator=None, persistent=False, **variant):
    """Run an LSTM over a sequence.

    x (T, B, I); h0, c0 (B, H) or None for zeros; lengths (B,) ints in
    [0, T] or None (item b then runs lengths[b] steps, its later outputs are
    zero and its final state is the one after its last step).  `peephole` is
    None, "full" or "diagonal"; `candidate` "tanh" or "sigmoid" (the
    README's table of variants; `variant` takes any other flag of
    `rnncells.variants.LSTMSpec`).  Returns y (T, B, H), (hT, cT) and a ctx
    for `lstm_backward` (None with training=False, which saves nothing for a
    backward).  The ctx refers to x, h0, c0, params and y rather than copying
    them (y holds the hidden states the backward reads): writing into any of
    them before `lstm_backward` gives wrong gradients.  `graphs` (a
    `GraphCache`; backend "cupy", or "cuda-host", which records and replays
    the launches as a graph would) runs the step loops as CUDA graphs,
    captured once per shape and replayed.
    `tf32` allows TF32 tensor cores in the float32 GEMMs of this forward and
    its backward; `backend` None follows the arrays, the others are named in
    the module docstring.
    With zoneout (`zoneout_h`, `zoneout_c`: a unit keeps its previous value
    with that probability), training=True draws one mask per step from
    `generator` (a numpy.random.Generator, or cupy.random.Generator for
    CuPy arrays; required then), and training=False uses the expectation.
    With `recurrent_dropout` p, training=True draws one mask for the whole
    sequence and the recurrent GEMM reads d∘h, d = mask / (1 − p) (Gal &
    Ghahramani; Keras's recurrent_dropout); training=False reads h.
    With `proj_size` P (torch.nn.LSTM's projection), h = W_hr (o∘tanh c):
    params has weight_hr (P, H) and weight_hh is (4H, P), and h0, hT and y
    are P wide; H is then weight_hh's rows / 4.
    With layer_norm=True (haste's LayerNormLSTM), params has the gains
    ln_weight_ih and ln_weight_hh (4H,) of x Wihᵀ's and h Whhᵀ's rows, and
    ln_weight_c and ln_bias_c (H,), c's gain and shift before the output's
    tanh, h = o∘tanh(LN(c)∘γ_c + β_c).
    `persistent` (False, True or "auto") runs the step loops as persistent
    kernels, as the module docstring says.
    """
    spec = LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant})
    return forward(spec, x, params, {"h0": h0, "c0": c0}, lengths=lengths, training=training, graphs=graphs,
                   tf32=tf32, backend=backend, generator=generator, persistent=persistent)


def lstm_backward(ctx, dy, dhT=None, dcT=None):
    """Gradients of an `lstm_forward`: dx, (dh0, dc0), dparams.

    dy (T, B, H), dhT, dcT (B, H) (dy and dhT P wide with proj_size P); None means zero.  dparams has the keys and
    shapes of params.
    """
    return backward(ctx, LSTMSpec, dy, {"dhT": dhT, "dcT": dcT})


def lstm_cell_forward(x, h, c, params, peephole=None, candidate="tanh", *, training=True, tf32=False, backend=None,
                      generator=None, **variant):
    """One LSTM step: x (B, I), h, c (B, H) -> h1, c1, ctx for `lstm_cell_backward` (None with training=False).

    The variant, `training`, `tf32`, `backend` and `generator` as in
    `lstm_forward`; the ctx refers to x, h, c and params: do not write into
    them before the backward.
    """
    spec = LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant})
    _, (h1, c1), ctx = forward(spec, x, params, {"h": h, "c": c}, training=training, tf32=tf32, backend=backend,
                               step=True, generator=generator)
    return h1, c1, ctx


def lstm_cell_backward(ctx, dh1, dc1):
    """Gradients of one `lstm_cell_forward` step: dx, dh, dc, dparams (None means zero)."""
    dx, (dh, dc), dparams = backward(ctx, LSTMSpec, None, {"dh1": dh1, "dc1": dc1}, step=True)
    return dx, dh, dc, dparams


def gru_forward(x, params, h0=None, lengths=None, reset_after=True, *, training=True, graphs=None, tf32=False,
                backend=None, generator=None, persistent=False, **variant):
    """Run a GRU over a sequence.

    x (T, B, I); h0 (B, H) or None for zeros; lengths as in `lstm_forward`.
    reset_after=True is torch.nn.GRU / cuDNN, False is Cho et al. / Keras;
    `variant` takes any other flag of `rnncells.variants.GRUSpec`
    (layer_norm=True needs params' ln_weight_ih and ln_weight_hh, (3H,)).
    Returns y (T, B, H), hT (B, H) and a ctx for `gru_backward` (None with
    training=False).  As in `lstm_forward`, the ctx refers to x, h0, params
    and y: do not write into them before `gru_backward`; `graphs`, `tf32`,
    `backend`, `generator` (zoneout_h's masks) and `persistent` as there.
    """
    spec = GRUSpec.of({"reset_after": reset_after, **variant})
    y, (hT,), ctx = forward(spec, x, params, {"h0": h0}, lengths=lengths, training=training,
                            graphs=graphs, tf32=tf32, backend=backend, generator=generator, persistent=persistent)
    return y, hT, ctx


def gru_backward(ctx, dy, dhT=None):
    """Gradients of a `gru_forward`: dx, dh0, dparams (None means zero)."""
    dx, (dh0,), dparams = backward(ctx, GRUSpec, dy, {"dhT": dhT})
    return dx, dh0, dparams


def gru_cell_forward(x, h, params, reset_after=True, *, training=True, tf32=False, backend=None, generator=None,
                     **variant):
    """One GRU step: x (B, I), h (B, H) -> h1, ctx for `gru_cell_backward` (None with training=False).

    The variant as in `gru_forward`, `training`, `tf32`, `backend` and
    `generator` as in `lstm_forward`; the ctx refers to x, h and params: do
    not write into them before the backward.
    """
    spec = GRUSpec.of({"reset_after": reset_after, **variant})
    _, (h1,), ctx = forward(spec, x, params, {"h": h}, training=training, tf32=tf32, backend=backend, step=True,
                            generator=generator)
    return h1, ctx


def gru_cell_backward(ctx, dh1):
    """Gradients of one `gru_cell_forward` step: dx, dh, dparams (None means zero)."""
    dx, (dh,), dparams = backward(ctx, GRUSpec, None, {"dh1": dh1}, step=True)
    return dx, dh, dparams
