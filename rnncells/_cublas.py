"""cuBLAS through ctypes: the few calls the CuPy backend's GEMMs need.

CuPy's own cuBLAS wrappers (`cupy_backends.cuda.libs.cublas`, and
`cupy.matmul` through them) raise NotImplementedError while the current
stream is capturing, so a step loop could never become a CUDA graph through
them.  These calls go to the same library directly: the libcublas that
cuda-pathfinder locates (CuPy loads it the same way, and a library already
loaded into the process is the one returned), so no package beyond CuPy's
own dependencies is needed.  ctypes releases the GIL during each call.

Each function is declared with its C parameter types exactly as cublas_api.h
spells them (`PROTOTYPES`), and the enum values are the header's; the CPU
tests compare both with the header that ships in the nvidia-cublas wheel.
Every call's status is checked: a failure raises RuntimeError with
cuBLAS's own name for it.
"""

import ctypes
import functools

# enum values from cublas_api.h
STATUS_SUCCESS = 0  # cublasStatus_t
OP_N, OP_T = 0, 1  # cublasOperation_t
POINTER_MODE_HOST = 0  # cublasPointerMode_t
DEFAULT_MATH = 0  # cublasMath_t: no tensor cores for float32
TF32_TENSOR_OP_MATH = 3  # cublasMath_t: float32 GEMMs may round their inputs to TF32 (10-bit mantissa)
COMPUTE_32F = 68  # cublasComputeType_t: float32 arithmetic and accumulation (tensor cores for half inputs)
GEMM_DEFAULT = -1  # cublasGemmAlgo_t: cuBLAS's heuristic
# cudaDataType, from library_types.h
DATA_TYPES = {"float16": 2, "bfloat16": 14, "float32": 0, "float64": 1}  # CUDA_R_16F, _16BF, _32F, _64F

# name -> parameter types as cublas_api.h declares them; every one returns cublasStatus_t
PROTOTYPES = {
    "cublasCreate_v2": ("cublasHandle_t*",),
    "cublasSetStream_v2": ("cublasHandle_t", "cudaStream_t"),
    "cublasSetWorkspace_v2": ("cublasHandle_t", "void*", "size_t"),
    "cublasSetPointerMode_v2": ("cublasHandle_t", "cublasPointerMode_t"),
    "cublasSetMathMode": ("cublasHandle_t", "cublasMath_t"),
    **{
        f"cublas{p}gemm_v2": ("cublasHandle_t", "cublasOperation_t", "cublasOperation_t", "int", "int", "int",
                              f"const {t}*", f"const {t}*", "int", f"const {t}*", "int", f"const {t}*", f"{t}*",
                              "int")
        for p, t in (("S", "float"), ("D", "double"))
    },
    "cublasGemmEx": ("cublasHandle_t", "cublasOperation_t", "cublasOperation_t", "int", "int", "int", "const void*",
                     "const void*", "cudaDataType", "int", "const void*", "cudaDataType", "int", "const void*",
                     "void*", "cudaDataType", "int", "cublasComputeType_t", "cublasGemmAlgo_t"),
}
_ENUMS = ("cublasOperation_t", "cublasPointerMode_t", "cublasMath_t", "cublasStatus_t", "cudaDataType",
          "cublasComputeType_t", "cublasGemmAlgo_t")


def _ctype(c):
    """The ctypes type of a C parameter type (pointers and handles travel as addresses)."""
    if c.endswith("*") or c in ("cublasHandle_t", "cudaStream_t"):
        return ctypes.c_void_p
    return {"int": ctypes.c_int, "size_t": ctypes.c_size_t, **{e: ctypes.c_int for e in _ENUMS}}[c]


@functools.lru_cache(maxsize=None)
def library():
    """libcublas, loaded once, with every function of PROTOTYPES declared (AttributeError if one is missing)."""
    from cuda.pathfinder import load_nvidia_dynamic_lib

    lib = ctypes.CDLL(load_nvidia_dynamic_lib("cublas").abs_path)
    for name, params in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [_ctype(p) for p in params], ctypes.c_int
    lib.cublasGetStatusName.argtypes, lib.cublasGetStatusName.restype = [ctypes.c_int], ctypes.c_char_p
    return lib


def _call(name, *args):
    lib = library()
    status = getattr(lib, name)(*args)
    if status != STATUS_SUCCESS:
        raise RuntimeError(f"{name} failed: {lib.cublasGetStatusName(status).decode()} ({status})")


def create():
    """A new cuBLAS handle (on the current device), with scalars read from host memory."""
    handle = ctypes.c_void_p()
    _call("cublasCreate_v2", ctypes.byref(handle))
    _call("cublasSetPointerMode_v2", handle, POINTER_MODE_HOST)
    return handle.value


def set_stream(handle, stream, workspace, workspace_bytes):
    """Order the handle's work on `stream` (a cudaStream_t address), with a fixed workspace.

    cublasSetStream resets the workspace to cuBLAS's default pool, and the
    algorithm cuBLAS picks can depend on the workspace it has, so the
    workspace is set again after every stream change: captured and eager
    GEMMs then pick the same algorithm and give the same bits.
    """
    _call("cublasSetStream_v2", handle, stream)
    _call("cublasSetWorkspace_v2", handle, workspace, workspace_bytes)


def set_math_mode(handle, tf32):
    """TF32 tensor-core math for float32 GEMMs when tf32, plain float32 otherwise (float64 is never affected)."""
    _call("cublasSetMathMode", handle, TF32_TENSOR_OP_MATH if tf32 else DEFAULT_MATH)


_SCALARS = {"float32": ctypes.c_float, "float64": ctypes.c_double}


def gemm(dtype, handle, op_a, op_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Column-major C (m×n) = op(A) op(B) + beta·C, float32 or float64 (half inputs: `gemm_ex`); a, b, c are
    device addresses."""
    scalar = _SCALARS[str(dtype)]
    alpha, beta = scalar(1.0), scalar(beta)
    name = "cublasSgemm_v2" if scalar is ctypes.c_float else "cublasDgemm_v2"
    _call(name, handle, op_a, op_b, m, n, k, ctypes.byref(alpha), a, lda, b, ldb, ctypes.byref(beta), c, ldc)


def gemm_ex(ab_dtype, c_dtype, handle, op_a, op_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """gemm with half inputs: A and B of ab_dtype (float16 or bfloat16), C of c_dtype (the same, or
    float32), float32 arithmetic and accumulation, C rounded once at the end."""
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(beta)  # COMPUTE_32F takes float scalars
    ab, cc = DATA_TYPES[str(ab_dtype)], DATA_TYPES[str(c_dtype)]
    _call("cublasGemmEx", handle, op_a, op_b, m, n, k, ctypes.byref(alpha), a, ab, lda, b, ab, ldb,
          ctypes.byref(beta), c, cc, ldc, COMPUTE_32F, GEMM_DEFAULT)
