"""The CUDA kernels without a GPU: NVRTC for sm_80 and sm_90, and their source run on the host.

The host runs go through the same orchestration as the CuPy backend
(`rnncells._sequence`), with NumPy buffers standing in for device memory and
the g++-built kernels standing in for the launches, so a wrong offset, a
missed step or a wrong GEMM transpose fails here, not only on a GPU.
"""

import collections
import ctypes
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnncells import _backends, _host, _kernels, api, check, verify
from rnncells.variants import LSTMSpec


@pytest.mark.parametrize("arch", ["80", "90"])
def test_every_instantiation_compiles_without_spills(arch):
    pytest.importorskip("cuda.bindings.nvrtc")
    report = check.nvrtc_report(arch)
    assert set(report) == set(_kernels.instantiations())
    for name, (registers, spill_stores, spill_loads) in report.items():
        assert (spill_stores, spill_loads) == (0, 0), name
        if _kernels.cooperative(name):  # one block per SM: its threads must fit the SM's 64K registers
            assert registers * _kernels.HOPPER.threads <= 65536, (name, registers)
        else:
            assert registers <= 64, (name, registers)  # full occupancy at 256 threads per block


def _templates():
    """{kernel: the types of its template parameters}, read from the __global__ templates of kernels/*.cu."""
    pattern = re.compile(r"template <([^>]*)>\s*__global__ void (\w+)")
    found = {}
    for f in _kernels.kernel_dir().glob("*.cu"):
        for params, name in pattern.findall(f.read_text()):
            found[name] = [p.split()[0] for p in params.split(",")]
    return found


# (S, C): full precision computes in itself, half storage in float
STORAGE_COMPUTE = {("float", "float"), ("double", "double"), ("__half", "float"), ("__nv_bfloat16", "float")}


@pytest.mark.parametrize("variable", ["CUDA_HOME", "CUDA_PATH"])
def test_the_cuda_headers_are_found_in_the_toolkit_a_variable_names(variable, tmp_path, monkeypatch):
    """Where cuda-pathfinder fails (an older one does not know the toolkit's headers) and no nvcc is on the PATH,
    CUDA_HOME or CUDA_PATH names the toolkit, as the error message tells users."""
    import types

    def unknown(libname):
        raise RuntimeError(f"UNKNOWN libname={libname!r}")

    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_fp16.h").write_text("")
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", types.SimpleNamespace(find_nvidia_header_directory=unknown))
    monkeypatch.setattr(_kernels.shutil, "which", lambda name: None)
    for v in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    assert _kernels.cuda_include_dir() == str(tmp_path / "include")


def test_instantiations_cover_every_kernel_variant_and_dtype():
    """Checked against the kernel sources, not against the name helpers: every kernel of kernels/*.cu is
    instantiated for each storage type with every combination of its variant parameters' values."""
    peepholes = re.findall(r"constexpr int PEEPHOLE_\w+ = (\d+);", (_kernels.kernel_dir() / "common.cuh").read_text())
    values = {"bool": {"true", "false"}, "int": set(peepholes)}  # the one int parameter is the peephole kind
    templates = _templates()
    assert {"lstm_forward_step", "lstm_backward_step", "gru_forward_step", "column_totals"} <= set(templates)
    names = _kernels.instantiations()
    assert len(names) == len(set(names))
    args = collections.defaultdict(set)  # kernel -> the template argument lists it is instantiated with
    for n in names:
        kernel, rest = n.split("<", 1)
        args[kernel].add(tuple(a.strip() for a in rest.rstrip(">").split(",")))
    assert set(args) == set(templates)
    for kernel, lists in args.items():
        types = templates[kernel]
        assert types[:2] == ["typename", "typename"] and {len(a) for a in lists} == {len(types)}, kernel
        assert {a[:2] for a in lists} == STORAGE_COMPUTE, kernel
        for k, t in enumerate(types[2:], 2):
            assert {a[k] for a in lists} == values[t], (kernel, k)
        assert len(lists) == len(STORAGE_COMPUTE) * math.prod(len(values[t]) for t in types[2:]), kernel


