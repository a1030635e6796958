"""Empty batches (B = 0) and sequences (T = 0) through every CPU backend, forward and backward."""

import numpy as np
import pytest

import rnncells as rc
from rnncells import verify


@pytest.mark.parametrize("backend", ["numpy", "cuda-host", "cuda-host graphs", "cuda-host persistent"])
@pytest.mark.parametrize("T,B,lengths", [(0, 3, None), (0, 3, [0, 0, 0]), (4, 0, None), (4, 0, [])])
def test_empty_shapes_give_the_reference(spec, T, B, lengths, backend):
    lengths = None if lengths is None else np.array(lengths, dtype=np.int64)
    p = verify.problem(spec, T=T, B=B, lengths=lengths)
    name, _, kind = backend.partition(" ")
    err, _ = verify.backend_error(p, name, graphs=rc.GraphCache() if kind == "graphs" else None,
                                  persistent="auto" if kind == "persistent" else False)
    assert err == 0.0  # nothing to compute: zeros, copies of the states and empty arrays, exactly


def test_the_reference_passes_the_states_through_an_empty_sequence(spec):
    p = verify.problem(spec, T=0, B=3)
    got = verify.run(p, "reference")
    for n in p.states:  # h0 -> hT, c0 -> cT, and their gradients straight back
        np.testing.assert_array_equal(got[n[0] + "T"], p.states[n])
        np.testing.assert_array_equal(got["d" + n], p.douts[f"d{n[0]}T"])
    assert got["y"].shape == p.douts["dy"].shape == (0, 3, p.spec.state_sizes(2)["h"]) and got["dx"].shape == (0, 3, 3)
    assert not any(got[k].any() for k in got if k.startswith("dweight") or k.startswith("dbias"))


@pytest.mark.parametrize("cls", [rc.LSTM, rc.GRU])
@pytest.mark.parametrize("shape", [(0, 3, 2), (4, 0, 2)], ids=["T=0", "B=0"])
def test_stacked_objects_take_empty_shapes(cls, shape):
    m = cls(2, 5, num_layers=2, bidirectional=True, dtype="float64")
    y, *_, ctx = m(np.ones(shape))
    dx, _ = m.backward(ctx, np.ones_like(y))
    assert y.shape == (*shape[:2], 10) and dx.shape == shape
    assert not any(g.any() for g in m.grads.values())
