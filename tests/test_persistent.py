"""The persistent kernels (kernels/persistent.cu, persistent=): their plans, and their source run on the host.

On the host every thread of every block is a fiber at once (host.h's
`launch_cooperative`), meeting at __syncthreads() and at the grid barrier,
on the host's stand-in device (`rnncells._host.HOST_DEVICE`, 8 SMs): H = 13
gives 7 blocks of 2 units, the last of 1.  Edited builds show that a missing
barrier or a wrong slice boundary gives wrong results here.
"""

import re
import subprocess
import sys

import numpy as np
import pytest

from rnncells import _backends, _host, _kernels, api, verify
from rnncells._kernels import HOPPER, PersistentPlan, persistent_plan
from rnncells.variants import GRUSpec, LSTMSpec

SHAPES = [
    dict(T=4, B=3, I=3, H=13),  # 7 blocks of 2 units, the last partial (1 unit)
    dict(T=3, B=1, I=2, H=16),  # 8 blocks of 2 units, every slice whole
    dict(T=2, B=5, I=2, H=5),  # 5 blocks of 1 unit: B·G·n dot products per block, fewer than its 64 threads
]


@pytest.fixture
def poisoned_host(poisoned_numpy):
    """The host-built kernels on NaN-poisoned buffers."""
    return _backends.Orchestrated("cuda-host", _host.ops, poisoned_numpy)


def _kwargs(shape, lengths):
    if not lengths:
        return shape
    return dict(shape, lengths=np.random.default_rng(shape["H"]).integers(0, shape["T"] + 1, size=shape["B"]))


@pytest.mark.host
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_persistent_kernels_match_the_reference(poisoned_host, spec, dtype):
    """Every variant, forward and backward, with and without lengths, against the float64 reference at the dtype's
    bound."""
    for shape in SHAPES:
        for lengths in (False, True):
            p = verify.problem(spec, dtype=dtype, **_kwargs(shape, lengths))
            err, dtypes = verify.backend_error(p, poisoned_host, persistent=True)
            assert err <= verify.BOUNDS[dtype], (shape, lengths)
            assert dtypes == {np.dtype(dtype)}


@pytest.mark.host
@pytest.mark.parametrize("peephole", [None, "full"])
def test_projected_outputs_sliced_over_the_blocks(poisoned_host, peephole):
    """proj_size 11 at H = 13 on the host's 8 SMs: 7 blocks, 2 outputs each for the first five, 1 for the sixth,
    none for the seventh, which still meets every grid barrier."""
    spec = LSTMSpec(peephole, proj_size=11)
    plan, _ = _host.ops().persistent_plan(spec, "float64", 13)
    assert (plan.blocks, plan.units, plan.proj_units) == (7, 2, 2)
    for dtype in ("float64", "float32"):
        p = verify.problem(spec, dtype=dtype, **_kwargs(SHAPES[0], True))
        err, _ = verify.backend_error(p, poisoned_host, persistent=True)
        assert err <= verify.BOUNDS[dtype], dtype


def _forward(p, backend, persistent, training):
    fwd = verify.public_functions(p.spec)[0]
    y, states, ctx = fwd(p.x, p.params, *p.states.values(), lengths=p.lengths, **p.spec.kwargs(), backend=backend,
                         training=training, persistent=persistent, generator=np.random.default_rng(verify.MASK_SEED))
    return [y, *(states if isinstance(states, tuple) else (states,))], ctx


@pytest.mark.host
def test_inference_runs_the_persistent_kernels_and_gives_the_training_outputs(poisoned_host, spec):
    """training=False: no gates kept, c in two ping-pong rows; the outputs are today's loops' up to the order of the
    GEMMs' sums, and, where training draws no masks, the training forward's."""
    for shape in SHAPES:
        p = verify.problem(spec, **_kwargs(shape, True))
        got, ctx = _forward(p, poisoned_host, True, training=False)
        assert ctx is None
        trained, ctx = _forward(p, poisoned_host, True, training=True)
        assert ctx.inner.plan is not None
        today, _ = _forward(p, poisoned_host, False, training=False)
        for a, b, c in zip(got, trained, today):
            assert np.array_equal(a, b) or spec.random_flags()
            assert verify.rel_err(a, c) <= 1e-13


