"""Tier 1: every gradient of every cell variant against float64 central differences."""

import numpy as np
import pytest

from rnncells import verify
from rnncells.variants import LSTMSpec


def _sizes(seed):
    rng = np.random.default_rng(100 + seed)
    T, B, I, H = (int(n) for n in rng.integers(1, 5, size=4))
    return dict(T=T, B=B, I=I, H=H)


@pytest.mark.parametrize("seed", range(2))
def test_one_step(spec, seed):
    p = verify.problem(spec, step=True, seed=seed, **_sizes(seed))
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


@pytest.mark.parametrize("seed", range(2))
def test_sequence(spec, seed):
    p = verify.problem(spec, seed=seed, **_sizes(seed))
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


def test_sequence_with_lengths(spec):
    # one item runs all T steps, one none, one part-way
    p = verify.problem(spec, T=4, B=3, I=2, H=3, lengths=np.array([2, 4, 0]), seed=3)
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


def test_finite_differences_catch_a_wrong_gradient(monkeypatch):
    """The check can fail: break one deriv rule and tier 1 must see it."""
    from rnncells import tape

    rule = tape.RULES["sigmoid"]
    monkeypatch.setitem(tape.RULES, "sigmoid", rule._replace(bwd=lambda dz, x, y, z: (dz * z,)))
    p = verify.problem(LSTMSpec(), T=2, B=2, I=2, H=2)
    assert verify.fd_error(p) > 1e-2
