"""The CuPy backend's integration with CuPy and cuBLAS, checked without a GPU.

Bugs here live in CuPy and cuBLAS, not in our kernels, so the host runs
cannot see them: a cuBLAS symbol or enum value that does not exist, a CuPy
attribute that is gone or deprecated, a kernel that CuPy's own NVRTC path
and options refuse, a launch argument RawKernel would pass with the wrong
width.  Needs CuPy and the CUDA runtime, cuBLAS and NVRTC wheels, pinned to
the GPU machine's versions (the `cupy-nogpu` extra); skipped without them.
"""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="the CuPy tier needs: pip install 'rnncells[cupy-nogpu]'")

from rnncells import _backends, _cublas, _host, _kernels, verify  # noqa: E402

try:
    _cublas.library()
except Exception as e:  # no libcublas: the tier cannot run here
    pytest.skip(f"libcublas not found ({e}): pip install 'rnncells[cupy-nogpu]'", allow_module_level=True)

from rnncells import _cupy  # noqa: E402

PACKAGE = Path(_kernels.__file__).resolve().parent


@pytest.fixture(scope="module")
def cublas_header():
    """cublas_api.h from the cuBLAS wheel beside the library we load, and library_types.h (cudaDataType)."""
    from cuda.pathfinder import load_nvidia_dynamic_lib

    include = Path(load_nvidia_dynamic_lib("cublas").abs_path).parent.parent / "include"
    paths = [include / "cublas_api.h", include / "library_types.h"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"no cublas_api.h and library_types.h in {include}")
    return "".join(re.sub(r"/\*.*?\*/|//[^\n]*", "", p.read_text(), flags=re.S) for p in paths)


def _parameter_type(decl):
    """'const float* alpha' -> 'const float*' (a C parameter declaration without its name)."""
    decl = " ".join(decl.replace("*", "* ").split())
    return re.sub(r"\s*\b\w+$", "", decl).replace(" *", "*")


@pytest.mark.parametrize("name", _cublas.PROTOTYPES)
def test_every_cublas_call_is_declared_as_the_header_declares_it(cublas_header, name):
    m = re.search(rf"cublasStatus_t\s+CUBLASWINAPI\s+{name}\s*\((.*?)\)\s*;", cublas_header, re.S)
    assert m, f"{name} is not declared in cublas_api.h"
    assert tuple(_parameter_type(p) for p in m[1].split(",")) == _cublas.PROTOTYPES[name]
    assert getattr(_cublas.library(), name).argtypes  # bound, with its declared types


@pytest.mark.parametrize(
    "ours,theirs",
    [("STATUS_SUCCESS", "CUBLAS_STATUS_SUCCESS"), ("OP_N", "CUBLAS_OP_N"), ("OP_T", "CUBLAS_OP_T"),
     ("POINTER_MODE_HOST", "CUBLAS_POINTER_MODE_HOST"), ("DEFAULT_MATH", "CUBLAS_DEFAULT_MATH"),
     ("TF32_TENSOR_OP_MATH", "CUBLAS_TF32_TENSOR_OP_MATH"), ("COMPUTE_32F", "CUBLAS_COMPUTE_32F"),
     ("GEMM_DEFAULT", "CUBLAS_GEMM_DEFAULT")],
)
def test_cublas_enum_values_are_the_headers(cublas_header, ours, theirs):
    m = re.search(rf"\b{theirs}\s*=\s*(-?\d+)", cublas_header)
    assert m and int(m[1]) == getattr(_cublas, ours)


@pytest.mark.parametrize("dtype,theirs", [("float16", "CUDA_R_16F"), ("bfloat16", "CUDA_R_16BF"),
                                          ("float32", "CUDA_R_32F"), ("float64", "CUDA_R_64F")])
def test_cuda_data_type_values_are_the_headers(cublas_header, dtype, theirs):
    m = re.search(rf"\b{theirs}\s*=\s*(\d+)", cublas_header)
    assert m and int(m[1]) == _cublas.DATA_TYPES[dtype]