@pytest.fixture
def poisoned_host(poisoned_numpy):
    """The host-built kernels on NaN-poisoned buffers: a backend to pass as backend=."""
    return _backends.Orchestrated("cuda-host", _host.ops, poisoned_numpy)


SHAPES = [
    dict(T=4, B=3, I=3, H=2),
    dict(T=1, B=1, I=1, H=1),
    dict(T=3, B=3, I=5, H=100),  # B·H = 300: two blocks, the second partly idle
    dict(T=2, B=1, I=2, H=257),
]


@pytest.mark.host
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{T}B{B}I{I}H{H}".format(**s))
def test_host_run_matches_reference(poisoned_host, spec, shape, dtype):
    lengths = np.random.default_rng(shape["H"]).integers(0, shape["T"] + 1, size=shape["B"])
    for kw in ({}, {"lengths": lengths}, {"step": True}):
        err, dtypes = verify.backend_error(verify.problem(spec, dtype=dtype, **shape, **kw), poisoned_host)
        assert err <= verify.BOUNDS[dtype]
        assert dtypes == {np.dtype(dtype)}


@pytest.mark.host
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_host_inference_kernels_give_the_training_outputs(poisoned_host, spec, dtype):

    p = verify.problem(spec, T=5, B=3, H=70, lengths=np.array([5, 2, 0]), dtype=dtype)
    fwd = verify.public_functions(spec)[0]
    args = (p.x, p.params, *p.states.values())
    train = api.forward(spec, p.x, p.params, p.states, lengths=p.lengths, backend=poisoned_host, masks={})  # zoneout:
    infer = fwd(*args, lengths=p.lengths, **spec.kwargs(), training=False, backend=poisoned_host)  # its expectation
    assert infer[-1] is None
    # y, and the final states: items 1 and 2 stop early, so their hT and cT come from h_last and a frozen c
    for name, want, got in zip(("y", "hT", "cT"), _outputs(train), _outputs(infer)):
        np.testing.assert_array_equal(got, want, err_msg=name)


def _outputs(result):
    """y and each final state of a forward's (y, state, ctx)."""
    y, state, _ = result
    return [y, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.host
def test_poison_catches_an_unwritten_element(poisoned_host, monkeypatch):
    """Launch the forward kernel with one block too few and the comparison must fail."""
    real = _kernels.KernelOps._launch

    def short(self, name, n, *args, grid_y=1):
        return real(self, name, n - _kernels.BLOCK if name.startswith("lstm_forward_step") else n, *args, grid_y=grid_y)

    monkeypatch.setattr(_kernels.KernelOps, "_launch", short)
    p = verify.problem(LSTMSpec(), B=3, H=100)  # 300 threads: two blocks
    err, _ = verify.backend_error(p, poisoned_host)
    assert not err <= verify.BOUNDS["float64"]


@pytest.mark.host
def test_host_launcher_rejects_a_strided_buffer():
    a = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="argument 3 is not C-contiguous"):
        _host.ops().launcher(_kernels.kernel_name("column_totals", "float32"), (1, 1, 1), (256, 1, 1),
                                 (1, 3, a, a[:, ::2]))


