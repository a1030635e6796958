"""`rnncells bench`: our time next to cuDNN's, one row per configuration, with the ratio.

The implementations, timed side by side in one process on one device:
  rnncells        our backend: on a GPU the CUDA kernels through CuPy with the step
                  loops as CUDA graphs (graphs=GraphCache()); on the CPU the default
                  backend of NumPy arrays ("cpu": small steps' loops compiled)
  rnncells eager  (GPU only) the same without graphs: one launch per kernel and GEMM
  rnncells persistent  (GPU only) persistent=True: each step loop one launch of the
                  persistent kernels; "-" where the weights do not fit the device
                  (`persistent_ratio` is torch.nn's time over this one's)
  torch.nn        torch.nn.LSTM / GRU (cuDNN on a GPU)
  torch loop      a Python loop over torch.nn.LSTMCell / GRUCell: the lower anchor
Modes: "forward" (inference, nothing saved) and "train" (forward + backward,
dx included for everyone).  Precision (`PRECISIONS`): fp32 with TF32 off
and, on a GPU, on (ours through `tf32=True`, torch's through torch.backends'
two switches); on a GPU, fp16 and bf16: ours with the parameters and
the inputs in that dtype (float32 arithmetic), torch's float32 modules under
torch.autocast in that dtype, as mixed-precision training runs them; on the
CPU, fp64 (both sides in float64).
Configurations are chosen by cell, group (standard, small batch, large,
variants), mode and precision, so that one run fits a time limit; `on_row` gets the
rows so far as soon as each is measured (the CLI rewrites the JSON record
then), so a run that is cut off keeps what it measured.
Timing: `warmup` untimed calls, then `repeats` timed ones (CUDA events on a
GPU, perf_counter on the CPU), the implementations' calls interleaved (one of
each in turn, the order reversed every other round), so that drift in the
machine's load, and what one call leaves behind for the next, fall on all of
them alike; inputs rotated among `rotate` sets so caches do not flatter
anyone; the median is reported, and every configuration is measured twice
(pass 1, pass 2) so the table shows its own noise.  On the CPU each row
also has a thread count (`CPU_THREADS`), set for both sides: torch's
intra-op threads and NumPy's BLAS pool.
The "variants" group times our variants (`VARIANTS`; zoneout and recurrent
dropout in training draw their masks on the device within each call), at the standard shape and
at batch 4: for those cuDNN lacks the torch sides run their plain cell, so
the ratio says what the variant costs against cuDNN's cell without it;
`proj_size`, which torch.nn.LSTM has, both sides run (the torch loop then
steps torch.nn.LSTM itself, as LSTMCell has no projection).
ratio = torch.nn time / rnncells time: above 1, we are faster.  On a GPU each
configuration also gets the peak memory of one warm training step (fp32 and bf16),
rnncells and torch.nn, beyond its inputs and parameters (`peak_train_mb`).
"""

import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import _plot


class Config(NamedTuple):
    """One benchmark shape."""

    cell: str
    T: int
    B: int
    I: int  # noqa: E741 - the design's name for the input size
    H: int
    group: str
    variant: tuple = ()  # ours only: the spec flags, ((flag, value), ...)

    def variant_text(self):
        """The variant as the rows show it, e.g. "cell_clip=1.0" ("" for the plain cell)."""
        return " ".join(f"{k}={v}" for k, v in self.variant)


GROUPS = ("standard", "small batch", "large", "variants")
# The "variants" group: per cell, the spec flags of each variant timed (ours; torch runs its plain cell but for
# TORCH_FLAGS, which it has too).  proj_size 128 of H = 512: the 4:1 of Sak et al.'s LSTMP.
VARIANTS = {"lstm": ((("cell_clip", 1.0),), (("zoneout_h", 0.1), ("zoneout_c", 0.1)), (("proj_size", 128),),
                     (("recurrent_dropout", 0.25),), (("layer_norm", True),)),
            "gru": ((("zoneout_h", 0.1),), (("recurrent_dropout", 0.25),), (("layer_norm", True),))}
