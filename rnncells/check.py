"""`rnncells check`: the correctness tiers that can run here, one row each.

Tier 1: every `deriv` rule and every cell variant's reference gradients
against float64 central differences.  Tier 2: the NumPy backend, and the
CUDA kernels run on the host (`cuda-host`), against the reference.  Tier 3,
where a GPU is present: the CuPy backend against the reference.  The
"graphs" rows run the sequence loops as graphs (`GraphCache`; recorded and
replayed on the host for cuda-host, CUDA graphs for cupy); the "tf32" rows
run float32 with tf32=True (TF32's input truncation emulated on the host,
tensor cores on a GPU), against the TF32 bound.  float16 and bfloat16 rows
store in half precision and compute in float32 (`rnncells._dtypes`).  Each
variant row is the worst over one step, a sequence, a sequence with
`lengths` (one item of length 0) and a wide one (H = 300, several blocks).
Then every kernel instantiation compiled with NVRTC for sm_80 and sm_90.
"""

import concurrent.futures
import functools
import os
import re
import shutil

import numpy as np

from . import _backends, _kernels, tape, verify

_MODES = (
    {"step": True},
    {},
    {"lengths": np.array([4, 0, 2])},
    {"T": 3, "B": 5, "I": 7, "H": 300, "lengths": np.array([3, 1, 2, 0, 3])},
)


WHAT = max(len(str(s)) for s in verify.VARIANTS) + 2  # the width of the "what" column


def _nvrtc_missing():
    try:
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError:
        return "needs cuda-bindings and an NVRTC library: pip install 'rnncells[nvrtc]'"
    return None


def backends():
    """[(backend, reason it cannot run or None)] for tiers 2 and 3 here."""
    host = None if shutil.which("g++") else "needs g++ to build the kernels for the host"
    gpu = None if _backends.gpu_available() else "no CUDA GPU (or no CuPy) here"
    kinds = ("", " graphs", " tf32", " persistent")
    from . import _cpu

    cpu = None if _cpu.load() else "needs g++ and a BLAS with cblas to compile its loops"
    return [("numpy", None), ("cpu", cpu)] + [(f"{b}{k}", why) for b, why in (("cuda-host", host), ("cupy", gpu))
                                               for k in kinds]


def rows():
    """Yield (tier, what, dtype, backend, worst relative error, bound); error None means not run."""
    for op in tape.RULES:
        yield 1, f"deriv {op}", "float64", "reference vs FD", verify.deriv_error(op), verify.BOUNDS["fd"]
    for spec in verify.VARIANTS:
        worst = verify.worst_of(verify.fd_error(verify.problem(spec, **m)) for m in _MODES[:3])
        yield 1, str(spec), "float64", "reference vs FD", worst, verify.BOUNDS["fd"]
    for backend, why in backends():
        if why:
            yield _tier(backend), f"{backend}: {why}", "-", f"{backend} vs reference", None, None
        else:
            yield from backend_rows(backend)


def _tier(backend):
    return 3 if backend.startswith("cupy") else 2


def backend_rows(backend, match="", dtypes=None):
    """Yield the rows of one backend against the reference: every variant (whose name contains `match`), in every
    dtype (float32 only with tf32), or in those of `dtypes` (names) it has.

    `backend` is a backend's name, optionally followed by " graphs" (a
    GraphCache), " tf32" (float32 only, tf32=True) or " persistent"
    (persistent=True: the variants the persistent kernels run, whole
    sequences).  A row's error is the worst over the modes; a wrong output
    dtype counts as infinite.
    """
    from ._graphs import GraphCache

    name, *kind = backend.split()
    graphs, tf32, persistent = GraphCache() if "graphs" in kind else None, "tf32" in kind, "persistent" in kind
    tier = _tier(backend)
    every = ("float32",) if tf32 else ("float64", "float32", "float16", "bfloat16")
    for spec in (s for s in verify.VARIANTS if match in str(s)):
        for dtype in (d for d in every if dtypes is None or d in dtypes):
            worst = 0.0
            for m in _MODES[1:] if persistent else _MODES:
                p = verify.problem(spec, dtype=dtype, **m)
                err, stored = verify.backend_error(p, name, graphs, tf32, persistent)
                worst = verify.worst_of([worst, err if stored == {np.dtype(dtype)} else float("inf")])
            bound = verify.BOUNDS["float32-tf32" if tf32 else dtype]
            yield tier, str(spec), dtype, f"{backend} vs reference", worst, bound


