"""The "cpu" backend: the NumPy backend with each step loop compiled whole.

Everything but the step loops is the NumPy backend's (`rnncells._numpy`):
the buffers, the big GEMMs before and after the loops, the bias sums.  The
loops themselves, a GEMM and a kernel or two per step, cost the interpreter
microseconds a step from Python, more than a small step computes; here they
run in C++ (kernels/cpu_loops.h: the CUDA kernels built for the CPU, between
calls to the cblas GEMM of NumPy's own BLAS), one call per sequence.  Half
storage (float16, bfloat16) keeps the NumPy loops.

The library is built with g++ on first use and cached on disk, keyed on the
sources, the flags and the compiler (`cache_dir()`).  `load()` is None where
it cannot be built or NumPy's BLAS exports no cblas GEMM; the "cpu" backend,
the default of NumPy arrays, is then the NumPy backend itself.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import _numpy
from ._host import check_arguments, pack, read_signature
from ._kernels import SOURCES, TYPES, kernel_dir, scalars
from ._kernels import _flag as _bool
from .variants import LAYER_NORM_EPS, LSTMSpec, every

DTYPES = (np.dtype("float32"), np.dtype("float64"))  # S = C: the compiled loops' storage is their arithmetic
FLAGS = ("-std=c++17", "-O3", "-shared", "-fPIC")


def flags(spec):
    """A spec's template flags as the loops take them (the GRU's reset_after first: a loop of each)."""
    return spec.template_args() if isinstance(spec, LSTMSpec) else (_bool(spec.reset_after), *spec.template_args())


def loops():
    """{(loop, dtype, template flags, [training]): the C++ instantiation} for every compiled loop."""
    names = {}
    for dt in DTYPES:
        s = TYPES[dt][0]
        for spec in every():
            args = ", ".join([s, *flags(spec)])
            for loop in [spec.cell] + (["projected_lstm"] if isinstance(spec, LSTMSpec) else []):
                for training in (True, False):
                    names[f"{loop}_forward", dt, flags(spec), training] = (f"{loop}_forward_steps<{args}, "
                                                                           f"{_bool(training)}>")
                names[f"{loop}_backward", dt, flags(spec)] = f"{loop}_backward_steps<{args}>"
    return names


def library_source(names):
    """C++ that exports, per instantiation k, rnncells_loop_k(void** args) and its signature."""
    lines = ['#include "cpu_loops.h"']
    for k, name in enumerate(names):
        lines.append(f'extern "C" void rnncells_loop_{k}(void** args) {{ call(&{name}, args); }}')
        lines.append(f'extern "C" const char* const* rnncells_loop_{k}_signature() {{ return signature(&{name}); }}')
    return "\n".join(lines) + "\n"


def _compiler():
    """g++'s path and its version line, or None without g++."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    r = subprocess.run([gxx, "--version"], capture_output=True, text=True)
    return gxx, r.stdout.splitlines()[0] if r.returncode == 0 and r.stdout else "g++"


