"""What a forward keeps for its backward: at most (G+1)·T·B·H elements per layer.

G is the number of gates (LSTM 4, GRU 3).  The input x, the initial states,
the parameters and the output y are the caller's; everything else the
context holds counts.  y doubles as the hidden-state history, so the
backward must leave it unchanged.  In half precision those elements are
half-sized, except the LSTM's cell states, which stay float32.  Zoneout adds
its masks: one byte per unit and step of each zoned-out state, and recurrent
dropout its one: a byte per unit of h for the whole sequence.  A projected
LSTM (proj_size) also keeps h' before its projection, T·B·H more: (G+2)·T·B·H.
With layer_norm, a forward also keeps its two normalised GEMM outputs, G·T·B·H
each, and their rows' 1/√(σ² + ε), 2·T·B in the compute dtype: (3G+1)·T·B·H + 2·T·B
for the GRU; the LSTM also keeps c' normalised and its rows' 1/√(σ² + ε):
(3G+2)·T·B·H + 3·T·B.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import verify
from rnncells._dtypes import FLOATS
from rnncells.variants import GRUSpec


def _arrays(obj):
    """Every array a context holds, however nested."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, tuple):
        for v in obj:
            yield from _arrays(v)


def _forward(p, backend):
    fwd = verify.public_functions(p.spec)[0]
    return fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **p.spec.kwargs(), backend=backend,
               generator=np.random.default_rng(0))


def _kept(spec):
    """How many T·B·H arrays a forward may keep: G + 1, h' for a projected LSTM, and with layer_norm its normalised
    rows, x̂ and ĥ (G each) and the LSTM's ĉ."""
    kept = spec.gates + 1 + (1 if getattr(spec, "proj_size", 0) else 0)
    return kept + (2 * spec.gates + (spec.cell == "lstm") if spec.layer_norm else 0)


def _statistics(spec):
    """How many T·B arrays a forward may keep: the 1/√(σ² + ε) of each normalised row (x Wihᵀ, h Whhᵀ, c')."""
    return 2 + (spec.cell == "lstm") if spec.layer_norm else 0


def _saved(p, backend):
    """The arrays a forward's context keeps besides the caller's (x, the states, the parameters, y)."""
    y, _, ctx = _forward(p, backend)
    callers = [p.x, y, *p.states.values(), *p.params.values()]
    activations = [a for a in _arrays(ctx.inner) if a.dtype in FLOATS]  # not the int lengths
    return [a for a in activations if not any(np.shares_memory(a, c) for c in callers)]


def test_saved_activations_stay_within_g_plus_one_t_b_h(spec, cpu_backend):
    """At most (G+1)·T·B·H elements ((G+2)·T·B·H with a projection, which keeps h'), and the masks' bytes."""
    T, B, H = 6, 3, 5
    saved = _saved(verify.problem(spec, T=T, B=B, I=4, H=H, dtype="float32", lengths=np.array([6, 2, 0])),
                   cpu_backend)
    assert sum(a.size for a in saved) <= _kept(spec) * T * B * H + _statistics(spec) * T * B
    assert saved, "the context must keep the gates it needs"
    p = verify.problem(spec, T=T, B=B, I=4, H=H, dtype="float32")
    masks = [a for a in _arrays(_forward(p, cpu_backend)[-1].inner) if a.dtype == np.uint8]
    assert sum(a.nbytes for a in masks) == len(spec.zoneout()) * T * B * H + (B * H if spec.recurrent_dropout else 0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_saves_half_sized_activations_and_float32_cell_states(spec, cpu_backend, dtype):
    """(G+1)·T·B·H elements of which all but c are half-sized; c (and the float32 copies of c0 and, with
    full peepholes, of W_ch that its GEMMs read) is the only float32 the context keeps."""
    T, B, H = 6, 3, 5
    saved = _saved(verify.problem(spec, T=T, B=B, I=4, H=H, dtype=dtype, lengths=np.array([6, 2, 0])), cpu_backend)
    half = [a for a in saved if a.dtype == np.dtype(dtype)]
    single = [a for a in saved if a.dtype == np.float32]
    assert len(half) + len(single) == len(saved)
    c_shapes = {(T, B, H), (B, H), (3 * H, H)} if spec.cell == "lstm" else set()
    c_shapes |= {(T, B)} if spec.layer_norm else set()  # the normalised rows' statistics
    assert {a.shape for a in single} <= c_shapes
    assert ((T, B, H) in {a.shape for a in single}) == (spec.cell == "lstm")  # c of every step, in float32
    nbytes = sum(a.nbytes for a in half) + sum(a.nbytes for a in single if a.shape != (3 * H, H))
    statistics = _statistics(spec) * T * B * 4  # in float32
    if spec.cell == "lstm":  # gates (and h') in S; c of every step, and c0, in float32: 12 (14) bytes per T·B·H
        assert nbytes <= (_kept(spec) - 1) * T * B * H * 2 + (T + 1) * B * H * 4 + statistics
    else:
        assert nbytes <= _kept(spec) * T * B * H * 2 + statistics


def test_the_context_reads_y_as_its_state_history_and_backward_leaves_it(spec):
    """The hidden states live in y alone (no second copy); backward must not write them."""
    p = verify.problem(spec, T=4, B=3, lengths=np.array([4, 1, 3]))
    y, _, ctx = _forward(p, "numpy")
    assert ctx.inner.y is y
    before = y.copy()
    verify.public_functions(spec)[1](ctx, *p.douts.values())
    np.testing.assert_array_equal(y, before)


def test_writing_into_y_before_backward_changes_the_gradients():
    """Why the docstrings say y must not be written to between forward and backward."""
    p = verify.problem(GRUSpec(), T=4, B=2)
    want = verify.run(p, "numpy")
    y, _, ctx = _forward(p, "numpy")
    y[1] += 1.0
    _, _, dp = rc.gru_backward(ctx, *p.douts.values())
    assert not np.allclose(dp["weight_hh"], want["dweight_hh"])
