"""The CuPy backend: the kernels of kernels/ on the current device, cuBLAS for the GEMMs.

Everything runs on CuPy's current stream.  Each instantiation compiles on
its first launch on a device (NVRTC through RawModule, a module of its own,
which CuPy keeps in its disk cache), so a call waits for the few kernels it
launches (~0.1-0.5 s each), not for all of them (minutes); launch failures
raise from CuPy.  The step loops allocate nothing: every GEMM of a forward
and backward (the input projection, each step's recurrent product, the
weight gradients and dx) goes through `gemm`, which writes into a
preallocated buffer through cuBLAS with explicit leading dimensions
(strided views such as dg[t, :, 2H:] need no copy).  cuBLAS is called
through `rnncells._cublas`, not CuPy's wrappers, because those refuse to
run while a stream is being captured into a CUDA graph.

TF32 is decided per call (`tf32=` of the public functions) and reaches every
GEMM through `ops(tf32)`; no environment variable is read.
"""

import functools

import cupy
import numpy as np

from . import _cublas, _kernels
from ._dtypes import HALVES

# cuBLAS's recommended workspace for Hopper (4 MiB suffices before it); one per device and stream
WORKSPACE_BYTES = 32 << 20


@functools.lru_cache(maxsize=None)
def _function(device_id, name):
    """One instantiation's kernel on one device, compiled and loaded on first use.

    A module per instantiation: one module of all of them took minutes of
    NVRTC (single-threaded) before a process's first launch.  A module made
    with enable_cooperative_groups has every function launched through
    cuLaunchCooperativeKernel, which is what the persistent kernels need.
    """
    del device_id  # the cache key: RawModule compiles for the current device
    module = cupy.RawModule(code=_kernels.program_source(), options=_kernels.nvrtc_options(), name_expressions=[name],
                            enable_cooperative_groups=_kernels.cooperative(name))
    return module.get_function(name)


@functools.lru_cache(maxsize=None)
def device(device_id):
    """The current device as the persistent plans see it (its SMs, the shared memory a block may opt in to)."""
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return _kernels.Device(name, props["multiProcessorCount"], props["sharedMemPerBlockOptin"],
                           cooperative=bool(props["cooperativeLaunch"]))


@functools.lru_cache(maxsize=None)
def _resident_per_sm(device_id, name, threads, shared):
    """How many blocks of a persistent kernel an SM holds at once, asked of the driver once per launch shape (not on
    every launch), after the kernel's opt-in to `shared` bytes of shared memory (past 48 KiB)."""
    from cupy_backends.cuda.api import driver

    fn = _function(device_id, name)
    if shared > fn.max_dynamic_shared_size_bytes:
        fn.max_dynamic_shared_size_bytes = shared
    return driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, threads, shared)


def _launch_cooperative(device_id, name, grid, block, args, shared):
    """A persistent kernel's launch, refused unless every block can be resident at once: CuPy would shrink a
    cooperative grid that does not fit (with a warning), which would drop slices of the hidden units."""
    per_sm = _resident_per_sm(device_id, name, block[0], shared)
    resident = per_sm * device(device_id).sms
    if resident < grid[0]:
        raise RuntimeError(f"{name}: {grid[0]} blocks of {block[0]} threads with {shared} bytes of shared memory "
                           f"cannot all be resident ({per_sm} per SM, {resident} in all), as its grid barrier needs")
    _function(device_id, name)(grid, block, args, shared_mem=shared)


def kernel_args(args):
    """A launch's arguments as RawKernel passes them: int parameters as int32, a missing buffer as a null pointer.

    (RawKernel would pass a Python int as a 64-bit integer.)
    """
    return tuple(np.int32(a) if isinstance(a, (int, np.integer)) else (np.uintp(0) if a is None else a) for a in args)


def _launch(name, grid, block, args, shared=0):
    device_id = cupy.cuda.Device().id
    if _kernels.cooperative(name):
        _launch_cooperative(device_id, name, grid, block, kernel_args(args), shared)
    else:
        _function(device_id, name)(grid, block, kernel_args(args), shared_mem=shared)