def _cupy_attribute_chains():
    """Every `cupy.a.b...` the package's source names, with where it is named."""
    chains = {}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                parts, n = [], node
                while isinstance(n, ast.Attribute):
                    parts.append(n.attr)
                    n = n.value
                if isinstance(n, ast.Name) and n.id == "cupy":
                    chains.setdefault(".".join(reversed(parts)), f"{path.name}:{node.lineno}")
    # keep only the longest chains: cupy.cuda.Device is checked through cupy.cuda.Device().id's prefix
    return {c: where for c, where in chains.items() if not any(o.startswith(c + ".") for o in chains)}


def test_every_cupy_attribute_the_package_uses_exists_and_is_not_deprecated():
    chains = _cupy_attribute_chains()
    assert "cuda.Stream.from_external" in chains and "RawModule" in chains  # the scan sees the backend's uses
    for chain, where in chains.items():
        obj = cupy
        for part in chain.split("."):
            assert hasattr(obj, part), f"cupy.{chain} ({where}) does not exist in CuPy {cupy.__version__}"
            obj = getattr(obj, part)
        assert ".. deprecated::" not in (getattr(obj, "__doc__", None) or ""), f"cupy.{chain} ({where}) is deprecated"


def test_no_gemm_goes_through_cupys_cublas_wrappers():
    """CuPy's cuBLAS wrappers (cupy_backends, and cupy.matmul through them) raise during stream capture; the one
    cupy_backends import is the driver API's occupancy query, for the persistent kernels' launch."""
    from cupy_backends.cuda.api import driver

    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert all(m == "cupy_backends.cuda.api" for m in imported if m.startswith("cupy_backends")), path.name
    assert callable(driver.occupancyMaxActiveBlocksPerMultiprocessor)


def test_torch_streams_reach_cupy_through_the_stream_protocol():
    pytest.importorskip("torch")
    import rnncells.torch as adapter

    class TorchStream:  # what torch.cuda.current_stream() gives: a stream with .cuda_stream
        cuda_stream = 0x1234

    assert cupy.cuda.Stream.from_external(adapter._StreamRef(TorchStream())).ptr == 0x1234


@pytest.mark.parametrize("arch", ["80", "90"])
def test_every_kernel_compiles_through_cupys_own_nvrtc_path(arch, monkeypatch):
    """RawModule's compiler, with our options and those CuPy adds; only the device query is replaced.  One
    instantiation of each kernel in each storage dtype and, for the persistent kernels, in training and not (every
    instantiation compiles with NVRTC in tests/test_kernels.py; this checks what CuPy adds)."""
    from cupy.cuda import compiler

    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", lambda arch=None: (f"-arch=sm_{arch}", "cubin"))
    first = {}
    for n in _kernels.instantiations():
        kernel, args = n.split("<")
        first.setdefault((kernel, args.split(",")[0], args.endswith("true>")), n)
    names = list(first.values())
    options = (*_kernels.nvrtc_options(), "-ftz=true")  # -ftz=true: what CuPy's cached compile appends
    cubin, mapping = compiler.compile_using_nvrtc(_kernels.program_source(), options, arch=arch, name_expressions=names)
    assert len(cubin) > 0 and set(mapping) == set(names)


