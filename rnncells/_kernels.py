"""The CUDA kernels of kernels/: their sources, every instantiation's name, and the per-step ops that launch them.

`KernelOps` turns the orchestration's per-step calls (the protocol of
`rnncells._numpy`) into launches of the right instantiation, whichever
launcher it is given: the host build (`rnncells._host`) or CuPy's RawModule
(`rnncells._cupy`).  It also runs whole sequences as one cooperative launch
of the persistent kernels (kernels/persistent.cu), on the slices that
`persistent_plan` chooses for a `Device`.  Launches respect CUDA's limits (`GRID_LIMITS`), and the
host launcher refuses any launch a GPU would refuse.  `planned_gemm` maps the
orchestration's row-major GEMMs onto column-major cuBLAS arguments, for
cuBLAS and for its host stand-in in the tests.
"""

import contextlib
import hashlib
import importlib.resources
import math
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._cublas import OP_N, OP_T
from ._dtypes import BFLOAT16, FLOAT16, compute
from .variants import LAYER_NORM_EPS, GRUSpec, LSTMSpec

SOURCES = ("lstm.cu", "gru.cu", "reduce.cu", "layernorm.cu", "persistent.cu")
BLOCK = 256  # threads per block for every pointwise kernel
ROW_BLOCK = 256  # the most threads per block of the row kernels (layernorm.cu's LN_THREADS)
CHUNK = 64  # rows per partial sum in column_sum
GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's largest grid (x, y, z)
BLOCK_LIMITS = (1024, 1024, 64)  # CUDA's largest block (x, y, z), and at most 1024 threads in all
TYPES = {  # storage dtype: the kernels' S, C
    np.dtype("float32"): ("float", "float"),
    np.dtype("float64"): ("double", "double"),
    FLOAT16: ("__half", "float"),
    BFLOAT16: ("__nv_bfloat16", "float"),
}


def kernel_dir():
    """The folder of the .cu sources (kernels/ in a checkout, rnncells/kernels once installed)."""
    try:
        return Path(str(importlib.resources.files("rnncells.kernels")))
    except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed: kernels/ beside rnncells/
        return Path(__file__).resolve().parent.parent / "kernels"


