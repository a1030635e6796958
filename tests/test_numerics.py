"""Non-finite input stays in its batch item; huge pre-activations saturate cleanly."""

import numpy as np
import pytest

from rnncells import verify


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("backend,dtype", [("numpy", "float64"), ("reference", "float64"), ("numpy", "float16"),
                                           ("numpy", "bfloat16")])
def test_non_finite_input_stays_in_its_item(spec, backend, dtype, bad):
    p = verify.problem(spec, T=4, B=3, I=2, H=3, lengths=np.array([4, 3, 2]), dtype=dtype)
    x = p.x.copy()
    x[1, 1, 0] = bad  # item 1 at step 1
    with np.errstate(invalid="ignore"):  # 0·inf in the weight gradients is expected here
        got = {k: v.astype(np.float64) for k, v in verify.run(p._replace(x=x), backend).items()}
    others = [0, 2]
    for name, a in got.items():
        if name[1:] in p.params:
            continue  # parameter gradients sum over items: non-finite there is the truth
        assert np.isfinite(a[..., others, :]).all(), name
    assert np.isfinite(got["y"][0, 1]).all()  # the item before its bad step
    if np.isnan(bad):  # NaN poisons the item from that step on (an Inf may saturate to finite values); a unit
        # that zoneout keeps at its previous value stays as it was
        assert np.isnan(got["y"][1:3, 1]).all() if not spec.zoneout() else np.isnan(got["y"][1:3, 1]).any()
        assert np.isnan(got["dx"][:2, 1]).any()


# |x| giving pre-activations of ~|x|: float16 stops at 65504, so x·W must stay below it
HUGE = {"float32": 1e4, "float64": 1e4, "float16": 1e3, "bfloat16": 1e4}


@pytest.mark.parametrize("dtype", HUGE)
def test_huge_preactivations_saturate_to_the_references_values(spec, cpu_backend, dtype):
    """|a| ~ 1e4: σ and tanh must saturate, not overflow (e^{2a} − 1)/(e^{2a} + 1 gives inf/inf = NaN there),
    and the values must be the reference's, which computes in float64 on the same inputs."""
    p = verify.problem(spec, T=3, B=4, I=3, H=2, dtype=dtype)
    x = (np.sign(p.x.astype(np.float64)) * HUGE[dtype]).astype(dtype)
    p = p._replace(x=x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        want = verify.run(p, "reference")
        got = verify.run(p, cpu_backend)
    # In half precision a nearly saturated gate is stored as 1 − (a few ulps) or exactly 1, so a derivative
    # σ(1 − σ) recomputed from it is off by up to u absolutely (all of it, relatively) where the reference has
    # e^-|a|, as in any RNN that keeps its gates in half.  A gradient is then off by up to ~u·|dy|·|what it
    # multiplies|: 1 for most, |x| for dW_ih; half-precision gradients are compared on that scale.
    half = dtype in ("float16", "bfloat16")
    # layer_norm normalises the huge x Wihᵀ back to unit rows (so dx is tiny); its gradients are compared where its
    # rows are well-posed (`verify.layer_norm_well_posed`: a row of c' clipped to one value is not)
    ill_posed = spec.layer_norm and dtype != "float64" and not verify.layer_norm_well_posed(p)
    for name in want:
        g, w = got[name].astype(np.float64), want[name]
        assert np.isfinite(g).all() and np.isfinite(w).all(), name
        if ill_posed and name.startswith("d"):
            continue
        scale = np.abs(w).max(initial=0)
        if half:  # a state the reference keeps at 1e-100 (saturated gates) is 0 in half: errors below 2^-14 are moot
            scale = max(scale, 2.0**-14)
        if half and name.startswith("d"):
            scale = max(scale, HUGE[dtype] if name == "dweight_ih" else 1.0)
        assert np.abs(g - w).max(initial=0) <= verify.BOUNDS[dtype] * scale, name
    # |h| <= 1 for a fresh LSTM state; a GRU may carry its initial state (z -> 1)
    assert np.abs(got["y"].astype(np.float64)).max() <= max(1.0, *(np.abs(s.astype(np.float64)).max()
                                                                  for s in p.states.values()))
    if spec.cell == "lstm":
        a = x[0].astype(np.float64) @ p.params["weight_ih"].T.astype(np.float64)
        assert np.abs(a).max() > 0.1 * HUGE[dtype]  # the test reaches saturation