@pytest.mark.host
def test_host_launcher_checks_arguments_against_the_kernel_signature():
    launcher = _host.ops().launcher
    name = _kernels.kernel_name("column_totals", "float32")
    assert launcher.signatures[name] == "int,int,float*,float*"
    a = np.zeros(4, np.float32)
    takes = r"takes \(int, int, float\*, float\*\) "
    with pytest.raises(TypeError, match=takes + r"but was given \(int, int, float\*\)"):
        launcher(name, (1, 1, 1), (256, 1, 1), (1, 4, a))
    with pytest.raises(TypeError, match=takes + r"but was given \(int, float\*, int, float\*\)"):
        launcher(name, (1, 1, 1), (256, 1, 1), (1, a, 4, a))
    with pytest.raises(TypeError, match=takes + r"but was given \(int, int, double\*, float\*\)"):
        launcher(name, (1, 1, 1), (256, 1, 1), (1, 4, a.astype(np.float64), a))
    lengths = _kernels.kernel_name("lstm_forward_step", "float64", LSTMSpec(), False)
    # ..., w_peep, the zoneout masks, the recurrent dropout mask, h_drop, lengths
    assert launcher.signatures[lengths].endswith(",double*,unsigned char*,unsigned char*,unsigned char*,double*,int*")
    half = _kernels.kernel_name("column_totals", "bfloat16")
    assert launcher.signatures[half] == "int,int,float*,__nv_bfloat16*"  # sums in C, the total stored in S
    with pytest.raises(TypeError, match=r"but was given \(int, int, float\*, __half\*\)"):
        launcher(half, (1, 1, 1), (256, 1, 1), (1, 4, a, a.astype(np.float16)))
    clip = _kernels.kernel_name("lstm_forward_step", "bfloat16", LSTMSpec(cell_clip=1.0), True)
    assert launcher.signatures[clip].startswith("int,int,int,float,float,float,float,")  # t, B, H, the spec's scalars
    with pytest.raises(TypeError, match=r"but was given \(int, int, int, float \(a Python float\),"):
        launcher(clip, (1, 1, 1), (256, 1, 1), (0, 1, 1, 1.0, 0.0, 0.0, 1.0, *[a] * 15))
    for sig in launcher.signatures.values():
        assert set(sig.split(",")) <= {"int", "float", "double", "float*", "double*", "__half*", "__nv_bfloat16*",
                                       "int*", "unsigned char*", "unsigned int*"}  # the grid barrier's counter


@pytest.mark.host
@pytest.mark.parametrize("grid,block", [((1, 65536, 1), (256, 1, 1)), ((0, 1, 1), (256, 1, 1)),
                                        ((1, 1, 1), (2048, 1, 1)), ((1, 1, 1), (64, 32, 1))])
def test_host_launcher_refuses_what_cuda_refuses(grid, block):
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="outside CUDA's limits|more than 1024 threads"):
        _host.ops().launcher(_kernels.kernel_name("column_totals", "float32"), grid, block, (1, 4, a, a))


@pytest.mark.host
def test_host_launcher_refuses_an_int_argument_past_32_bits():
    """ctypes would wrap 2**31 to a negative int without a word; CuPy passes ints as int32 and must not either."""
    a = np.zeros(4, np.float32)
    with pytest.raises(OverflowError, match=r"argument 1 = 2147483648 does not fit the kernel's 32-bit int"):
        _host.ops().launcher(_kernels.kernel_name("column_totals", "float32"), (1, 1, 1), (256, 1, 1),
                                 (1, 2**31, a, a))


@pytest.mark.host
def test_column_sum_past_cuda_grid_y_limit():
    """More than 65,535 chunks of rows (T=100,000, B=64 makes 100,000): the kernel strides over those past the grid."""
    rows = (_kernels.GRID_LIMITS[1] + 2) * _kernels.CHUNK + 5
    a = np.random.default_rng(0).integers(-4, 5, size=(rows, 1)).astype(np.float64)  # integers: exact sums
    np.testing.assert_array_equal(_host.ops().column_sum(a), a.sum(0))


@pytest.mark.host
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (63, 5), (64, 300), (1000, 257)])
def test_column_sum_is_right_and_bitwise_repeatable(rows, cols, dtype):
    a = np.random.default_rng(rows).standard_normal((rows, cols)).astype(dtype)
    got = _host.ops().column_sum(a)
    assert verify.rel_err(got, a.astype(np.float64).sum(0)) <= (1e-6 if dtype == "float32" else 1e-14)
    assert got.dtype == np.dtype(dtype)
    for _ in range(3):
        assert _host.ops().column_sum(a).tobytes() == got.tobytes()


