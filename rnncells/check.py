"""`rnncells check`: the correctness tiers that run here, one row each.

Tier 1: every `deriv` rule and every cell variant's reference gradients
against float64 central differences.  Tier 2: the NumPy backend against the
reference in float64 and float32.  Each variant row is the worst over one
step, a sequence, and a sequence with `lengths` (one item of length 0).
"""

import numpy as np

from . import reference, verify

_MODES = ({"step": True}, {}, {"lengths": np.array([4, 0, 2])})


def rows():
    """Yield (tier, what, dtype, backend, worst relative error, bound)."""
    for op in reference.RULES:
        yield 1, f"deriv {op}", "float64", "reference vs FD", verify.deriv_error(op), verify.BOUNDS["fd"]
    for cell, variant in verify.VARIANTS:
        worst = max(verify.fd_error(verify.problem(cell, variant, **m)) for m in _MODES)
        yield 1, verify.variant_name(cell, variant), "float64", "reference vs FD", worst, verify.BOUNDS["fd"]
    for cell, variant in verify.VARIANTS:
        for dtype in ("float64", "float32"):
            worst = 0.0
            for m in _MODES:
                err, dtypes = verify.backend_error(verify.problem(cell, variant, dtype=dtype, **m))
                worst = max(worst, err if dtypes == {np.dtype(dtype)} else float("inf"))
            yield 2, verify.variant_name(cell, variant), dtype, "numpy vs reference", worst, verify.BOUNDS[dtype]


def main(out=print):
    """Print the table; return 0 if every row is within its bound, else 1."""
    out(f"{'tier':<5}{'what':<42}{'dtype':<9}{'backend':<22}{'worst rel err':>14}{'bound':>10}  result")
    failed = 0
    for tier, what, dtype, backend, err, bound in rows():
        ok = err <= bound  # NaN fails
        failed += not ok
        out(f"{tier:<5}{what:<42}{dtype:<9}{backend:<22}{err:>14.2e}{bound:>10.0e}  {'ok' if ok else 'FAIL'}")
    out("tier 3 (CuPy backend on a GPU): not run, the CUDA kernels are not built yet")
    out(f"{failed} row(s) failed" if failed else "all rows passed")
    return 1 if failed else 0
