"""Argument checks at the API boundary.

Every public entry point calls these once; the backends behind them assume
valid input.  Each message names the argument, the expected and the actual.
"""

import numpy as np

from ._dtypes import FLOATS

EXPECTED = "float32, float64, float16 or bfloat16"


def flag(name, v):
    """A bool argument (NumPy's bool too); anything else is refused by name."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}={v!r} must be True or False")
    return bool(v)


def persistent(v):
    """persistent= as the public functions and objects take it: False, True or "auto"; anything else refused."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str) and v == "auto":
        return v
    raise ValueError(f"persistent must be False, True or 'auto', got {v!r}")


def hx(spec, hx, names, is_array, arrays):
    """A module's hx as a list of its states, each an array or None: the pair (h, c) of an LSTM, a GRU's h.

    `names` are the states' names in messages, `is_array` tells an array of
    the caller's kind and `arrays` names that kind ("a tensor").
    """
    if len(spec.states) == 2:
        if hx is None:
            return [None, None]
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise TypeError(f"hx must be the pair ({names[0]}, {names[1]}) or None, got {got}")
        states = list(hx)
    elif isinstance(hx, (tuple, list)):
        raise TypeError(f"{names[0]} must be {arrays} or None, got a {type(hx).__name__}: a GRU has one state, "
                        f"{names[0]} ((h, c) pairs are an LSTM's)")
    else:
        states = [hx]
    for name, s in zip(names, states):
        if s is not None and not is_array(s):
            raise TypeError(f"{name} must be {arrays} or None, got {type(s).__name__}")
    return states


def float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype={dtype!r} is not a dtype; expected {EXPECTED}") from None
    if dt not in FLOATS:
        raise TypeError(f"dtype={dt.name} is not supported; expected {EXPECTED}")
    return dt


def sizes(**named):
    for name, n in named.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}={n!r} must be a positive integer")


def module_name(a):
    """'numpy' or 'cupy' for an array, None for anything else."""
    top = type(a).__module__.split(".")[0]
    return top if top in ("numpy", "cupy") and hasattr(a, "shape") and hasattr(a, "dtype") else None


def array_module(named):
    """The one array module (numpy or cupy) of all the named arrays."""
    first = None
    for name, a in named.items():
        mod = module_name(a)
        if mod is None:
            raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}")
        if first is None:
            first = (name, mod)
        elif mod != first[1]:
            raise TypeError(
                f"{name} is a {mod} array but {first[0]} is a {first[1]} array; "
                "all arrays of one call must be on the same device"
            )
    if first[1] == "cupy":
        import cupy

        return cupy
    return np


def _shape_error(name, actual, expected, meaning):
    return ValueError(f"{name} has shape {tuple(actual)}; expected {tuple(expected)} = {meaning}")


