"""rnncells: fast, verified LSTM and GRU cells.

Every derivative is computed by the seed's procedure in `rnncells.reference`
(checked against finite differences); the NumPy backend (and, on a GPU, the
CUDA kernels) are checked against that reference.  See README.md.
"""

from .api import (
    Context,
    gru_backward,
    gru_cell_backward,
    gru_cell_forward,
    gru_forward,
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
)
from ._graphs import GraphCache
from .modules import GRU, LSTM, GRUCell, LSTMCell
from .params import init_gru_params, init_lstm_params

__version__ = "0.1.0"

__all__ = [
    "Context",
    "GraphCache",
    "init_lstm_params",
    "init_gru_params",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_cell_forward",
    "gru_cell_backward",
    "gru_forward",
    "gru_backward",
    "LSTMCell",
    "GRUCell",
    "LSTM",
    "GRU",
]
