"""`rnncells bench` end to end on the CPU: the harness, the table, the JSON record and the plot."""

import json

import numpy as np
import pytest

from rnncells import bench, cli, verify


def test_time_steps_interleave_the_calls_and_take_each_median_after_the_warmup():
    calls, costs = [], iter([100.0, 100.0, 100.0, 100.0, 3.0, 30.0, 20.0, 1.0, 2.0, 10.0])
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_steps(steps, lambda fn: (fn(), next(costs))[1], 2, 3)
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a", "a", "b"]  # one of each in turn, every other round reversed
    assert times["a"] == (2.0, [3.0, 1.0, 2.0]) and times["b"] == (20.0, [30.0, 20.0, 10.0])


def test_cpu_threads_set_both_sides_and_restore_them():
    torch = pytest.importorskip("torch")
    from rnncells import _numpy

    before = (torch.get_num_threads(), _numpy.blas().info()[0]["num_threads"])
    with bench.cpu_threads(1):
        assert (torch.get_num_threads(), _numpy.blas().info()[0]["num_threads"]) == (1, 1)
    assert (torch.get_num_threads(), _numpy.blas().info()[0]["num_threads"]) == before


def test_presets_cover_the_standard_small_and_large_configurations():
    full = bench.configs("full", cells=("lstm",))
    assert (100, 64, 512, 512) in [(c.T, c.B, c.I, c.H) for c in full]
    assert (full[0].T, full[0].B, full[0].H) == (100, 64, 512)  # the fastrnns standard comes first
    assert {(c.B, c.H, c.T) for c in full if c.group == "small batch"} == {
        (B, H, T) for B in (1, 4, 16) for H in (256, 512, 1024) for T in (100, 1000)
    }
    assert (100, 256, 1024) in [(c.T, c.B, c.H) for c in full]
    assert {c.group for c in bench.configs("full", groups=("large",))} == {"large"}
    quick = [(c.T, c.B, c.H) for c in bench.configs("quick", cells=("lstm",))]
    assert {(1000, 4, 128), (100, 1, 256)} <= set(quick)  # long sequences and one item, beside T=20
    assert [(c.T, c.B, c.H) for c in bench.configs("cpu", cells=("lstm",))] == quick + [(100, 64, 512)]
    variants = bench.configs("full", groups=("variants",))
    assert [(c.cell, c.T, c.B, c.H, c.variant_text()) for c in variants] == [
        (cell, 100, B, 512, v) for B in (64, 4) for cell, v in (("lstm", "cell_clip=1.0"),
                                                               ("lstm", "zoneout_h=0.1 zoneout_c=0.1"),
                                                               ("lstm", "proj_size=128"),
                                                               ("lstm", "recurrent_dropout=0.25"),
                                                               ("lstm", "layer_norm=True"),
                                                               ("gru", "zoneout_h=0.1"),
                                                               ("gru", "recurrent_dropout=0.25"),
                                                               ("gru", "layer_norm=True"))]
    assert [c for c in full if c.variant] == [c for c in variants if c.cell == "lstm"]
    assert all(c.group == "variants" for c in variants)
    with pytest.raises(ValueError, match="preset='huge'"):
        bench.configs("huge")
    with pytest.raises(ValueError, match="'tiny'"):
        bench.configs("full", groups=("tiny",))


