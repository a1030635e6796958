"""What the tests of the variants that draw masks share (tests/test_zoneout.py, tests/test_recurrent_dropout.py):
our results and an independent implementation's, as two lists in one order, and the check of graph replays."""

import numpy as np

import rnncells as rc
from rnncells import verify


def call(spec, p, backend, **kw):
    """Forward and backward of problem p through the public functions: the outputs, then the gradients (a flat
    list; the outputs alone when kw has training=False)."""
    fwd, bwd, *_ = verify.public_functions(spec)
    y, state, ctx = fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **spec.kwargs(), backend=backend, **kw)
    state = state if isinstance(state, tuple) else (state,)
    if ctx is None:
        return [y, *state]
    dx, ds, dp = bwd(ctx, *p.douts.values())
    return [y, *state, dx, *(ds if isinstance(ds, tuple) else (ds,)), *(dp[k] for k in sorted(dp))]


def torch_results(torch, p, cells, train):
    """`call`'s list from torch autograd: the outputs of cells(x, [initial states], {key: parameter}) on problem p
    (float64 tensors), then, when train, the gradients of Σ dout ∘ out by x, the initial states and the
    parameters (sorted by key)."""
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in {"x": p.x, **p.states, **p.params}.items()}
    states = [leaves[n + "0"] for n in p.spec.states]
    outs = cells(leaves["x"], states, {k: leaves[k] for k in p.params})
    want = [o.detach().numpy() for o in outs]
    if train:
        loss = sum((o * torch.tensor(d)).sum() for o, d in zip(outs, p.douts.values()))
        grads = torch.autograd.grad(loss, [leaves["x"], *states, *(leaves[k] for k in sorted(p.params))])
        want += [g.numpy() for g in grads]
    return want


def assert_graph_replays_copy_each_calls_masks(spec):
    """On cuda-host, graph replays (new masks each call, then the first ones again) equal the eager runs bit for bit,
    forward and backward captured once each and replayed."""
    cache = rc.GraphCache()
    p = verify.problem(spec, T=5, B=3, H=4)
    for seed in (1, 2, 1):
        want = call(spec, p, "cuda-host", generator=np.random.default_rng(seed))
        got = call(spec, p, "cuda-host", generator=np.random.default_rng(seed), graphs=cache)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert cache.captures >= 2