def call(spec, x, params, states, *, lengths=None, sequence=True):
    """Check one forward call of a variant; returns (xp, H, lengths as a host int array or None).

    `states` maps each state's name ("h0", "c0", or "h", "c" for one step) to
    an array or None.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    given = {k: v for k, v in states.items() if v is not None}
    named = {"x": x, **{f"params[{k!r}]": v for k, v in params.items()}, **given}
    xp = array_module(named)

    dtype = x.dtype
    if dtype not in FLOATS:
        raise TypeError(f"x has dtype {dtype}; expected {EXPECTED}")
    for name, a in named.items():
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but x has {dtype}; all arrays of one call share one dtype")

    layout = ("seq_len", "batch", "input_size") if sequence else ("batch", "input_size")
    if x.ndim != len(layout):
        raise ValueError(f"x has shape {tuple(x.shape)}; expected ({', '.join(layout)})")
    B, I = x.shape[-2:]

    if "weight_hh" not in params:
        raise ValueError("params is missing 'weight_hh'")
    if params["weight_hh"].ndim != 2:
        raise ValueError(f"params['weight_hh'] has shape {tuple(params['weight_hh'].shape)}; expected a 2-D array")
    H = spec.hidden_size(params["weight_hh"].shape)
    bias = "bias_ih" in params or "bias_hh" in params
    want = spec.param_shapes(I, H, bias=bias)
    for k in want:
        if k not in params:
            raise ValueError(f"params is missing {k!r}, needed for {spec.needed_for(k)}")
    for k in params:
        if k not in want:
            raise ValueError(f"params has unexpected key {k!r} (expected keys: {', '.join(want)})")
    w_ih = params["weight_ih"]
    if w_ih.ndim == 2 and w_ih.shape[0] == spec.gates * H and w_ih.shape[1] != I:  # weights agree: x is the odd one
        raise ValueError(f"x has shape {tuple(x.shape)}, with {I} features; params['weight_ih'] has shape "
                         f"{tuple(w_ih.shape)}, for input_size={w_ih.shape[1]}")
    meaning = spec.param_meanings()
    for k, shape in want.items():
        if tuple(params[k].shape) != shape:
            raise _shape_error(f"params[{k!r}]", params[k].shape, shape, meaning[k])
    state_shapes(spec, H, states, (B,), "batch")
    if lengths is not None:
        lengths = lengths_array(lengths, T=x.shape[0], B=B)
    return xp, H, lengths


def state_shapes(spec, hidden_size, states, lead, layout):
    """Each given state ({name: array or None} in the spec's order) of shape (*lead, its width): hidden_size, or
    proj_size for a projected LSTM's h; `layout` names the leading dimensions in the message."""
    widths, meanings = spec.state_sizes(hidden_size).values(), spec.state_meanings().values()
    for (name, s), width, meaning in zip(states.items(), widths, meanings):
        if s is not None and tuple(s.shape) != (*lead, width):
            raise _shape_error(name, s.shape, (*lead, width), f"({layout}, {meaning})")


INDEX_MAX = 2**31 - 1  # the kernels' element offsets and cuBLAS's sizes are 32-bit ints


def index_range(x_shape, H):
    """Refuse a call whose sizes a 32-bit index cannot reach, on the backends that launch the CUDA kernels.

    A kernel addresses one step's gates, [B, 4H], with int offsets (64-bit
    ones would slow the integer arithmetic of every thread), and cuBLAS takes
    the T·B rows of the sequence GEMMs and the input width as ints.  x_shape
    is (T, B, I), or (B, I) for one step.
    """
    T, B, I = x_shape if len(x_shape) == 3 else (1, *x_shape)
    for what, n in (("batch*4*hidden_size, the elements of one step's gates", B * 4 * H),
                    ("seq_len*batch, the rows of the sequence GEMMs", T * B), ("input_size", I)):
        if n > INDEX_MAX:
            raise ValueError(f"x has shape {tuple(x_shape)} with hidden_size={H}: {what}, is {n:,}, past 2**31 - 1, the "
                             "largest the CUDA kernels and cuBLAS index with 32-bit ints; split the batch or the "
                             "sequence, or run backend='numpy'")


def lengths_array(lengths, T, B):
    """`lengths` as a host int64 array, checked: shape (B,), integers in [0, T]."""
    if module_name(lengths) == "cupy":
        lengths = lengths.get()
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths has dtype {arr.dtype}; expected an integer dtype")
    if arr.shape != (B,):
        raise _shape_error("lengths", arr.shape, (B,), "(batch,)")
    bad = np.flatnonzero((arr < 0) | (arr > T))
    if bad.size:
        k = bad[0]
        raise ValueError(f"lengths[{k}] = {arr[k]} is out of range; each length must be in [0, seq_len={T}]")
    return arr.astype(np.int64)


def grad(name, g, shape, dtypes, xp):
    """An incoming gradient: None means zeros; otherwise it must match its output."""
    if g is None:
        return xp.zeros(shape, dtype=dtypes[0])
    mod = module_name(g)
    if mod is None:
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(g).__name__}")
    if mod != xp.__name__:
        raise TypeError(f"{name} is a {mod} array but the forward ran on {xp.__name__}")
    if g.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {g.dtype}; expected {' or '.join(map(str, dtypes))} (the forward's dtype)")
    if tuple(g.shape) != tuple(shape):
        raise _shape_error(name, g.shape, shape, "the shape of the output it is the gradient of")
    return g
