"""LayerNorm LSTM and GRU (haste's LayerNormLSTM and LayerNormGRU; Ba et al. 2016): x Wihᵀ and h Whhᵀ each
normalised over their G·H columns, with a gain of their own, before the biases are added and the cell reads them;
the LSTM's c' also normalised, with a gain and a shift, before the output's tanh.

Every test that takes `spec` already runs the layer_norm variants on every backend against the reference (and the
reference against finite differences); here: the row kernels against their NumPy twin (long rows, a partial last
stride, a mean far larger than the spread, NaN), a missing barrier caught by the host's block emulation (in the
row kernels and in the LSTM's cell kernels), the LSTM's cell kernels over rows longer than a block, the
equations in plain torch autograd (torch.nn.functional.layer_norm) against every CPU backend and the adapter,
parameters and refusals.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import _host, _kernels, _numpy, _sequence, verify
from rnncells.params import init_params
from rnncells.variants import LAYER_NORM_EPS, GRUSpec, LSTMSpec
from variant_checks import call, torch_results

BACKENDS = ["reference", "numpy", pytest.param("cpu", marks=pytest.mark.host),
            pytest.param("cuda-host", marks=pytest.mark.host)]
NORMED = {"gru": GRUSpec(zoneout_h=0.3, recurrent_dropout=0.25, layer_norm=True),  # with the masks of both
          "lstm": LSTMSpec(zoneout_h=0.3, zoneout_c=0.2, recurrent_dropout=0.25, layer_norm=True)}


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


class _CellKernelsOf:
    """The NumPy backend's ops, but the LayerNorm LSTM's cell kernels (lstm_ln_*_step) from `ops`."""

    def __init__(self, ops):
        self.ops = ops

    def __getattr__(self, name):
        return getattr(self.ops if name.startswith("lstm_ln_") else _numpy, name)


def _lstm_through_cell_kernels(ops):
    """A LayerNorm LSTM's forward and backward (H = 100: a row per block of 128 threads) with the cell kernels of
    `ops`, everything else NumPy's: y and every gradient, flattened."""
    spec = LSTMSpec(layer_norm=True)
    p = verify.problem(spec, T=2, B=2, I=3, H=100)
    mixed = _CellKernelsOf(ops)
    y, _, ctx = _sequence.forward(mixed, np, spec, p.x, p.params, tuple(p.states.values()), None)
    dy, *dstates = p.douts.values()
    dx, ds, dp = _sequence.backward(mixed, np, ctx, dy, tuple(dstates))
    return np.concatenate([a.ravel() for a in (y, dx, *ds, *dp.values())])


@pytest.mark.host
@pytest.mark.parametrize("barrier", range(len(BLOCK_SUM_BARRIERS)), ids=["after-write", "in-tree", "after-read"])
def test_the_host_emulation_catches_a_missing_barrier(edited_host_ops, host_launches, barrier):
    """Each of block_sum's three __syncthreads() removed in turn: the host build's block threads, taking turns,
    read what a barrier would have waited for, and the rows come out wrong, in the row kernels and in the
    LayerNorm LSTM's cell kernels, which sum with it too."""
    marker = BLOCK_SUM_BARRIERS[barrier]
    args = _rows_problem(2, 100, np.dtype("float64"))
    launched = host_launches(lambda ops: (_run_rows(ops, *args), _lstm_through_cell_kernels(ops)))
    broken = edited_host_ops("layernorm.cu", marker, marker.replace("__syncthreads();", ";"), "float64",
                             only=launched.__contains__)
    got, want = _run_rows(broken, *args), _run_rows(_numpy, *args)
    assert not verify.worst_of(verify.rel_err(a, b) for a, b in zip(got, want)) <= 1e-3
    right = _run_rows(_host.ops(), *args)
    assert verify.worst_of(verify.rel_err(a, b) for a, b in zip(right, want)) <= 1e-13
    want = _lstm_through_cell_kernels(_numpy)
    assert verify.rel_err(_lstm_through_cell_kernels(broken), want) > 1e-3
    assert verify.rel_err(_lstm_through_cell_kernels(_host.ops()), want) <= 1e-12


# --- the equations in plain torch autograd: an independent implementation -------------------------------------------


def _torch_gru(torch, x, states, p, zone=None, d=1.0):
    """haste's LayerNormGRU step by step: LN(x Wihᵀ)γ_x + b_ih and LN((d∘h) Whhᵀ)γ_h + b_hh, then torch.nn.GRU's
    cell on them; zone: {"h": zoneout masks [T, B, H]} (training) or None."""
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
        h = h1 if zone is None else zone["h"][t] * h + (1 - zone["h"][t]) * h1
        ys.append(h)
    return [torch.stack(ys), h]


