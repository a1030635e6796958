"""Zoneout (Krueger et al. 2016): a unit of h (zoneout_h) or of the LSTM's c (zoneout_c) keeps its previous value
with that probability in training, one mask per step from the caller's generator; in evaluation, the expectation.

Every test that takes `spec` already runs the zoneout variants on every backend against the reference, with the
masks of `verify.MASK_SEED`; here: the masks, the generator's checks, the masks' meaning at their extremes, the
expectation, graphs, and torch.nn's own cells with zoneout applied around them as an independent implementation.
"""

import numpy as np
import pytest

import rnncells as rc
from rnncells import api, verify
from rnncells.variants import GRUSpec, LSTMSpec
from variant_checks import assert_graph_replays_copy_each_calls_masks, call, torch_results

BACKENDS = ["reference", "numpy", pytest.param("cpu", marks=pytest.mark.host),
            pytest.param("cuda-host", marks=pytest.mark.host)]
ZONED = [LSTMSpec(zoneout_h=0.3, zoneout_c=0.2), LSTMSpec("diagonal", zoneout_c=0.5), GRUSpec(zoneout_h=0.25),
         GRUSpec(False, zoneout_h=0.25)]


def test_masks_keep_about_p_of_the_units_and_repeat_with_the_seed():
    spec = LSTMSpec(zoneout_h=0.1, zoneout_c=0.6)
    masks = api.training_masks(spec, np.random.default_rng(3), np, (50, 20, 30))
    assert list(masks) == ["h", "c"] and all(m.dtype == np.uint8 and m.shape == (50, 20, 30) for m in masks.values())
    assert set(np.unique(masks["h"])) == {0, 1}
    assert abs(masks["h"].mean() - 0.1) < 0.01 and abs(masks["c"].mean() - 0.6) < 0.02
    again = api.training_masks(spec, np.random.default_rng(3), np, (50, 20, 30))
    assert all(np.array_equal(masks[n], again[n]) for n in masks)
    assert api.training_masks(LSTMSpec(zoneout_c=0.6), np.random.default_rng(3), np, (2, 2, 2)).keys() == {"c"}
    assert api.training_masks(LSTMSpec(), None, np, (2, 2, 2)) is None


def test_training_with_zoneout_needs_a_generator_of_the_arrays_kind():
    p = verify.problem(GRUSpec(zoneout_h=0.1))
    with pytest.raises(ValueError, match=r"zoneout_h=0.1 in training needs generator="):
        rc.gru_forward(p.x, p.params, zoneout_h=0.1)
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator or a cupy.random.Generator, "
                                        "got RandomState"):
        rc.gru_forward(p.x, p.params, zoneout_h=0.1, generator=np.random.RandomState(0))
    y, _, ctx = rc.gru_forward(p.x, p.params, zoneout_h=0.1, training=False)  # the expectation needs none
    assert ctx is None and y.shape == (4, 3, 2)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.1", True])
