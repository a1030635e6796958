"""The CUDA kernels of kernels/: every instantiation, and three ways to run them.

- `nvrtc_report(arch)`: compile for sm_80 / sm_90 with no GPU (NVRTC through
  cuda-bindings) and read registers and spills from ptxas.
- `HostLauncher`: g++ builds the same sources with kernels/host.h into a
  shared library; kernels then run on NumPy buffers (tests, `rnncells check`).
- `rnncells._cupy`: NVRTC through CuPy's RawModule on the current device.

`KernelOps` turns the orchestration's per-step calls (the protocol of
`rnncells._numpy`) into launches of the right instantiation, whichever
launcher it is given.  Launches respect CUDA's limits (`GRID_LIMITS`), and
the host launcher refuses any launch a GPU would refuse.
"""

import contextlib
import ctypes
import functools
import hashlib
import importlib.resources
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._cublas import OP_N, OP_T
from .variants import LSTMSpec

SOURCES = ("lstm.cu", "gru.cu", "reduce.cu")
BLOCK = 256  # threads per block for every pointwise kernel
CHUNK = 64  # rows per partial sum in column_sum
GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's largest grid (x, y, z)
BLOCK_LIMITS = (1024, 1024, 64)  # CUDA's largest block (x, y, z), and at most 1024 threads in all
_TYPES = {np.dtype("float32"): ("float", "float"), np.dtype("float64"): ("double", "double")}  # storage, compute


def kernel_dir():
    """The folder of the .cu sources (kernels/ in a checkout, rnncells/kernels once installed)."""
    try:
        return Path(str(importlib.resources.files("rnncells.kernels")))
    except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed: kernels/ beside rnncells/
        return Path(__file__).resolve().parent.parent / "kernels"


def program_source():
    """The one translation unit that holds every kernel.

    It opens with a hash of the sources because compilers' caches (CuPy's on
    disk) key on this text, and the includes alone would not change with them.
    """
    return f"// kernels {source_hash()}\n" + "".join(f'#include "{name}"\n' for name in SOURCES)


def _flag(v):
    return "true" if v else "false"


def kernel_name(kernel, dtype, spec=None, *flags):
    """An instantiation as a C++ name expression: kernel<S, C, the spec's template arguments, bool flags...>."""
    s, c = _TYPES[np.dtype(dtype)]
    args = () if spec is None else spec.template_args()
    return f"{kernel}<{', '.join([s, c, *args, *map(_flag, flags)])}>"


_GRU = ("gru_backward_step", "gru_rz_step", "gru_n_step", "gru_n_backward_step", "gru_rz_backward_step")
_REDUCE = ("column_partial_sums", "column_totals")


def instantiations():
    """Every kernel instantiation a backend can launch."""
    names = []
    for dtype in _TYPES:
        for spec in LSTMSpec.every():
            names += [kernel_name("lstm_forward_step", dtype, spec, training) for training in (True, False)]
            names.append(kernel_name("lstm_backward_step", dtype, spec))
        names += [kernel_name("gru_forward_step", dtype, None, training) for training in (True, False)]
        names += [kernel_name(k, dtype) for k in _GRU + _REDUCE]
    return names


