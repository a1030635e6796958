"""Tier 1: the reference's deriv rules and tape, and its printed equations."""

import numpy as np
import pytest

from rnncells import reference as ref
from rnncells import verify
from rnncells.tape import RULES, Tape, Var, deriv

UNARY = ["tanh", "sigmoid", "softmax", "reciprocal", "inverse", "scale", "offset", "clip", "mean", "rsqrt", "rows"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("op", list(RULES))
def test_deriv_rule_matches_central_differences(op, seed):
    assert verify.deriv_error(op, seed=seed) <= verify.BOUNDS["fd"]


@pytest.mark.parametrize("op", list(RULES))
def test_deriv_returns_one_gradient_per_differentiable_operand(op):
    x, y = verify.operands(op, np.random.default_rng(1))
    grads = deriv(np.ones_like(RULES[op].fwd(x, y)), x, y, op)
    assert len(grads) == (1 if op in UNARY else 2)
    for g, v in zip(grads, (x, y)):
        assert g.shape == np.shape(v)


def test_broadcast_bias_gets_the_summed_gradient():
    dz = np.arange(6.0).reshape(2, 3)
    dx, db = deriv(dz, np.zeros((2, 3)), np.zeros((2, 1)), "add")
    np.testing.assert_array_equal(db, [[3.0], [12.0]])
    _, drow = deriv(dz, np.zeros((2, 3)), np.zeros(3), "add")
    np.testing.assert_array_equal(drow, [3.0, 5.0, 7.0])


def test_softmax_rule_is_the_softmax_jacobian_not_the_sigmoid():
    x = np.array([[0.3, -1.2, 2.0]])
    s = np.exp(x) / np.exp(x).sum()
    dz = np.array([[1.0, -2.0, 0.5]])
    jac = np.diag(s[0]) - np.outer(s[0], s[0])
    (dx,) = deriv(dz, x, None, "softmax")
    np.testing.assert_allclose(dx[0], dz[0] @ jac, rtol=1e-14, atol=1e-15)


def test_unknown_operator_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown operator 'pow'"):
        deriv(np.ones(2), np.ones(2), np.ones(2), "pow")


def test_tape_accumulates_a_reused_variable():
    tape = Tape()
    x = Var("x", np.array([1.5, -2.0]))
    z = tape("mul", x, x)  # z = x∘x is x used twice: two += into dx
    w = tape("add", z, x)  # and a third use
    d = tape.backward({w: np.array([1.0, 10.0])})
    np.testing.assert_array_equal(d[x], np.array([1.0, 10.0]) * (2 * x.value + 1))


def test_tape_names_intermediates_like_the_slides():
    tape = Tape()
    a, b = Var("a", np.ones(1)), Var("b", np.ones(1))
    z1 = tape("add", a, b)
    h = tape("tanh", z1, name="h_t")
    z2 = tape("scale", h, -1.0)
    assert (z1.name, h.name, z2.name) == ("z1", "h_t", "z2")
    fwd, bwd = tape.lines()
    assert fwd == ["1. z1 = a + b", "2. h_t = tanh(z1)", "3. z2 = -1·h_t"]
    assert bwd[0] == "# 3. z2 = -1·h_t" and bwd[1].strip() == "dh_t += -1·dz2"


# The slides' equations 1-31 for their LSTM (matrix peepholes, σ candidate),
# transcribed from the seed into the tape's notation.
SEED_LSTM = """z1 = W_fC C_{t-1}
z2 = W_fh h_{t-1}
z3 = z1 + z2
z4 = W_fx x_t
z5 = z3 + z4
z6 = z5 + b_f
f_t = σ(z6)
z7 = W_iC C_{t-1}
z8 = W_ih h_{t-1}
z9 = z7 + z8
z10 = W_ix x_t
z11 = z9 + z10
z12 = z11 + b_i
i_t = σ(z12)
z13 = W_Ch h_{t-1}
z14 = W_Cx x_t
z15 = z13 + z14
z16 = z15 + b_C
C̃_t = σ(z16)
z17 = f_t ∘ C_{t-1}
z18 = i_t ∘ C̃_t
C_t = z17 + z18
z19 = W_oC C_{t-1}
z20 = W_oh h_{t-1}
z21 = z19 + z20
z22 = W_ox x_t
z23 = z21 + z22
z24 = z23 + b_o
o_t = σ(z24)
z25 = tanh(C_t)
h_t = o_t ∘ z25""".splitlines()


def test_seed_cell_forward_is_the_slides_equations_1_to_31_in_order():
    text = ref.equations("lstm", peephole="full", candidate="sigmoid")
    numbered = [line for line in text.splitlines() if line[:1].isdigit()]
    assert numbered == [f"{k}. {eq}" for k, eq in enumerate(SEED_LSTM, 1)]
    assert "torch keeps two biases per gate" in text
    assert "b_f = b_fx + b_fh" in text


@pytest.mark.parametrize(
    "line",
    [
        "dz24 += do_t ∘ o_t ∘ (1 − o_t)",  # slides: [dz25] += deriv(dot, z25, 'sigmoid')
        "dz17 += dC_t",  # slides: deriv(dCt, z18, z18, '+')
        "di_t += dz18 ∘ C̃_t",  # slides: deriv(dz18, it, dtildeCt, '∘')
        "dW_ix += dz10 x_tᵀ",  # slides: deriv(dz10, Wix, xt, '+')
        "dW_fC += dz1 C_{t-1}ᵀ",  # slides: deriv(dz7, WfC, Ct-1, '*')
        "dW_Ch += dz13 h_{t-1}ᵀ",  # slides: ∇W_Ch L = h_{t-1} ∇z14 L
        "dz16 += dC̃_t ∘ C̃_t ∘ (1 − C̃_t)",  # slides: deriv(dtildeCt, 'sigmoid'), no operand
    ],
)
def test_seed_cell_backward_has_the_corrected_slide_lines(line):
    bwd = ref.equations("lstm", peephole="full", candidate="sigmoid").split("# backward")[1]
    assert line in [s.strip() for s in bwd.splitlines()]


def test_every_variant_prints_its_own_distinctive_equations():
    assert "z1 = w_fC ∘ C_{t-1}" in ref.equations("lstm", peephole="diagonal")
    assert "w_oC ∘ C_t" in ref.equations("lstm", peephole="diagonal")
    assert "C̃_t = tanh(" in ref.equations("lstm")
    gru = ref.equations("gru", reset_after=True)
    assert "r_t ∘" in gru and "n_t = tanh(" in gru and "1 + " in gru
    assert "z1 = W_rh h_{t-1}" in gru
    keras = ref.equations("gru", reset_after=False)
    assert "r_t ∘ h_{t-1}" in keras


def test_equations_rejects_unknown_variants():
    with pytest.raises(ValueError, match="peephole='ful'"):
        ref.equations("lstm", peephole="ful")
    with pytest.raises(ValueError, match="cell='rnn'"):
        ref.equations("rnn")
