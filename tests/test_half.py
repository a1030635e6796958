"""Half storage (float16, bfloat16) with float32 arithmetic.

The contract, per kernel: every value a kernel stores in the storage type S
is its float32 computation rounded once, to nearest even, and every value it
stores in the compute type (c, the gradients' carries) is that computation
itself.  So against the same step run in float64 on the same inputs, an S
output is off by at most u·|exact| (u = 2⁻¹¹ for float16, 2⁻⁸ for bfloat16)
plus float32's own error, and a float32 output by float32's error alone.
A line that computed in S instead of float32 would add an error of order u
where the bound allows a few 1e-6: `test_a_kernel_line_computing_in_S_fails_the_contract`
builds such kernels and checks that the contract catches each.

Whole calls, against the float64 reference (inputs rounded to S first), are
in `test_whole_calls_stay_within_a_few_roundings` (every variant, T = 1 and
100) and `test_a_thousand_steps_stay_within_the_same_bounds`.
"""

import inspect
import math

import numpy as np
import pytest

from rnncells import _backends, _host, _kernels, _numpy, verify
from rnncells._dtypes import FLOATS, HALVES, unit_roundoff
from rnncells.params import init_params
from rnncells.variants import GRUSpec, LSTMSpec

HALF = [str(d) for d in HALVES]
# float32's own error in one step's few operations and its libm or CUDA exp/tanh, relative to max(1, |exact|):
# a few dozen float32 ulps (2⁻²⁴ each)
F32 = 64 * 2.0**-24
# what each step function stores (the rest of its arguments it only reads)
STORED = {"c_next", "y", "h_last", "gates", "rh", "dcarry_out", "da", "dgi", "dgh", "dg"}


# --- the host build's half types --------------------------------------------------


@pytest.mark.host
@pytest.mark.parametrize("dtype", HALF)
def test_host_half_types_convert_as_cuda_and_numpy_do(dtype):
    """float -> S rounds to nearest even (ties, subnormals, overflow to inf) and S -> float is exact: checked
    through the kernels that do nothing but convert (column totals of one chunk, partial sums of one row)."""
    dt = np.dtype(dtype)
    launcher = _host.ops().launcher
    rng = np.random.default_rng(0)
    every_float_bit_pattern_stepped = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = [65504, 65519.996, 65520, 65536, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14 * 1.5, 1 + 2.0**-11,
             1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 3.4e38, np.inf]  # not -0: the total's 0 + -0 is +0
    f = np.concatenate([every_float_bit_pattern_stepped, rng.standard_normal(4096).astype(np.float32) * 1e-5,
                        np.array(edges, np.float32), -np.array(edges, np.float32)])
    f = f[~np.isnan(f)]
    stored = np.empty(f.size, dt)
    launcher(_kernels.kernel_name("column_totals", dt), (math.ceil(f.size / 256), 1, 1), (256, 1, 1),
             (1, f.size, f, stored))
    with np.errstate(over="ignore"):
        want = f.astype(dt)
    same = stored.view(np.uint16) == want.view(np.uint16)
    assert same.all(), (f[~same][:5], stored[~same][:5], want[~same][:5])
    every_s = np.arange(2**16, dtype=np.uint16).view(dt)
    every_s = every_s[~np.isnan(every_s.astype(np.float32))]
    read = np.empty((every_s.size, 1), np.float32)
    launcher(_kernels.kernel_name("column_partial_sums", dt), (1, 65535, 1), (256, 1, 1),
             (every_s.size, 1, 1, every_s, read))
    assert (read[:, 0] == every_s.astype(np.float32)).all()
    nan = np.full(1, np.nan, np.float32)
    launcher(_kernels.kernel_name("column_totals", dt), (1, 1, 1), (256, 1, 1), (1, 1, nan, stored[:1]))
    assert np.isnan(stored[:1].astype(np.float32)).all()


# --- the rounding contract of every step function ------------------------------------


