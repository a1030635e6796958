"""The public functions: check the arguments once, then dispatch.

The backend follows the arrays (NumPy arrays -> the NumPy backend).  Every
function also takes `backend=`: "reference" runs the float64 tape reference,
which is how the other backends are verified, and "cuda-host" runs the CUDA
kernels compiled for the CPU (g++) on NumPy arrays, which is how the kernels
and their orchestration are verified without a GPU.  A one-step cell is the
sequence path with T = 1.

`tf32=` is the one switch for TF32: it allows float32 GEMMs to use TF32
tensor cores (inputs read with a 10-bit mantissa), in every GEMM of the
forward and of its backward, which follows the forward's choice.  It
changes nothing on the NumPy backend (a CPU has no TF32) and nothing in
float64; on "cuda-host" the GEMMs emulate TF32's input truncation, so its
effect on accuracy can be checked without a GPU.

The kernel backends ("cuda-host", "cupy") index with 32-bit ints: a call
where batch·4·hidden_size, seq_len·batch or input_size passes 2³¹ − 1 is
refused there (the NumPy backend has no such limit).

Arrays are made C-contiguous once, here: the kernels read raw memory and
would misread a strided view (an expanded h0, a transposed weight).
"""

import functools
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from . import _checks, _numpy, _sequence, reference
from ._graphs import GraphCache

BACKENDS = ("reference", "numpy", "cuda-host", "cupy")
KERNEL_BACKENDS = ("cuda-host", "cupy")  # the ones whose loops launch the CUDA kernels (graphs=, 32-bit indices)
_FUNCS = ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward")


def _sequence_backend(ops, xp):
    """The orchestration of `_sequence` bound to an array module and its per-step ops."""
    return SimpleNamespace(**{f: functools.partial(getattr(_sequence, f), ops, xp) for f in _FUNCS})


@functools.lru_cache(maxsize=None)
def _impl(name, tf32=False):
    if name == "reference":
        return reference
    if name == "numpy":
        return _sequence_backend(_numpy, np)
    if name == "cuda-host":
        from . import cuda

        return _sequence_backend(cuda.host_ops(tf32), np)
    from . import _cupy

    return _sequence_backend(_cupy.ops(tf32), _cupy.cupy)


def _graphs(graphs, backend):
    """graphs= checked: None, or a GraphCache on a backend whose loops launch kernels."""
    if graphs is None:
        return None
    if not isinstance(graphs, GraphCache):
        raise TypeError(f"graphs must be a rnncells.GraphCache or None, got {type(graphs).__name__}")
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"graphs= needs backend 'cupy' or 'cuda-host' (the {backend!r} loop launches no kernels)")
    return graphs


def _graph_kw(graphs):
    return {} if graphs is None else {"graphs": graphs}  # only the kernel backends take graphs


def backend_name(backend, xp):
    """The backend that runs a call on arrays of module xp: `backend` checked against them, or, when None, the
    arrays' own ("numpy" or "cupy")."""
    name = xp.__name__ if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not one of {', '.join(map(repr, BACKENDS))}")
    if (name == "cupy") != (xp.__name__ == "cupy"):
        raise TypeError(f"backend={name!r} cannot run on {xp.__name__} arrays")
    return name


def _backend(name, xp, tf32, x, H):
    """(name, implementation) of the backend of a call on x with hidden size H, checked against the call."""
    name = backend_name(name, xp)
    if name in KERNEL_BACKENDS:
        _checks.index_range(x.shape, H)
    return name, _impl(name, _checks.flag("tf32", tf32))


def _contiguous(xp, x, params, *states):
    """x, params and the states C-contiguous (the arrays themselves when they already are)."""
    contiguous = lambda a: None if a is None else xp.ascontiguousarray(a)  # noqa: E731
    return (contiguous(x), {k: contiguous(v) for k, v in params.items()}, *map(contiguous, states))


class Context(NamedTuple):
    """What a forward keeps for its backward; pass it back unchanged."""

    cell: str  # "lstm" or "gru"
    step: bool  # made by a one-step *_cell_forward
    backend: str
    xp: object
    dtype: object
    y_shape: tuple  # (T, B, H)
    tf32: bool  # the forward's math mode, which its backward keeps
    inner: object  # the backend's own saved buffers


