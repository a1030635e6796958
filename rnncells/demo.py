"""`rnncells demo`: an LSTM and a GRU learn the adding problem with our cells and our backward.

The adding problem (Hochreiter & Schmidhuber, 1997): an input is T steps of
(value, marker), values uniform in [0, 1], exactly two markers set; the
target is the sum of the two marked values.  Always predicting the mean (1)
gives MSE = Var(u1 + u2) = 2/12 ≈ 0.167; a model below 0.01 has learned to
carry the two values across the whole sequence.

Model: the cell over the sequence, then a linear read-out of its final h.
Training: plain Adam on our own arrays (NumPy on the CPU, CuPy on a GPU).
"""

import sys
import time
from typing import NamedTuple

import numpy as np

from . import _plot, api
from ._graphs import GraphCache
from .params import init_gru_params, init_lstm_params


def adding_problem(rng, n, T):
    """x (T, n, 2) float32 and the targets (n,) float32."""
    values = rng.random((T, n))
    marks = np.zeros((T, n))
    first = rng.integers(0, T, size=n)
    second = (first + rng.integers(1, T, size=n)) % T  # a different step
    marks[first, np.arange(n)] = marks[second, np.arange(n)] = 1.0
    x = np.stack([values, marks], axis=-1).astype(np.float32)
    return x, (values * marks).sum(axis=0).astype(np.float32)


class Adam:
    """Adam (Kingma & Ba, 2015) on a dict of arrays, updated in place on their own device."""

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = {k: v * 0 for k, v in params.items()}
        self.v = {k: v * 0 for k, v in params.items()}
        self.t = 0

    def step(self, grads):
        """One update from the gradients (a dict with the keys of params)."""
        self.t += 1
        b1, b2 = self.betas
        for k, p in self.params.items():
            self.m[k] *= b1
            self.m[k] += (1 - b1) * grads[k]
            self.v[k] *= b2
            self.v[k] += (1 - b2) * grads[k] ** 2
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            p -= self.lr * m_hat / (v_hat**0.5 + self.eps)


class Regressor:
    """An LSTM or GRU followed by a linear read-out of its final hidden state."""

    def __init__(self, cell, hidden, xp, seed):
        self.cell = cell
        init = init_lstm_params if cell == "lstm" else init_gru_params
        self.params = init(2, hidden, xp=xp, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.params["head_w"] = xp.asarray((rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32))
        self.params["head_b"] = xp.zeros(1, dtype=np.float32)
        self.graphs = GraphCache() if xp.__name__ == "cupy" else None  # every batch has one shape: replay it

    def _forward(self, x, training):
        cell_params = {k: v for k, v in self.params.items() if not k.startswith("head_")}
        if self.cell == "lstm":
            _, (h, _), ctx = api.lstm_forward(x, cell_params, training=training, graphs=self.graphs)
        else:
            _, h, ctx = api.gru_forward(x, cell_params, training=training, graphs=self.graphs)
        return h, ctx, (h @ self.params["head_w"])[:, 0] + self.params["head_b"][0]

    def predict(self, x):
        """The predicted sums for x (T, n, 2)."""
        return self._forward(x, training=False)[2]

    def loss_and_grads(self, x, target):
        """The batch's MSE and its gradient for every parameter."""
        h, ctx, pred = self._forward(x, training=True)
        err = pred - target
        dpred = (2.0 / len(target)) * err[:, None]  # (n, 1)
        grads = {"head_w": h.T @ dpred, "head_b": dpred.sum(axis=0)}
        dh = dpred @ self.params["head_w"].T
        if self.cell == "lstm":
            *_, dparams = api.lstm_backward(ctx, None, dh)
        else:
            *_, dparams = api.gru_backward(ctx, None, dh)
        grads.update(dparams)
        return float((err * err).mean()), grads


class Result(NamedTuple):
    """What one training run reports."""

    cell: str
    backend: str
    seq_len: int
    baseline: float  # validation MSE of always predicting the mean (1)
    val_mse: float
    steps: int
    seconds_per_step: float
    curve: list  # [(step, running training loss, validation MSE)]


def train(cell, *, seq_len=50, steps=2000, seed=0, xp=np, batch=64, hidden=32, lr=1e-2, eval_every=100,
          n_val=1000, progress=True):
    """Train one cell on the adding problem; deterministic on the CPU for a given seed."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    xv, yv = adding_problem(np.random.default_rng(seed + 10_000), n_val, seq_len)
    xv, yv = xp.asarray(xv), xp.asarray(yv)
    model = Regressor(cell, hidden, xp, seed)
    opt = Adam(model.params, lr=lr)
    running, curve = None, []
    # in a log (not a terminal) every refresh is a line of its own: there, one every 30 s
    refresh = 0.1 if sys.stderr.isatty() else 30.0
    bar = tqdm(range(1, steps + 1), desc=f"{cell} T={seq_len}", disable=not progress, leave=True, mininterval=refresh)
    start = time.perf_counter()
    for step in bar:
        x, y = adding_problem(rng, batch, seq_len)
        loss, grads = model.loss_and_grads(xp.asarray(x), xp.asarray(y))
        opt.step(grads)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if step % eval_every == 0 or step == steps:
            val = float(((model.predict(xv) - yv) ** 2).mean())
            curve.append((step, running, val))
            bar.set_postfix(loss=f"{running:.4f}", val=f"{val:.4f}", refresh=False)  # shown at the next refresh
    seconds = time.perf_counter() - start
    baseline = float(((yv - 1.0) ** 2).mean())
    return Result(cell, xp.__name__, seq_len, baseline, curve[-1][2], steps, seconds / steps, curve)


def plot(results, path):
    """Validation and running training MSE against step for each result, with the baseline, into a PNG."""
    fig, ax = _plot.pyplot().subplots(figsize=(7, 4))
    for r in results:
        steps, running, val = zip(*r.curve)
        (line,) = ax.plot(steps, val, label=f"{r.cell.upper()} validation")
        ax.plot(steps, running, color=line.get_color(), alpha=0.35, linewidth=1, label=f"{r.cell.upper()} training")
    ax.axhline(results[0].baseline, color="gray", linestyle="--", label="predict the mean")
    ax.axhline(0.01, color="gray", linestyle=":", label="0.01")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE")
    ax.set_title(f"adding problem, T={results[0].seq_len}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(cells=("lstm", "gru"), seq_len=50, steps=2000, seed=0, plot_path=None, out=print):
    """Train each cell (CuPy on a GPU, else NumPy), print the summary, optionally plot; returns the results."""
    from ._backends import gpu_available

    if gpu_available():
        import cupy as xp
    else:
        xp = np
    results = [train(c, seq_len=seq_len, steps=steps, seed=seed, xp=xp) for c in cells]
    out(f"adding problem, T={seq_len}: validation MSE (predicting the mean gives {results[0].baseline:.3f})")
    out(f"{'cell':<6}{'baseline':>10}{'final val MSE':>15}{'steps':>7}{'ms/step':>9}  backend")
    for r in results:
        out(f"{r.cell:<6}{r.baseline:>10.3f}{r.val_mse:>15.4f}{r.steps:>7}{1e3 * r.seconds_per_step:>9.2f}  {r.backend}")
    if plot_path:
        plot(results, plot_path)
        out(f"loss curves written to {plot_path}")
    return results