class KernelOps:
    """The per-step ops of `rnncells._sequence`, as launches of the CUDA kernels.

    `launcher(name, grid, block, args)` runs one instantiation; `gemm(a, b,
    out, accumulate=False)` is the backend's out = a @ b (out += a @ b),
    with its math mode (TF32 or not) already bound.  Arguments follow the
    kernels' signatures: ints for scalars, arrays (or None for a null pointer).
    `capture(ops, loop)` returns a replay of loop(ops) (a CUDA graph, or
    `record` on the host); `graph_key()` is what else a graph depends on
    (device, math mode).
    """

    def __init__(self, launcher, xp, gemm, capture=None, graph_key=tuple):
        self.launcher, self.xp, self.gemm = launcher, xp, gemm
        self._capture, self.graph_key = capture, graph_key

    def capture(self, loop):
        """The backend's graph of loop(self), as a function that replays it (see rnncells._graphs)."""
        return self._capture(self, loop)

    def _launch(self, name, n, *args, grid_y=1):
        if n > 0:
            self.launcher(name, (math.ceil(n / BLOCK), grid_y, 1), (BLOCK, 1, 1), args)

    @staticmethod
    def threads(step_macs):
        """Nothing to choose: the kernels' work is on the device (or, run on the host, a check, not a fast path)."""
        return contextlib.nullcontext()

    def lengths(self, host_lengths):
        """Lengths as the kernels read them: int32 on the buffers' device."""
        return self.xp.asarray(host_lengths, dtype=np.int32)

    def column_sum(self, a):
        """Σ over the rows of a contiguous [rows, cols] matrix, deterministically (two fixed-order passes)."""
        rows, cols = a.shape
        chunks = math.ceil(rows / CHUNK)
        partial = self.xp.empty((chunks, cols), dtype=a.dtype)
        out = self.xp.empty(cols, dtype=a.dtype)
        if chunks == 0:
            out[...] = 0
            return out
        grid_y = min(chunks, GRID_LIMITS[1])  # the kernel strides over the chunks past the grid
        self._launch(kernel_name("column_partial_sums", a.dtype), cols, rows, cols, CHUNK, a, partial, grid_y=grid_y)
        self._launch(kernel_name("column_totals", a.dtype), cols, chunks, cols, partial, out)
        return out

    def lstm_forward_step(self, spec, t, xw, hw, cw, c, c_next, y, h_last, gates, w_peep, lengths):
        """One LSTM step's pointwise forward (see kernels/lstm.cu)."""
        B, H = y.shape
        name = kernel_name("lstm_forward_step", y.dtype, spec, gates is not None)
        self._launch(name, B * H, t, B, H, xw, hw, cw, c, c_next, y, h_last, gates, w_peep, lengths)

    def lstm_backward_step(self, spec, t, gates, c, c_next, dy, dpw, dmm, dpw_out, da, w_peep, lengths):
        """One LSTM step's pointwise backward."""
        B, H = dy.shape
        name = kernel_name("lstm_backward_step", dy.dtype, spec)
        self._launch(name, B * H, t, B, H, dmm.shape[1], gates, c, c_next, dy, dpw, dmm, dpw_out, da, w_peep, lengths)

    def gru_forward_step(self, t, xw, gh, b_hn, h, y, h_last, gates, lengths):
        """One GRU (reset_after) step's pointwise forward (see kernels/gru.cu)."""
        B, H = y.shape
        name = kernel_name("gru_forward_step", y.dtype, None, gates is not None)
        self._launch(name, B * H, t, B, H, xw, gh, b_hn, h, y, h_last, gates, lengths)

    def gru_backward_step(self, t, gates, h, dy, dpw, dmm, dpw_out, dgi, dgh, lengths):
        """One GRU (reset_after) step's pointwise backward."""
        B, H = dy.shape
        self._launch(kernel_name("gru_backward_step", dy.dtype), B * H, t, B, H, gates, h, dy, dpw, dmm, dpw_out, dgi,
                     dgh, lengths)  # fmt: skip

    def gru_rz_step(self, xw, ghrz, h, gates, rh):
        """GRU (reset before): r, z and r∘h."""
        B, H = h.shape
        self._launch(kernel_name("gru_rz_step", h.dtype), B * H, B, H, xw, ghrz, h, gates, rh)

    def gru_n_step(self, t, xw, ghn, h, y, h_last, gates, lengths):
        """GRU (reset before): n and the new state."""
        B, H = h.shape
        self._launch(kernel_name("gru_n_step", h.dtype), B * H, t, B, H, xw, ghn, h, y, h_last, gates, lengths)

    def gru_n_backward_step(self, t, gates, h, dy, dpw, dmm, dpw_out, dg, lengths):
        """GRU (reset before): da_z, da_n and z∘dh."""
        B, H = h.shape
        self._launch(kernel_name("gru_n_backward_step", h.dtype), B * H, t, B, H, gates, h, dy, dpw, dmm, dpw_out, dg,
                     lengths)  # fmt: skip

    def gru_rz_backward_step(self, t, gates, h, drh, dpw_out, dg, lengths):
        """GRU (reset before): da_r, and r∘d(r∘h) into dh."""
        B, H = h.shape
        self._launch(kernel_name("gru_rz_backward_step", h.dtype), B * H, t, B, H, gates, h, drh, dpw_out, dg, lengths)