def _torch_lstm(torch, x, states, p, zone=None, d=1.0):
    """haste's LayerNormLSTM step by step: a = LN(x Wihᵀ)γ_x + b_ih + LN((d∘h) Whhᵀ)γ_h + b_hh, split i, f, g, o as
    torch.nn.LSTM's; c' = σ(f)∘c + σ(i)∘tanh(g), h' = σ(o)∘tanh(LN(c')γ_c + β_c); zone: {"h", "c": zoneout masks
    [T, B, H]} (training) or None."""
    F, H = torch.nn.functional, states[1].shape[-1]

    def norm(a, gain, bias):
        return F.layer_norm(a, (4 * H,), gain, p.get(bias), eps=LAYER_NORM_EPS)

    (h, c), ys = states, []
    for t, x_t in enumerate(x):
        a = norm(x_t @ p["weight_ih"].T, p["ln_weight_ih"], "bias_ih")
        a = a + norm((d * h) @ p["weight_hh"].T, p["ln_weight_hh"], "bias_hh")
        i, f, g, o = a.split(H, dim=-1)
        c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h1 = torch.sigmoid(o) * torch.tanh(F.layer_norm(c1, (H,), p["ln_weight_c"], p["ln_bias_c"], eps=LAYER_NORM_EPS))
        if zone is not None:
            h1, c1 = zone["h"][t] * h + (1 - zone["h"][t]) * h1, zone["c"][t] * c + (1 - zone["c"][t]) * c1
        h, c = h1, c1
        ys.append(h)
    return [torch.stack(ys), h, c]


TORCH_CELLS = {"gru": _torch_gru, "lstm": _torch_lstm}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_gradients_match_the_equations_in_torch(backend, bias, cell):
    torch = pytest.importorskip("torch")
    spec = LSTMSpec(layer_norm=True) if cell == "lstm" else GRUSpec(layer_norm=True)
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    if not bias:
        p = p._replace(params={k: v for k, v in p.params.items() if not k.startswith("bias")})
    cells = TORCH_CELLS[cell]
    want = torch_results(torch, p, lambda x, states, params: cells(torch, x, states, params), True)
    got = call(spec, p, backend)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_with_zoneout_and_recurrent_dropout_in_training_too(backend, cell):
    torch = pytest.importorskip("torch")
    spec = NORMED[cell]
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    got = call(spec, p, backend, generator=np.random.default_rng(11))
    masks = rc.api.training_masks(spec, np.random.default_rng(11), np, (6, 4, 5))
    zone = {n: torch.tensor(masks[n], dtype=torch.float64) for n in spec.zoneout()}
    d = torch.tensor(masks["rdrop"] * spec.rdrop_scale())
    cells = TORCH_CELLS[cell]
    want = torch_results(torch, p, lambda x, states, params: cells(torch, x, states, params, zone, d), True)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


