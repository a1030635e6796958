"""The CuPy backend: the kernels of kernels/ on the current device, cuBLAS for the GEMMs.

Everything runs on CuPy's current stream.  Kernels compile once per device
(NVRTC through RawModule with name expressions); launch failures raise from
CuPy.  The step loop allocates nothing: `gemm` writes into the
orchestration's preallocated buffers through cuBLAS with explicit leading
dimensions, so strided views such as dg[t, :, 2H:] need no copy.  TF32 follows
CuPy's own switch: CUPY_TF32=1 allows it in float32 GEMMs, otherwise it is off.
"""

import functools
import os

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from . import cuda


@functools.lru_cache(maxsize=None)
def _module(device_id):
    """Every instantiation, compiled for one device."""
    del device_id  # the cache key: RawModule compiles for the current device
    return cupy.RawModule(
        code=cuda.program_source(),
        options=("--std=c++17", f"--include-path={cuda.kernel_dir()}"),
        name_expressions=cuda.instantiations(),
    )


@functools.lru_cache(maxsize=None)
def _function(device_id, name):
    """One instantiation's kernel, looked up once per device rather than on every launch."""
    return _module(device_id).get_function(name)


def _launch(name, grid, block, args):
    kernel = _function(cupy.cuda.Device().id, name)
    conv = [np.int32(a) if isinstance(a, (int, np.integer)) else (np.uintp(0) if a is None else a) for a in args]
    kernel(grid, block, tuple(conv))


@functools.lru_cache(maxsize=None)
def _handle(device_id):
    """A cuBLAS handle of our own per device, so CuPy's handle state is never touched."""
    del device_id
    handle = cublas.create()
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    return handle


_ONE = {np.dtype("float32"): np.ones(1, np.float32), np.dtype("float64"): np.ones(1, np.float64)}
_ZERO = {np.dtype("float32"): np.zeros(1, np.float32), np.dtype("float64"): np.zeros(1, np.float64)}


def gemm(a, b, out):
    """out = a @ b, float32 or float64, through cuBLAS (arguments from `cuda.gemm_plan`)."""
    (M, K), N = a.shape, b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        out[...] = 0
        return
    op_b, op_a, m, n, k, ldb, lda, ldc = cuda.gemm_plan(a, b, out)
    handle = _handle(cupy.cuda.Device().id)
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    tf32 = out.dtype == np.float32 and _tf32()
    cublas.setMathMode(handle, cublas.CUBLAS_TF32_TENSOR_OP_MATH if tf32 else cublas.CUBLAS_DEFAULT_MATH)
    fn = cublas.sgemm if out.dtype == np.float32 else cublas.dgemm
    one, zero = _ONE[out.dtype], _ZERO[out.dtype]
    fn(handle, op_b, op_a, m, n, k, one.ctypes.data, b.data.ptr, ldb, a.data.ptr, lda, zero.ctypes.data,
       out.data.ptr, ldc)  # fmt: skip


def _tf32():
    return os.environ.get("CUPY_TF32", "0") == "1"


def capture(ops, loop):
    """CUDA stream capture of loop(ops) on a side stream; returns the launch of its graph on the current stream.

    Every kernel is loaded first: a module load is no work a capture can record.
    cuBLAS (CUDA ≥ 12.2) takes its workspace stream-ordered, so its calls capture as they are.
    """
    device = cupy.cuda.Device().id
    for name in cuda.instantiations():
        _function(device, name)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            loop(ops)
        finally:
            graph = stream.end_capture()
    return graph.launch


def ops():
    """The per-step ops of the CuPy backend."""
    return cuda.KernelOps(_launch, cupy, gemm, capture=capture, graph_key=_graph_key)


def _graph_key():
    """What a graph slot depends on besides the loop's shape: device, stream, TF32.

    The stream, because a slot is reused as soon as nobody holds its buffers,
    which is safe only where its previous replay is ordered before the next
    call's copies: on the same stream.
    """
    return cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr, _tf32()