def cache_dir():
    """Where built libraries are kept: $XDG_CACHE_HOME/rnncells, else ~/.cache/rnncells."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnncells"


def build(out_dir, gxx, version):
    """The loops' library in out_dir, named by a hash of everything it is built from (built only if absent)."""
    source = library_source(loops().values())
    h = hashlib.sha256("\0".join([source, *FLAGS, version]).encode())
    for name in (*SOURCES, "common.cuh", "host.h", "cpu_loops.h"):
        h.update((kernel_dir() / name).read_bytes())
    lib = Path(out_dir) / f"cpu-loops-{h.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # built aside, then renamed: no half-written library
        src = Path(tmp) / "cpu_loops.cpp"
        src.write_text(source)
        r = subprocess.run([gxx, *FLAGS, f"-I{kernel_dir()}", str(src), "-o", str(Path(tmp) / lib.name)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"g++ failed on kernels/cpu_loops.h:\n{r.stderr}")
        os.replace(Path(tmp) / lib.name, lib)
    return lib


def blas_functions():
    """{dtype: (gemm, gemv, ilp64)}: the addresses of NumPy's BLAS's cblas_?gemm and cblas_?gemv, and whether
    they take 64-bit ints; None if it has none.

    Wheels of NumPy ship OpenBLAS with 64-bit ints and its symbols renamed
    (scipy_cblas_sgemm64_); other builds export cblas_sgemm with 32-bit ints.
    """
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    for controller in _numpy.blas().lib_controllers:
        lib = ctypes.CDLL(controller.filepath)
        for prefix in ("scipy_", ""):
            for suffix, ilp64 in (("64_", 1), ("", 0)):
                found = {dt: [getattr(lib, f"{prefix}cblas_{k}{op}{suffix}", None) for op in ("gemm", "gemv")]
                         for dt, k in zip(DTYPES, "sd")}
                if all(all(fs) for fs in found.values()):
                    return {dt: (*map(address, fs), ilp64) for dt, fs in found.items()}
    return None


class _Blas(ctypes.Structure):
    _fields_ = [("gemm", ctypes.c_void_p), ("gemv", ctypes.c_void_p), ("ilp64", ctypes.c_int)]


class Loops:
    """The compiled loops of a library made by `build`, called with the buffers of `rnncells._sequence`."""

    def __init__(self, library, blas):
        self.lib = ctypes.CDLL(str(library))
        self.blas = {dt: _Blas(*functions) for dt, functions in blas.items()}
        self.functions, self.signatures = {}, {}
        for k, key in enumerate(loops()):
            self.functions[key] = getattr(self.lib, f"rnncells_loop_{k}")
            self.signatures[key] = read_signature(self.lib, f"rnncells_loop_{k}_signature")

    def call(self, key, dtype, *args):
        """The loop `key` on `args` after the BLAS of `dtype` (ints, C-contiguous arrays of the kernels' types,
        or None for null), checked as host.h's launches are."""
        name = f"{key[0]} loop"
        check_arguments(name, self.signatures[key], args, leading=["Blas"])
        packed, _holders = pack(name, args, holders=[self.blas[dtype]])
        self.functions[key](packed)

    # one per loop of rnncells._sequence, with its arguments

    def _lstm_forward_steps(self, b, T, spec, training):
        B, H = b.y.shape[1:]
        dt = b.y.dtype
        self.call(("lstm_forward", dt, flags(spec), training), dt, T, B, H, *scalars(spec, dt), b.xw, b.h0, b.c0,
                  b.w_hh, b.w_ch, b.w_peep, b.zone_h, b.zone_c, b.rdrop, b.lengths, b.y, b.cs, b.gates, b.h_last,
                  b.hw, b.cw, b.hd, dt.type(LAYER_NORM_EPS), b.ln_h, b.gamma_c, b.beta_c, b.h_hat, b.rstd_h, b.c_hat,
                  b.rstd_c)

    def _lstm_backward_steps(self, ctx, g, w_rec, T):
        B, H = g.dy.shape[1:]
        dt = g.da.dtype
        self.call(("lstm_backward", dt, flags(ctx.spec)), dt, T, B, H, *scalars(ctx.spec, dt), w_rec.shape[1],
                  ctx.gates, ctx.c0, ctx.cs, g.dy, w_rec, ctx.w_peep, ctx.zone_h, ctx.zone_c, ctx.rdrop, ctx.lengths,
                  g.dcarry, g.drec, g.da, ctx.c_hat, ctx.rstd_c, ctx.gamma_c, ctx.beta_c, ctx.h_hat, ctx.rstd_h,
                  ctx.ln_h, g.dn, g.da_raw)

    def _projected_lstm_forward_steps(self, b, T, spec, training):
        B, H = b.ms.shape[1:]
        dt = b.y.dtype
        self.call(("projected_lstm_forward", dt, flags(spec), training), dt, T, B, H, b.y.shape[2],
                  *scalars(spec, dt), b.xw, b.h0, b.c0, b.w_hh, b.w_ch, b.w_peep, b.w_hr, b.zone_c, b.lengths, b.y,
                  b.cs, b.gates, b.ms, b.hw, b.cw)

    def _projected_lstm_backward_steps(self, ctx, g, w_rec, T):
        B, H = ctx.cs.shape[1:]
        dt = g.da.dtype
        self.call(("projected_lstm_backward", dt, flags(ctx.spec)), dt, T, B, H, g.dhp.shape[2],
                  *scalars(ctx.spec, dt), g.drec.shape[2], ctx.gates, ctx.c0, ctx.cs, ctx.w_hh, g.w_hr, w_rec,
                  ctx.w_peep, ctx.zone_c, ctx.lengths, g.dhp, g.dcarry, g.drec, g.da)

    def _gru_forward_steps(self, b, T, spec, training):
        B, H = b.y.shape[1:]
        rh, work = (None, (b.gh, None, None)) if spec.reset_after else (b.rh, (None, b.ghrz, b.ghn))
        dt = b.y.dtype
        self.call(("gru_forward", dt, flags(spec), training), dt, T, B, H, *scalars(spec, dt), b.xw, b.h0, b.w_hh,
                  b.b_hn, b.zone_h, b.rdrop, b.lengths, b.y, b.gates, rh, b.h_last, *work, b.hd,
                  dt.type(LAYER_NORM_EPS), b.ln_h, b.h_hat, b.rstd_h)

    def _gru_backward_steps(self, ctx, g, T):
        B, H = g.dy.shape[1:]
        dt = g.dg.dtype
        self.call(("gru_backward", dt, flags(ctx.spec)), dt, T, B, H, *scalars(ctx.spec, dt), ctx.gates, ctx.h0,
                  ctx.y, g.hd, g.dy, ctx.w_hh, ctx.zone_h, ctx.rdrop, ctx.lengths, g.dcarry, g.drec, g.dg, g.dgh,
                  g.drh, ctx.h_hat, ctx.rstd_h, ctx.ln_h, g.dgh_raw)


@functools.cache
def load():
    """The compiled loops, built on first use (cached on disk), or None where they cannot be: no g++, a
    failed build, or a BLAS without cblas GEMMs."""
    compiler, blas = _compiler(), blas_functions()
    if compiler is None or blas is None:
        return None
    try:
        library = build(cache_dir(), *compiler)
    except (OSError, RuntimeError):  # a cache we cannot write to: build for this process only
        library = build(tempfile.mkdtemp(prefix="rnncells-cpu-"), *compiler)
    return Loops(library, blas)


# The compiled loops run the kernels one element after another, unvectorised (~40 ns an element of an LSTM
# step), where NumPy's ufuncs vectorise but cost microseconds of interpreter per step.  Measured on 2 cores
# (T=20, one BLAS thread, NumPy loop time / compiled): B·H = 256-512: 2.2x faster (LSTM forward, B=1, H=256;
# B=4, H=128); 1024: 0.98-1.3x; 2048-32768: 0.74-1.02x.  So steps of up to this many elements are compiled.
COMPILED_MAX_STEP = 1024


class CpuOps:
    """The NumPy backend's ops (`rnncells._numpy`), whose `run_compiled` runs the float32 and float64 loops of
    small steps (B·H <= COMPILED_MAX_STEP) whole."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __getattr__(self, name):  # everything else is the NumPy backend's
        return getattr(_numpy, name)

    def run_compiled(self, steps, *args):
        """Run the loop `steps(ops, *args)` of rnncells._sequence in one compiled call; False where it has no
        compiled twin (half storage) or its steps are large, which leaves the loop to NumPy."""
        if steps.__name__.endswith("forward_steps"):
            spec, gated = args[2], args[0].xw  # [T, B, G·H]
        else:
            spec = args[0].spec
            gated = args[1].da if spec.cell == "lstm" else args[1].dg  # [T, B, G·H]
        if gated.dtype not in DTYPES or gated.shape[1] * gated.shape[2] // spec.gates > COMPILED_MAX_STEP:
            return False
        getattr(self.compiled, steps.__name__)(*args)
        return True


@functools.cache
def ops():
    """The "cpu" backend's ops: the compiled loops where they build, else the NumPy backend's own."""
    compiled = load()
    return _numpy if compiled is None else CpuOps(compiled)
