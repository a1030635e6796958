"""`rnncells check`: its table and its exit status."""

import subprocess
import sys

import pytest

from rnncells import _kernels, check, tape, verify


@pytest.fixture(scope="module")
def check_run():
    """(exit status, printed lines) of one `rnncells check`, which both tests below read (it takes minutes)."""
    lines = []
    return check.main(out=lines.append), lines


def test_check_passes_with_one_row_per_variant_dtype_and_backend(check_run):
    status, lines = check_run
    assert status == 0
    rows = [line for line in lines if line[:1].isdigit() and not line.endswith("(not run)")]
    running = [b for b, why in check.backends() if why is None]
    assert "cuda-host tf32" in running and "cuda-host persistent" in running

    def per_variant(spec):  # FD; the four dtypes, or TF32
        return 1 + sum(1 if b.endswith(" tf32") else 4 for b in running)

    assert len(rows) == len(tape.RULES) + sum(map(per_variant, verify.VARIANTS))
    assert all(line.endswith("ok") for line in rows)
    for spec in verify.VARIANTS:
        assert sum(line[5 : 5 + check.WHAT].rstrip() == str(spec) for line in rows) == per_variant(spec), spec
    assert lines[-1] == "all rows passed"


def test_check_fails_on_a_bad_or_nan_row(monkeypatch):
    def rows():
        yield 1, "good", "float64", "x", 1e-12, 1e-10
        yield 2, "bad", "float32", "x", 1e-3, 1e-5
        yield 2, "nan", "float32", "x", float("nan"), 1e-5

    monkeypatch.setattr(check, "rows", rows)
    monkeypatch.setattr(check, "kernel_rows", lambda: iter(()))
    lines = []
    assert check.main(out=lines.append) == 1
    assert [line.split()[-1] for line in lines[1:4]] == ["ok", "FAIL", "FAIL"]
    assert lines[-1] == "2 row(s) failed"


def test_command_line_entry_point_runs_check():
    r = subprocess.run([sys.executable, "-m", "rnncells", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "check" in r.stdout
    r = subprocess.run([sys.executable, "-m", "rnncells", "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_check_lists_every_kernel_for_both_architectures(check_run):
    pytest.importorskip("cuda.bindings.nvrtc")
    _, lines = check_run
    kernels = {n.split("<")[0] for n in _kernels.instantiations()}
    kernel_lines = [line for line in lines if line.split("<")[0] in kernels]
    assert len(kernel_lines) == len(_kernels.instantiations())
    assert all(line.count(" / 0 / 0") == 2 for line in kernel_lines)  # sm_80 and sm_90, no spills


def test_pytest_says_in_one_line_that_torch_tests_were_skipped():
    """Without torch (hidden from the import system here) the run ends with a notice, not only a skip list."""
    import pathlib

    hide_torch = "import sys; sys.modules['torch'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    root = pathlib.Path(__file__).parent.parent
    r = subprocess.run([sys.executable, "-c", hide_torch, "-q", "-p", "no:cacheprovider", "tests/test_functions_vs_torch_nn.py"],
                       capture_output=True, text=True, cwd=root, timeout=300)
    assert "torch is not installed: 1 skipped" in r.stdout and "pip install '.[test,torch]'" in r.stdout


def test_half_precision_bench_on_the_cpu_is_refused_before_any_work(tmp_path, capsys):
    from rnncells import cli

    assert cli.main(["bench", "--device", "cpu", "--precision", "bf16", "--out", str(tmp_path)]) == 2
    assert "the cpu bench times fp32, fp64" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured, no record