def cuda_include_dir():
    """Where cuda_fp16.h and cuda_bf16.h are, which NVRTC needs for the half-precision kernels: the CUDA
    runtime wheel's headers (nvidia-cuda-runtime), or a CUDA toolkit's (CUDA_HOME, CUDA_PATH, nvcc's,
    /usr/local/cuda), the first that has them."""
    try:  # cuda-pathfinder finds the toolkit's headers from 1.2.3 on; an older one may not know "cudart"
        from cuda.pathfinder import find_nvidia_header_directory

        candidates = [find_nvidia_header_directory("cudart")]
    except Exception:
        candidates = []
    nvcc = shutil.which("nvcc")
    candidates += [os.environ.get(v) and os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH")]
    candidates += [nvcc and str(Path(nvcc).resolve().parent.parent / "include"), "/usr/local/cuda/include"]
    for d in candidates:
        if d and (Path(d) / "cuda_fp16.h").is_file():
            return d
    raise RuntimeError("NVRTC needs the CUDA headers cuda_fp16.h and cuda_bf16.h: pip install nvidia-cuda-runtime, "
                       "or set CUDA_HOME to a CUDA toolkit")


def nvrtc_options():
    """The options every NVRTC compile of program_source() takes (an architecture besides)."""
    return ("--std=c++17", f"--include-path={kernel_dir()}", f"--include-path={cuda_include_dir()}")


def program_source():
    """The one translation unit that holds every kernel.

    It opens with a hash of the sources because compilers' caches (CuPy's on
    disk) key on this text, and the includes alone would not change with them.
    """
    return f"// kernels {source_hash()}\n" + "".join(f'#include "{name}"\n' for name in SOURCES)


def _flag(v):
    return "true" if v else "false"


def kernel_name(kernel, dtype, spec=None, *flags):
    """An instantiation as a C++ name expression: kernel<S, C, the spec's template arguments, bool flags...>
    (the LayerNorm LSTM's kernels take every one but PEEPHOLE: layer_norm takes no peephole)."""
    s, c = TYPES[np.dtype(dtype)]
    args = () if spec is None else spec.template_args()
    if kernel.startswith("lstm_ln_"):
        args = args[1:]
    return f"{kernel}<{', '.join([s, c, *args, *map(_flag, flags)])}>"


def scalars(spec, compute_dtype):
    """The spec's kernel arguments (`kernel_scalars`) as the kernels' C type: NumPy scalars of the compute dtype,
    which the launchers pass as float or double."""
    return tuple(np.dtype(compute_dtype).type(v) for v in spec.kernel_scalars())


_GRU_SPEC = ("gru_backward_step", "gru_n_step", "gru_n_backward_step")  # templated on the spec (ZONEOUT)
_GRU = ("gru_rz_step", "gru_rz_backward_step")
_REDUCE = ("column_partial_sums", "column_totals")
_LAYER_NORM = ("layer_norm_forward", "layer_norm_backward")
# one block per row, meeting at __syncthreads()
BARRIER_KERNELS = (*_LAYER_NORM, "lstm_ln_forward_step", "lstm_ln_backward_step")
# one cooperative launch a sequence, every block resident, meeting at grid_sync() too
COOPERATIVE_KERNELS = ("lstm_persistent_forward", "lstm_persistent_backward", "lstm_ln_persistent_forward",
                       "lstm_ln_persistent_backward", "gru_persistent_forward", "gru_persistent_backward",
                       "gru_rb_persistent_forward", "gru_rb_persistent_backward")


def instantiations():
    """Every kernel instantiation a backend can launch."""
    names = []
    for dtype in TYPES:
        for spec in LSTMSpec.every():
            for kernel in ("lstm", "lstm_ln") if spec.peephole is None else ("lstm",):  # layer_norm: no peephole
                names += [kernel_name(f"{kernel}_forward_step", dtype, spec, training) for training in (True, False)]
                names.append(kernel_name(f"{kernel}_backward_step", dtype, spec))
        for spec in {s.template_args(): s for s in GRUSpec.every()}.values():  # one per template argument list
            names += [kernel_name("gru_forward_step", dtype, spec, training) for training in (True, False)]
            names += [kernel_name(k, dtype, spec) for k in _GRU_SPEC]
        names += [kernel_name(k, dtype) for k in _GRU + _REDUCE + _LAYER_NORM]
        names += _persistent_instantiations(dtype)
    return names


def _persistent_instantiations(dtype):
    names = []
    for spec in LSTMSpec.every():
        for kernel in ("lstm", "lstm_ln") if spec.peephole is None else ("lstm",):  # layer_norm: no peephole
            names += [kernel_name(f"{kernel}_persistent_forward", dtype, spec, training) for training in (True, False)]
            names.append(kernel_name(f"{kernel}_persistent_backward", dtype, spec))
    for spec in {s.template_args(): s for s in GRUSpec.every()}.values():
        for kernel in ("gru_persistent", "gru_rb_persistent"):  # reset after, and before
            names += [kernel_name(f"{kernel}_forward", dtype, spec, training) for training in (True, False)]
            names.append(kernel_name(f"{kernel}_backward", dtype, spec))
    return names


def uses_barriers(name):
    """Whether an instantiation's block meets at __syncthreads() (the host runs those with launch_blocks)."""
    return name.split("<")[0] in BARRIER_KERNELS


def cooperative(name):
    """Whether an instantiation's grid meets at grid_sync(): launched cooperatively, every block at once."""
    return name.split("<")[0] in COOPERATIVE_KERNELS


# --- persistent kernels: slices and capacity ----------------------------------


class Device(NamedTuple):
    """What a persistent plan depends on: the SM count, the dynamic shared memory a block may opt in to (bytes),
    the threads per block the plan gives, and whether the device can launch cooperatively."""

    name: str
    sms: int
    shared_per_block: int
    threads: int = 256
    cooperative: bool = True


# The H100 and H200 (SXM): 132 SMs, 227 KiB of shared memory per block.  For the arithmetic in the tests and the
# bench notes; on a GPU the plan reads the device's own properties.
HOPPER = Device("H100/H200", 132, 227 * 1024)
ROW_PAD = 1  # kernels/persistent.cu's: a row of weights in shared memory is one value longer than its values
PERSISTENT_AUTO_BATCH = 16  # persistent="auto" takes the persistent path up to this batch (bench/NOTES.md, P6)


class PersistentPlan(NamedTuple):
    """A persistent launch: `blocks` blocks of `threads` threads, block k owning the hidden units
    [k·units, min((k + 1)·units, H)) and, with proj_size P, the outputs [k·proj_units, min((k + 1)·proj_units, P))
    (trailing blocks may own none), each with `shared` bytes of dynamic shared memory."""

    blocks: int
    units: int
    threads: int
    shared: int
    proj_units: int = 0


def persistent_shared_bytes(spec, units, H, dtype, threads, proj_units=0):
    """A persistent block's dynamic shared memory, the larger of its forward's and its backward's
    (kernels/persistent.cu): its weights, G·units·H in the storage dtype (the backward's twice that with the full
    peephole, [W_hh | W_ch]'s columns), the forward's rows of W_ch with the full peephole, 3·units·H in the compute
    dtype, then one partial sum per thread in the compute dtype, each part from a 16-byte boundary; every row of
    weights one value longer (ROW_PAD, against shared-memory bank conflicts).  With proj_size P: W_hh's rows are
    P long, and the forward adds proj_units rows of W_hr [P, H]; the backward holds proj_units columns of W_hh
    (4H long), units columns of W_hr (P long, compute dtype) and, with the full peephole, units columns of W_ch."""
    s, c = np.dtype(dtype).itemsize, np.dtype(compute(dtype)).itemsize
    lstm = isinstance(spec, LSTMSpec)
    gates, full, P = (4, spec.peephole == "full", spec.proj_size) if lstm else (3, False, 0)
    part = lambda n: (n + 15) // 16 * 16  # noqa: E731
    peep = part(3 * units * (H + ROW_PAD) * c if full else 0)
    if P:
        forward = part(gates * units * (P + ROW_PAD) * s) + part(proj_units * (H + ROW_PAD) * s) + peep
        backward = (part(proj_units * (gates * H + ROW_PAD) * s)
                    + part(units * (gates * H + ROW_PAD) * s if full else 0) + part(units * (P + ROW_PAD) * c))
    else:
        forward = part(gates * units * (H + ROW_PAD) * s) + peep
        backward = part((2 if full else 1) * units * (gates * H + ROW_PAD) * s)
    return max(forward, backward) + threads * c


def persistent_plan(spec, dtype, H, device):
    """(PersistentPlan, None) for a layer of `spec` with hidden size H on `device`, or (None, why not).

    One block per SM at most, so every block is resident as a grid barrier
    needs: units = ⌈H / SMs⌉ per block, blocks = ⌈H / units⌉ (the last slice
    partial when units does not divide H); with proj_size P, proj_units =
    ⌈P / blocks⌉ outputs per block.  It fits when a block's weights and
    partial sums fit the shared memory a block may have.
    """
    if not device.cooperative:
        return None, f"{device.name} cannot launch cooperative kernels"
    units = max(1, math.ceil(H / device.sms))
    blocks = math.ceil(H / units)
    proj_units = math.ceil(spec.proj_size / blocks) if isinstance(spec, LSTMSpec) else 0
    shared = persistent_shared_bytes(spec, units, H, dtype, device.threads, proj_units)
    if shared > device.shared_per_block:
        return None, (f"hidden_size {H} in {np.dtype(dtype).name} needs {shared} bytes of shared memory per block "
                      f"({units} units on each of {device.sms} SMs), more than the {device.shared_per_block} "
                      f"{device.name} allows")
    return PersistentPlan(blocks, units, device.threads, shared, proj_units), None


def row_threads(n):
    """A row kernel's threads per block for rows of n values: a power of 2, at least a warp, at most ROW_BLOCK."""
    return min(ROW_BLOCK, max(32, 1 << (max(n, 1) - 1).bit_length()))


class KernelOps:
    """The per-step ops of `rnncells._sequence`, as launches of the CUDA kernels.

    `launcher(name, grid, block, args)` runs one instantiation; `gemm(a, b,
    out, accumulate=False)` is the backend's out = a @ b (out += a @ b),
    with its math mode (TF32 or not) already bound.  Arguments follow the
    kernels' signatures: ints for scalars, arrays (or None for a null pointer).
    `capture(ops, loop)` returns a replay of loop(ops) (a CUDA graph, or
    `record` on the host); `graph_key()` is what else a graph depends on
    (device, math mode); `device()` the `Device` persistent plans are made
    for (None: no persistent kernels).  A launcher takes `shared=` bytes of
    dynamic shared memory, and launches a `cooperative` instantiation
    cooperatively.
    """

    def __init__(self, launcher, xp, gemm, capture=None, graph_key=tuple, device=None):
        self.launcher, self.xp, self.gemm = launcher, xp, gemm
        self._capture, self.graph_key, self._device = capture, graph_key, device

    def persistent_plan(self, spec, dtype, H):
        """(PersistentPlan, None) for this backend's device, or (None, why not)."""
        if self._device is None:
            return None, "this backend has no persistent kernels"
        return persistent_plan(spec, dtype, H, self._device())

    def _launch_persistent(self, name, plan, T, B, *args):
        """One cooperative launch of a plan, refused (ValueError) where the device could not hold every block."""
        if T == 0 or B == 0 or plan.blocks == 0:
            return
        device = self._device()
        if plan.blocks > device.sms or plan.shared > device.shared_per_block:
            raise ValueError(f"{name}: {plan} does not fit {device} (one block per SM, its shared memory at most "
                             f"shared_per_block)")
        barrier = self.xp.zeros(1, dtype="uint32")  # the grid barrier's counter (kernels/persistent.cu)
        self.launcher(name, (plan.blocks, 1, 1), (plan.threads, 1, 1), (T, B, *args, barrier), shared=plan.shared)

    def lstm_persistent_forward(self, plan, spec, xw, w_hh, w_ch, w_hr, h0, c0, cs, y, ms, h_last, gates, w_peep,
                                zone_h, zone_c, rdrop, hd, lengths, hw, cw):
        """A whole LSTM forward loop as one persistent launch (kernels/persistent.cu): cs is [T, B, H] in training
        (gates given), else [2, B, H] ping-pong; hd [2, B, H] holds d∘h0 in hd[0] (recurrent dropout); w_ch and cw
        [B, 3H] with the full peephole; w_hr [P, H] and ms (h', [T or 1, B, H]) with proj_size P."""
        T, B, H = xw.shape[0], xw.shape[1], c0.shape[1]
        name = kernel_name("lstm_persistent_forward", y.dtype, spec, gates is not None)
        self._launch_persistent(name, plan, T, B, H, spec.proj_size, plan.units, plan.proj_units,
                                *scalars(spec, c0.dtype), xw, w_hh, w_ch, w_hr, h0, c0, cs, y, ms, h_last, gates,
                                w_peep, zone_h, zone_c, rdrop, hd, lengths, hw, cw)

    def lstm_persistent_backward(self, plan, spec, gates, c0, cs, dy, dcarry, drec, da, w_rec, w_hh, w_hr, dhp,
                                 w_peep, zone_h, zone_c, rdrop, lengths):
        """A whole LSTM backward loop as one persistent launch; dcarry [2, B, 2H] and drec [2, B, n_rec] as the
        step loop leaves them (drec[0] = da[0] w_rec), w_rec [4H, n_rec] the step loop's (W_hh, or [W_hh | W_ch]
        with the full peephole; projected: [W_ch] or None).  With proj_size P: w_hh [4H, P], w_hr [P, H] in the
        compute dtype, and dhp [T, B, P] the step loop's dy (made dh in place); dh0 is the caller's GEMM."""
        T, B, H = cs.shape
        name = kernel_name("lstm_persistent_backward", da.dtype, spec)
        self._launch_persistent(name, plan, T, B, H, spec.proj_size, plan.units, plan.proj_units,
                                *scalars(spec, c0.dtype), gates, c0, cs, dy, dcarry, drec.shape[-1], drec, da, w_rec,
                                w_hh, w_hr, dhp, w_peep, zone_h, zone_c, rdrop, lengths)

    def gru_persistent_forward(self, plan, spec, xw, w_hh, b_hn, h0, y, h_last, gates, zone_h, rdrop, hd, lengths,
                               gh, ln_h, h_hat, rstd_h):
        """A whole GRU (reset_after) forward loop as one persistent launch; hd as in lstm_persistent_forward;
        layer_norm: ln_h [3H] the gain of h W_hhᵀ's normalisation, h_hat [T, B, 3H] and rstd_h [T, B] (training)."""
        T, B, H = y.shape
        name = kernel_name("gru_persistent_forward", y.dtype, spec, gates is not None)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, gh.dtype), xw, w_hh, b_hn, h0, y,
                                h_last, gates, zone_h, rdrop, hd, lengths, gh, gh.dtype.type(LAYER_NORM_EPS), ln_h,
                                h_hat, rstd_h, self._row_parts(plan, B, 1, gh.dtype, ln_h))

    def lstm_ln_persistent_forward(self, plan, spec, xw, w_hh, ln_h, h0, c0, cs, y, h_last, gates, zone_h, zone_c,
                                   rdrop, hd, lengths, gamma_c, beta_c, h_hat, rstd_h, c_hat, rstd_c, hw):
        """A whole LayerNorm LSTM forward loop as one persistent launch; cs and hd as in lstm_persistent_forward,
        h_hat, rstd_h, c_hat, rstd_c the normalisations' x̂ and 1/√(σ² + ε), kept in training."""
        T, B, H = y.shape
        name = kernel_name("lstm_ln_persistent_forward", y.dtype, spec, gates is not None)
        eps = c0.dtype.type(LAYER_NORM_EPS)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, c0.dtype), eps, xw, w_hh, ln_h, h0, c0,
                                cs, y, h_last, gates, zone_h, zone_c, rdrop, hd, lengths, gamma_c, beta_c, h_hat,
                                rstd_h, c_hat, rstd_c, hw, self._row_parts(plan, B, 2, c0.dtype, ln_h))

    def lstm_ln_persistent_backward(self, plan, spec, gates, c0, cs, dy, dcarry, drec, da, da_raw, w_hh, ln_h, h_hat,
                                    rstd_h, c_hat, rstd_c, gamma_c, beta_c, dn, zone_h, zone_c, rdrop, lengths):
        """A whole LayerNorm LSTM backward loop as one persistent launch: da [T, B, 4H] the gradient of the
        normalised h W_hhᵀ (and of xw), da_raw [T, B, 4H] of h W_hhᵀ itself, dn [T, B, H] of γ_c∘ĉ + β_c."""
        T, B, H = cs.shape
        name = kernel_name("lstm_ln_persistent_backward", da.dtype, spec)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, c0.dtype), gates, c0, cs, dy, dcarry,
                                drec, da, da_raw, w_hh, ln_h, h_hat, rstd_h, c_hat, rstd_c, gamma_c, beta_c, dn,
                                zone_h, zone_c, rdrop, lengths, self._row_parts(plan, B, 2, c0.dtype, ln_h))

    def gru_rb_persistent_forward(self, plan, spec, training, xw, w_hh, h0, y, h_last, gates, rh, zone_h, rdrop, hd,
                                  lengths, ghrz, ghn):
        """A whole GRU (reset before) forward loop as one persistent launch: gates [T, B, 3H] and rh [T, B, H] in
        training, [1, ...] else (r and z pass to n through them); hd as in lstm_persistent_forward."""
        T, B, H = y.shape
        name = kernel_name("gru_rb_persistent_forward", y.dtype, spec, training)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, ghn.dtype), xw, w_hh, h0, y, h_last,
                                gates, rh, zone_h, rdrop, hd, lengths, ghrz, ghn)

    def gru_rb_persistent_backward(self, plan, spec, gates, h0, y, hd, dy, dcarry, drec, dg, w_hh, drh, zone_h, rdrop,
                                   lengths):
        """A whole GRU (reset before) backward loop as one persistent launch; hd [T, B, H] every step's d∘h
        (recurrent dropout), or None."""
        T, B, H = y.shape
        name = kernel_name("gru_rb_persistent_backward", y.dtype, spec)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, drh.dtype), gates, h0, y, hd, dy,
                                dcarry, drec, dg, w_hh, drh, zone_h, rdrop, lengths)

    def gru_persistent_backward(self, plan, spec, gates, h0, y, dy, dcarry, drec, dgi, dgh, w_hh, zone_h, rdrop,
                                lengths, ln_h, h_hat, rstd_h, dgh_raw):
        """A whole GRU (reset_after) backward loop as one persistent launch; layer_norm: dgh_raw [T, B, 3H] the
        gradient of h W_hhᵀ before its normalisation (dgh the normalised one's), which the recurrence multiplies."""
        T, B, H = y.shape
        name = kernel_name("gru_persistent_backward", y.dtype, spec)
        self._launch_persistent(name, plan, T, B, H, plan.units, *scalars(spec, dcarry.dtype), gates, h0, y, dy,
                                dcarry, drec, dgi, dgh, w_hh, zone_h, rdrop, lengths, ln_h, h_hat, rstd_h, dgh_raw,
                                self._row_parts(plan, B, 1, dcarry.dtype, ln_h))

    def _row_parts(self, plan, B, count, dtype, ln_h):
        """layer_norm's scratch for rows' statistics across blocks, [count, blocks, B, 2] (kernels/persistent.cu),
        or None without layer_norm."""
        return None if ln_h is None else self.xp.empty((count, plan.blocks, B, 2), dtype=dtype)

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

    @staticmethod
    def run_compiled(steps, *args):
        """False: the loops launch kernel by kernel (a CUDA graph makes them one launch; see rnncells._graphs)."""
        return False

    def _launch_rows(self, name, rows, n, *args):
        """One block per row of n values (layernorm.cu, lstm.cu's lstm_ln_*_step)."""
        if rows > 0:
            self.launcher(name, (rows, 1, 1), (row_threads(n), 1, 1), args)

    def layer_norm_forward(self, x, gamma, beta, x_hat, rstd, eps):
        """Each row of x [rows, n] (compute dtype) normalised in place, x ← γ∘x̂ (+ β); x̂ and 1/√(σ² + ε) kept
        in x_hat [rows, n] and rstd [rows] when given (see kernels/layernorm.cu)."""
        rows, n = x.shape
        self._launch_rows(kernel_name("layer_norm_forward", gamma.dtype), rows, n, n, x.dtype.type(eps), x, gamma,
                          beta, x_hat, rstd)

    def layer_norm_backward(self, dy, x_hat, rstd, gamma, dx):
        """dx [rows, n], the gradient of the rows before layer_norm_forward, from dy, that of γ∘x̂ (+ β)."""
        rows, n = dy.shape
        self._launch_rows(kernel_name("layer_norm_backward", dy.dtype), rows, n, n, dy, x_hat, rstd, gamma, dx)

    def column_sum(self, a):
        """Σ over the rows of a contiguous [rows, cols] matrix, deterministically (two fixed-order passes)."""
        rows, cols = a.shape
        chunks = math.ceil(rows / CHUNK)
        partial = self.xp.empty((chunks, cols), dtype=compute(a.dtype))  # sums in the compute dtype
        out = self.xp.empty(cols, dtype=a.dtype)
        if chunks == 0:
            out[...] = 0
            return out
        grid_y = min(chunks, GRID_LIMITS[1])  # the kernel strides over the chunks past the grid
        self._launch(kernel_name("column_partial_sums", a.dtype), cols, rows, cols, CHUNK, a, partial, grid_y=grid_y)
        self._launch(kernel_name("column_totals", a.dtype), cols, chunks, cols, partial, out)
        return out

    def lstm_forward_step(self, spec, t, xw, hw, cw, h, c, c_next, y, h_last, gates, w_peep, zone_h, zone_c,
                          rdrop, h_drop, lengths):
        """One LSTM step's pointwise forward (see kernels/lstm.cu)."""
        B, H = y.shape
        name = kernel_name("lstm_forward_step", y.dtype, spec, gates is not None)
        self._launch(name, B * H, t, B, H, *scalars(spec, c.dtype), xw, hw, cw, h, c, c_next, y, h_last, gates,
                     w_peep, zone_h, zone_c, rdrop, h_drop, lengths)

    def lstm_ln_forward_step(self, spec, t, xw, hw, h, c, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop,
                             lengths, gamma_c, beta_c, c_hat, rstd_c, eps):
        """One LayerNorm LSTM step's pointwise forward, c' normalised: one block per item (see kernels/lstm.cu)."""
        B, H = y.shape
        name = kernel_name("lstm_ln_forward_step", y.dtype, spec, gates is not None)
        self._launch_rows(name, B, H, t, B, H, *scalars(spec, c.dtype), c.dtype.type(eps), xw, hw, h, c, c_next, y,
                          h_last, gates, zone_h, zone_c, rdrop, h_drop, lengths, gamma_c, beta_c, c_hat, rstd_c)

    def lstm_ln_backward_step(self, spec, t, gates, c, c_next, dy, dcarry, drec, dcarry_out, da, zone_h, zone_c,
                              rdrop, lengths, c_hat, rstd_c, gamma_c, beta_c, dn):
        """One LayerNorm LSTM step's pointwise backward; dn [B, H] gets d(γ_c∘ĉ + β_c)."""
        B, H = c.shape
        name = kernel_name("lstm_ln_backward_step", da.dtype, spec)
        self._launch_rows(name, B, H, t, B, H, *scalars(spec, c.dtype), gates, c, c_next, dy, dcarry, drec,
                          dcarry_out, da, zone_h, zone_c, rdrop, lengths, c_hat, rstd_c, gamma_c, beta_c, dn)

    def lstm_backward_step(self, spec, t, gates, c, c_next, dy, dcarry, drec, dcarry_out, da, w_peep, zone_h,
                           zone_c, rdrop, lengths):
        """One LSTM step's pointwise backward (dy None: a projected LSTM's, whose dh arrives whole in drec)."""
        B, H = c.shape
        name = kernel_name("lstm_backward_step", da.dtype, spec)
        n_rec = drec.shape[1]
        self._launch(name, B * H, t, B, H, *scalars(spec, c.dtype), n_rec, gates, c, c_next, dy, dcarry, drec,
                     dcarry_out, da, w_peep, zone_h, zone_c, rdrop, lengths)

    def gru_forward_step(self, spec, t, xw, gh, b_hn, h, y, h_last, gates, zone_h, rdrop, h_drop, lengths):
        """One GRU (reset_after) step's pointwise forward (see kernels/gru.cu)."""
        B, H = y.shape
        name = kernel_name("gru_forward_step", y.dtype, spec, gates is not None)
        self._launch(name, B * H, t, B, H, *scalars(spec, gh.dtype), xw, gh, b_hn, h, y, h_last, gates, zone_h,
                     rdrop, h_drop, lengths)

    def gru_backward_step(self, spec, t, gates, h, dy, dcarry, drec, dcarry_out, dgi, dgh, zone_h, rdrop, lengths):
        """One GRU (reset_after) step's pointwise backward."""
        B, H = dy.shape
        name = kernel_name("gru_backward_step", dy.dtype, spec)
        self._launch(name, B * H, t, B, H, *scalars(spec, dcarry.dtype), gates, h, dy, dcarry, drec, dcarry_out,
                     dgi, dgh, zone_h, rdrop, lengths)

    def gru_rz_step(self, xw, ghrz, h, gates, rh):
        """GRU (reset before): r, z and r∘h."""
        B, H = h.shape
        self._launch(kernel_name("gru_rz_step", h.dtype), B * H, B, H, xw, ghrz, h, gates, rh)

    def gru_n_step(self, spec, t, xw, ghn, h, y, h_last, gates, zone_h, rdrop, h_drop, lengths):
        """GRU (reset before): n and the new state."""
        B, H = h.shape
        self._launch(kernel_name("gru_n_step", h.dtype, spec), B * H, t, B, H, *scalars(spec, ghn.dtype), xw, ghn,
                     h, y, h_last, gates, zone_h, rdrop, h_drop, lengths)

    def gru_n_backward_step(self, spec, t, gates, h, dy, dcarry, drec, dcarry_out, dg, zone_h, rdrop, lengths):
        """GRU (reset before): da_z, da_n and z∘dh."""
        B, H = h.shape
        name = kernel_name("gru_n_backward_step", h.dtype, spec)
        self._launch(name, B * H, t, B, H, *scalars(spec, dcarry.dtype), gates, h, dy, dcarry, drec, dcarry_out, dg,
                     zone_h, rdrop, lengths)

    def gru_rz_backward_step(self, spec, t, gates, h, drh, dcarry_out, dg, rdrop, lengths):
        """GRU (reset before): da_r, and r∘d(r∘h) into dh (times d under recurrent dropout)."""
        B, H = h.shape
        name = kernel_name("gru_rz_backward_step", h.dtype)
        scale = np.dtype(dcarry_out.dtype).type(spec.rdrop_scale())
        self._launch(name, B * H, t, B, H, scale, gates, h, drh, dcarry_out, dg, rdrop, lengths)


def source_hash():
    """A hash of the kernel sources, for caches keyed on them."""
    h = hashlib.sha256()
    for name in (*SOURCES, "common.cuh"):
        h.update((kernel_dir() / name).read_bytes())
    return h.hexdigest()[:16]


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
