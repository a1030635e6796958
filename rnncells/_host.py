"""The CUDA kernels run on the CPU: g++ builds kernels/ with kernels/host.h into a shared library.

`HostLauncher` runs an instantiation on NumPy buffers, refusing any launch a
GPU would refuse (`check_launch`); `record` stands in for stream capture;
`ops(tf32)` is the per-step ops of the "cuda-host" backend, with TF32's input
truncation emulated in its GEMMs (`tf32_gemm`).  A check of the kernels and
their orchestration without a GPU, not a fast path.
"""

import ctypes
import functools
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import _numpy
from ._kernels import (BLOCK_LIMITS, GRID_LIMITS, TYPES, Device, KernelOps, cooperative, instantiations, kernel_dir,
                       program_source, uses_barriers)

# --- graphs on the host --------------------------------------------------------


class _Address(NamedTuple):
    """An array as a graph holds it: where its memory is, not the array object."""

    ptr: int
    shape: tuple
    strides: tuple
    dtype: np.dtype


def _address(a):
    return a if a is None or isinstance(a, (int, np.generic)) else _Address(a.ctypes.data, a.shape, a.strides, a.dtype)


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

    def launch(name, grid, block, args, shared=0):
        addrs = tuple(map(_address, args))
        calls.append(lambda: ops.launcher(name, grid, block, tuple(map(_at, addrs)), shared=shared))

    def gemm(a, b, out, accumulate=False):
        addrs = tuple(map(_address, (a, b, out)))
        calls.append(lambda: ops.gemm(*map(_at, addrs), accumulate))

    loop(KernelOps(launch, ops.xp, gemm))

    def replay():
        for call in calls:
            call()

    return replay


# --- the host build -----------------------------------------------------------


def host_source(names, first=0):
    """C++ that includes the kernels and exports, per instantiation, a launcher and its signature (numbered from
    `first`: a part of a build split over several translation units)."""
    lines = ['#include "host.h"', program_source()]
    for k, name in enumerate(names, first):
        grid_block = "dim3{gx, gy, 1}, dim3{bx, 1, 1}"
        if cooperative(name):
            launch = f"launch_cooperative(&{name}, {grid_block}, shared, args)"
        else:
            launch = f"{'launch_blocks' if uses_barriers(name) else 'launch'}(&{name}, {grid_block}, args)"
        lines.append(f'extern "C" void rnncells_{k}(unsigned gx, unsigned gy, unsigned bx, unsigned long shared, '
                     f"void** args) {{ {launch}; }}")
        lines.append(f'extern "C" const char* const* rnncells_{k}_signature() {{ return signature(&{name}); }}')
    return "\n".join(lines) + "\n"