TORCH_FLAGS = ("proj_size",)
# precision -> (our dtype, TF32 on); torch runs float32 modules, under autocast for the half ones (float64 for fp64)
PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "fp16": ("float16", False),
              "bf16": ("bfloat16", False), "fp64": ("float64", False)}
DEVICE_PRECISIONS = {"cuda": ("fp32", "tf32", "fp16", "bf16"), "cpu": ("fp32", "fp64")}
CPU_THREADS = (1, 2)


def configs(preset, cells=("lstm", "gru"), groups=GROUPS):
    """'full': the GPU set, the fastrnns standard first, then `groups` of it; 'quick': the CPU's shapes, small
    batches and long sequences; 'cpu': those and the standard (T=100, B=64, H=512)."""
    shapes = []
    if preset == "full":
        shapes.append((100, 64, 512, 512, "standard"))
        shapes += [(T, B, H, H, "small batch") for T in (100, 1000) for H in (256, 512, 1024) for B in (1, 4, 16)]
        shapes.append((100, 256, 1024, 1024, "large"))
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"groups {sorted(unknown)} are not among {', '.join(GROUPS)}")
        shapes = [s for s in shapes if s[-1] in groups]
        if "variants" in groups:
            return [Config(c, *s) for s in shapes for c in cells] + [
                Config(c, T, B, H, H, "variants", flags) for T, B, H in ((100, 64, 512), (100, 4, 512))
                for c in cells for flags in VARIANTS[c]]
    elif preset in ("quick", "cpu"):
        shapes += [(20, 16, 64, 64, "quick"), (20, 4, 128, 128, "quick"), (100, 1, 256, 256, "quick"),
                   (1000, 4, 128, 128, "quick")]
        if preset == "cpu":
            shapes.append((100, 64, 512, 512, "standard"))
    else:
        raise ValueError(f"preset={preset!r} is not one of 'full', 'quick', 'cpu'")
    return [Config(c, *s) for s in shapes for c in cells]


# --- the implementations: each returns a step() closure over rotated inputs ---


def _ours(cfg, mode, xp, rotate, seed, graphs=False, precision="fp32", backend=None, persistent=False):
    """Our step(), or None with persistent=True where the persistent kernels cannot run the configuration."""
    from . import _backends, api
    from ._graphs import GraphCache
    from .params import init_params
    from .variants import GRUSpec, LSTMSpec

    dtype, tf32 = PRECISIONS[precision]
    spec = (LSTMSpec if cfg.cell == "lstm" else GRUSpec).of(dict(cfg.variant))
    if persistent and _backends.resolve(backend, xp.__name__).persistent_plan(spec, dtype, cfg.H, tf32)[0] is None:
        return None
    params = init_params(spec, cfg.I, cfg.H, xp=xp, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    xs = [xp.asarray(rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dtype)) for _ in range(rotate)]
    dy = xp.asarray(rng.standard_normal((cfg.T, cfg.B, spec.state_sizes(cfg.H)["h"])).astype(dtype))
    fwd = api.lstm_forward if cfg.cell == "lstm" else api.gru_forward
    bwd = api.lstm_backward if cfg.cell == "lstm" else api.gru_backward
    cache = GraphCache() if graphs else None
    generator = xp.random.default_rng(seed)  # zoneout's masks, drawn on the device each training call
    k = [0]

    def step():
        x = xs[k[0] % rotate]
        k[0] += 1
        out = fwd(x, params, training=mode == "train", graphs=cache, tf32=tf32, backend=backend, generator=generator,
                  persistent=persistent, **dict(cfg.variant))
        if mode == "train":
            bwd(out[-1], dy)

    return step


