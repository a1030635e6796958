"""Forward + backward of every variant, each checked against the reference; exit 1 if any is over its bound.

The program compute-sanitizer wraps in bench/gpu_session.sh (backend cupy, the default).  CI runs it
with backend cuda-host (the same kernels built for the CPU), so the script itself is known to work.
    python bench/sanitize_target.py [cupy|cuda-host|numpy]
"""

import sys

import numpy as np

from rnncells import verify

CASES = [
    dict(step=True, B=3, I=3, H=7),
    dict(T=4, B=5, I=3, H=7, lengths=np.array([4, 0, 2, 1, 4])),
    dict(T=3, B=2, I=3, H=300),  # several blocks, the last one partial
]


def main(backend):
    failed = 0
    for cell, variant in verify.VARIANTS:
        for dtype in ("float32", "float64"):
            err = max(verify.backend_error(verify.problem(cell, variant, dtype=dtype, **c), backend)[0] for c in CASES)
            ok = err <= verify.BOUNDS[dtype]
            failed += not ok
            print(f"{verify.variant_name(cell, variant):<42}{dtype:<9}{err:.2e}  {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cupy"))