def test_cpu_run_times_all_three_and_records_them(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    png = tmp_path / "ratios.png"
    argv = ["bench", "--device", "cpu", "--cell", "gru", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path),
            "--plot", str(png), "--passes", "1"]
    written = []
    real = bench.write_json
    monkeypatch.setattr(bench, "write_json", lambda *a, **kw: (written.append(len(a[2])), real(*a, **kw))[1])
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "torch.nn ms" in out and "torch loop ms" in out and "results written to" in out
    (path,) = tmp_path.glob("*-cpu.json")
    record = json.loads(path.read_text())
    env = record["environment"]
    assert env["torch"] and env["device"].startswith("CPU") and env["blas"][0]["internal_api"]
    assert record["settings"]["threads"] == [1, 2] and record["settings"]["precisions"] == ["fp32", "fp64"]
    rows = record["rows"]
    n = len(bench.configs("quick", cells=("gru",))) * 2 * 2 * 2  # shapes, modes, precisions, thread counts
    assert [(r["precision"], r["threads"]) for r in rows[:4]] == [("fp32", 1), ("fp32", 2), ("fp64", 1), ("fp64", 2)]
    assert written == list(range(1, n + 1))  # the record after every row, each time with all rows so far
    for r in rows:
        assert set(r["ms"]) == set(bench.implementations("cpu")) and all(v > 0 for v in r["ms"].values())
        assert r["ratio"] == pytest.approx(r["ms"]["torch.nn"] / r["ms"]["rnncells"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cuda_without_a_gpu_is_refused(capsys, monkeypatch):
    monkeypatch.setattr("rnncells._backends.gpu_available", lambda: False)
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_the_sanitizer_target_script_runs_every_variant():
    """As bench/gpu_session.sh runs it under memcheck (no match, float32), here on the NumPy backend (its rows on
    the host kernels are `rnncells check`'s, tested with the kernels)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "sanitize_target.py"
    r = subprocess.run([sys.executable, str(script), "numpy", "", "float32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(verify.VARIANTS)
    for line, spec in zip(lines, verify.VARIANTS):
        assert line.startswith(str(spec)) and line.split()[-3] == "float32" and line.endswith(" ok"), line


def test_the_sanitizer_target_can_run_the_variants_a_name_matches():
    """racecheck runs the layer_norm variants alone (bench/gpu_session.sh): their rows, every dtype, and no other."""
    from rnncells import check

    rows = list(check.backend_rows("numpy", "layer_norm=True"))
    assert [(what, dtype) for _, what, dtype, *_ in rows] == [
        (str(s), d) for s in verify.VARIANTS if s.layer_norm for d in ("float64", "float32", "float16", "bfloat16")]
    assert all(err <= bound for *_, err, bound in rows)
    some = list(check.backend_rows("numpy", "layer_norm=True", ["bfloat16", "float32"]))  # in the rows' order
    assert [(what, dtype) for _, what, dtype, *_ in some] == [
        (str(s), d) for s in verify.VARIANTS if s.layer_norm for d in ("float32", "bfloat16")]


@pytest.mark.host
def test_the_persistent_sanitizer_target_runs_the_variants_the_persistent_kernels_run():
    """racecheck's persistent rows (bench/gpu_session.sh), here on the host kernels: the sigmoid candidate's
    variants, in float32 as racecheck runs them."""
    from rnncells import check

    rows = list(check.backend_rows("cuda-host persistent", "candidate=sigmoid", ["float32"]))
    want = [s for s in verify.VARIANTS if "candidate=sigmoid" in str(s)]
    assert len(want) >= 3  # both peepholes, and every flag at once
    assert [(what, dtype) for _, what, dtype, *_ in rows] == [(str(s), "float32") for s in want]
    assert all(err <= bound for *_, err, bound in rows)


def test_implementations_time_the_eager_loop_only_where_graphs_exist():
    assert bench.implementations("cuda") == ("rnncells", "rnncells eager", "rnncells persistent", "torch.nn",
                                             "torch loop")
    assert bench.implementations("cpu") == ("rnncells", "torch.nn", "torch loop")
    assert bench.implementations("cpu", torch_available=False) == ("rnncells",)


def test_peak_train_mb_counts_what_a_step_keeps_between_steps_but_not_its_inputs():
    class Memory:  # an allocator that has handed out 100 bytes (the inputs) before the first step
        used, top = 100, 100

        def allocated(self):
            return self.used

        def peak(self, fn):
            self.top = self.used
            fn()
            return self.top

    memory = Memory()

    def step():  # keeps 2 MiB from its first call on (like a graph slot), and needs 3 MiB more while it runs
        if not getattr(step, "kept", False):
            memory.used += 2 * 2**20
            step.kept = True
        memory.top = max(memory.top, memory.used + 3 * 2**20)

    assert bench.peak_train_mb(step, memory) == 5.0


def test_the_run_can_be_cut_to_one_cell_mode_and_pass(tmp_path, capsys):
    argv = ["bench", "--device", "cpu", "--cell", "lstm", "--mode", "train", "--passes", "1", "--repeats", "1",
            "--warmup", "0", "--out", str(tmp_path), "--precision", "fp32", "--threads", "1"]
    assert cli.main(argv) == 0
    (path,) = tmp_path.glob("*-cpu.json")
    rows = json.loads(path.read_text())["rows"]
    n = len(bench.configs("quick"))  // 2
    assert [(r["cell"], r["mode"], r["pass_"], r["precision"], r["threads"]) for r in rows] == \
        [("lstm", "train", 1, "fp32", 1)] * n


@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_half_rows_time_ours_in_that_dtype_and_torch_under_autocast(precision, dtype, monkeypatch):
    """What a half row times, built on the CPU (the GPU runs the same closures): our forward and backward on
    arrays of that dtype; torch.nn's float32 module under autocast, whose output is in that dtype."""
    import numpy as np

    from rnncells import api

    seen = []
    real = api.lstm_forward
    monkeypatch.setattr(api, "lstm_forward", lambda x, params, **kw: seen.append(
        {x.dtype, *(p.dtype for p in params.values())}) or real(x, params, **kw))
    cfg = bench.Config("lstm", 3, 2, 4, 5, "quick")
    bench._build("rnncells", cfg, "train", "cpu", np, 2, seed=0, precision=precision)()
    assert seen == [{np.dtype(dtype)}]
    if precision == "bf16":  # torch's CPU autocast covers its LSTM in bfloat16 only
        torch = pytest.importorskip("torch")
        calls = []
        real_forward = torch.nn.LSTM.forward

        def forward(self, x, *args):
            calls.append((self, real_forward(self, x, *args)))
            return calls[-1][1]

        monkeypatch.setattr(torch.nn.LSTM, "forward", forward)
        bench._build("torch.nn", cfg, "train", "cpu", np, 2, seed=0, precision=precision)()
        (module, (y, _)), = calls
        assert y.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in module.parameters())


def _run_script(args, tmp_path, **env):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["bash", str(root / "bench" / "gpu_session.sh"), *args], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "OUT": str(tmp_path / "out"), **env})