def _zeros(xp, a, shape, dtype):
    return xp.zeros(shape, dtype=dtype) if a is None else a


def _context(ctx, cell, step):
    fn = f"{cell}_cell_backward" if step else f"{cell}_backward"
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be the Context returned by the forward, got {type(ctx).__name__}")
    if ctx.cell != cell or ctx.step != step:
        made = f"{ctx.cell}_cell_forward" if ctx.step else f"{ctx.cell}_forward"
        raise ValueError(f"{fn} was given the ctx of {made}")
    return _impl(ctx.backend, ctx.tf32)


def _grad_dtypes(ctx):
    """The dtypes an incoming gradient may have: the forward's; the reference casts any float to float64."""
    return _checks.FLOATS if ctx.backend == "reference" else (ctx.dtype,)


def lstm_forward(x, params, h0=None, c0=None, lengths=None, peephole=None, candidate="tanh", *, training=True,
                 graphs=None, tf32=False, backend=None):  # fmt: skip
    """Run an LSTM over a sequence.

    x (T, B, I); h0, c0 (B, H) or None for zeros; lengths (B,) ints in
    [0, T] or None (item b then runs lengths[b] steps, its later outputs are
    zero and its final state is the one after its last step).  `peephole` is
    None, "full" or "diagonal"; `candidate` "tanh" or "sigmoid" (the
    README's table of variants).  Returns y (T, B, H), (hT, cT) and a ctx
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
    """
    _checks.lstm_variant(peephole, candidate)
    training = _checks.flag("training", training)
    xp, H, lengths = _checks.call("lstm", x, params, {"h0": h0, "c0": c0}, lengths=lengths, peephole=peephole)
    T, B, _ = x.shape
    name, impl = _backend(backend, xp, tf32, x, H)
    graphs = _graphs(graphs, name)
    x, params, h0, c0 = _contiguous(xp, x, params, h0, c0)
    h0, c0 = _zeros(xp, h0, (B, H), x.dtype), _zeros(xp, c0, (B, H), x.dtype)
    y, hT, cT, inner = impl.lstm_forward(x, params, h0, c0, lengths, peephole, candidate, training,
                                         **_graph_kw(graphs))  # fmt: skip
    return y, (hT, cT), Context("lstm", False, name, xp, x.dtype, (T, B, H), tf32, inner) if training else None


def lstm_backward(ctx, dy, dhT=None, dcT=None):
    """Gradients of an `lstm_forward`: dx, (dh0, dc0), dparams.

    dy (T, B, H), dhT, dcT (B, H); None means zero.  dparams has the keys and
    shapes of params.
    """
    impl = _context(ctx, "lstm", step=False)
    T, B, H = ctx.y_shape
    dt = _grad_dtypes(ctx)
    dy = _checks.grad("dy", dy, (T, B, H), dt, ctx.xp)
    dhT, dcT = (_checks.grad(n, g, (B, H), dt, ctx.xp) for n, g in (("dhT", dhT), ("dcT", dcT)))
    dx, dh0, dc0, dp = impl.lstm_backward(ctx.inner, dy, dhT, dcT)
    return dx, (dh0, dc0), dp


def lstm_cell_forward(x, h, c, params, peephole=None, candidate="tanh", *, tf32=False, backend=None):
    """One LSTM step: x (B, I), h, c (B, H) -> h1, c1, ctx for `lstm_cell_backward`.

    `tf32` as in `lstm_forward`; the ctx refers to x, h, c and params: do not
    write into them before the backward.
    """
    _checks.lstm_variant(peephole, candidate)
    xp, H, _ = _checks.call("lstm", x, params, {"h": h, "c": c}, peephole=peephole, sequence=False)
    B = x.shape[0]
    name, impl = _backend(backend, xp, tf32, x, H)
    x, params, h, c = _contiguous(xp, x, params, h, c)
    h, c = _zeros(xp, h, (B, H), x.dtype), _zeros(xp, c, (B, H), x.dtype)
    _, h1, c1, inner = impl.lstm_forward(x[None], params, h, c, None, peephole, candidate)
    return h1, c1, Context("lstm", True, name, xp, x.dtype, (1, B, H), tf32, inner)


