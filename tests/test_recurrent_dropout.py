"""Variational recurrent dropout (Gal & Ghahramani 2016; Keras's recurrent_dropout): in training the recurrent
GEMM reads d∘h, d = mask / (1 − p) with one mask per sequence; the rest of the cell (the GRU's z∘h, the states)
reads h itself; in evaluation nothing is dropped.

Every test that takes `spec` already runs the recurrent-dropout variants on every backend against the reference,
with the masks of `verify.MASK_SEED`; here: the masks, that those problems drop some units, evaluation, graphs,
and a few lines of plain torch autograd written from the equations as an independent implementation, against
every CPU backend and the adapter.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import api, verify
from rnncells.variants import GRUSpec, LSTMSpec
from variant_checks import assert_graph_replays_copy_each_calls_masks, call, torch_results

BACKENDS = ["reference", "numpy", pytest.param("cpu", marks=pytest.mark.host),
            pytest.param("cuda-host", marks=pytest.mark.host)]
DROPPED = [LSTMSpec(recurrent_dropout=0.25), LSTMSpec("full", recurrent_dropout=0.4), GRUSpec(recurrent_dropout=0.3),
           GRUSpec(False, recurrent_dropout=0.3)]


def _plain(spec):
    return type(spec).of({k: v for k, v in spec.kwargs().items() if k != "recurrent_dropout"})


def test_one_mask_per_sequence_keeps_about_one_minus_p_and_repeats_with_the_seed():
    spec = LSTMSpec(zoneout_c=0.5, recurrent_dropout=0.3)
    masks = api.training_masks(spec, np.random.default_rng(3), np, (7, 40, 50))
    assert list(masks) == ["c", "rdrop"]  # zoneout's first, as the adapter draws them too
    assert masks["rdrop"].shape == (40, 50) and masks["rdrop"].dtype == np.uint8
    assert set(np.unique(masks["rdrop"])) == {0, 1} and abs(masks["rdrop"].mean() - 0.7) < 0.02
    again = api.training_masks(spec, np.random.default_rng(3), np, (7, 40, 50))
    np.testing.assert_array_equal(masks["rdrop"], again["rdrop"])
    assert api.training_masks(GRUSpec(recurrent_dropout=0.3), np.random.default_rng(0), np, (1, 2, 2)).keys() == {
        "rdrop"}


@pytest.mark.parametrize("dropped", [s for s in verify.VARIANTS if s.recurrent_dropout], ids=str)
@pytest.mark.parametrize("mode", [{}, {"step": True}], ids=["seq", "step"])
def test_the_variant_problems_drop_some_units_and_keep_others(dropped, mode):
    """So the spec-parametrized tests see both a dropped and a kept unit."""
    spec = dropped
    p = verify.problem(spec, **mode)
    shape = (1 if p.step else p.x.shape[0], p.x.shape[-2], p.params["weight_hh"].shape[1])  # as `verify.run` draws
    masks = api.training_masks(spec, np.random.default_rng(verify.MASK_SEED), np, shape)
    assert set(np.unique(masks["rdrop"])) == {0, 1}


def test_training_needs_a_generator_and_bad_probabilities_are_refused():
    p = verify.problem(LSTMSpec(recurrent_dropout=0.2))
    with pytest.raises(ValueError, match=r"recurrent_dropout=0.2 in training needs generator="):
        rc.lstm_forward(p.x, p.params, recurrent_dropout=0.2)
    y, _, ctx = rc.lstm_forward(p.x, p.params, recurrent_dropout=0.2, training=False)
    assert ctx is None and y.shape == (4, 3, 2)
    for bad in (1.0, -0.5, "0.1"):
        with pytest.raises(ValueError, match=r"recurrent_dropout=.* must be a probability in \[0, 1\)"):
            GRUSpec(recurrent_dropout=bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropped", DROPPED, ids=str)
def test_keeping_every_unit_is_the_plain_cell_times_the_scale_and_evaluation_is_the_plain_cell(dropped, backend):
    """All ones: the GEMM reads h / (1 − p), which scaling Whh by 1 / (1 − p) gives the plain cell too."""
    spec = dropped
    p = verify.problem(spec, T=4, B=3, H=5, lengths=np.array([4, 2, 0]))
    ones = {"rdrop": np.ones((3, 5), np.uint8)}
    got = api.forward(spec, p.x, p.params, p.states, lengths=p.lengths, backend=backend, masks=ones)
    scaled = {**p.params, "weight_hh": p.params["weight_hh"] * spec.rdrop_scale()}
    want = api.forward(_plain(spec), p.x, scaled, p.states, lengths=p.lengths, backend=backend)
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        assert verify.rel_err(a, b) <= verify.BOUNDS["float64"]
    got = call(spec, p, backend, training=False)
    want = call(_plain(spec), p, backend, training=False)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.host
@pytest.mark.parametrize("dropped", DROPPED, ids=str)
def test_graph_replays_copy_each_calls_mask(dropped):
    assert_graph_replays_copy_each_calls_masks(dropped)


# --- the equations in plain torch autograd: an independent implementation -------------------------------------------


def _torch_cells(torch, spec, x, states, p, d):
    """The cell step by step in torch, its recurrent weights reading d∘h (d (B, H), or 1 in evaluation)."""
    sig, H = torch.sigmoid, states[0].shape[-1]
    s, ys = list(states), []
    for x_t in x:
        h = s[0]
        gi = x_t @ p["weight_ih"].T + p["bias_ih"]
        if spec.cell == "lstm":
            a = gi + (d * h) @ p["weight_hh"].T + p["bias_hh"]
            i, f, g, o = a.split(H, dim=-1)
            peep = (s[1] @ p["weight_ch"].T).split(H, dim=-1) if spec.peephole == "full" else (0, 0, 0)
            c = sig(f + peep[1]) * s[1] + sig(i + peep[0]) * torch.tanh(g)
            s = [sig(o + peep[2]) * torch.tanh(c), c]
        else:
            (w_rz, w_n), (b_rz, b_n) = (p[k].split([2 * H, H]) for k in ("weight_hh", "bias_hh"))
            r, z = sig(gi[:, : 2 * H] + (d * h) @ w_rz.T + b_rz).split(H, dim=-1)
            if spec.reset_after:
                n = torch.tanh(gi[:, 2 * H :] + r * ((d * h) @ w_n.T + b_n))
            else:
                n = torch.tanh(gi[:, 2 * H :] + (r * (d * h)) @ w_n.T + b_n)
            s = [(1 - z) * n + z * h]
        ys.append(s[0])
    return [torch.stack(ys), *s]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropped", DROPPED, ids=str)
def test_values_and_gradients_match_the_equations_in_torch(dropped, backend, mode):
    spec = dropped
    torch = pytest.importorskip("torch")
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    train = mode == "train"
    got = call(spec, p, backend, **({"generator": np.random.default_rng(11)} if train else {"training": False}))
    d = 1.0
    if train:
        mask = api.training_masks(spec, np.random.default_rng(11), np, (6, 4, 5))["rdrop"]
        assert 0 < mask.sum() < mask.size
        d = torch.tensor(mask * spec.rdrop_scale())
    want = torch_results(torch, p, lambda x, states, params: _torch_cells(torch, spec, x, states, params, d), train)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_adapter_draws_one_mask_per_call_from_torch_in_train_mode_and_none_in_eval_mode(kind):
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    cls, spec = (rt.LSTM, LSTMSpec) if kind == "lstm" else (rt.GRU, GRUSpec)
    ours = cls(3, 5, recurrent_dropout=0.3, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = {k[:-3]: v for k, v in ours.named_parameters()}  # weight_ih_l0 -> weight_ih
    zeros = [torch.zeros(4, 5, dtype=torch.float64)] * len(ours.spec.states)
    torch.manual_seed(5)
    y, _ = ours(x)
    torch.manual_seed(5)  # the adapter's draw: one torch.rand of (B, H), kept where >= p
    d = (torch.rand(4, 5) >= 0.3).double() / 0.7
    want = _torch_cells(torch, spec(recurrent_dropout=0.3), x, zeros, params, d)
    assert verify.rel_err(y.detach().numpy(), want[0].detach().numpy()) <= 1e-10
    g_ours = torch.autograd.grad(y.square().sum(), list(ours.parameters()))
    g_want = torch.autograd.grad(want[0].square().sum(), list(ours.parameters()))
    for a, b in zip(g_ours, g_want):
        assert verify.rel_err(a.numpy(), b.numpy()) <= 1e-10
    ours.eval()
    with torch.no_grad():
        y, _ = ours(x)
        want = _torch_cells(torch, spec(recurrent_dropout=0.3), x, zeros, params, 1.0)
    assert verify.rel_err(y.numpy(), want[0].numpy()) <= 1e-10


def test_objects_draw_from_their_generator_in_training_and_drop_nothing_after_eval():
    m = rc.LSTM(3, 4, recurrent_dropout=0.4, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    first, second = m(x)[0], m(x)[0]
    assert not np.array_equal(first, second)  # a new mask each call
    m.generator = np.random.default_rng(0)
    assert np.array_equal(m(x)[0], first)
    y, _, _ = m.eval()(x)
    want, _, _ = rc.lstm_forward(x, m._layer(0, 0))
    np.testing.assert_array_equal(y, want)