ADAPTER_NAMES = {"gru": ["ln_weight_ih_l0", "ln_weight_hh_l0"],
                 "lstm": ["ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"]}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_adapter_matches_the_equations_and_names_its_parameters_as_torch_would(cell):
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    G, module, cell_module = (4, rt.LSTM, rt.LSTMCell) if cell == "lstm" else (3, rt.GRU, rt.GRUCell)
    ours = module(3, 5, layer_norm=True, dtype=torch.float64)
    names = [n for n, _ in ours.named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", *ADAPTER_NAMES[cell]]
    assert torch.equal(ours.ln_weight_hh_l0, torch.ones(G * 5, dtype=torch.float64))  # torch.nn.LayerNorm's start
    if cell == "lstm":
        assert torch.equal(ours.ln_weight_c_l0, torch.ones(5, dtype=torch.float64))
        assert torch.equal(ours.ln_bias_c_l0, torch.zeros(5, dtype=torch.float64))
    assert "layer_norm=True" in repr(ours)
    with torch.no_grad():
        for k, name in enumerate(ADAPTER_NAMES[cell]):  # gains and shifts within 0.5 of where they start
            getattr(ours, name).add_(torch.rand(getattr(ours, name).shape, generator=torch.Generator().manual_seed(k),
                                                dtype=torch.float64) - 0.5)
    x = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = {k[:-3]: v for k, v in ours.named_parameters()}  # weight_ih_l0 -> weight_ih
    out, states = ours(x)
    states = states if isinstance(states, tuple) else (states,)
    zeros = [torch.zeros(4, 5, dtype=torch.float64)] * len(states)
    want = TORCH_CELLS[cell](torch, x, zeros, params)
    assert verify.rel_err(out.detach().numpy(), want[0].detach().numpy()) <= 1e-10
    loss = lambda y, finals: y.square().sum() + sum(s.sum() for s in finals)  # noqa: E731
    g_ours = torch.autograd.grad(loss(out, states), list(ours.parameters()))
    g_want = torch.autograd.grad(loss(want[0], want[1:]), list(ours.parameters()))
    for a, b in zip(g_ours, g_want):
        assert verify.rel_err(a.numpy(), b.numpy()) <= 1e-10
    cell = cell_module(3, 5, layer_norm=True, dtype=torch.float64)
    assert torch.equal(cell.ln_weight_ih, torch.ones(G * 5, dtype=torch.float64))


def test_the_objects_and_init_params_start_the_gains_at_one_and_the_shift_at_zero():
    p = init_params(GRUSpec(layer_norm=True), 3, 4)
    assert list(p) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_weight_ih", "ln_weight_hh"]
    np.testing.assert_array_equal(p["ln_weight_ih"], np.ones(12, np.float32))
    np.testing.assert_array_equal(p["weight_ih"], rc.init_gru_params(3, 4)["weight_ih"])  # the draws are unchanged
    p = init_params(LSTMSpec(layer_norm=True), 3, 4)
    assert list(p)[4:] == ["ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"]
    np.testing.assert_array_equal(p["ln_weight_c"], np.ones(4, np.float32))
    np.testing.assert_array_equal(p["ln_bias_c"], np.zeros(4, np.float32))
    np.testing.assert_array_equal(p["weight_hh"], rc.init_lstm_params(3, 4)["weight_hh"])
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    for module, forward in ((rc.GRU, rc.gru_forward), (rc.LSTM, rc.lstm_forward)):
        m = module(3, 4, num_layers=2, layer_norm=True, dtype="float64")
        y, _, _ = m(x)
        first = forward(x, m._layer(0, 0), layer_norm=True)[0]
        want, _, _ = forward(first, m._layer(1, 0), layer_norm=True)
        np.testing.assert_array_equal(y, want)


@pytest.mark.host
@pytest.mark.parametrize("H", [300, 512])  # 256 threads: a partial second stride, and two whole ones
def test_the_lstm_cell_kernels_stride_over_rows_longer_than_a_block(H):
    """The LayerNorm LSTM's cell kernels, one block of 256 threads per item, against the NumPy twin in float64."""
    spec = LSTMSpec(zoneout_h=0.3, zoneout_c=0.2, layer_norm=True)
    p = verify.problem(spec, T=2, B=2, I=3, H=H, lengths=np.array([2, 1]))
    got, want = (call(spec, p, backend, generator=np.random.default_rng(1)) for backend in ("cuda-host", "numpy"))
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-12


def test_what_is_not_supported_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer_norm=True with reset_after=False is not supported"):
        GRUSpec(False, layer_norm=True)
    with pytest.raises(ValueError, match=r"layer_norm='yes' must be True or False"):
        GRUSpec(layer_norm="yes")
    with pytest.raises(ValueError, match=r"layer_norm=1 must be True or False"):
        LSTMSpec(layer_norm=1)
    for peephole in ("full", "diagonal"):
        with pytest.raises(ValueError, match=rf"layer_norm=True with peephole='{peephole}' is not supported"):
            LSTMSpec(peephole, layer_norm=True)
    with pytest.raises(ValueError, match=r"layer_norm=True with proj_size=3 is not supported"):
        LSTMSpec(proj_size=3, layer_norm=True)
    p = verify.problem(LSTMSpec(layer_norm=True))
    with pytest.raises(ValueError, match=r"ln_bias_c.*layer_norm=True"):
        rc.lstm_forward(p.x, {k: v for k, v in p.params.items() if k != "ln_bias_c"}, layer_norm=True)
    with pytest.raises(ValueError, match=r"ln_weight_c.*\(hidden_size,\)"):
        rc.lstm_forward(p.x, {**p.params, "ln_weight_c": p.params["ln_weight_ih"]}, layer_norm=True)
    p = verify.problem(GRUSpec(layer_norm=True))
    params = {k: v for k, v in p.params.items() if k != "ln_weight_hh"}
    with pytest.raises(ValueError, match=r"ln_weight_hh.*layer_norm=True"):
        rc.gru_forward(p.x, params, layer_norm=True)
    with pytest.raises(ValueError, match=r"ln_weight_ih"):
        rc.gru_forward(p.x, {**p.params, "ln_weight_ih": p.params["ln_weight_ih"][:-1]}, layer_norm=True)