ASAN_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from rnncells import _backends, _host, _kernels, _numpy, verify
    from rnncells.variants import LSTMSpec

    overflowing = _kernels.kernel_name("lstm_forward_step", "float32", LSTMSpec(), True)
    # what each mode runs: the half and float32 instantiations (the persistent kernels' float32 ones: their indices do
    # not depend on the dtype), or the one that overflows
    names = [n for n in _kernels.instantiations() if not n.split("<")[1].startswith("double")
             and (not _kernels.cooperative(n) or n.split("<")[1].startswith("float,"))]
    names = names if sys.argv[1] == "run" else [overflowing]
    lib = _host.build_host_library(".", sanitize=True, names=names)  # the test's tmp_path
    ops = _kernels.KernelOps(_host.HostLauncher(lib, names), np, _numpy.gemm, device=lambda: _host.HOST_DEVICE)
    if sys.argv[1] == "run":
        sanitized = _backends.Orchestrated("cuda-host", lambda tf32: ops, np)
        worst = 0.0  # the largest error as a fraction of its dtype's bound
        for spec in verify.VARIANTS:
            for kw in ({}, {"lengths": np.array([3, 0, 2])}, {"step": True}):
                for dtype in ("float32", "float16", "bfloat16"):
                    # H = 33 on the host's 8 SMs: 7 persistent blocks of 5 units, the last of 3
                    p = verify.problem(spec, T=3, B=3, I=2, H=33, dtype=dtype, **kw)
                    worst = verify.worst_of([worst, verify.backend_error(p, sanitized)[0] / verify.BOUNDS[dtype]])
                    if "step" not in kw and dtype == "float32":
                        err = verify.backend_error(p, sanitized, persistent=True)[0]
                        worst = verify.worst_of([worst, err / verify.BOUNDS[dtype]])
        print("worst", worst)
    else:  # every buffer one row too short for the H the kernel is told
        B, H = 3, 5
        buf = lambda *s: np.zeros(s, np.float32)
        args = (0, B, H + 1, *[np.float32(0)] * 3, np.float32(1), buf(B, 4 * H), buf(B, 4 * H), None, buf(B, H),
                buf(B, H), buf(B, H), buf(B, H), None, buf(B, 4 * H), None, None, None, None, None, None)
        ops.launcher(overflowing, (1, 1, 1), (256, 1, 1), args)
        print("no error reported")
    """
)


def _asan_run(mode, cwd):
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0")
    # cwd: import the same rnncells as this test process, not a checkout the shell happens to be in
    return subprocess.run([sys.executable, "-c", ASAN_SCRIPT, mode], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.host
def test_address_sanitizer_build_runs_every_variant_cleanly(tmp_path):
    r = _asan_run("run", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr
    assert float(r.stdout.split()[-1]) <= 1.0


@pytest.mark.host
def test_address_sanitizer_catches_an_out_of_bounds_index(tmp_path):
    r = _asan_run("overflow", tmp_path)
    assert r.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr and "lstm.cu" in r.stderr


def test_program_text_changes_with_the_kernel_sources(tmp_path, monkeypatch):
    """Compilers cache on the program text: an edited kernel must change it."""
    for f in _kernels.kernel_dir().iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: tmp_path)
    before = _kernels.program_source()
    (tmp_path / "gru.cu").write_text((tmp_path / "gru.cu").read_text() + "\n// edited\n")
    assert _kernels.program_source() != before


def cublas_gemm(op_a, op_b, m, n, k, A, lda, B, ldb, beta, C, ldc, dtype):
    """cuBLAS's column-major C (m×n) = op(A) op(B) + beta·C, on raw addresses, with its argument rules."""
    ctype = {np.dtype("float32"): ctypes.c_float, np.dtype("float64"): ctypes.c_double}[np.dtype(dtype)]
    size = np.dtype(dtype).itemsize

    def view(ptr, rows, cols, ld):
        assert ld >= max(1, rows), f"ld={ld} < rows={rows}: CUBLAS_STATUS_INVALID_VALUE"
        buf = np.ctypeslib.as_array((ctype * (ld * (cols - 1) + rows)).from_address(ptr))
        return np.lib.stride_tricks.as_strided(buf, shape=(rows, cols), strides=(size, ld * size))

    a = view(A, *((m, k) if op_a == _kernels.OP_N else (k, m)), lda)
    b = view(B, *((k, n) if op_b == _kernels.OP_N else (n, k)), ldb)
    c = view(C, m, n, ldc)
    product = (a if op_a == _kernels.OP_N else a.T) @ (b if op_b == _kernels.OP_N else b.T)
    c[...] = product + c if beta else product  # beta = 0: C is not read (it may hold NaN)


