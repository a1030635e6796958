"""graphs=: the step loops captured once per shape and replayed (rnncells._graphs).

On the CPU the kernels run through the host build and a "capture" is
`_host.record`, which keeps addresses as a CUDA graph does, so these tests
check what a GPU replay depends on: every input reaches the loop through the
slot's buffers, replays equal the uncaptured loop bit for bit, and a slot
whose buffers someone still holds is never written to.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import verify
from rnncells.variants import GRUSpec, LSTMSpec

pytestmark = pytest.mark.host


def _flat(out):
    """Every array of a forward's or backward's result, in order."""
    arrays = []
    for v in out:
        if isinstance(v, dict):
            arrays += [v[k] for k in sorted(v)]
        elif isinstance(v, tuple):
            arrays += _flat(v)
        else:
            arrays.append(v)
    return arrays


def _step(p, training=True, **kw):
    """Forward (and backward when training) of a problem on the host kernels: its arrays."""
    fwd, bwd, *_ = verify.public_functions(p.spec)
    y, state, ctx = fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **p.spec.kwargs(), training=training,
                        backend="cuda-host", generator=np.random.default_rng(0), **kw)
    out = _flat((y, state))
    if training:
        out += _flat(bwd(ctx, *p.douts.values()))
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("lengths", [None, np.array([5, 2, 0, 5])], ids=["full", "lengths"])
def test_replays_equal_the_uncaptured_loop_bit_for_bit(lengths):
    """One cache for every variant, as a program holds one: a graph replayed for another variant of the same
    shape (a key that forgot part of the variant) gives that variant's results, and fails here."""
    cache = rc.GraphCache()
    for spec in verify.VARIANTS:
        problems = [verify.problem(spec, T=5, B=4, I=3, H=6, dtype="float32", lengths=lengths, seed=s)
                    for s in range(3)]
        # every problem stays alive, so a graph that kept the first call's arrays would read stale, not freed, memory
        for p in problems:
            _assert_same(_step(p, graphs=cache), _step(p))
    assert cache.captures == 2 * len(verify.VARIANTS)  # a forward and a backward graph each, replayed after


def test_inference_replays_equal_the_uncaptured_loop():
    cache = rc.GraphCache()
    for spec in verify.VARIANTS:
        for s in range(2):
            p = verify.problem(spec, T=4, B=3, H=5, dtype="float64", seed=s)
            _assert_same(_step(p, training=False, graphs=cache), _step(p, training=False))
    assert cache.captures == len(verify.VARIANTS)


@pytest.mark.parametrize("family", [LSTMSpec(), GRUSpec()], ids=str)
def test_a_held_output_is_never_overwritten(family):
    cache = rc.GraphCache()
    a, b = (verify.problem(family, T=4, B=2, seed=s) for s in (0, 1))
    fwd = verify.public_functions(family)[0]
    run = lambda q: fwd(q.x, q.params, **family.kwargs(), training=False, graphs=cache, backend="cuda-host")[0]  # noqa: E731
    y_a = run(a)
    kept = y_a.copy()
    y_b = run(b)
    np.testing.assert_array_equal(y_a, kept)  # b ran in a second slot
    assert not np.shares_memory(y_a, y_b) and cache.captures == 2
    del y_a, y_b  # both slots free again: the next call replays, it does not capture
    run(a)
    assert cache.captures == 2


@pytest.mark.parametrize("training", [True, False])
def test_what_a_call_hands_out_stays_the_callers(training):
    """Outputs, final states and gradients of one call, kept while a second call of the same shape runs on the same
    cache: none of them may be (a view of) a buffer the second call writes, such as the shared h_last."""
    cache = rc.GraphCache()
    for spec in verify.VARIANTS:
        a, b = (verify.problem(spec, T=5, B=4, I=3, H=6, lengths=np.array([5, 2, 0, 3]), seed=s)
                for s in (0, 1))
        kept = _step(a, training, graphs=cache)
        copies = [k.copy() for k in kept]
        _step(b, training, graphs=cache)
        _assert_same(kept, copies)