@pytest.mark.host
def test_every_cupy_launch_passes_what_the_kernel_takes(spec):
    """The launches of the orchestration, converted as _cupy passes them to RawKernel, against each signature."""
    host = _host.ops()
    launches = []

    def spy(name, grid, block, args, shared=0):
        launches.append((name, args))
        host.launcher(name, grid, block, args, shared=shared)

    ops = _kernels.KernelOps(spy, np, host.gemm, device=lambda: _host.HOST_DEVICE)
    spied = _backends.Orchestrated("cuda-host", lambda tf32: ops, np)
    for kw in ({}, {"lengths": np.array([3, 0, 2])}):
        for dtype in ("float32", "bfloat16", "float16"):
            verify.run(verify.problem(spec, T=3, B=3, I=2, H=4, dtype=dtype, **kw), spied)
            verify.run(verify.problem(spec, T=3, B=3, I=2, H=4, dtype=dtype, **kw), spied, persistent=True)
    kinds = {"int": np.int32, "float": np.float32, "double": np.float64, "float*": np.float32, "double*": np.float64,
             "__half*": np.float16, "__nv_bfloat16*": np.dtype("bfloat16"), "int*": np.int32,
             "unsigned char*": np.uint8, "unsigned int*": np.uint32}
    assert launches
    for name, args in launches:
        params = host.launcher.signatures[name].split(",")
        passed = _cupy.kernel_args(args)
        assert len(passed) == len(params), name
        for k, (param, a) in enumerate(zip(params, passed)):
            if param in ("int", "float", "double"):
                assert type(a) is kinds[param], (name, k)  # a Python int or float would go as 64 bits
            elif isinstance(a, np.uintp):
                assert a == 0, (name, k)  # a null pointer, pointer-wide
            else:
                assert a.dtype == kinds[param], (name, k, a.dtype)


@pytest.mark.parametrize("cooperative", [False, True])
def test_an_instantiation_compiles_alone_in_a_module_of_its_kind(cooperative, monkeypatch):
    """A first launch waits for its own kernel, not every instantiation's; a persistent kernel's module is made for
    cooperative launches (CuPy launches every function of such a module through cuLaunchCooperativeKernel)."""
    made = []

    class Module:
        def __init__(self, **kw):
            made.append(kw)

        def get_function(self, name):
            return name

    name = next(n for n in _kernels.instantiations() if _kernels.cooperative(n) == cooperative)
    monkeypatch.setattr(cupy, "RawModule", Module)
    _cupy._function.cache_clear()
    try:
        assert _cupy._function(0, name) == name and _cupy._function(0, name) == name
    finally:
        _cupy._function.cache_clear()
    assert made == [dict(code=_kernels.program_source(), options=_kernels.nvrtc_options(), name_expressions=[name],
                         enable_cooperative_groups=cooperative)]  # once: the second launch finds it loaded


def test_a_capture_loads_the_kernels_its_loop_launches_before_capturing(monkeypatch):
    """No module may load inside a stream capture, and kernels load on first use: `capture` loads exactly the
    kernels the loop launches, outside any capture, and the graph it keeps has every launch."""
    capturing, loaded, launched = [False], [], []

    class Stream:  # the side stream's capture, as a flag
        def __init__(self, non_blocking):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            capturing[0] = True

        def end_capture(self):
            capturing[0] = False
            return type("Graph", (), {"launch": "replay"})()

    def function(device_id, name):
        if name not in loaded:
            assert not capturing[0], f"{name} loaded inside a capture"
            loaded.append(name)
        return lambda grid, block, args, shared_mem: launched.append((name, capturing[0]))

    class Device:
        id = 0

    monkeypatch.setattr(cupy.cuda, "Stream", Stream)
    monkeypatch.setattr(cupy.cuda, "Device", Device)
    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: type("S", (), {"ptr": 7})())
    monkeypatch.setattr(_cupy, "_function", function)
    monkeypatch.setattr(_cupy, "_handle", lambda device: None)
    monkeypatch.setattr(_cupy, "_workspace", lambda device, stream: None)
    names = [n for n in _kernels.instantiations() if not _kernels.cooperative(n)][:3]

    def loop(ops):
        for name in names + names[:1]:
            ops.launcher(name, (1, 1, 1), (32, 1, 1), (3,))

    ops = _kernels.KernelOps(_cupy._launch, cupy, gemm=lambda a, b, out, accumulate=False, workspace=None: None)
    assert _cupy.capture(ops, loop) == "replay"
    assert loaded == names
    assert launched == [(n, True) for n in names + names[:1]]