@pytest.mark.host
@pytest.mark.parametrize("cell", [LSTMSpec(), GRUSpec()], ids=["lstm", "gru"])
def test_persistent_runs_are_bitwise_repeatable(cell):
    p = verify.problem(cell, T=5, B=2, H=13, dtype="float32")
    first = verify.run(p, "cuda-host", persistent=True)
    again = verify.run(p, "cuda-host", persistent=True)
    assert all(first[k].tobytes() == again[k].tobytes() for k in first)


# --- plans and capacity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("H", [1, 7, 131, 132, 133, 512, 1000, 1320])
def test_the_slices_partition_the_units_one_block_per_sm(H):
    plan, why = persistent_plan(LSTMSpec(), "float32", H, HOPPER)
    assert why is None
    assert plan.blocks <= HOPPER.sms  # co-resident: one block per SM
    owned = [u for k in range(plan.blocks) for u in range(k * plan.units, min((k + 1) * plan.units, H))]
    assert owned == list(range(H))  # every unit exactly once, in order
    assert (plan.blocks - 1) * plan.units < H  # no block without units


@pytest.mark.parametrize("cell,dtype,largest", [(LSTMSpec(), "float32", 1320), (LSTMSpec(), "float16", 1927),
                                                (LSTMSpec(), "bfloat16", 1927), (LSTMSpec(), "float64", 924),
                                                (GRUSpec(), "float32", 1584)])