def kernel_rows(archs=("80", "90")):
    """Yield (instantiation, {arch: (registers, spill stores, spill loads)}), or raise if NVRTC fails."""
    reports = {arch: nvrtc_report(arch) for arch in archs}
    for name in _kernels.instantiations():
        yield name, {arch: reports[arch][name] for arch in archs}


_PTXAS = re.compile(
    r"Compiling entry function '(\w+)' for 'sm_\d+'.*?"
    r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers",
    re.S,
)


def nvrtc_report(arch):
    """Compile every instantiation for sm_<arch> with NVRTC; {name: (registers, spill stores, spill loads)}.

    Needs cuda-bindings and an NVRTC library (the `nvrtc` extra); no GPU.
    Raises RuntimeError with NVRTC's log if the compile fails.  A process
    compiles each program text once per architecture (the tests ask often),
    the instantiations split over one NVRTC program per CPU, compiled side by
    side (NVRTC releases the GIL).
    """
    return dict(_nvrtc_report(arch, _kernels.program_source(), tuple(_kernels.instantiations()),
                              _kernels.nvrtc_options()))


@functools.lru_cache(maxsize=4)
def _nvrtc_report(arch, source, names, options):
    parts = max(1, min(len(names), len(os.sched_getaffinity(0))))
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:  # every part-th name: the heavy kernels spread out
        reports = pool.map(lambda p: _nvrtc_compile(arch, source, names[p::parts], options), range(parts))
        return {name: row for report in reports for name, row in report.items()}


def _nvrtc_compile(arch, source, names, options):
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"rnncells.cu", 0, [], [])
    _nvrtc_check(err, "nvrtcCreateProgram")
    for n in names:
        _nvrtc_check(nvrtc.nvrtcAddNameExpression(prog, n.encode())[0], "nvrtcAddNameExpression")
    opts = [f"--gpu-architecture=sm_{arch}", *options, "--ptxas-options=-v"]
    (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    log = log.decode(errors="replace")
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC failed for sm_{arch}:\n{log}")
    lowered = {nvrtc.nvrtcGetLoweredName(prog, n.encode())[1].decode(): n for n in names}
    report = {lowered[m[1]]: (int(m[4]), int(m[2]), int(m[3])) for m in _PTXAS.finditer(log)}
    nvrtc.nvrtcDestroyProgram(prog)
    missing = set(names) - set(report)
    if missing:
        raise RuntimeError(f"ptxas reported nothing for {sorted(missing)[:3]} ...")
    return report


def _nvrtc_check(err, what):
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {err}")


def main(out=print):
    """Print the tables; return 0 if every row that ran is within its bound, else 1."""
    out(f"{'tier':<5}{'what':<{WHAT}}{'dtype':<9}{'backend':<24}{'worst rel err':>14}{'bound':>10}  result")
    failed = 0
    for tier, what, dtype, backend, err, bound in rows():
        if err is None:
            out(f"{tier:<5}{what}  (not run)")
            continue
        ok = err <= bound  # NaN fails
        failed += not ok
        out(f"{tier:<5}{what:<{WHAT}}{dtype:<9}{backend:<24}{err:>14.2e}{bound:>10.0e}  {'ok' if ok else 'FAIL'}")
    out("")
    why = _nvrtc_missing()
    if why:
        out(f"kernels compiled with NVRTC for sm_80, sm_90: not run ({why})")
    else:
        out(f"{'kernel (NVRTC; registers / spill stores / spill loads in bytes)':<66}{'sm_80':>14}{'sm_90':>14}")
        try:
            for name, rep in kernel_rows():
                cells = "".join(f"{'%d / %d / %d' % rep[a]:>14}" for a in ("80", "90"))
                out(f"{name:<66}{cells}")
        except RuntimeError as e:
            failed += 1
            out(f"FAIL: {e}")
    out(f"{failed} row(s) failed" if failed else "all rows passed")
    return 1 if failed else 0