def test_a_view_or_a_torch_tensor_of_the_output_holds_the_slot():
    torch = pytest.importorskip("torch")
    cache = rc.GraphCache()
    p = verify.problem(GRUSpec(), T=3, B=2)
    run = lambda: rc.gru_forward(p.x, p.params, training=False, graphs=cache, backend="cuda-host")[0]  # noqa: E731
    view = run()[1:]
    tensor = torch.from_numpy(run())
    run()
    assert cache.captures == 3  # the view held the first slot, the tensor the second
    want = tensor.clone()
    run()  # the third slot, free again since its result was dropped
    assert torch.equal(tensor, want) and cache.captures == 3
    del view, tensor
    for _ in range(3):
        run()
    assert cache.captures == 3


def test_stacked_layers_of_one_shape_use_a_slot_each():
    """Layer 2's forward runs while layer 1's context lives: they must not share buffers."""
    cache = rc.GraphCache()
    p = verify.problem(LSTMSpec(), T=4, B=3, I=5, H=5, dtype="float32")
    q = verify.problem(LSTMSpec(), T=4, B=3, I=5, H=5, dtype="float32", seed=1)

    def two_layers(**kw):
        y1, _, ctx1 = rc.lstm_forward(p.x, p.params, backend="cuda-host", **kw)
        y2, _, ctx2 = rc.lstm_forward(y1, q.params, backend="cuda-host", **kw)
        d2 = rc.lstm_backward(ctx2, p.douts["dy"])
        return _flat((y2, d2, rc.lstm_backward(ctx1, d2[0])))

    want = two_layers()
    for _ in range(2):
        _assert_same(two_layers(graphs=cache), want)
    assert cache.captures == 4  # two slots, a forward and a backward graph each

    # what the layers hand out is their own; what lives only within a call is one workspace for both
    y1, _, ctx1 = rc.lstm_forward(p.x, p.params, graphs=cache, backend="cuda-host")
    y2, _, ctx2 = rc.lstm_forward(y1, q.params, graphs=cache, backend="cuda-host")
    b1, b2 = ctx1.inner.slot.buffers, ctx2.inner.slot.buffers
    assert not any(np.shares_memory(getattr(b1, k), getattr(b2, k)) for k in ("y", "cs", "gates", "h0", "w_hh"))
    assert b1.xw is b2.xw and b1.hw is b2.hw


def test_past_max_slots_the_loop_runs_uncaptured():
    cache = rc.GraphCache(max_slots=1)
    a, b = (verify.problem(GRUSpec(reset_after=False), T=3, B=2, seed=s) for s in (0, 1))
    held = rc.gru_forward(a.x, a.params, reset_after=False, graphs=cache, backend="cuda-host")  # y and ctx live on
    _assert_same(_step(b, graphs=cache), _step(b))
    assert cache.captures == 1 and held[-1] is not None  # only held's forward was ever captured


def test_past_max_shapes_the_least_recently_used_shape_is_dropped():
    cache = rc.GraphCache(max_shapes=2)
    problems = {T: verify.problem(GRUSpec(), T=T, B=2) for T in (3, 4, 5)}
    run = lambda T: rc.gru_forward(problems[T].x, problems[T].params, training=False, graphs=cache,  # noqa: E731
                                   backend="cuda-host")[0]
    for T in (3, 4, 3):  # one statement each: a tuple of results would hold their slots
        run(T)
    assert cache.captures == 2
    run(5)  # evicts T=4, the least recently used
    run(3)
    assert cache.captures == 3
    run(4)  # evicts T=5
    assert cache.captures == 4
    run(5)  # evicts T=3
    run(4)  # still kept: a replay
    assert cache.captures == 5
    run(3)  # evicts T=5, not T=4, which was used since
    run(4)
    assert cache.captures == 6
    cache.clear()  # frees the slots' memory; the next call captures anew
    run(4)
    assert cache.captures == 7


def test_graphs_argument_is_checked():
    p = verify.problem(LSTMSpec())
    with pytest.raises(TypeError, match="graphs must be a rnncells.GraphCache or None, got str"):
        rc.lstm_forward(p.x, p.params, graphs="yes", backend="cuda-host")
    with pytest.raises(ValueError, match="graphs= needs backend 'cupy' or 'cuda-host'"):
        rc.lstm_forward(p.x, p.params, graphs=rc.GraphCache())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_slots=.* must be a positive integer"):
            rc.GraphCache(max_slots=bad)
        with pytest.raises(ValueError, match="max_shapes=.* must be a positive integer"):
            rc.GraphCache(max_shapes=bad)
