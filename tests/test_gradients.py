"""Tier 1: every gradient of every cell variant against float64 central differences."""

import numpy as np
import pytest

from rnncells import verify

VARIANTS = [pytest.param(c, v, id=verify.variant_name(c, v).replace(" ", "-")) for c, v in verify.VARIANTS]


def _sizes(seed):
    rng = np.random.default_rng(100 + seed)
    T, B, I, H = (int(n) for n in rng.integers(1, 5, size=4))
    return dict(T=T, B=B, I=I, H=H)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_one_step(cell, variant, seed):
    p = verify.problem(cell, variant, step=True, seed=seed, **_sizes(seed))
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_sequence(cell, variant, seed):
    p = verify.problem(cell, variant, seed=seed, **_sizes(seed))
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


@pytest.mark.parametrize("cell,variant", VARIANTS)
def test_sequence_with_lengths(cell, variant):
    # one item runs all T steps, one none, one part-way
    p = verify.problem(cell, variant, T=4, B=3, I=2, H=3, lengths=np.array([2, 4, 0]), seed=3)
    assert verify.fd_error(p) <= verify.BOUNDS["fd"]


def test_finite_differences_catch_a_wrong_gradient(monkeypatch):
    """The check can fail: break one deriv rule and tier 1 must see it."""
    from rnncells import reference as ref

    rule = ref.RULES["sigmoid"]
    monkeypatch.setitem(ref.RULES, "sigmoid", rule._replace(bwd=lambda dz, x, y: (dz * ref.sigmoid(x),)))
    p = verify.problem("lstm", {"peephole": None, "candidate": "tanh"}, T=2, B=2, I=2, H=2)
    assert verify.fd_error(p) > 1e-2