# --- graphs on the host --------------------------------------------------------


class _Address(NamedTuple):
    """An array as a graph holds it: where its memory is, not the array object."""

    ptr: int
    shape: tuple
    strides: tuple
    dtype: np.dtype


def _address(a):
    return a if a is None or isinstance(a, (int, np.integer)) else _Address(a.ctypes.data, a.shape, a.strides, a.dtype)


def _at(v):
    """The array an _Address describes, over the same memory."""
    if not isinstance(v, _Address):
        return v
    if 0 in v.shape:
        return np.empty(v.shape, v.dtype)
    span = sum((n - 1) * s for n, s in zip(v.shape, v.strides)) + v.dtype.itemsize
    return np.ndarray(v.shape, v.dtype, buffer=(ctypes.c_char * span).from_address(v.ptr), strides=v.strides)


def record(ops, loop):
    """The host's stand-in for CUDA stream capture: loop(ops) recorded, not run; returns its replay.

    Like a CUDA graph, the recording keeps each launch's and GEMM's arguments
    as addresses, not as the arrays: a replay writes wherever the capture's
    buffers were, and holds none of them alive.
    """
    calls = []

    def launch(name, grid, block, args):
        addrs = tuple(map(_address, args))
        calls.append(lambda: ops.launcher(name, grid, block, tuple(map(_at, addrs))))

    def gemm(a, b, out, accumulate=False):
        addrs = tuple(map(_address, (a, b, out)))
        calls.append(lambda: ops.gemm(*map(_at, addrs), accumulate))

    loop(KernelOps(launch, ops.xp, gemm))

    def replay():
        for call in calls:
            call()

    return replay


# --- cuBLAS arguments for the row-major GEMMs of the orchestration -------------

