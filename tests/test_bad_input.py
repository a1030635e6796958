"""Bad input raises at the API boundary, naming the argument, the expected and the actual."""

import re

import numpy as np
import pytest

import rnncells as rc
from rnncells import _checks

T, B, I, H = 4, 3, 2, 5


def lstm(**kw):
    return rc.init_lstm_params(I, H, dtype="float64", **kw)


def proj(P=2):
    """Parameters of a projected LSTM (proj_size P)."""
    return rc.init_lstm_params(I, H, proj_size=P, dtype="float64")


def x3(dtype="float64"):
    return np.zeros((T, B, I), dtype=dtype)


class FakeCupyArray:
    """Stands in for a cupy.ndarray: only its module and shape/dtype matter to the checks."""

    __module__ = "cupy._core.core"
    shape, dtype, ndim = (B, H), np.dtype("float64"), 2


CASES = [
    # shapes
    (lambda: rc.lstm_forward(np.zeros((B, I)), lstm()), ValueError, r"x has shape \(3, 2\); expected \(seq_len, batch, input_size\)"),
    (lambda: rc.lstm_forward(np.zeros((T, B, I + 1)), lstm()), ValueError, r"^x has shape \(4, 3, 3\), with 3 features; params\['weight_ih'\] has shape \(20, 2\), for input_size=2"),
    (lambda: rc.lstm_forward(x3(), {**lstm(), "weight_ih": np.zeros((7, I))}), ValueError, r"^params\['weight_ih'\] has shape \(7, 2\); expected \(20, 2\)"),
    (lambda: rc.lstm_forward(x3(), lstm(), h0=np.zeros((H, B))), ValueError, r"h0 has shape \(5, 3\); expected \(3, 5\) = \(batch, hidden_size\)"),
    (lambda: rc.lstm_cell_forward(np.zeros((B, I)), np.zeros((B, H)), np.zeros((B, H + 1)), lstm()), ValueError, r"c has shape \(3, 6\); expected \(3, 5\)"),
    (lambda: rc.gru_forward(x3(), {**rc.init_gru_params(I, H, dtype="float64"), "bias_hh": np.zeros(3)}), ValueError, r"params\['bias_hh'\] has shape \(3,\); expected \(15,\) = \(3\*hidden_size,\)"),
    (lambda: rc.lstm_forward(x3(), lstm(peephole="diagonal"), peephole="full"), ValueError, r"params\['weight_ch'\] has shape \(15,\); expected \(15, 5\)"),
    (lambda: rc.lstm_forward(x3(), proj(), proj_size=2, h0=np.zeros((B, H))), ValueError, r"h0 has shape \(3, 5\); expected \(3, 2\) = \(batch, proj_size\)"),
    (lambda: rc.lstm_forward(x3(), {**proj(), "weight_hr": np.zeros((H, 2))}, proj_size=2), ValueError, r"params\['weight_hr'\] has shape \(5, 2\); expected \(2, 5\) = \(proj_size, hidden_size\)"),
    (lambda: rc.lstm_forward(x3(), {**lstm(), "weight_hr": np.zeros((2, H))}, proj_size=2), ValueError, r"params\['weight_hh'\] has shape \(20, 5\); expected \(20, 2\) = \(4\*hidden_size, proj_size\)"),
    (lambda: rc.lstm_backward(rc.lstm_forward(x3(), proj(), proj_size=2)[-1], np.zeros((T, B, H))), ValueError, r"dy has shape \(4, 3, 5\); expected \(4, 3, 2\)"),
    (lambda: rc.LSTM(I, H, proj_size=2, dtype="float64")(x3(), (np.zeros((1, B, H)), None)), ValueError, r"h0 has shape \(1, 3, 5\); expected \(1, 3, 2\) = \(num_layers\*num_directions, batch, proj_size\)"),
    # dtypes
    (lambda: rc.lstm_forward(x3("int64"), lstm()), TypeError, r"x has dtype int64; expected float32, float64, float16 or bfloat16"),
    (lambda: rc.lstm_forward(x3("float32"), lstm()), TypeError, r"params\['weight_ih'\] has dtype float64 but x has float32"),
    (lambda: rc.lstm_forward(x3(), lstm(), h0=np.zeros((B, H), "float32")), TypeError, r"h0 has dtype float32 but x has float64"),
    (lambda: rc.init_lstm_params(I, H, dtype="complex64"), TypeError, r"dtype=complex64 is not supported; expected float32, float64, float16 or bfloat16"),
    # keys
    (lambda: rc.lstm_forward(x3(), {k: v for k, v in lstm().items() if k != "bias_hh"}), ValueError, r"params is missing 'bias_hh'"),
    (lambda: rc.lstm_forward(x3(), lstm(), peephole="full"), ValueError, r"params is missing 'weight_ch', needed for peephole='full'"),
    (lambda: rc.lstm_forward(x3(), {k: v for k, v in proj().items() if k != "weight_hr"}, proj_size=2), ValueError, r"params is missing 'weight_hr', needed for proj_size=2"),
    (lambda: rc.lstm_forward(x3(), lstm(peephole="full")), ValueError, r"params has unexpected key 'weight_ch'"),
    (lambda: rc.lstm_forward(x3(), [1, 2]), TypeError, r"params must be a dict of arrays, got list"),
    # lengths
    (lambda: rc.lstm_forward(x3(), lstm(), lengths=np.array([1, 9, 2])), ValueError, r"lengths\[1\] = 9 is out of range; each length must be in \[0, seq_len=4\]"),
    (lambda: rc.lstm_forward(x3(), lstm(), lengths=np.array([1, -1, 2])), ValueError, r"lengths\[1\] = -1 is out of range"),
    (lambda: rc.lstm_forward(x3(), lstm(), lengths=np.array([1, 2])), ValueError, r"lengths has shape \(2,\); expected \(3,\) = \(batch,\)"),
    (lambda: rc.gru_forward(x3(), rc.init_gru_params(I, H, dtype="float64"), lengths=np.array([1.0, 2.0, 3.0])), TypeError, r"lengths has dtype float64; expected an integer dtype"),
    # array kinds and devices
    (lambda: rc.lstm_forward(x3().tolist(), lstm()), TypeError, r"x must be a numpy or cupy array, got list"),
    (lambda: rc.lstm_forward(x3(), lstm(), h0=FakeCupyArray()), TypeError, r"h0 is a cupy array but x is a numpy array; all arrays of one call must be on the same device"),
    # variant names
    (lambda: rc.lstm_forward(x3(), lstm(), peephole="ful"), ValueError, r"peephole='ful' is not one of None, 'full', 'diagonal'"),
    (lambda: rc.lstm_forward(x3(), lstm(), candidate="relu"), ValueError, r"candidate='relu' is not one of 'tanh', 'sigmoid'"),
    (lambda: rc.lstm_forward(x3(), lstm(), cell_clip=-1), ValueError, r"cell_clip=-1 must be None or a positive finite number"),
    (lambda: rc.lstm_forward(x3(), lstm(), proj_size=-2), ValueError, r"proj_size=-2 must be 0 \(no projection\) or a positive integer"),
    (lambda: rc.lstm_forward(x3(), lstm(), proj_size=2.0), ValueError, r"proj_size=2.0 must be 0"),
    (lambda: rc.lstm_forward(x3(), proj(), proj_size=2, zoneout_h=0.1), ValueError, r"zoneout_h=0.1 with proj_size=2 is not supported"),
    (lambda: rc.LSTM(I, H, proj_size=2, recurrent_dropout=0.1), ValueError, r"recurrent_dropout=0.1 with proj_size=2 is not supported"),
    (lambda: rc.gru_forward(x3(), rc.init_gru_params(I, H, dtype="float64"), reset_after="yes"), ValueError, r"reset_after='yes' must be True or False"),
    (lambda: rc.lstm_forward(x3(), lstm(), zoneout=0.1), TypeError, r"unexpected keyword argument 'zoneout'; the LSTM variant flags are peephole, candidate, cell_clip"),
    (lambda: rc.gru_cell_forward(x3()[0], None, rc.init_gru_params(I, H, dtype="float64"), peephole="full"), TypeError, r"unexpected keyword argument 'peephole'; the GRU variant flags are reset_after"),
    (lambda: rc.LSTM(I, H, dtyp="float64"), TypeError, r"unexpected keyword argument 'dtyp'; the LSTM variant flags are peephole, candidate, cell_clip"),
    (lambda: rc.GRUCell(I, H, candidate="tanh"), TypeError, r"unexpected keyword argument 'candidate'; the GRU variant flags are reset_after"),
    (lambda: rc.lstm_forward(x3(), lstm(), backend="jax"), ValueError, r"backend='jax' is not one of 'reference', 'numpy', 'cpu', 'cuda-host', 'cupy'"),
    (lambda: rc.init_gru_params(0, H), ValueError, r"input_size=0 must be a positive integer"),
    (lambda: rc.lstm_forward(x3(), lstm(), backend="cupy"), TypeError, r"backend='cupy' cannot run on numpy arrays"),
    (lambda: rc.lstm_forward(x3(), lstm(), training="no"), TypeError, r"training='no' must be True or False"),
    (lambda: rc.gru_forward(x3(), rc.init_gru_params(I, H, dtype="float64"), training=1), TypeError, r"training=1 must be True or False"),
    # objects
    (lambda: rc.LSTM(I, H, num_layers=2, dtype="float64")(x3(), (np.zeros((1, B, H)), None)), ValueError, r"h0 has shape \(1, 3, 5\); expected \(2, 3, 5\) = \(num_layers\*num_directions, batch, hidden_size\)"),
    (lambda: rc.GRU(I, H, batch_first=True, dtype="float64")(np.zeros((B, T, I + 1))), ValueError, r"x has shape \(3, 4, 3\); expected \(batch, seq_len, input_size\) with input_size=2"),
    (lambda: rc.LSTM(I, H, dtype="float64")(x3(), (np.zeros((1, B, H)),)), TypeError, r"hx must be the pair \(h0, c0\) or None, got a tuple of 1"),
    (lambda: rc.LSTM(I, H, dtype="float64")(x3(), np.zeros((1, B, H))), TypeError, r"hx must be the pair \(h0, c0\) or None, got ndarray"),
    (lambda: rc.LSTM(I, H, dtype="float64")(x3(), ([0.0], None)), TypeError, r"h0 must be a numpy or cupy array or None, got list"),
    (lambda: rc.GRU(I, H, dtype="float64")(x3(), (np.zeros((1, B, H)),)), TypeError, r"h0 must be a numpy or cupy array or None, got a tuple: a GRU has one state"),
    (lambda: rc.LSTMCell(I, H, dtype="float64")(np.zeros((B, I)), (np.zeros((B, H)),)), TypeError, r"hx must be the pair \(h, c\) or None, got a tuple of 1"),
    (lambda: rc.GRUCell(I, H, dtype="float64")(np.zeros((B, I)), (np.zeros((B, H)),)), TypeError, r"h must be a numpy or cupy array or None, got a tuple"),
    (lambda: rc.LSTM(I, H, bidirectional="yes"), TypeError, r"bidirectional='yes' must be True or False"),
    (lambda: rc.GRU(I, H, batch_first=1), TypeError, r"batch_first=1 must be True or False"),
    (lambda: rc.GRU(I, H, bias=None), TypeError, r"bias=None must be True or False"),
    (lambda: rc.LSTMCell(I, H, bias="no"), TypeError, r"bias='no' must be True or False"),
    (lambda: rc.LSTM(I, H, backend="cupy"), TypeError, r"backend='cupy' cannot run on numpy arrays"),
    (lambda: rc.GRUCell(I, H, backend="gpu"), ValueError, r"backend='gpu' is not one of 'reference', 'numpy'"),
]