def _torch(cfg, mode, device, rotate, seed, loop, precision="fp32"):
    import torch

    dtype = PRECISIONS[precision][0]
    half = dtype in ("float16", "bfloat16")
    autocast = (lambda: torch.autocast(device, dtype=getattr(torch, dtype))) if half else contextlib.nullcontext
    full = torch.float64 if dtype == "float64" else torch.float32  # the modules' and the inputs' dtype
    torch.manual_seed(seed)
    flags = {k: v for k, v in cfg.variant if k in TORCH_FLAGS}  # what torch.nn runs of the variant
    cells = loop and not flags  # a loop of torch.nn.LSTMCell/GRUCell, which have none of TORCH_FLAGS
    cls = {"lstm": (torch.nn.LSTM, torch.nn.LSTMCell), "gru": (torch.nn.GRU, torch.nn.GRUCell)}[cfg.cell][cells]
    m = cls(cfg.I, cfg.H, **flags).to(device, full)
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(cfg.T, cfg.B, cfg.I, generator=g, dtype=full).to(device) for _ in range(rotate)]
    dy = torch.randn(cfg.T, cfg.B, flags.get("proj_size") or cfg.H, generator=g, dtype=full).to(device)
    for x in xs:
        x.requires_grad_(mode == "train")
    k = [0]

    def run(x):
        if not loop:
            return m(x)[0]
        state, ys = None, []
        for t in range(cfg.T):
            if cells:
                state = m(x[t], state)
                ys.append(state[0] if cfg.cell == "lstm" else state)
            else:  # the whole module, one step a call
                y, state = m(x[t : t + 1], state)
                ys.append(y[0])
        return torch.stack(ys)

    def step():
        x = xs[k[0] % rotate]
        k[0] += 1
        if mode == "train":
            m.zero_grad(set_to_none=True)
            x.grad = None
            with autocast():
                y = run(x)
            y.backward(dy.to(y.dtype))
        else:
            with torch.no_grad(), autocast():
                run(x)

    return step


IMPLEMENTATIONS = ("rnncells", "rnncells eager", "rnncells persistent", "torch.nn", "torch loop")
GPU_ONLY = ("rnncells eager", "rnncells persistent")  # nothing to capture on the CPU; no fast persistent path there


def implementations(device, torch_available=True):
    """The implementations timed on a device (no eager or persistent row on the CPU)."""
    names = [n for n in IMPLEMENTATIONS if device == "cuda" or n not in GPU_ONLY]
    return tuple(n for n in names if torch_available or not n.startswith("torch"))


def _build(name, cfg, mode, device, xp, rotate, seed, precision="fp32"):
    """The step() closure of one implementation (torch's TF32 is set by `_torch_tf32` around it), or None where it
    cannot run the configuration."""
    if name.startswith("rnncells"):
        return _ours(cfg, mode, xp, rotate, seed, graphs=device == "cuda" and name == "rnncells", precision=precision,
                     persistent=name == "rnncells persistent")
    return _torch(cfg, mode, device, rotate, seed, loop=name == "torch loop", precision=precision)


class _CupyMemory:
    """Bytes CuPy's memory pool has handed out, and their peak during a call (a pool hook)."""

    def __init__(self):
        import cupy

        self.cupy = cupy

    def allocated(self):
        return self.cupy.get_default_memory_pool().used_bytes()

    def peak(self, fn):
        cupy = self.cupy

        class Peak(cupy.cuda.MemoryHook):
            name = "rnncells-peak"

            def __init__(self, used):
                self.used = self.top = used

            def malloc_postprocess(self, **kw):
                self.used += kw["mem_size"]
                self.top = max(self.top, self.used)

            def free_postprocess(self, **kw):
                self.used -= kw["mem_size"]

        with Peak(self.allocated()) as hook:
            fn()
            cupy.cuda.Device().synchronize()
        return hook.top


