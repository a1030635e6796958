"""The dtypes the cells take: what arrays store, and what the arithmetic runs in.

float32 and float64 compute in themselves.  float16 and bfloat16 (NumPy's
half, and ml_dtypes' bfloat16, which CuPy shares) are storage only: every
backend computes in float32 and rounds to the storage type, to nearest
even, where it stores into a buffer of the whole sequence.  What carries
from step to step (the cell state c, the gradients' carries) stays float32.
"""

import ml_dtypes
import numpy as np

FLOAT16, BFLOAT16 = np.dtype("float16"), np.dtype(ml_dtypes.bfloat16)
HALVES = (FLOAT16, BFLOAT16)
FLOATS = (np.dtype("float32"), np.dtype("float64"), *HALVES)


def compute(dtype):
    """The dtype the arithmetic on `dtype` storage runs in."""
    dtype = np.dtype(dtype)
    return np.dtype("float32") if dtype in HALVES else dtype


def unit_roundoff(dtype):
    """u = 2^-p for a p-bit significand: the largest relative error of one rounding to nearest (normal range)."""
    return float(ml_dtypes.finfo(dtype).eps) / 2