def test_a_zoneout_that_is_not_a_probability_is_refused(bad):
    with pytest.raises(ValueError, match=r"zoneout_c=.* must be a probability in \[0, 1\)"):
        LSTMSpec(zoneout_c=bad)
    with pytest.raises(ValueError, match=r"zoneout_h=.* must be a probability in \[0, 1\)"):
        rc.GRU(3, 4, zoneout_h=bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zoned", ZONED, ids=str)
def test_all_ones_keep_the_initial_state_and_all_zeros_are_the_plain_cell(zoned, backend):
    spec = zoned
    p = verify.problem(spec, T=4, B=3, H=5, lengths=np.array([4, 2, 0]))
    T, B, H = 4, 3, 5
    keep = {n: np.ones((T, B, H), np.uint8) for n in spec.zoneout()}
    y, finals, _ = api.forward(spec, p.x, p.params, p.states, lengths=p.lengths, backend=backend, masks=keep)
    if "h" in keep:
        running = np.arange(T)[:, None, None] < p.lengths[:, None]
        np.testing.assert_array_equal(y, np.where(running, p.states["h0"], 0.0))
    for name, final in zip(spec.states, finals):
        if name in keep:
            np.testing.assert_array_equal(final, p.states[name + "0"])
    none = {n: np.zeros((T, B, H), np.uint8) for n in spec.zoneout()}
    plain = type(spec).of({k: v for k, v in spec.kwargs().items() if not k.startswith("zoneout")})
    got = api.forward(spec, p.x, p.params, p.states, lengths=p.lengths, backend=backend, masks=none)
    want = api.forward(plain, p.x, p.params, p.states, lengths=p.lengths, backend=backend)
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("zoned", ZONED, ids=str)
def test_evaluation_uses_the_expectation_as_the_reference_does(zoned, backend):
    spec = zoned
    p = verify.problem(spec, T=5, B=3, H=4, lengths=np.array([5, 3, 1]))
    want = call(spec, p, "reference", training=False)
    got = call(spec, p, backend, training=False)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= verify.BOUNDS["float64"]
    mixed = p.states["h0"] * 0  # and it is a mixture: not the plain cell, not the kept state
    plain = type(spec).of({k: v for k, v in spec.kwargs().items() if not k.startswith("zoneout")})
    assert not np.allclose(got[0], call(plain, p, backend, training=False)[0]) and not np.allclose(got[0], mixed)


@pytest.mark.host
@pytest.mark.parametrize("zoned", ZONED, ids=str)
def test_graph_replays_copy_each_calls_masks(zoned):
    assert_graph_replays_copy_each_calls_masks(zoned)


# --- torch.nn's cells with zoneout around them: an independent implementation --------------------------------------


def _torch_zoneout(torch, spec, x, states, p, masks):
    """Krueger et al.'s zoneout around torch.nn.LSTMCell / GRUCell, step by step; masks {state: (T, B, H) 0/1} or
    {state: p} for the expectation."""
    lstm = spec.cell == "lstm"
    cell = (torch.nn.LSTMCell if lstm else torch.nn.GRUCell)(x.shape[-1], states[0].shape[-1], dtype=torch.float64)
    ys, s = [], list(states)
    for t, x_t in enumerate(x):  # the cell with the parameters p (autograd reaches them)
        new = torch.func.functional_call(cell, p, (x_t, tuple(s) if lstm else s[0]))
        new = new if lstm else (new,)
        for k, (name, old) in enumerate(zip(spec.states, s)):
            d = masks.get(name, 0.0)
            d = d[t] if torch.is_tensor(d) else d
            s[k] = d * old + (1 - d) * new[k]
        ys.append(s[0])
    return [torch.stack(ys), *s]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zoned", [ZONED[0], ZONED[2]], ids=str)
def test_values_and_gradients_match_torch_cells_with_zoneout_around_them(zoned, backend, mode):
    spec = zoned
    torch = pytest.importorskip("torch")
    p = verify.problem(spec, T=6, B=4, I=3, H=5, seed=2)
    train = mode == "train"
    kw = {"generator": np.random.default_rng(11)} if train else {"training": False}
    got = call(spec, p, backend, **kw)
    masks = api.training_masks(spec, np.random.default_rng(11), np, (6, 4, 5)) if train else spec.zoneout()
    masks = {n: torch.tensor(m, dtype=torch.float64) if train else m for n, m in masks.items()}
    want = torch_results(torch, p, lambda x, states, params: _torch_zoneout(torch, spec, x, states, params, masks),
                         train)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert verify.rel_err(a, b) <= 1e-10


def test_the_adapter_draws_masks_from_torch_in_train_mode_and_uses_the_expectation_in_eval_mode():
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    ours = rt.LSTM(3, 5, zoneout_h=0.3, zoneout_c=0.2, dtype=torch.float64)
    assert ours.state_dict().keys() == torch.nn.LSTM(3, 5).state_dict().keys()
    x = torch.randn(6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = {k[:-3]: v for k, v in ours.named_parameters()}  # weight_ih_l0 -> weight_ih
    zeros = [torch.zeros(4, 5, dtype=torch.float64)] * 2
    torch.manual_seed(5)
    y, (h, c) = ours(x)
    torch.manual_seed(5)  # the adapter's draws: h's masks, then c's, each torch.rand of (T, B, H)
    masks = {n: (torch.rand(6, 4, 5) < p).double() for n, p in (("h", 0.3), ("c", 0.2))}
    want = _torch_zoneout(torch, ours.spec, x, zeros, params, masks)
    for a, b in zip((y, h[0], c[0]), want):
        assert verify.rel_err(a.detach().numpy(), b.detach().numpy()) <= 1e-10
    g_ours = torch.autograd.grad(y.square().sum(), list(ours.parameters()))
    g_want = torch.autograd.grad(want[0].square().sum(), list(ours.parameters()))
    for a, b in zip(g_ours, g_want):
        assert verify.rel_err(a.numpy(), b.numpy()) <= 1e-10
    ours.eval()
    with torch.no_grad():
        y, _ = ours(x)
        want = _torch_zoneout(torch, ours.spec, x, zeros, params, {"h": 0.3, "c": 0.2})
    assert verify.rel_err(y.numpy(), want[0].numpy()) <= 1e-10


def test_objects_draw_from_their_generator_in_training_and_use_the_expectation_after_eval():
    m = rc.GRU(3, 4, zoneout_h=0.4, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    first, second = m(x)[0], m(x)[0]
    assert not np.array_equal(first, second)  # new masks each call
    m.generator = np.random.default_rng(0)
    assert np.array_equal(m(x)[0], first)  # the object's generator starts from its seed
    y, _, _ = m.eval()(x)
    want, _, _ = rc.gru_forward(x, m._layer(0, 0), zoneout_h=0.4, training=False)
    np.testing.assert_array_equal(y, want)
    assert m.train() is m and m.training