def planned_gemm(a, b, out, accumulate=False):
    """out = a @ b (+= when accumulate) the way rnncells._cupy calls cuBLAS, run by the emulator above."""

    def gemm(op_b, op_a, m, n, k, b, ldb, a, lda, beta, c, ldc):
        cublas_gemm(op_b, op_a, m, n, k, b.ctypes.data, ldb, a.ctypes.data, lda, beta, c.ctypes.data, ldc, c.dtype)

    _kernels.planned_gemm(a, b, out, accumulate, gemm)


@pytest.mark.parametrize(
    "a,b",
    [
        (np.arange(12.0).reshape(3, 4), np.arange(20.0).reshape(5, 4).T),  # x Wᵀ
        (np.arange(24.0).reshape(3, 8)[:, :4], np.arange(20.0).reshape(5, 4).T),  # hc[t, :, :H] Wᵀ
        (np.arange(18.0).reshape(3, 6)[:, 4:], np.arange(10.0).reshape(2, 5)),  # dg[t, :, 2H:] Whn
        (np.arange(4.0).reshape(1, 4), np.arange(4.0).reshape(1, 4).T),  # one row, one column
        (np.arange(3.0).reshape(3, 1), np.arange(5.0).reshape(1, 5)),  # K = 1
        (np.arange(12.0).reshape(4, 3).T, np.arange(8.0).reshape(4, 2)),  # a transposed
    ],
)
def test_gemm_plan_drives_column_major_cublas_to_the_row_major_product(a, b):
    out = np.full((a.shape[0], b.shape[1]), np.nan)
    planned_gemm(a, b, out)
    np.testing.assert_array_equal(out, a @ b)


@pytest.mark.host
def test_orchestration_with_the_cublas_argument_plan_matches_reference(spec, poisoned_numpy):
    """Every GEMM call site of the sequence code, with its real strides, through the cuBLAS mapping."""
    ops = _kernels.KernelOps(_host.ops().launcher, np, planned_gemm)
    planned = _backends.Orchestrated("cuda-host", lambda tf32: ops, poisoned_numpy)
    for kw in ({}, {"lengths": np.array([5, 0, 2])}, {"step": True}):
        p = verify.problem(spec, T=5, B=3, I=4, H=3, dtype="float64", **kw)
        assert verify.backend_error(p, planned)[0] <= verify.BOUNDS["float64"]


def _strided(a):
    """The same values in memory a kernel would misread: every other element of a twice-as-large array."""
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


@pytest.mark.host
def test_strided_inputs_reach_the_kernels_contiguous(spec):
    """Kernels read raw memory: states, peephole weights and b_hn (a slice of bias_hh) must arrive contiguous."""
    p = verify.problem(spec, T=4, B=3, I=5, H=6, dtype="float64", lengths=np.array([4, 1, 0]))
    states = {k: np.broadcast_to(v[:1], v.shape) for k, v in p.states.items()}  # an expand()ed hx: stride 0
    strided = p._replace(x=_strided(p.x), states=states, params={k: _strided(v) for k, v in p.params.items()})
    for k, v in [("x", strided.x), *strided.states.items(), *strided.params.items()]:
        assert not v.flags.c_contiguous, k
    want = verify.run(p._replace(states={k: np.ascontiguousarray(v) for k, v in states.items()}), "reference")
    got = verify.run(strided, "cuda-host")
    for k in want:
        assert verify.rel_err(got[k], want[k]) <= verify.BOUNDS["float64"], k