@pytest.mark.parametrize("call,exc,message", CASES)
def test_bad_input_is_named(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def _lstm_ctx():
    return rc.lstm_forward(x3(), lstm())[2]


BACKWARD_CASES = [
    (lambda: rc.lstm_backward(_lstm_ctx(), np.zeros((T, B, H + 1))), ValueError, r"dy has shape \(4, 3, 6\); expected \(4, 3, 5\)"),
    (lambda: rc.lstm_backward(_lstm_ctx(), None, dcT=np.zeros((B, H), "float32")), TypeError, r"dcT has dtype float32; expected float64"),
    (lambda: rc.gru_backward(_lstm_ctx(), None), ValueError, r"gru_backward was given the ctx of lstm_forward"),
    (lambda: rc.lstm_cell_backward(_lstm_ctx(), None, None), ValueError, r"lstm_cell_backward was given the ctx of lstm_forward"),
    (lambda: rc.lstm_backward("ctx", None), TypeError, r"ctx must be the Context returned by the forward, got str"),
    (lambda: rc.lstm_backward(_lstm_ctx(), FakeCupyArray()), TypeError, r"dy is a cupy array but the forward ran on numpy"),
]


def _module_ctx(module):
    return module(x3())[-1]


_lstm = rc.LSTM(I, H, dtype="float64")
_cell = rc.LSTMCell(I, H, dtype="float64")
BACKWARD_CASES += [
    (lambda: _lstm.backward(None, np.zeros((T, B, H))), TypeError, r"ctx must be the context returned by this LSTM's forward, got NoneType"),
    (lambda: _lstm.backward(_module_ctx(rc.LSTM(I, H, dtype="float64")), np.zeros((T, B, H))), ValueError, r"ctx was made by the forward of another LSTM; pass it to that object's backward"),
    (lambda: _lstm.backward(_lstm_ctx(), np.zeros((T, B, H))), TypeError, r"ctx must be the context returned by this LSTM's forward, got Context"),
    (lambda: _cell.backward(rc.LSTMCell(I, H, dtype="float64")(np.zeros((B, I)))[-1], None), ValueError, r"ctx was made by the forward of another LSTMCell"),
    (lambda: rc.GRUCell(I, H).backward((1, 2), None), TypeError, r"ctx must be the context returned by this GRUCell's forward, got tuple"),
]


@pytest.mark.parametrize("call,exc,message", BACKWARD_CASES)
def test_bad_backward_input_is_named(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_none_gradients_mean_zero():
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _, ctx = rc.lstm_forward(x, lstm())
    dx0, (dh0, dc0), dp = rc.lstm_backward(ctx, None)
    zeros = np.zeros_like
    dx1, (dh1, dc1), dq = rc.lstm_backward(ctx, zeros(y), zeros(dh0), zeros(dc0))
    for a, b in [(dx0, dx1), (dh0, dh1), (dc0, dc1), *((dp[k], dq[k]) for k in dp)]:
        np.testing.assert_array_equal(a, b)
        assert not a.any()


def _huge(*shape):
    """A float32 array of any shape in a few bytes: one zero, broadcast (the check comes before any copy)."""
    return np.broadcast_to(np.float32(0), shape)


@pytest.mark.host
@pytest.mark.parametrize("x_shape,hidden,what", [
    ((1, 2**29, 1), 1, r"batch\*4\*hidden_size, the elements of one step's gates, is 2,147,483,648"),
    ((2**16, 2**15, 1), 1, r"seq_len\*batch, the rows of the sequence GEMMs, is 2,147,483,648"),
    ((1, 1, 2**31), 1, r"input_size, is 2,147,483,648"),
    ((2**29, 1), 1, r"batch\*4\*hidden_size, the elements of one step's gates, is 2,147,483,648"),  # x (B, I)
])
def test_kernel_backends_refuse_what_32_bit_indices_cannot_reach(x_shape, hidden, what):
    params = {"weight_ih": _huge(4 * hidden, x_shape[-1]), "weight_hh": _huge(4 * hidden, hidden)}
    call = (lambda: rc.lstm_forward(_huge(*x_shape), params, backend="cuda-host")) if len(x_shape) == 3 else (
        lambda: rc.lstm_cell_forward(_huge(*x_shape), None, None, params, backend="cuda-host"))
    with pytest.raises(ValueError, match=rf"x has shape {re.escape(str(x_shape))} with hidden_size={hidden}: {what}, past "
                                         r"2\*\*31 - 1"):
        call()
    # the largest sizes that fit pass the check
    _checks.index_range((1, 2**29 - 1, 2**31 - 1), 1)
    _checks.index_range((2**16, 2**15 - 1, 1), 1)
