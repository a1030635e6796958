"""Non-finite input stays in its batch item; huge pre-activations saturate cleanly."""

import numpy as np
import pytest

from rnncells import verify


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("backend", ["numpy", "reference"])
def test_non_finite_input_stays_in_its_item(spec, backend, bad):
    p = verify.problem(spec, T=4, B=3, I=2, H=3, lengths=np.array([4, 3, 2]))
    x = p.x.copy()
    x[1, 1, 0] = bad  # item 1 at step 1
    with np.errstate(invalid="ignore"):  # 0·inf in the weight gradients is expected here
        got = verify.run(p._replace(x=x), backend)
    others = [0, 2]
    for name, a in got.items():
        if name.startswith("dweight") or name.startswith("dbias"):
            continue  # parameter gradients sum over items: non-finite there is the truth
        assert np.isfinite(a[..., others, :]).all(), name
    assert np.isfinite(got["y"][0, 1]).all()  # the item before its bad step
    if np.isnan(bad):  # NaN poisons the item from that step on (an Inf may saturate to finite values)
        assert np.isnan(got["y"][1:3, 1]).all()
        assert np.isnan(got["dx"][:2, 1]).any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_preactivations_saturate_to_the_references_values(spec, cpu_backend, dtype):
    """|a| ~ 1e4: σ and tanh must saturate, not overflow (e^{2a} − 1)/(e^{2a} + 1 gives inf/inf = NaN there),
    and the values must be the reference's, which computes in float64 on the same inputs."""
    p = verify.problem(spec, T=3, B=4, I=3, H=2, dtype=dtype)
    x = (np.sign(p.x) * 1e4).astype(dtype)  # |a| ~ 1e4
    p = p._replace(x=x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        want = verify.run(p, "reference")
        got = verify.run(p, cpu_backend)
    for name in want:
        assert np.isfinite(got[name]).all() and np.isfinite(want[name]).all(), name
        assert verify.rel_err(got[name], want[name]) <= verify.BOUNDS[dtype], name
    # |h| <= 1 for a fresh LSTM state; a GRU may carry its initial state (z -> 1)
    assert np.abs(got["y"]).max() <= max(1.0, *(np.abs(s).max() for s in p.states.values()))
    if spec.cell == "lstm":
        a = x[0] @ p.params["weight_ih"].T.astype(np.float64)
        assert np.abs(a).max() > 1e3  # the test reaches saturation
