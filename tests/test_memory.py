"""What a forward keeps for its backward: at most (G+1)·T·B·H elements per layer.

G is the number of gates (LSTM 4, GRU 3).  The input x, the initial states,
the parameters and the output y are the caller's; everything else the
context holds counts.  y doubles as the hidden-state history, so the
backward must leave it unchanged.
"""

import numpy as np

import rnncells as rc
from rnncells import verify
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
    return fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **p.spec.kwargs(), backend=backend)


def test_saved_activations_stay_within_g_plus_one_t_b_h(spec, cpu_backend):
    T, B, H = 6, 3, 5
    p = verify.problem(spec, T=T, B=B, I=4, H=H, dtype="float32", lengths=np.array([6, 2, 0]))
    y, _, ctx = _forward(p, cpu_backend)
    callers = [p.x, y, *p.states.values(), *p.params.values()]
    activations = [a for a in _arrays(ctx.inner) if a.dtype.kind == "f"]  # not the int lengths
    saved = [a for a in activations if not any(np.shares_memory(a, c) for c in callers)]
    assert sum(a.size for a in saved) <= (spec.gates + 1) * T * B * H
    assert saved, "the context must keep the gates it needs"


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
