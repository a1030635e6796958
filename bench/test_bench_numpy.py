"""pytest-benchmark: the NumPy backend on the CPU (train step = forward + backward).

    pytest bench --benchmark-enable        # time them; CI runs each once as a test
The GPU side-by-side with cuDNN is `rnncells bench` (rnncells/bench.py).
"""

import numpy as np
import pytest

from rnncells import verify

SHAPES = [dict(T=50, B=16, I=64, H=64), dict(T=20, B=64, I=256, H=256)]
# Not the clipped variants: over 10^5 cells some c' lie within float32's rounding of the clip, where the gradient
# jumps (see verify.clip_margin), so no float32 run matches the reference there; clipping costs two comparisons.
VARIANTS = [s for s in verify.VARIANTS if getattr(s, "cell_clip", None) is None]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{T}B{B}I{I}H{H}".format(**s))
@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: str(s).replace(" ", "-"))
def test_train_step(benchmark, spec, shape):
    p = verify.problem(spec, dtype="float32", **shape)
    fwd, bwd, *_ = verify.public_functions(spec)

    def step(backend=None):
        *_, ctx = fwd(p.x, p.params, *p.states.values(), **spec.kwargs(), backend=backend,
                      generator=np.random.default_rng(0))  # zoneout's masks, the same for both
        return bwd(ctx, p.douts["dy"])

    got = _arrays(benchmark(step))
    if verify.expansive(spec):  # its errors over T steps measure its conditioning: its code is checked over 3
        p = verify.problem(spec, dtype="float32", **{**shape, "T": 3})
        got = _arrays(step())
    want = _arrays(step("reference"))  # what was timed is also right
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and verify.rel_err(g, w) <= verify.BOUNDS["float32"]


def _arrays(grads):
    """dx, the initial states' gradients and the parameters' (sorted by name), as one list."""
    dx, dstate, dp = grads
    return [dx, *(dstate if isinstance(dstate, tuple) else (dstate,)), *(dp[k] for k in sorted(dp))]