class _TorchMemory:
    """Bytes torch's caching allocator has handed out, and their peak during a call."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda

    def allocated(self):
        return self.cuda.memory_allocated()

    def peak(self, fn):
        self.cuda.reset_peak_memory_stats()
        fn()
        self.cuda.synchronize()
        return self.cuda.max_memory_allocated()


def peak_train_mb(step, memory, warmup=2):
    """MB allocated at the peak of one warm training step beyond what was allocated before the first.

    `step` was just built, so what is allocated now is its inputs and
    parameters; whatever the implementation keeps between steps (our graph
    slots, cuDNN's workspace) is allocated during warm-up and counts.
    """
    before = memory.allocated()
    for _ in range(warmup):
        step()
    return (memory.peak(step) - before) / 2**20


class _CpuTimer:
    """Milliseconds of one call on the CPU."""

    def __call__(self, fn):
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)


class _CudaTimer:
    """Milliseconds of one call's GPU work, between two CUDA events on the legacy default stream.

    CuPy and torch both issue to that stream by default, so one pair of events times either.
    """

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()

    def __call__(self, fn):
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.end)


def time_steps(steps, timer, warmup, repeats):
    """{name: (median, samples)} (ms) of `repeats` timed calls of each of `steps` {name: step} after `warmup`
    untimed ones, one call of each in turn (the order reversed every other round)."""
    order = list(steps)
    for _ in range(warmup):
        for name in order:
            timer(steps[name])
    samples = {name: [] for name in order}
    for k in range(repeats):
        for name in order if k % 2 == 0 else reversed(order):
            samples[name].append(timer(steps[name]))
    return {name: (statistics.median(v), v) for name, v in samples.items()}


@contextlib.contextmanager
def cpu_threads(n):
    """n CPU threads for both sides: torch's intra-op pool (if torch is here) and NumPy's BLAS (threadpoolctl).

    Ours may still run a small call's GEMMs on one BLAS thread (`rnncells._numpy.threads`): that choice is
    part of what is timed."""
    from . import _numpy

    try:
        import torch
    except ImportError:
        torch = None
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(n)
    try:
        with _numpy.blas().limit(limits=n):
            yield
    finally:
        if torch:
            torch.set_num_threads(before)


def _torch_tf32(on):
    """torch's TF32 switches: cuDNN's (torch.nn's RNNs) and cuBLAS's (the cell loop's matmuls)."""
    try:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    except ImportError:
        pass


def environment(device):
    """Versions and the machine, for the JSON record."""
    from . import _cpu, _numpy

    env = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
           "blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
                    for i in _numpy.blas().info()],
           "cpu_loops_compiled": device == "cpu" and _cpu.load() is not None}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cudnn"] = torch.backends.cudnn.version() if device == "cuda" else None
    except ImportError:
        env["torch"] = None
    if device == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        env.update(
            device=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            driver=cupy.cuda.runtime.driverGetVersion(),
            cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
            cupy=cupy.__version__,
        )
    else:
        env["device"] = f"CPU: {platform.processor() or platform.machine()}"
    return env


def run(preset="full", cells=("lstm", "gru"), device=None, modes=("forward", "train"), repeats=20, warmup=5,
        rotate=4, passes=2, out=print, groups=GROUPS, precisions=None, on_row=None, threads=CPU_THREADS):
    """Time every implementation on every configuration; returns the device and the result rows.

    `precisions` (keys of PRECISIONS) default to the device's (DEVICE_PRECISIONS), and others are refused;
    `threads`: the CPU thread counts, a row each; `on_row(rows)` is called with the rows so far after each
    row is measured.
    """
    from ._backends import gpu_available

    device = device or ("cuda" if gpu_available() else "cpu")
    if device == "cuda":
        import cupy as xp

        timer, threads = _CudaTimer(), (None,)
    else:
        xp, timer = np, _CpuTimer()
    precisions = tuple(precisions or DEVICE_PRECISIONS[device])
    if not set(precisions) <= set(DEVICE_PRECISIONS[device]):
        raise ValueError(f"precisions {precisions}: the {device} bench times {', '.join(DEVICE_PRECISIONS[device])}")
    try:
        import torch  # noqa: F401

        impls = implementations(device)
    except ImportError:
        impls = implementations(device, torch_available=False)
        out("torch is not installed: timing rnncells alone, with no ratio")
    memories = {}
    if device == "cuda":
        memories["rnncells"] = _CupyMemory()
        if "torch.nn" in impls:
            memories["torch.nn"] = _TorchMemory()
    rows = []
    header = f"{'cell':<5}{'T':>5}{'B':>5}{'H':>6}  {'mode':<8}{'prec':<6}{'thr':>4}{'pass':>5}"
    out(header + "".join(f"{n + ' ms':>14}" for n in impls) + f"{'ratio':>8}")
    for cfg in configs(preset, cells, groups):
        for mode in modes:
            for prec, n_threads in ((p, n) for p in precisions for n in threads):
                _torch_tf32(PRECISIONS[prec][1])
                for p in range(1, passes + 1):
                    with cpu_threads(n_threads) if n_threads else contextlib.nullcontext():
                        steps = {n: _build(n, cfg, mode, device, xp, rotate, seed=p, precision=prec) for n in impls}
                        steps = {n: step for n, step in steps.items() if step is not None}
                        times = {n: t for n, (t, _) in time_steps(steps, timer, warmup, repeats).items()}
                    del steps
                    ratio = times["torch.nn"] / times["rnncells"] if "torch.nn" in times else None
                    row = dict(cfg._asdict(), variant=cfg.variant_text(), mode=mode, precision=prec, threads=n_threads,
                               pass_=p, ms=times, ratio=ratio)
                    if "torch.nn" in times and "rnncells persistent" in times:
                        row["persistent_ratio"] = times["torch.nn"] / times["rnncells persistent"]
                    if memories and mode == "train" and prec in ("fp32", "bf16") and p == 1:
                        row["peak_mb"] = {n: peak_train_mb(_build(n, cfg, mode, device, xp, rotate, seed=p,
                                                                  precision=prec), m) for n, m in memories.items()}
                    rows.append(row)
                    cells_ms = "".join(f"{times[n]:>14.3f}" if n in times else f"{'-':>14}" for n in impls)
                    r = f"{ratio:>8.2f}" if ratio is not None else f"{'-':>8}"
                    mb = "".join(f"  {n} {v:.1f} MB" for n, v in row.get("peak_mb", {}).items())
                    head = f"{cfg.cell:<5}{cfg.T:>5}{cfg.B:>5}{cfg.H:>6}  {mode:<8}{prec:<6}{n_threads or '-':>4}{p:>5}"
                    out(f"{head}{cells_ms}{r}{mb}" + (f"  {cfg.variant_text()}" if cfg.variant else ""))
                    if on_row is not None:
                        on_row(rows)
    _torch_tf32(False)
    return device, rows


def record_path(out_dir, device):
    """bench/results/<time>-<device>.json: where one run's record goes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{device}.json"


def write_json(path, device, rows, settings):
    """The record at `path`: the environment, the command and every row so far (rewritten whole each time)."""
    record = {"environment": environment(device), "command": " ".join(sys.argv), "settings": settings, "rows": rows}
    Path(path).write_text(json.dumps(record, indent=1))
    return path


def plot(rows, path):
    """A bar per configuration and mode: torch.nn time / rnncells time (pass 1), with the line at 1."""
    plt = _plot.pyplot()
    kept = [r for r in rows if r["pass_"] == 1 and r["ratio"] is not None]
    labels = [f"{r['cell']} T{r['T']} B{r['B']} H{r['H']} {r['mode']} {r['precision']}"
              + (f" {r['threads']}t" if r.get("threads") else "") + (f" {r['variant']}" if r.get("variant") else "")
              for r in kept]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(kept) + 1.5))
    ax.barh(range(len(kept)), [r["ratio"] for r in kept])
    ax.axvline(1.0, color="gray", linestyle="--")
    ax.set_yticks(range(len(kept)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("torch.nn time / rnncells time (>1: rnncells faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