def test_capacity_on_an_h100(cell, dtype, largest):
    """The largest hidden size whose weights fit a block's 227 KiB (bench/NOTES.md's table): G·⌈H/132⌉ rows of
    H + 1 weights (one of padding) in the storage dtype, then 256 partial sums in the compute dtype."""
    plan, _ = persistent_plan(cell, dtype, largest, HOPPER)
    G, units = (4 if cell.cell == "lstm" else 3), -(-largest // 132)
    weights = G * units * (largest + 1) * np.dtype(dtype).itemsize
    assert plan.shared == -(-weights // 16) * 16 + 256 * (8 if dtype == "float64" else 4) <= 227 * 1024
    plan, why = persistent_plan(cell, dtype, largest + 1, HOPPER)
    assert plan is None and f"hidden_size {largest + 1}" in why and "232448 H100/H200 allows" in why


def test_capacity_with_the_full_peephole_on_an_h100():
    """The backward holds both of [W_hh | W_ch]'s column slices (2·units rows of 4H + 1 in the storage dtype), more
    than the forward's W_hh rows in S and W_ch rows in C: an fp32 LSTM up to H = 924 (7 units a block)."""
    plan, _ = persistent_plan(LSTMSpec("full"), "float32", 924, HOPPER)
    assert plan == PersistentPlan(132, 7, 256, -(-(2 * 7 * (4 * 924 + 1) * 4) // 16) * 16 + 256 * 4)
    plan, why = persistent_plan(LSTMSpec("full"), "float32", 925, HOPPER)
    assert plan is None and "hidden_size 925 in float32 needs" in why


def test_the_standard_size_plan():
    assert persistent_plan(LSTMSpec(), "float32", 512, HOPPER) == (PersistentPlan(128, 4, 256, 4 * 4 * 513 * 4 + 1024),
                                                                   None)


def test_a_projected_plan_slices_the_outputs_too():
    """proj_size P: ⌈P / blocks⌉ outputs a block.  The forward holds W_hh's rows (P + 1 long) and W_hr's (H + 1),
    the backward W_hh's columns (4H + 1) and W_hr's (P + 1, compute dtype); a block takes the larger."""
    plan, _ = persistent_plan(LSTMSpec(proj_size=200), "float32", 512, HOPPER)
    part = lambda n: -(-n // 16) * 16  # noqa: E731
    forward = part(16 * 201 * 4) + part(2 * 513 * 4)
    backward = part(2 * 2049 * 4) + part(4 * 201 * 4)
    assert plan == PersistentPlan(128, 4, 256, max(forward, backward) + 1024, 2)
    owned = [p for k in range(plan.blocks) for p in range(k * plan.proj_units, min((k + 1) * plan.proj_units, 200))]
    assert owned == list(range(200))


def test_a_device_without_cooperative_launch_has_no_plan():
    plan, why = persistent_plan(GRUSpec(), "float32", 64, HOPPER._replace(cooperative=False))
    assert plan is None and "cannot launch cooperative kernels" in why


# --- the persistent= argument ---------------------------------------------------------------------------------------


@pytest.mark.host
def test_auto_takes_the_persistent_kernels_up_to_the_batch_limit():
    spec = LSTMSpec()
    for B, taken in ((1, True), (_kernels.PERSISTENT_AUTO_BATCH, True), (_kernels.PERSISTENT_AUTO_BATCH + 1, False)):
        p = verify.problem(spec, T=2, B=B, H=4)
        _, ctx = _forward(p, "cuda-host", "auto", training=True)
        assert (ctx.inner.plan is not None) == taken, B
    _, ctx = _forward(verify.problem(spec, T=2, B=1, H=4), "numpy", "auto", training=True)
    assert ctx.inner.plan is None


def test_persistent_is_refused_where_it_cannot_run():
    p = verify.problem(LSTMSpec(), T=2, B=1, H=4)
    with pytest.raises(ValueError, match=r"persistent=True: backend 'numpy' has no persistent kernels"):
        _forward(p, "numpy", True, training=True)
    with pytest.raises(ValueError, match=r"persistent must be False, True or 'auto', got 'yes'"):
        _forward(p, "numpy", "yes", training=True)
    with pytest.raises(ValueError, match=r"persistent must be False, True or 'auto', got 1"):
        _forward(p, "numpy", 1, training=True)


@pytest.mark.host
def test_too_large_a_hidden_size_is_refused_by_name():
    huge = _host.HOST_DEVICE._replace(shared_per_block=1024)
    backend = _backends.Orchestrated(
        "cuda-host", lambda tf32: _kernels.KernelOps(_host.ops().launcher, np, _host.ops().gemm, device=lambda: huge))
    with pytest.raises(ValueError, match=r"hidden_size 16 in float64 needs \d+ bytes of shared memory per block"):
        _forward(verify.problem(GRUSpec(), T=2, B=1, H=16), backend, True, training=True)


@pytest.mark.host
def test_graphs_and_persistent_together_run_the_persistent_kernels_eagerly():
    p = verify.problem(GRUSpec(), T=3, B=2, H=13)
    want = verify.run(p, "reference")
    graphs = api.GraphCache()
    for _ in range(2):
        got = verify.run(p, "cuda-host", graphs=graphs, persistent=True)
        assert verify.worst_of(verify.rel_err(got[k], want[k]) for k in want) <= verify.BOUNDS["float64"]


# --- the host emulation catches what a GPU would get wrong ------------------------------------------------------------


PLAIN, RESET_BEFORE = [LSTMSpec(), GRUSpec()], [GRUSpec(reset_after=False)]
# at H = 33 on 7 blocks, 11 outputs of 2 a block: the sixth block owns 1, the seventh none
PROJECTED = [LSTMSpec(proj_size=11), LSTMSpec("full", proj_size=11)]
LN_LSTM, LN_GRU = [LSTMSpec(layer_norm=True)], [GRUSpec(layer_norm=True)]
SLICE = "n = max(0, min(units, H - j0));"
BROKEN = {  # what each edit of kernels/persistent.cu breaks, and the variants that show it
    "forward grid barrier": ("grid_sync(barrier);  // y[t]", ";  // y[t]", PLAIN + PROJECTED + LN_LSTM + LN_GRU),
    "backward grid barrier": ("grid_sync(barrier);  // d[t]", ";  // d[t]", PLAIN + LN_LSTM + LN_GRU),
    "block barrier before the units": ("__syncthreads();  // hw's columns", ";  // hw's columns", PLAIN),
    "slice boundary": (SLICE, "n = max(0, min(units - 1, H - j0));", PLAIN + RESET_BEFORE + PROJECTED),
    "last partial slice": (SLICE, "n = H - j0 <= 0 ? 0 : H - j0 < units ? 1 : units;",
                           PLAIN + RESET_BEFORE + PROJECTED),
    # the projection: y[t] whole before step t + 1, dh whole before dh W_hr, da[t] whole before step t − 1
    "projection: y barrier": ("grid_sync(barrier);  // projected y[t]", ";  //", PROJECTED),
    "projection: dh barrier": ("grid_sync(barrier);  // dh[t] is whole", ";", PROJECTED),
    "projection: step barrier (backward)": ("grid_sync(barrier);  // da[t] is whole", ";  //", PROJECTED),
    # layer_norm: every block's part of a row's statistics written before any block combines them, and read before
    # any block writes the next ones
    "layer_norm: h W_hhᵀ's statistics barrier": ("grid_sync(barrier);  // every block's part of every row", ";",
                                                 LN_LSTM + LN_GRU),
    "layer_norm: c' statistics barrier": ("grid_sync(barrier);  // every block's part of the c'", ";  //", LN_LSTM),
    "layer_norm: one buffer for both statistics": ("C* parts_c = parts + gridDim.x * B * 2;  // the c'",
                                                   "C* parts_c = parts;  //", LN_LSTM),
    "layer_norm: dn's sums barrier": ("grid_sync(barrier);  // every block's part of the rows' sums", ";", LN_LSTM),
    "layer_norm: da's sums barrier": ("grid_sync(barrier);  // every block's sums of every row", ";",
                                      LN_LSTM + LN_GRU),
    # d∘h_t written over d∘h_{t−1}, which blocks that run later in the step still read
    "one buffer for d∘h": ("rdrop, hd == nullptr ? nullptr : hd + ((t + 1) % 2) * BH,",
                           "rdrop, hd == nullptr ? nullptr : hd + (t % 2) * BH,", [LSTMSpec(recurrent_dropout=0.25)]),
    # reset before: the barriers between a step's two halves and at its end
    "reset before: r∘h barrier": ("grid_sync(barrier);  // r∘h is whole", ";", RESET_BEFORE),
    "reset before: step barrier": ("grid_sync(barrier);  // h' of step t", ";  //", RESET_BEFORE),
    "reset before: da_n barrier": ("grid_sync(barrier);  // da_n is whole", ";", RESET_BEFORE),
    "reset before: da_r barrier": ("grid_sync(barrier);  // da_r is whole", ";", RESET_BEFORE),
}


def _on(ops, xp=np):
    """The "cuda-host" backend running `ops` on arrays of `xp`."""
    return _backends.Orchestrated("cuda-host", lambda tf32: ops, xp)


def _edited(edited_host_ops, host_launches, problems, line, edited):
    """persistent.cu built with `line` edited, in float64, only what the problems' persistent runs launch."""
    launched = host_launches(lambda ops: [verify.run(p, _on(ops), persistent=True) for p in problems])
    return edited_host_ops("persistent.cu", line, edited, "float64", only=launched.__contains__)


@pytest.mark.host
@pytest.mark.parametrize("edit", list(BROKEN))
def test_the_host_emulation_catches_a_broken_persistent_kernel(edited_host_ops, host_launches, poisoned_numpy, edit):
    """Each edit gives a result off the reference on the host at H = 33 (7 blocks of 5 units, the last of 3): a
    block, running alone between grid barriers, reads what another has not written yet or has already overwritten,
    a block's fibers read what a block barrier would have waited for, or units go unwritten (NaN-poisoned).  The
    partial slice's edit gives the right result where every slice is whole (H = 40)."""
    line, edited, specs = BROKEN[edit]
    problems = [verify.problem(spec, T=4, B=3, H=33) for spec in specs]
    broken = _on(_edited(edited_host_ops, host_launches, problems, line, edited), poisoned_numpy)
    for spec, p in zip(specs, problems):
        with np.errstate(invalid="ignore"):
            err, _ = verify.backend_error(p, broken, persistent=True)
        assert not err <= 1e-6, (edit, spec)  # NaN fails too
        if edit == "last partial slice":
            p = verify.problem(spec, T=4, B=3, H=40)
            assert verify.backend_error(p, broken, persistent=True)[0] <= verify.BOUNDS["float64"]


@pytest.mark.host
def test_the_host_emulations_shared_memory_starts_as_nan(edited_host_ops, host_launches):
    """A GPU's shared memory holds whatever was there: a dot product one past its row, into the row's padding, which
    nothing writes, comes out NaN on the host too, with buffers that are not poisoned (zeros would hide it)."""
    dot = "for (int k = part; k < K; k += split) sum += C(a_row[k]) * C(w_row[k]);"
    problems = [verify.problem(spec, T=4, B=3, H=40) for spec in PLAIN]
    unpoisoned = _on(_edited(edited_host_ops, host_launches, problems, dot, dot.replace("k < K;", "k <= K;")))
    for p in problems:
        assert np.isnan(verify.backend_error(p, unpoisoned, persistent=True)[0]), p.spec


DEADLOCK_SCRIPT = """
import pathlib, sys
import numpy as np
from rnncells import _backends, _host, _kernels, _numpy, verify
from rnncells.variants import GRUSpec

src = pathlib.Path(".")
for f in _kernels.kernel_dir().iterdir():
    if f.suffix in (".cu", ".cuh", ".h"):
        text = f.read_text()
        if f.name == "persistent.cu":  # block 0 skips the last step's grid barrier, which the others wait at
            text = text.replace("for (int t = 0; t < T; ++t) {", "for (int t = 0; t < T - (blockIdx.x == 0); ++t) {")
        (src / f.name).write_text(text)
names = [n for n in _kernels.instantiations() if n.startswith("gru_persistent_forward<double")]
launcher = _host.HostLauncher(_host.build_host_library(src, source_dir=src, names=names), names)
ops = _kernels.KernelOps(launcher, np, _numpy.gemm, device=lambda: _host.HOST_DEVICE)
p = verify.problem(GRUSpec(), T=3, B=2, H=13)
verify.public_functions(p.spec)[0](p.x, p.params, *p.states.values(), training=False, persistent=True,
                                   backend=_backends.Orchestrated("cuda-host", lambda tf32: ops, np))
print("no deadlock reported")
"""


@pytest.mark.host
def test_the_host_emulation_reports_a_grid_barrier_that_not_every_block_reaches(tmp_path):
    """On a GPU the other blocks would wait forever; the host aborts and says so."""
    r = subprocess.run([sys.executable, "-c", DEADLOCK_SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    assert "deadlock: 384 of 448 threads wait at grid_sync(), 64 have ended" in r.stderr


# --- what a GPU could read stale: the non-coherent loads ------------------------------------------------------------


def _entry_ptx(name, kernel_dir):
    """The PTX of one instantiation's entry (NVRTC, compute_90), built from the sources in kernel_dir."""
    from cuda.bindings import nvrtc

    _, prog = nvrtc.nvrtcCreateProgram(_kernels.program_source().encode(), b"rnncells.cu", 0, [], [])
    nvrtc.nvrtcAddNameExpression(prog, name.encode())
    options = [o for o in _kernels.nvrtc_options() if o != f"--include-path={_kernels.kernel_dir()}"]
    options = ["--gpu-architecture=compute_90", f"--include-path={kernel_dir}", *options]
    assert nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])[0] == 0
    size = nvrtc.nvrtcGetPTXSize(prog)[1]
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    entry = ".entry " + nvrtc.nvrtcGetLoweredName(prog, name.encode())[1].decode()
    body = ptx.decode()[ptx.decode().index(entry):]
    return body[: body.index("\n}\n")]


def _stale_reads(body):
    """The parameters that the entry both writes and may read with ld.global.nc: the read-only data cache, which
    is not coherent with the launch's own writes (nor another block's), so a persistent kernel could read there
    what a buffer held before.  Which parameters an address may derive from is traced back through the
    registers' definitions, every path at once (an over-estimate, never an under-estimate); a load whose address
    it cannot trace counts as reading every parameter."""
    params = {m[1]: int(m[2]) for m in re.finditer(r"ld\.param\.u64\s+(%rd\d+), \[\w+_param_(\d+)\];", body)}
    defs = {}
    for m in re.finditer(r"\b([a-z][\w.]*)\s+(%rd\d+), ([^;]+);", body):
        if not m[1].startswith(("ld.global", "ld.shared")):
            defs.setdefault(m[2], []).extend(re.findall(r"%rd\d+", m[3]))

    def origin(reg, seen):
        if reg in params:
            return {params[reg]}
        seen.add(reg)
        return set().union(*(origin(r, seen) for r in defs.get(reg, ()) if r not in seen))

    address = r"\[(%rd\d+)(?:\+-?\d+)?\]"
    stored = set().union(*(origin(m[1], set()) for m in re.finditer(r"(?:st|atom|red)\.global[\w.]*\s+" + address,
                                                                     body)))
    read = [origin(m[1], set()) for m in re.finditer(r"ld\.global\.nc[\w.]*\s+[^\[]+" + address, body)]
    return set().union(*(r or set(params.values()) for r in read)) & stored


def test_no_persistent_kernel_reads_a_buffer_it_writes_through_the_read_only_cache():
    """NVVM reads a pointer that may be a `const __restrict__` parameter through the read-only data cache
    (ld.global.nc), even when the pointer may also be a buffer the launch writes (h0 or y[t − 1]; c0 or c[t − 1]):
    on a GPU the persistent kernels would then read stale states.  So h0 and c0 are not `__restrict__` there; every
    cooperative instantiation (float32) is checked, and the check fails with h0 `__restrict__` again."""
    pytest.importorskip("cuda.bindings.nvrtc")
    names = [n for n in _kernels.instantiations() if _kernels.cooperative(n) and "<float, float" in n]
    assert {n: _stale_reads(_entry_ptx(n, _kernels.kernel_dir())) for n in names} == {n: set() for n in names}


def test_the_stale_read_check_finds_h0_restrict(tmp_path):
    pytest.importorskip("cuda.bindings.nvrtc")
    for f in _kernels.kernel_dir().iterdir():
        if f.suffix in (".cu", ".cuh", ".h"):
            text = f.read_text()
            if f.name == "persistent.cu":
                line = "const S* h0,                     // [B, P or H]"  # lstm_persistent_forward's
                assert text.count(line) == 1
                text = text.replace(line, "const S* __restrict__ h0,        // [B, P or H]")
            (tmp_path / f.name).write_text(text)
    name = "lstm_persistent_forward<float, float, 0, false, false, false, true>"
    assert _stale_reads(_entry_ptx(name, tmp_path)) == {17, 25}  # y and d∘h, which h_in may be, as h0


# --- the objects and the adapter --------------------------------------------------------------------------------------


@pytest.mark.host
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_objects_with_persistent_kernels_train_like_without(cls):
    """Two bidirectional layers with lengths on cuda-host: the same outputs and gradients as the step loops'."""
    import rnncells as rc

    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    lengths = np.array([5, 2, 0])
    runs = []
    for persistent in (False, True):
        m = getattr(rc, cls)(4, 13, num_layers=2, bidirectional=True, dtype="float64", backend="cuda-host",
                             persistent=persistent)
        y, *_, ctx = m(x, lengths=lengths)
        dx, _ = m.backward(ctx, np.ones_like(y))
        runs.append([y, dx, *m.grads.values()])
        assert all(c.inner.plan is not None for c in m._inner(ctx)[0]) == persistent  # every layer and direction
    for a, b in zip(*runs):
        assert verify.rel_err(a, b) <= 1e-13
    with pytest.raises(ValueError, match="persistent must be False, True or 'auto', got 'always'"):
        getattr(rc, cls)(4, 13, persistent="always")


@pytest.mark.host
def test_the_adapter_passes_persistent_to_the_kernels(monkeypatch):
    torch = pytest.importorskip("torch")
    import rnncells.torch as rt

    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 13, num_layers=2, dtype=torch.float64)
    ours = rt.GRU(4, 13, num_layers=2, dtype=torch.float64, cpu_backend="cuda-host", persistent=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    for m in (ref, ours):
        m(x)[0].pow(2).sum().backward()
    assert verify.rel_err(ours(x)[0].detach().numpy(), ref(x)[0].detach().numpy()) <= 1e-12
    for (k, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert verify.rel_err(a.grad.numpy(), b.grad.numpy()) <= 1e-12, k
    calls = []
    forward = rt.api.forward
    monkeypatch.setattr(rt.api, "forward", lambda *a, **kw: calls.append(kw["persistent"]) or forward(*a, **kw))
    ours(x)
    assert calls == [True, True]