def _operand(m):
    """(op, leading dimension) of a 2-D row-major view as a column-major cuBLAS operand."""
    rows, cols = m.shape
    rs, cs = (s // m.itemsize for s in m.strides)
    if cs == 1 or cols == 1:  # row-major: its memory is the column-major transpose
        return OP_N, max(rs if rows > 1 else cols, cols, 1)
    if rs == 1 or rows == 1:  # column-major (a transposed contiguous matrix)
        return OP_T, max(cs if cols > 1 else rows, rows, 1)
    raise ValueError(f"gemm operand with strides {m.strides} is neither row- nor column-major")


def planned_gemm(a, b, out, accumulate, gemm):
    """out = a @ b (out += a @ b when accumulate) through a column-major cuBLAS-style `gemm`.

    gemm(op_b, op_a, m, n, k, b, ldb, a, lda, beta, out, ldc) gets the
    arguments of `gemm_plan` and is called only when there is a product to
    compute: an empty dimension is settled here (k = 0 leaves out zero, or
    unchanged when accumulating), not left to cuBLAS's leading-dimension rules.
    """
    (M, K), N = a.shape, b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            out[...] = 0
        return
    op_b, op_a, m, n, k, ldb, lda, ldc = gemm_plan(a, b, out)
    gemm(op_b, op_a, m, n, k, b, ldb, a, lda, float(accumulate), out, ldc)


def gemm_plan(a, b, out):
    """cuBLAS gemm arguments for row-major out = a @ b: (op_b, op_a, m, n, k, ldb, lda, ldc).

    Row-major out = a b is column-major outᵀ = bᵀ aᵀ, so b is cuBLAS's first
    operand: gemm(op_b, op_a, m=N, n=M, k=K, b, ldb, a, lda, out, ldc).  Each
    operand may be row-major with any row stride (dg[t, :, 2H:]) or the
    transpose of a contiguous matrix (W.T).
    """
    (M, K), N = a.shape, b.shape[1]
    op_b, ldb = _operand(b)
    op_a, lda = _operand(a)
    return op_b, op_a, N, M, K, ldb, lda, max(out.strides[0] // out.itemsize, N)


# --- the host build -----------------------------------------------------------


def host_source(names):
    """C++ that includes the kernels and exports, per instantiation, a launcher and its signature."""
    lines = ['#include "host.h"', program_source()]
    for k, name in enumerate(names):
        lines.append(
            f'extern "C" void rnncells_{k}(unsigned gx, unsigned gy, unsigned bx, void** args) '
            f"{{ launch(&{name}, dim3{{gx, gy, 1}}, dim3{{bx, 1, 1}}, args); }}"
        )
        lines.append(f'extern "C" const char* const* rnncells_{k}_signature() {{ return signature(&{name}); }}')
    return "\n".join(lines) + "\n"


def build_host_library(out_dir, sanitize=False):
    """Compile every instantiation for the host with g++; returns the shared library's path."""
    if shutil.which("g++") is None:
        raise RuntimeError("the host build of the kernels needs g++ on PATH")
    names = instantiations()
    out_dir = Path(out_dir).resolve()  # dlopen reads a bare file name as a library-path search
    src = out_dir / "host_kernels.cpp"
    src.write_text(host_source(names))
    lib = out_dir / ("host_kernels_asan.so" if sanitize else "host_kernels.so")
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"] if sanitize else ["-O2"]
    cmd = ["g++", "-std=c++17", "-shared", "-fPIC", *flags, f"-I{kernel_dir()}", str(src), "-o", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"g++ failed on the kernels:\n{r.stderr}")
    return lib


_CTYPES = {np.dtype("float32"): "float", np.dtype("float64"): "double", np.dtype("int32"): "int"}


def argument_types(args):
    """The C types a launch's arguments stand for: "int" for an int, "<T>*" for an array, "*" for None (null)."""

    def one(a):
        if isinstance(a, (int, np.integer)):
            return "int"
        return "*" if a is None else _CTYPES.get(a.dtype, str(a.dtype)) + "*"

    return [one(a) for a in args]


def check_launch(name, signature, grid, block, args):
    """Raise if a launch would be wrong or refused on a GPU: arguments against the kernel's parameter types
    (`signature`, comma-separated C types) and int arguments against int's range, and the grid and block
    against CUDA's limits."""
    params, given = signature.split(","), argument_types(args)
    if len(params) != len(given) or any(g not in (p, "*") or (g == "*" and not p.endswith("*"))
                                        for p, g in zip(params, given)):  # fmt: skip
        raise TypeError(f"{name} takes ({', '.join(params)}) but was given ({', '.join(given)})")
    for k, a in enumerate(args):
        if isinstance(a, (int, np.integer)) and not -(2**31) <= a < 2**31:
            raise OverflowError(f"{name}: argument {k} = {a} does not fit the kernel's 32-bit int")
    for what, dims, limits in (("grid", grid, GRID_LIMITS), ("block", block, BLOCK_LIMITS)):
        if any(not 1 <= d <= lim for d, lim in zip(dims, limits)):
            raise ValueError(f"{name}: {what} {tuple(dims)} is outside CUDA's limits (1 to {limits} per dimension)")
    if math.prod(block) > BLOCK_LIMITS[0]:
        raise ValueError(f"{name}: block {tuple(block)} has more than {BLOCK_LIMITS[0]} threads")


class HostLauncher:
    """Runs kernel instantiations on the CPU from a library made by `build_host_library`.

    Every call is checked with `check_launch` against the kernel's own
    parameter types and CUDA's grid limits, and every array argument must be
    C-contiguous: a mismatch is an orchestration bug that would be undefined
    behaviour (or a refused launch) on a GPU, so it raises here.  `KernelOps`
    builds the same argument lists and grids for the GPU, so these checks
    cover those launches too.
    """

    def __init__(self, library):
        self.lib = ctypes.CDLL(str(library))
        self.index = {name: k for k, name in enumerate(instantiations())}
        self.signatures = {}
        for name, k in self.index.items():
            fn = getattr(self.lib, f"rnncells_{k}_signature")
            fn.restype = ctypes.POINTER(ctypes.c_char_p)
            types, n = fn(), 0
            while types[n] is not None:
                n += 1
            self.signatures[name] = ",".join(types[i].decode() for i in range(n))

    def __call__(self, name, grid, block, args):
        check_launch(name, self.signatures[name], grid, block, args)
        holders = []
        for k, a in enumerate(args):
            if a is None:
                holders.append(ctypes.c_void_p(None))
            elif isinstance(a, (int, np.integer)):
                holders.append(ctypes.c_int(int(a)))
            else:
                if not a.flags.c_contiguous:
                    raise ValueError(f"{name}: argument {k} is not C-contiguous (shape {a.shape}, strides {a.strides})")
                holders.append(ctypes.c_void_p(a.ctypes.data))
        packed = (ctypes.c_void_p * len(holders))(*(ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders))
        getattr(self.lib, f"rnncells_{self.index[name]}")(grid[0], grid[1], block[0], packed)


@functools.lru_cache(maxsize=None)
def _host_launcher():
    """The host-built kernels (built once per process)."""
    with tempfile.TemporaryDirectory(prefix="rnncells-host-") as tmp:  # a loaded library outlives its file
        return HostLauncher(build_host_library(tmp))


@functools.lru_cache(maxsize=None)
def host_ops(tf32=False):
    """KernelOps running the host-built kernels on NumPy buffers; with tf32, GEMMs as TF32 tensor cores do them."""
    from . import _numpy

    return KernelOps(_host_launcher(), np, tf32_gemm if tf32 else _numpy.gemm, capture=record,
                     graph_key=lambda: (tf32,))  # fmt: skip


def to_tf32(a):
    """float32 values as TF32 tensor cores read them: the low 13 of the 23 mantissa bits dropped.

    Truncation, not rounding: PyTorch's numerical-accuracy notes say tensor
    cores read only the first 10 mantissa bits of each input, and truncation
    is the larger error of the two, so a bound that holds here holds for both.
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def tf32_gemm(a, b, out, accumulate=False):
    """out = a @ b (out += when accumulate) with float32 inputs read as TF32 and float32 accumulation.

    The host's stand-in for cuBLAS in TF32 mode; float64 is computed as is (TF32 never touches it).
    """
    from . import _numpy

    if out.dtype == np.float32:
        a, b = to_tf32(a), to_tf32(b)
    _numpy.gemm(a, b, out, accumulate)


# --- NVRTC without a GPU ------------------------------------------------------

_PTXAS = re.compile(
    r"Compiling entry function '(\w+)' for 'sm_\d+'.*?"
    r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers",
    re.S,
)


def nvrtc_report(arch):
    """Compile every instantiation for sm_<arch> with NVRTC; {name: (registers, spill stores, spill loads)}.

    Needs cuda-bindings and an NVRTC library (the `nvrtc` extra); no GPU.
    Raises RuntimeError with NVRTC's log if the compile fails.
    """
    from cuda.bindings import nvrtc

    names = instantiations()
    err, prog = nvrtc.nvrtcCreateProgram(program_source().encode(), b"rnncells.cu", 0, [], [])
    _nvrtc_check(err, "nvrtcCreateProgram")
    for n in names:
        _nvrtc_check(nvrtc.nvrtcAddNameExpression(prog, n.encode())[0], "nvrtcAddNameExpression")
    opts = [f"--gpu-architecture=sm_{arch}", "--std=c++17", f"--include-path={kernel_dir()}", "--ptxas-options=-v"]
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


def source_hash():
    """A hash of the kernel sources, for caches keyed on them."""
    h = hashlib.sha256()
    for name in (*SOURCES, "common.cuh"):
        h.update((kernel_dir() / name).read_bytes())
    return h.hexdigest()[:16]