def test_the_smoke_script_reports_every_item_even_when_each_fails():
    """Without a GPU every item fails: each must still get its own line, and the exit status must say so."""
    import subprocess
    import sys
    from pathlib import Path

    from rnncells._backends import gpu_available

    if gpu_available():
        pytest.skip("a GPU is here: the smoke items would pass")
    script = Path(__file__).resolve().parent.parent / "bench" / "smoke.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    import importlib.util

    spec = importlib.util.spec_from_file_location("smoke", script)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    n = len(smoke.ITEMS)
    assert r.returncode == 1 and lines[-1] == f"{n} item(s) failed"
    assert len(lines) == n + 1 and all("FAIL" in line for line in lines[:-1])


PLAN = ["smoke", "gpu suite", "bench standard", "memcheck cupy", "memcheck cupy graphs", "memcheck cupy persistent",
        "racecheck layer_norm", "racecheck persistent", "bench small batch"]


def _stand_ins(tmp_path):
    """PATH with stand-ins for nvidia-smi and compute-sanitizer (which runs the program it wraps)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("nvidia-smi", "echo no GPU here; exit 9"), ("compute-sanitizer", 'shift 4; exec "$@"')):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def _summary(tmp_path):
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    return [line for line in lines if line.split(":")[0] in PLAN]


def test_the_gpu_session_script_runs_its_plan_in_order_into_at_most_8_files(tmp_path):
    """The lease's plan with no GPU: every step runs and fails fast but the suite (all skipped), in order, each a
    line in the summary, which is printed last; at most 8 files come back, named as the device tool allows."""
    import re
    import shutil
    import sys

    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils' timeout")
    r = _run_script([], tmp_path, PATH=_stand_ins(tmp_path), PYTHON=sys.executable)
    steps = _summary(tmp_path)
    assert [line.split(":")[0] for line in steps] == PLAN, r.stdout + r.stderr
    outcomes = {line.split(":")[0]: line.split(": ", 1)[1] for line in steps}
    assert outcomes["gpu suite"].startswith("exit 0") and "skipped" in outcomes["gpu suite"]  # the gpu tests skip
    assert all(re.match(r"exit [1-9]", v) for k, v in outcomes.items() if k != "gpu suite"), outcomes  # no GPU
    files = list((tmp_path / "out").iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[\w.-]+", f.name) and f.is_file() for f in files)
    assert r.stdout.rstrip().endswith(steps[-1])


def test_the_gpu_session_script_skips_what_its_deadline_leaves_no_time_for(tmp_path):
    import shutil
    import sys

    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils' timeout")
    r = _run_script(["suite", "profile"], tmp_path, PATH=_stand_ins(tmp_path), PYTHON=sys.executable, DEADLINE="35")
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary if " skipped (" in line] == ["gpu suite", "profile"], r.stdout
    assert r.returncode == 0 and r.stdout.rstrip().endswith(summary[-1])
    r = _run_script(["suite", "no-such-step"], tmp_path)
    assert r.returncode == 2 and "unknown step no-such-step" in r.stderr


def test_a_variant_row_times_our_variant(monkeypatch):
    from rnncells import api

    seen = []
    real = api.lstm_forward
    monkeypatch.setattr(api, "lstm_forward", lambda *a, **kw: (seen.append(kw), real(*a, **kw))[1])
    for cfg in bench.configs("full", cells=("lstm",), groups=("variants",))[len(bench.VARIANTS["lstm"]) :]:  # B=4
        bench._ours(cfg._replace(T=3), "train", np, rotate=1, seed=0)()
    flags = ("cell_clip", "zoneout_h", "zoneout_c", "proj_size", "recurrent_dropout", "layer_norm")
    assert [{k: kw[k] for k in kw if k in flags} for kw in seen] == [
        {"cell_clip": 1.0}, {"zoneout_h": 0.1, "zoneout_c": 0.1}, {"proj_size": 128}, {"recurrent_dropout": 0.25},
        {"layer_norm": True}]
    assert seen[1]["generator"] is not None


def test_a_projected_row_runs_torch_nn_with_the_same_projection(monkeypatch):
    """proj_size is torch.nn.LSTM's own: both sides project (the torch loop steps torch.nn.LSTM, since LSTMCell
    cannot), so the ratio compares like with like."""
    torch = pytest.importorskip("torch")
    made = []
    real = torch.nn.LSTM
    monkeypatch.setattr(torch.nn, "LSTM", lambda *a, **kw: (made.append(kw), real(*a, **kw))[1])
    variants = bench.configs("full", cells=("lstm",), groups=("variants",))
    cfg = next(c for c in variants if "proj_size" in dict(c.variant))
    for loop in (False, True):
        bench._torch(cfg._replace(T=3, B=2, I=4, H=8, variant=(("proj_size", 3),)), "train", "cpu", 1, 0, loop)()
    assert made == [{"proj_size": 3}, {"proj_size": 3}]


@pytest.mark.host
def test_the_persistent_row_runs_persistent_kernels_where_they_run_the_configuration(monkeypatch):
    """Timed on "cuda-host" here (the GPU row's code path); None, a "-" in the table, where they cannot run."""
    from rnncells import api

    calls = []
    forward = api.lstm_forward
    monkeypatch.setattr(api, "lstm_forward", lambda *a, **kw: calls.append(kw["persistent"]) or forward(*a, **kw))
    cfg = bench.Config("lstm", 3, 2, 4, 16, "small batch")
    bench._ours(cfg, "train", np, rotate=1, seed=0, backend="cuda-host", persistent=True)()
    assert calls == [True]
    too_large = cfg._replace(H=2048)  # 256 units a block on the host's 8 SMs: 8 MB of weights, past its 1 MiB
    assert bench._ours(too_large, "train", np, rotate=1, seed=0, backend="cuda-host", persistent=True) is None
    assert bench._ours(cfg, "train", np, rotate=1, seed=0, backend="numpy", persistent=True) is None
