"""Forward + backward of every variant, each checked against the reference; exit 1 if any is over its bound.

The program compute-sanitizer wraps in bench/gpu_session.sh (backend cupy, the default): the rows of
`rnncells check` for one backend, of the variants whose name contains MATCH if given (racecheck runs the
layer_norm ones and the persistent kernels, whose blocks share memory), in the dtypes of DTYPES (comma-separated;
default all four).  CI runs it with backend cuda-host (the same kernels built for the CPU), so the script itself
is known to work.
    python bench/sanitize_target.py [cupy|"cupy graphs"|"cupy persistent"|cuda-host|...|numpy] [MATCH] [DTYPES]
"""

import sys

from rnncells import check


def main(backend, match="", dtypes=""):
    failed = 0
    for _, what, dtype, _, err, bound in check.backend_rows(backend, match, dtypes.split(",") if dtypes else None):
        ok = err <= bound  # NaN fails
        failed += not ok
        print(f"{what:<42} {dtype:<9}{err:.2e}  {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]) if len(sys.argv) > 1 else main("cupy"))