@functools.lru_cache(maxsize=None)
def _handle(device_id):
    """A cuBLAS handle of our own per device, so CuPy's handle state is never touched."""
    del device_id  # the cache key: cublasCreate binds the handle to the current device
    return _cublas.create()


@functools.lru_cache(maxsize=None)
def _workspace(device_id, stream_ptr):
    """The fixed cuBLAS workspace of the GEMMs ordered on one stream (kept for the process: graphs hold it)."""
    del device_id, stream_ptr  # the cache key
    return cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)


def gemm(a, b, out, accumulate=False, *, tf32=False, workspace=None):
    """out = a @ b (out += a @ b when accumulate) on the current stream through cuBLAS.

    a and b share a dtype; out has it too, or is float32 for half inputs
    (which are multiplied in float32 on tensor cores, cublasGemmEx).
    Arguments come from `_kernels.gemm_plan`.  `workspace` is the cuBLAS
    workspace to use, by default the current stream's; a capture passes the
    one of the stream its graph will be replayed on.  With tf32, float32
    GEMMs may use TF32 tensor cores.
    """
    _kernels.planned_gemm(a, b, out, accumulate, functools.partial(_cublas_gemm, tf32=tf32, workspace=workspace))


def _cublas_gemm(op_b, op_a, m, n, k, b, ldb, a, lda, beta, out, ldc, *, tf32, workspace):
    device, stream = cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr
    workspace = _workspace(device, stream) if workspace is None else workspace
    handle = _handle(device)
    _cublas.set_stream(handle, stream, workspace.data.ptr, workspace.nbytes)
    _cublas.set_math_mode(handle, tf32)
    if a.dtype in HALVES:
        _cublas.gemm_ex(a.dtype, out.dtype, handle, op_b, op_a, m, n, k, b.data.ptr, ldb, a.data.ptr, lda, beta,
                        out.data.ptr, ldc)
    else:
        _cublas.gemm(out.dtype, handle, op_b, op_a, m, n, k, b.data.ptr, ldb, a.data.ptr, lda, beta, out.data.ptr,
                     ldc)


def capture(ops, loop):
    """CUDA stream capture of loop(ops) on a side stream; returns the launch of its graph on the current stream.

    No module may load inside a capture, and kernels load on first use: so
    a first capture with a launcher that only notes each kernel's name
    (a capture runs nothing, and its graph is dropped), then every kernel
    noted is loaded, then the capture that is kept.  The cuBLAS handle and
    the workspace are made before either.  The captured GEMMs use the
    workspace of the stream the graph is replayed on (the graph key includes
    that stream), so a replay and the eager GEMMs around it share one
    workspace, in stream order.
    """
    device, replay = cupy.cuda.Device().id, cupy.cuda.get_current_stream()
    _handle(device)
    gemm = functools.partial(ops.gemm, workspace=_workspace(device, replay.ptr))
    launched = []
    _captured(lambda name, *args, **kw: launched.append(name), gemm, loop)
    for name in dict.fromkeys(launched):
        _function(device, name)
    return _captured(ops.launcher, gemm, loop).launch


def _captured(launcher, gemm, loop):
    """The graph of loop(ops) captured on a side stream, its kernels launched through `launcher`."""
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            loop(_kernels.KernelOps(launcher, cupy, gemm))
        finally:
            graph = stream.end_capture()
    return graph


@functools.lru_cache(maxsize=None)
def ops(tf32=False):
    """The per-step ops of the CuPy backend, TF32 in every float32 GEMM or in none."""
    return _kernels.KernelOps(_launch, cupy, functools.partial(gemm, tf32=tf32), capture=capture,
                              graph_key=lambda: _graph_key(tf32), device=lambda: device(cupy.cuda.Device().id))


def _graph_key(tf32):
    """What a graph slot depends on besides the loop's shape: device, stream, TF32.

    The stream, because a slot is reused as soon as nobody holds its buffers,
    which is safe only where its previous replay is ordered before the next
    call's copies: on the same stream.
    """
    return cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr, tf32
