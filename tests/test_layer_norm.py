"""LayerNorm GRU (haste's LayerNormGRU; Ba et al. 2016): x Wihᵀ and h Whhᵀ each normalised over their 3H columns,
with a gain of their own, before the biases are added and the cell reads them.

Every test that takes `spec` already runs the layer_norm variants on every backend against the reference (and the
reference against finite differences); here: the row kernels against their NumPy twin (long rows, a partial last
stride, a mean far larger than the spread, NaN), a missing barrier caught by the host's block emulation, the
equations in plain torch autograd (torch.nn.functional.layer_norm) against every CPU backend and the adapter,
parameters and refusals.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import _host, _kernels, _numpy, verify
from rnncells.params import init_params
from rnncells.variants import LAYER_NORM_EPS, GRUSpec
from variant_checks import call, torch_results

BACKENDS = ["reference", "numpy", pytest.param("cpu", marks=pytest.mark.host),
            pytest.param("cuda-host", marks=pytest.mark.host)]
NORMED = [GRUSpec(layer_norm=True), GRUSpec(zoneout_h=0.3, recurrent_dropout=0.25, layer_norm=True)]


# --- the row kernels ----------------------------------------------------------------------------------------------


def _rows_problem(rows, n, dtype, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    ct = np.dtype(_kernels.compute(dtype))
    x = (shift + rng.standard_normal((rows, n))).astype(ct)
    gamma, beta = rng.uniform(0.5, 1.5, n).astype(dtype), rng.standard_normal(n).astype(ct)
    dy = rng.standard_normal((rows, n)).astype(dtype)
    return x, gamma, beta, dy


def _run_rows(ops, x, gamma, beta, dy):
    """layer_norm_forward then layer_norm_backward through `ops`: (output, x̂, rstd, dx), every buffer NaN first."""
    rows, n = x.shape
    out, x_hat = x.copy(), np.full(x.shape, np.nan, dtype=gamma.dtype)
    rstd, dx = np.full(rows, np.nan, dtype=x.dtype), np.full(x.shape, np.nan, dtype=gamma.dtype)
    ops.layer_norm_forward(out, gamma, beta, x_hat, rstd, LAYER_NORM_EPS)
    ops.layer_norm_backward(dy, x_hat, rstd, gamma, dx)
    return out, x_hat, rstd, dx


def _float64_rows(x, gamma, beta, dy):
    """The same rows through the NumPy twin in float64."""
    as64 = lambda a: a.astype(np.float64)  # noqa: E731
    return _run_rows(_numpy, as64(x), as64(gamma), as64(beta), as64(dy))


@pytest.mark.host
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("rows,n", [(1, 1), (3, 5), (2, 33), (4, 256), (2, 1000)])  # 1000: 256 threads, 4 strides
def test_row_kernels_match_their_twin(rows, n, dtype):
    dtype = np.dtype(_kernels.BFLOAT16 if dtype == "bfloat16" else dtype)
    args = _rows_problem(rows, n, dtype)
    got = _run_rows(_host.ops(), *args)
    twin = _run_rows(_numpy, *args)
    bound = verify.BOUNDS[dtype.name]
    for a, b in zip(got, twin):
        assert not np.isnan(a.astype(np.float64)).any()
        assert verify.rel_err(a.astype(np.float64), b.astype(np.float64)) <= bound


@pytest.mark.host
def test_the_variance_is_taken_from_the_deviations_not_from_the_mean_square():
    """|μ| = 10⁴ σ in float32: E[x²] − μ² would lose every digit of σ²; two passes keep it."""
    args = _rows_problem(3, 300, np.dtype("float32"), shift=1e4)
    got, want = _run_rows(_host.ops(), *args), _float64_rows(*args)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-3


@pytest.mark.host
def test_a_nan_spreads_over_its_row_only():
    x, gamma, beta, dy = _rows_problem(3, 40, np.dtype("float32"))
    x[1, 7] = np.nan
    for ops in (_host.ops(), _numpy):
        out, _, _, dx = _run_rows(ops, x, gamma, beta, dy)
        assert np.isnan(out[1]).all() and np.isnan(dx[1]).all()
        assert np.isfinite(out[[0, 2]]).all() and np.isfinite(dx[[0, 2]]).all()


def test_row_threads_are_a_power_of_two_from_a_warp_to_the_kernels_shared_memory():
    assert [_kernels.row_threads(n) for n in (1, 32, 33, 200, 256, 257, 10**6)] == [32, 32, 64, 256, 256, 256, 256]
    src = (_kernels.kernel_dir() / "layernorm.cu").read_text()  # the block's tree sum has LN_THREADS slots
    assert f"constexpr int LN_THREADS = {_kernels.ROW_BLOCK};" in src


BLOCK_SUM_BARRIERS = ["  __syncthreads();\n  for (int s", "    __syncthreads();\n  }", "  __syncthreads();  // every"]


@pytest.mark.host
@pytest.mark.parametrize("barrier", range(len(BLOCK_SUM_BARRIERS)), ids=["after-write", "in-tree", "after-read"])
def test_the_host_emulation_catches_a_missing_barrier(edited_host_ops, barrier):
    """Each of block_sum's three __syncthreads() removed in turn: the host build's block threads, taking turns,
    read what a barrier would have waited for, and the rows come out wrong."""
    marker = BLOCK_SUM_BARRIERS[barrier]
    broken = edited_host_ops("layernorm.cu", marker, marker.replace("__syncthreads();", ";"))
    args = _rows_problem(2, 100, np.dtype("float64"))
    got, want = _run_rows(broken, *args), _run_rows(_numpy, *args)
    assert max(verify.rel_err(a, b) for a, b in zip(got, want)) > 1e-3
    right = _run_rows(_host.ops(), *args)
    assert max(verify.rel_err(a, b) for a, b in zip(right, want)) <= 1e-13


# --- the equations in plain torch autograd: an independent implementation -------------------------------------------


def _torch_cells(torch, x, states, p, zone=None, d=1.0):
    """haste's LayerNormGRU step by step: LN(x Wihᵀ)γ_x + b_ih and LN((d∘h) Whhᵀ)γ_h + b_hh, then torch.nn.GRU's
    cell on them; zone: zoneout masks [T, B, H] (training) or None."""
    F, H = torch.nn.functional, states[0].shape[-1]

    def norm(a, gain, bias):
        return F.layer_norm(a, (3 * H,), gain, p.get(bias), eps=LAYER_NORM_EPS)

    h, ys = states[0], []
    for t, x_t in enumerate(x):
        gi = norm(x_t @ p["weight_ih"].T, p["ln_weight_ih"], "bias_ih")
        gh = norm((d * h) @ p["weight_hh"].T, p["ln_weight_hh"], "bias_hh")
        (i_r, i_z, i_n), (h_r, h_z, h_n) = gi.split(H, dim=-1), gh.split(H, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h1 = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        h = h1 if zone is None else zone[t] * h + (1 - zone[t]) * h1
        ys.append(h)
    return [torch.stack(ys), h]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_gradients_match_the_equations_in_torch(backend, bias):
    torch = pytest.importorskip("torch")
    spec = GRUSpec(layer_norm=True)
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    if not bias:
        p = p._replace(params={k: v for k, v in p.params.items() if not k.startswith("bias")})
    want = torch_results(torch, p, lambda x, states, params: _torch_cells(torch, x, states, params), True)
    got = call(spec, p, backend)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_zoneout_and_recurrent_dropout_in_training_too(backend):
    torch = pytest.importorskip("torch")
    spec = NORMED[1]
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    got = call(spec, p, backend, generator=np.random.default_rng(11))
    masks = rc.api.training_masks(spec, np.random.default_rng(11), np, (6, 4, 5))
    zone, d = torch.tensor(masks["h"], dtype=torch.float64), torch.tensor(masks["rdrop"] * spec.rdrop_scale())
    want = torch_results(torch, p, lambda x, states, params: _torch_cells(torch, x, states, params, zone, d), True)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


def test_the_adapter_matches_the_equations_and_names_its_gains_as_torch_would():
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    ours = rt.GRU(3, 5, layer_norm=True, dtype=torch.float64)
    names = [n for n, _ in ours.named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "ln_weight_ih_l0", "ln_weight_hh_l0"]
    assert torch.equal(ours.ln_weight_hh_l0, torch.ones(15, dtype=torch.float64))  # torch.nn.LayerNorm's start
    assert "layer_norm=True" in repr(ours)
    with torch.no_grad():
        ours.ln_weight_ih_l0.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        ours.ln_weight_hh_l0.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = {k[:-3]: v for k, v in ours.named_parameters()}  # weight_ih_l0 -> weight_ih
    y, hT = ours(x)
    want = _torch_cells(torch, x, [torch.zeros(4, 5, dtype=torch.float64)], params)
    assert verify.rel_err(y.detach().numpy(), want[0].detach().numpy()) <= 1e-10
    g_ours = torch.autograd.grad((y.square().sum() + hT.sum()), list(ours.parameters()))
    g_want = torch.autograd.grad((want[0].square().sum() + want[1].sum()), list(ours.parameters()))
    for a, b in zip(g_ours, g_want):
        assert verify.rel_err(a.numpy(), b.numpy()) <= 1e-10
    cell = rt.GRUCell(3, 5, layer_norm=True, dtype=torch.float64)
    assert torch.equal(cell.ln_weight_ih, torch.ones(15, dtype=torch.float64))


def test_the_objects_and_init_params_start_the_gains_at_one():
    p = init_params(GRUSpec(layer_norm=True), 3, 4)
    assert list(p) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_weight_ih", "ln_weight_hh"]
    np.testing.assert_array_equal(p["ln_weight_ih"], np.ones(12, np.float32))
    np.testing.assert_array_equal(p["weight_ih"], rc.init_gru_params(3, 4)["weight_ih"])  # the draws are unchanged
    m = rc.GRU(3, 4, num_layers=2, layer_norm=True, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _, _ = m(x)
    first = rc.gru_forward(x, m._layer(0, 0), layer_norm=True)[0]
    want, _, _ = rc.gru_forward(first, m._layer(1, 0), layer_norm=True)
    np.testing.assert_array_equal(y, want)


def test_what_is_not_supported_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer_norm=True with reset_after=False is not supported"):
        GRUSpec(False, layer_norm=True)
    with pytest.raises(ValueError, match=r"layer_norm='yes' must be True or False"):
        GRUSpec(layer_norm="yes")
    p = verify.problem(GRUSpec(layer_norm=True))
    params = {k: v for k, v in p.params.items() if k != "ln_weight_hh"}
    with pytest.raises(ValueError, match=r"ln_weight_hh.*layer_norm=True"):
        rc.gru_forward(p.x, params, layer_norm=True)
    with pytest.raises(ValueError, match=r"ln_weight_ih"):
        rc.gru_forward(p.x, {**p.params, "ln_weight_ih": p.params["ln_weight_ih"][:-1]}, layer_norm=True)
