"""Parameter dictionaries in PyTorch's layout, so state dicts carry over.

LSTM: weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H,), bias_hh (4H,), gate
rows i, f, g, o; peephole="full" adds weight_ch (3H, H), "diagonal" adds
weight_ch (3H,), rows i, f, o; proj_size P adds weight_hr (P, H) and makes
weight_hh (4H, P).  GRU: the same names with 3H rows r, z, n.
layer_norm=True adds the LayerNorm gains ln_weight_ih and ln_weight_hh (GH,)
and, for the LSTM, ln_weight_c and ln_bias_c (H,), c's gain and shift.
Every entry is drawn from U(-1/√H, 1/√H), as torch.nn.LSTM/GRU do, but the
LayerNorm gains start at 1 and its shifts at 0, as torch.nn.LayerNorm's.
"""

import numpy as np

from . import _checks
from .variants import GRUSpec, LSTMSpec


def init_params(spec, input_size, hidden_size, *, bias=True, dtype="float32", xp=np, seed=0):
    """A dict of the parameters of a variant (`rnncells.variants`), drawn from U(-1/√H, 1/√H) (LayerNorm gains:
    ones, shifts: zeros; `initial_value`)."""
    dtype = _checks.float_dtype(dtype)
    _checks.sizes(input_size=input_size, hidden_size=hidden_size)
    shapes = spec.param_shapes(input_size, hidden_size, bias=_checks.flag("bias", bias))
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(hidden_size)
    def draw(key, shape):
        v = spec.initial_value(key)
        return rng.uniform(-k, k, size=shape) if v is None else np.full(shape, v)

    return {key: xp.asarray(draw(key, s).astype(dtype)) for key, s in shapes.items()}


def init_lstm_params(input_size, hidden_size, *, peephole=None, proj_size=0, bias=True, dtype="float32", xp=np,
                     seed=0):
    """A dict of LSTM parameters (torch names and layout), drawn from U(-1/√H, 1/√H); proj_size > 0 adds
    weight_hr, as torch.nn.LSTM(proj_size=) has.

    `xp` is numpy or cupy: the arrays are created there.  The same seed gives
    the same values on either.
    """
    spec = LSTMSpec(peephole, proj_size=proj_size)
    return init_params(spec, input_size, hidden_size, bias=bias, dtype=dtype, xp=xp, seed=seed)


def init_gru_params(input_size, hidden_size, *, bias=True, dtype="float32", xp=np, seed=0):
    """A dict of GRU parameters (torch names and layout), drawn from U(-1/√H, 1/√H)."""
    return init_params(GRUSpec(), input_size, hidden_size, bias=bias, dtype=dtype, xp=xp, seed=seed)