class RoundingCheck:
    """Per-step ops that run each step function of `ops` and check what it stored against the NumPy twin
    run in float64 on the same inputs; `worst` is the largest error found, in units of what the contract
    allows (<= 1 keeps it)."""

    def __init__(self, ops):
        self.ops, self.worst = ops, 0.0

    def __getattr__(self, name):
        fn = getattr(self.ops, name)
        if name in ("gemm", "column_sum", "threads") or not callable(fn):
            return fn
        params = list(inspect.signature(getattr(_numpy, name)).parameters)

        def checked(*args):
            before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            fn(*args)
            exact = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype in FLOATS else a for a in before]
            getattr(_numpy, name)(*exact)
            for param, got, want in zip(params, args, exact):
                if param in STORED and got is not None:
                    u = unit_roundoff(got.dtype) if got.dtype in HALVES else 0.0
                    err = np.abs(got.astype(np.float64) - want)
                    allowed = u * np.abs(want) + F32 * np.maximum(1.0, np.abs(want))
                    ratio = np.where(np.isnan(err), np.inf, err / allowed)  # a NaN on either side fails
                    self.worst = max(self.worst, float(np.max(ratio, initial=0.0)))

        return checked


class ZeroedNumpy:
    """NumPy whose `empty` is zero-filled: what a step has not written yet compares equal, not as garbage."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.zeros(shape, dtype)


def _contract(ops, spec, dtype):
    """The worst ratio of error to allowance over a sequence, with lengths, forward and backward."""
    check = RoundingCheck(ops)
    backend = _backends.Orchestrated("checked", lambda tf32: check, ZeroedNumpy())
    for kw in ({}, {"lengths": np.array([5, 0, 3, 5, 1, 2, 4, 5])}):
        verify.run(verify.problem(spec, T=5, B=8, I=6, H=40, dtype=dtype, **kw), backend)
    return check.worst


@pytest.mark.parametrize("dtype", HALF)
def test_numpy_twin_keeps_the_rounding_contract(spec, dtype):
    assert _contract(_numpy, spec, dtype) <= 1.0


@pytest.mark.host
@pytest.mark.parametrize("dtype", HALF)
def test_host_kernels_keep_the_rounding_contract(spec, dtype):
    assert _contract(_host.ops(), spec, dtype) <= 1.0


# Each edit makes one line of a kernel compute (or keep) a value in S where the kernel keeps float32.
MUTATIONS = {
    "lstm: c kept in S": ("lstm.cu", "c_next[state_idx] = active ? c1 : c;",
                          "c_next[state_idx] = active ? C(S(c1)) : c;"),
    "lstm: dc summed in S": ("lstm.cu", "C dc = u.dc_new + u.dh * u.o * (C(1) - tc * tc);",
                             "C dc = C(S(u.dc_new + u.dh * u.o * (C(1) - tc * tc)));"),
    "gru: n rounded to S before h'": ("gru.cu", "const C n = tanh(C(xw[n_idx]) + r * ghn);",
                                      "const C n = C(S(tanh(C(xw[n_idx]) + r * ghn)));"),
}


@pytest.mark.host
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_kernel_line_computing_in_S_fails_the_contract(mutation, edited_host_ops, host_launches):
    file, line, edited = MUTATIONS[mutation]
    spec = LSTMSpec() if file == "lstm.cu" else GRUSpec()
    launched = host_launches(lambda ops: _contract(ops, spec, "bfloat16"))
    ops = edited_host_ops(file, line, edited, "bfloat16", only=launched.__contains__)
    assert _contract(ops, spec, "bfloat16") > 2.0  # well past the allowance, not a near miss


# --- whole calls against the float64 reference -----------------------------------------


def _problem(spec, T, dtype, step=False, B=16, I=16, H=32, seed=0):
    """A problem at the default initialisation (the weights of a trained-from-scratch model), in S."""
    p = verify.problem(spec, T=T, B=B, I=I, H=H, step=step, dtype="float64", seed=seed)
    params = init_params(spec, I, H, dtype="float64", seed=seed)
    cast = lambda d: {k: v.astype(dtype) for k, v in d.items()}  # noqa: E731
    return p._replace(x=p.x.astype(dtype), states=cast(p.states), params=cast(params), douts=cast(p.douts))


# Every stored value carries at most one rounding (u relative); y and the final states also inherit the input
# projection's rounding (u·|x Wᵀ + b|) through gates whose derivatives are at most 1 (σ' <= 1/4, tanh' <= 1),
# and a gradient the rounding of the saved gates, of da, and of its own GEMM.  At the default initialisation the
# recurrence is contractive, so errors injected at each step decay instead of adding up over T.  Measured worst
# (numpy and cuda-host, every variant, float16 and bfloat16, T = 1 to 1000): 1.15u for the outputs, 2.04u for
# the gradients; the bounds leave 2x.
BOUND_U = {"outputs": 2.0, "gradients": 4.0}
# layer_norm stores pre-activations normalised to unit variance (|γ∘x̂ + b| up to ~3, several times those of the
# default initialisation, so their roundings are too) and x̂ itself, one more rounding in each gradient.  Measured
# worst (numpy and cuda-host, both layer_norm variants, float16 and bfloat16, T = 1 and 100): 2.39u outputs, 4.75u
# gradients (dln_weight_hh: 16 products summed, which cancel); the bounds leave 2x.
LAYER_NORM_BOUND_U = {"outputs": 5.0, "gradients": 10.0}
# With cell_clip, gradients are compared only where every c' of the reference lies clear of the clip
# (`verify.comparable_gradients`): nearer, one rounding can decide whether it clips, and its gradient then jumps
# by all of dc.  The outputs, continuous in c', are compared always; test_clipped_gradients_* picks problems that
# clip clear of the kink.


def _within_bounds(spec, backend, dtype, T, p=None):
    p = p or _problem(spec, T, dtype, step=T == 1)
    want, got = verify.run(p, "reference"), verify.run(p, backend)
    u = unit_roundoff(dtype)
    compared, gradients = 0, verify.comparable_gradients(p, dtype)
    for k in want:
        assert got[k].dtype == np.dtype(dtype), k
        kind = "gradients" if k.startswith("d") else "outputs"
        if kind == "gradients" and not gradients:
            continue
        bound = (LAYER_NORM_BOUND_U if spec.layer_norm else BOUND_U)[kind]
        assert verify.rel_err(got[k], want[k]) <= bound * u, (k, verify.rel_err(got[k], want[k]) / u)
        compared += kind == "gradients"
    return compared


# The LayerNorm LSTM's recurrence is not contractive at the default initialisation (`verify.expansive`): its
# roundings grow with T as any perturbation does (measured: float16 outputs 0.9u at T = 1, 2.9u at 5, 11u at 10,
# 40u at 40), the model's doing, not the kernels', so its whole calls are compared over one step.
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("T", [1, 100])
def test_whole_calls_stay_within_a_few_roundings(spec, cpu_backend, dtype, T):
    if T > 1 and verify.expansive(spec):
        pytest.skip("the LayerNorm LSTM's recurrence amplifies any perturbation over T, roundings too")
    _within_bounds(spec, cpu_backend, dtype, T)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("peephole", [None, "full", "diagonal"])
def test_clipped_gradients_stay_within_a_few_roundings_away_from_the_clip(peephole, cpu_backend, dtype):
    spec = LSTMSpec(peephole, cell_clip=0.5)
    for seed in range(100):  # the first small problem that clips and keeps clear of the kink
        p = _problem(spec, 3, dtype, B=2, I=4, H=4, seed=seed)
        c = np.abs(verify.unclipped_cells(p))
        if (c > 0.5).any() and verify.comparable_gradients(p, dtype):
            break
    else:
        pytest.fail("no problem clips clear of the kink")
    assert _within_bounds(spec, cpu_backend, dtype, 3, p) > 0


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("default", [LSTMSpec(), GRUSpec()], ids=str)
def test_a_thousand_steps_stay_within_the_same_bounds(default, cpu_backend, dtype):
    _within_bounds(default, cpu_backend, dtype, 1000)