def lstm_cell_backward(ctx, dh1, dc1):
    """Gradients of one `lstm_cell_forward` step: dx, dh, dc, dparams (None means zero)."""
    impl = _context(ctx, "lstm", step=True)
    _, B, H = ctx.y_shape
    dt = _grad_dtypes(ctx)
    dh1, dc1 = (_checks.grad(n, g, (B, H), dt, ctx.xp) for n, g in (("dh1", dh1), ("dc1", dc1)))
    dx, dh, dc, dp = impl.lstm_backward(ctx.inner, ctx.xp.zeros(ctx.y_shape, dt[0]), dh1, dc1)
    return dx[0], dh, dc, dp


def gru_forward(x, params, h0=None, lengths=None, reset_after=True, *, training=True, graphs=None, tf32=False,
                backend=None):  # fmt: skip
    """Run a GRU over a sequence.

    x (T, B, I); h0 (B, H) or None for zeros; lengths as in `lstm_forward`.
    reset_after=True is torch.nn.GRU / cuDNN, False is Cho et al. / Keras.
    Returns y (T, B, H), hT (B, H) and a ctx for `gru_backward` (None with
    training=False).  As in `lstm_forward`, the ctx refers to x, h0, params
    and y: do not write into them before `gru_backward`; `graphs`, `tf32` and
    `backend` as there.
    """
    _checks.gru_variant(reset_after)
    training = _checks.flag("training", training)
    xp, H, lengths = _checks.call("gru", x, params, {"h0": h0}, lengths=lengths)
    T, B, _ = x.shape
    name, impl = _backend(backend, xp, tf32, x, H)
    graphs = _graphs(graphs, name)
    x, params, h0 = _contiguous(xp, x, params, h0)
    h0 = _zeros(xp, h0, (B, H), x.dtype)
    y, hT, inner = impl.gru_forward(x, params, h0, lengths, reset_after, training,
                                    **_graph_kw(graphs))  # fmt: skip
    return y, hT, Context("gru", False, name, xp, x.dtype, (T, B, H), tf32, inner) if training else None


def gru_backward(ctx, dy, dhT=None):
    """Gradients of a `gru_forward`: dx, dh0, dparams (None means zero)."""
    impl = _context(ctx, "gru", step=False)
    T, B, H = ctx.y_shape
    dt = _grad_dtypes(ctx)
    dy = _checks.grad("dy", dy, (T, B, H), dt, ctx.xp)
    dhT = _checks.grad("dhT", dhT, (B, H), dt, ctx.xp)
    return impl.gru_backward(ctx.inner, dy, dhT)


def gru_cell_forward(x, h, params, reset_after=True, *, tf32=False, backend=None):
    """One GRU step: x (B, I), h (B, H) -> h1, ctx for `gru_cell_backward`.

    `tf32` as in `lstm_forward`; the ctx refers to x, h and params: do not
    write into them before the backward.
    """
    _checks.gru_variant(reset_after)
    xp, H, _ = _checks.call("gru", x, params, {"h": h}, sequence=False)
    B = x.shape[0]
    name, impl = _backend(backend, xp, tf32, x, H)
    x, params, h = _contiguous(xp, x, params, h)
    h = _zeros(xp, h, (B, H), x.dtype)
    _, h1, inner = impl.gru_forward(x[None], params, h, None, reset_after)
    return h1, Context("gru", True, name, xp, x.dtype, (1, B, H), tf32, inner)


def gru_cell_backward(ctx, dh1):
    """Gradients of one `gru_cell_forward` step: dx, dh, dparams (None means zero)."""
    impl = _context(ctx, "gru", step=True)
    _, B, H = ctx.y_shape
    dt = _grad_dtypes(ctx)
    dh1 = _checks.grad("dh1", dh1, (B, H), dt, ctx.xp)
    dx, dh, dp = impl.gru_backward(ctx.inner, ctx.xp.zeros(ctx.y_shape, dt[0]), dh1)
    return dx[0], dh, dp
