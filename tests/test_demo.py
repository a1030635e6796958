"""`rnncells demo`: the adding problem, Adam, and a short training run that must learn."""

import subprocess
import sys

import numpy as np
import pytest

from rnncells import cli, demo


def test_adding_problem_marks_two_steps_and_sums_their_values():
    x, y = demo.adding_problem(np.random.default_rng(0), 20000, 30)
    assert x.shape == (30, 20000, 2) and x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x[:, :, 1].sum(axis=0), 2.0)
    np.testing.assert_allclose(y, (x[:, :, 0] * x[:, :, 1]).sum(axis=0), rtol=1e-6)
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 0.01  # the baseline: Var(u1 + u2) = 2/12


def test_adam_first_step_moves_each_parameter_by_lr_against_its_gradient_sign():
    p = {"a": np.array([1.0, -2.0, 3.0])}
    opt = demo.Adam(p, lr=0.1)
    opt.step({"a": np.array([0.5, -4.0, 1e-3])})
    np.testing.assert_allclose(p["a"], [0.9, -1.9, 2.9], rtol=1e-6)


def test_adam_minimises_a_quadratic():
    p = {"w": np.array([5.0, -3.0])}
    opt = demo.Adam(p, lr=0.05)
    for _ in range(2000):
        opt.step({"w": 2 * (p["w"] - np.array([1.0, 2.0]))})
    np.testing.assert_allclose(p["w"], [1.0, 2.0], atol=1e-3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_short_run_learns_well_below_the_baseline(cell):
    r = demo.train(cell, seq_len=20, steps=500, seed=0, progress=False)
    assert r.baseline > 0.15
    assert r.val_mse < 0.02  # the baseline is ~0.167
    assert r.curve[-1][0] == 500 and r.backend == "numpy"


def test_a_run_is_deterministic_on_the_cpu():
    a = demo.train("lstm", seq_len=10, steps=40, seed=3, progress=False, eval_every=10)
    b = demo.train("lstm", seq_len=10, steps=40, seed=3, progress=False, eval_every=10)
    assert a.curve == b.curve
    c = demo.train("lstm", seq_len=10, steps=40, seed=4, progress=False, eval_every=10)
    assert c.curve != a.curve


def test_command_line_prints_the_summary_and_writes_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert cli.main(["demo", "--cell", "gru", "--seq-len", "10", "--steps", "100", "--seed", "1", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("gru "))
    baseline, val, steps = (float(v) for v in row.split()[1:4])
    assert 0.1 < baseline < 0.25 and val < baseline and steps == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_rejects_a_nonpositive_step_count(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0"])
    assert "must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seq-len", "1"], "argument --seq-len: must be at least 2 (the adding problem marks two steps), got 1"),
        (["--seed", "-5"], "argument --seed: must be at least 0 (a NumPy seed), got -5"),
        (["--steps", "ten"], "argument --steps: must be an integer, got 'ten'"),
        (["--plot", "no/such/folder/curves.png"], "the folder 'no/such/folder' does not exist"),
        (["--plot", "curves.xyz"], "matplotlib cannot write .xyz files"),
    ],
)
def test_demo_arguments_are_refused_before_any_training(args, message, monkeypatch, capsys):
    monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained before checking its arguments"))
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_plot_without_matplotlib_is_refused_before_any_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained before checking its arguments"))
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # as if not installed
    with pytest.raises(SystemExit):
        cli.main(["demo", "--plot", str(tmp_path / "curves.png")])
    assert "--plot needs matplotlib: pip install 'rnncells[plot]'" in capsys.readouterr().err


def test_progress_in_a_log_is_a_few_lines_not_one_per_refresh():
    """stderr is not a terminal here, as in CI: the bar refreshes rarely (every refresh is a line in a log)."""
    r = subprocess.run([sys.executable, "-m", "rnncells", "demo", "--cell", "gru", "--seq-len", "20", "--steps", "700"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "700/700" in r.stderr and len(r.stderr.splitlines()) <= 3