def build_host_library(out_dir, sanitize=False, source_dir=None, names=None):
    """Compile every instantiation (or those `names`) for the host with g++; returns the shared library's path.

    `source_dir` holds the kernel sources, by default `kernel_dir()` (a test builds edited copies).  The
    instantiations are split over one translation unit per CPU, compiled side by side, then linked: g++ compiles
    a unit on one core, and the build is most of what a host run costs.
    """
    if shutil.which("g++") is None:
        raise RuntimeError("the host build of the kernels needs g++ on PATH")
    names = instantiations() if names is None else names
    out_dir = Path(out_dir).resolve()  # dlopen reads a bare file name as a library-path search
    lib = out_dir / ("host_kernels_asan.so" if sanitize else "host_kernels.so")
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"] if sanitize else ["-O2"]
    flags = ["-std=c++17", "-fPIC", *flags]
    parts = max(1, min(len(names), len(os.sched_getaffinity(0))))
    size = math.ceil(len(names) / parts)
    jobs = []
    for p in range(parts):
        src, obj = out_dir / f"host_kernels_{p}.cpp", out_dir / f"host_kernels_{p}{'_asan' if sanitize else ''}.o"
        src.write_text(host_source(names[p * size : (p + 1) * size], first=p * size))
        cmd = ["g++", *flags, f"-I{source_dir or kernel_dir()}", "-c", str(src), "-o", str(obj)]
        jobs.append((obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    failed = [err for _, job in jobs for _, err in [job.communicate()] if job.returncode]
    if failed:
        raise RuntimeError(f"g++ failed on the kernels:\n{failed[0]}")
    r = subprocess.run(["g++", "-shared", *flags, *(str(obj) for obj, _ in jobs), "-o", str(lib)], capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"g++ failed to link the kernels:\n{r.stderr}")
    return lib


_CTYPES = {**{dtype: s for dtype, (s, _) in TYPES.items()}, np.dtype("int32"): "int",  # the kernels' parameter types
           np.dtype("uint8"): "unsigned char", np.dtype("uint32"): "unsigned int"}
_SCALARS = {np.float32: ("float", ctypes.c_float), np.float64: ("double", ctypes.c_double)}


def argument_types(args):
    """The C types a launch's arguments stand for: "int" for an int, "float" or "double" for a NumPy float32 or
    float64 scalar (a Python float is neither: CuPy would pass it as a double), "<T>*" for an array, "*" for None
    (null)."""

    def one(a):
        if isinstance(a, (int, np.integer)):
            return "int"
        if type(a) in _SCALARS:
            return _SCALARS[type(a)][0]
        if isinstance(a, float):
            return "float (a Python float)"
        return "*" if a is None else _CTYPES.get(a.dtype, str(a.dtype)) + "*"

    return [one(a) for a in args]


def check_launch(name, signature, grid, block, args):
    """Raise if a launch would be wrong or refused on a GPU: arguments against the kernel's parameter types
    (`signature`, comma-separated C types) and int arguments against int's range, and the grid and block
    against CUDA's limits."""
    check_arguments(name, signature.split(","), args)
    for what, dims, limits in (("grid", grid, GRID_LIMITS), ("block", block, BLOCK_LIMITS)):
        if any(not 1 <= d <= lim for d, lim in zip(dims, limits)):
            raise ValueError(f"{name}: {what} {tuple(dims)} is outside CUDA's limits (1 to {limits} per dimension)")
    if math.prod(block) > BLOCK_LIMITS[0]:
        raise ValueError(f"{name}: block {tuple(block)} has more than {BLOCK_LIMITS[0]} threads")


def check_arguments(name, params, args, leading=()):
    """Raise unless `args` fit the C parameter types `params`: each type, and each int within int's range.
    `leading`: the types of arguments passed before `args` (not checked again)."""
    given = [*leading, *argument_types(args)]
    if len(params) != len(given) or any(g not in (p, "*") or (g == "*" and not p.endswith("*"))
                                        for p, g in zip(params, given)):
        raise TypeError(f"{name} takes ({', '.join(params)}) but was given ({', '.join(given)})")
    for k, a in enumerate(args):
        if isinstance(a, (int, np.integer)) and not -(2**31) <= a < 2**31:
            raise OverflowError(f"{name}: argument {k} = {a} does not fit the kernel's 32-bit int")


def read_signature(lib, symbol):
    """The parameter types a library's `symbol`() reports (host.h's `signature`: a null-terminated char**)."""
    fn = getattr(lib, symbol)
    fn.restype = ctypes.POINTER(ctypes.c_char_p)
    types, n = fn(), 0
    while types[n] is not None:
        n += 1
    return [types[i].decode() for i in range(n)]


def pack(name, args, holders=()):
    """(the void** array, the values it points to) of a call's arguments, cuLaunchKernel's convention: an int,
    a float or double (NumPy scalars), a C-contiguous array's data, or null for None, after the ctypes values
    `holders`.  Keep both alive for
    the call."""
    holders = list(holders)
    for k, a in enumerate(args):
        if a is None:
            holders.append(ctypes.c_void_p(None))
        elif isinstance(a, (int, np.integer)):
            holders.append(ctypes.c_int(int(a)))
        elif type(a) in _SCALARS:
            holders.append(_SCALARS[type(a)][1](a))
        else:
            if not a.flags.c_contiguous:
                raise ValueError(f"{name}: argument {k} is not C-contiguous (shape {a.shape}, strides {a.strides})")
            holders.append(ctypes.c_void_p(a.ctypes.data))
    return (ctypes.c_void_p * len(holders))(*map(ctypes.addressof, holders)), holders


class HostLauncher:
    """Runs kernel instantiations on the CPU from a library made by `build_host_library`.

    Every call is checked with `check_launch` against the kernel's own
    parameter types and CUDA's grid limits, and every array argument must be
    C-contiguous: a mismatch is an orchestration bug that would be undefined
    behaviour (or a refused launch) on a GPU, so it raises here.  `KernelOps`
    builds the same argument lists and grids for the GPU, so these checks
    cover those launches too.
    """

    def __init__(self, library, names=None):
        """`names`: the instantiations the library was built with, if not every one."""
        self.lib = ctypes.CDLL(str(library))
        self.index = {name: k for k, name in enumerate(instantiations() if names is None else names)}
        self.signatures = {name: ",".join(read_signature(self.lib, f"rnncells_{k}_signature"))
                           for name, k in self.index.items()}

    def __call__(self, name, grid, block, args, shared=0):
        check_launch(name, self.signatures[name], grid, block, args)
        if shared and not cooperative(name):
            raise ValueError(f"{name}: dynamic shared memory ({shared} bytes) for a kernel that declares none")
        packed, _holders = pack(name, args)
        getattr(self.lib, f"rnncells_{self.index[name]}")(grid[0], grid[1], block[0], ctypes.c_ulong(shared), packed)


@functools.lru_cache(maxsize=None)
def _host_launcher():
    """The host-built kernels (built once per process)."""
    with tempfile.TemporaryDirectory(prefix="rnncells-host-") as tmp:  # a loaded library outlives its file
        return HostLauncher(build_host_library(tmp))


# The device the host pretends to be for persistent plans: few SMs, so that a test's small hidden sizes get
# several units per block and partial last slices, and shared memory enough for any test (every block's threads
# are fibers at once: 8 SMs of 64 threads is 512 fibers).
HOST_DEVICE = Device("the host emulation", sms=8, shared_per_block=1 << 20, threads=64)


@functools.lru_cache(maxsize=None)
def ops(tf32=False):
    """KernelOps running the host-built kernels on NumPy buffers; with tf32, GEMMs as TF32 tensor cores do them."""
    return KernelOps(_host_launcher(), np, tf32_gemm if tf32 else _numpy.gemm, capture=record,
                     graph_key=lambda: (tf32,), device=lambda: HOST_DEVICE)


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

    The host's stand-in for cuBLAS in TF32 mode; float64 and half inputs are computed as they are (TF32 never
    touches them).
    """
    if a.dtype == np.float32:
        a, b = to_tf32(a), to_tf32(b)
    _numpy.gemm(a, b, out, accumulate)
