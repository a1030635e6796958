"""Objects for training loops: parameters and accumulated gradients held together.

    lstm = rc.LSTM(I, H, num_layers=2, bidirectional=True)
    y, (hT, cT), ctx = lstm.forward(x)              # x (T, B, I)
    dx, (dh0, dc0) = lstm.backward(ctx, dy)          # adds into lstm.grads
    for k in lstm.params: lstm.params[k] -= lr * lstm.grads[k]
    lstm.zero_grad()

Parameter names are torch.nn's (weight_ih_l0, bias_hh_l1_reverse, ...; the
cells use weight_ih, ...), so state dicts carry over.  With zoneout, an
object in training (`train()`, the default) draws its masks from its
`generator` (xp.random.default_rng(seed), or one you assign), and after
`eval()` uses the expectation.  The reverse direction
of a layer reads each item backward from its own last step, as torch does
for packed sequences.
"""

from typing import NamedTuple

import numpy as np

from . import _backends, _checks, api
from ._graphs import GraphCache
from .params import init_params
from .variants import GRUSpec, LSTMSpec


class ModuleContext(NamedTuple):
    """What an object's forward keeps for its backward; pass it back, unchanged, to the same object."""

    owner: object  # the object whose forward made it: its backward adds into that object's grads only
    inner: object


def _is_array(a):
    return _checks.module_name(a) is not None


class _Holder:
    """Parameters (`params`) and their accumulated gradients (`grads`), one key each; the variant's flags read as
    attributes (`lstm.peephole`), as the constructor took them; `training` and `generator` for zoneout and
    recurrent dropout."""

    training = True

    def train(self, mode=True):
        """Zoneout and recurrent dropout in training (masks drawn from `generator`), or with mode=False zoneout's
        expectation and no dropout; returns self."""
        self.training = _checks.flag("mode", mode)
        return self

    def eval(self):
        """train(False): zoneout's expectation, no dropout, no masks drawn; returns self."""
        return self.train(False)

    def _masks(self):
        """api.forward's mask arguments (zoneout, recurrent dropout) for the object's mode."""
        return {"generator": self.generator} if self.training else {"masks": {}}

    def __getattr__(self, name):  # only reached when normal lookup fails
        spec = self.__dict__.get("spec")
        if spec is not None and name in spec.kwargs():
            return getattr(spec, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _context(self, inner):
        return ModuleContext(self, inner)

    def _inner(self, ctx):
        """The inner context of a ctx made by this object's forward; anything else is refused by name."""
        name = type(self).__name__
        if not isinstance(ctx, ModuleContext):
            raise TypeError(f"ctx must be the context returned by this {name}'s forward, got {type(ctx).__name__}")
        if ctx.owner is not self:
            raise ValueError(f"ctx was made by the forward of another {type(ctx.owner).__name__}; pass it to that "
                             "object's backward")
        return ctx.inner

    def zero_grad(self):
        """Set every accumulated gradient to zero."""
        for g in self.grads.values():
            g[...] = 0

    def _accumulate(self, dparams, suffix=""):
        for k, g in dparams.items():
            self.grads[k + suffix] += g


class _Cell(_Holder):
    """One step of a variant with its parameters."""

    def __init__(self, spec, input_size, hidden_size, bias, dtype, xp, seed, tf32, backend):
        self.spec = spec
        self.tf32, self.backend = _checks.flag("tf32", tf32), _backends.resolve(backend, xp.__name__)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.params = init_params(spec, input_size, hidden_size, bias=bias, dtype=dtype, xp=xp, seed=seed)
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.generator = xp.random.default_rng(seed)  # zoneout's masks

    def _step(self, x, hx):
        states = _checks.hx(self.spec, hx, self.spec.states, _is_array, "a numpy or cupy array")
        _, finals, ctx = api.forward(self.spec, x, self.params, dict(zip(self.spec.states, states)), tf32=self.tf32,
                                     backend=self.backend, step=True, **self._masks())
        return finals, self._context(ctx)

    def _step_backward(self, ctx, dfinals):
        names = [f"d{n}1" for n in self.spec.states]
        dx, d0, dp = api.backward(self._inner(ctx), type(self.spec), None, dict(zip(names, dfinals)), step=True)
        self._accumulate(dp)
        return dx, d0


class LSTMCell(_Cell):
    """One LSTM step with its parameters; `peephole`, `candidate` (and any other `variant` flag), `tf32` and
    `backend` as in `rnncells.lstm_forward` (backend=None follows `xp`)."""

    def __init__(self, input_size, hidden_size, bias=True, *, peephole=None, candidate="tanh",
                 dtype="float32", xp=np, seed=0, tf32=False, backend=None, **variant):
        spec = LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant})
        super().__init__(spec, input_size, hidden_size, bias, dtype, xp, seed, tf32, backend)

    def forward(self, x, hx=None):
        """x (B, I), hx = (h, c) or None for zeros -> h1, c1, ctx."""
        (h1, c1), ctx = self._step(x, hx)
        return h1, c1, ctx

    __call__ = forward

    def backward(self, ctx, dh1, dc1=None):
        """dx, dh, dc of one step; the parameter gradients are added into `grads`."""
        dx, (dh, dc) = self._step_backward(ctx, (dh1, dc1))
        return dx, dh, dc


class GRUCell(_Cell):
    """One GRU step with its parameters; `reset_after` (and any other `variant` flag), `tf32` and `backend` as in
    `rnncells.gru_forward` (backend=None follows `xp`)."""

    def __init__(self, input_size, hidden_size, bias=True, *, reset_after=True, dtype="float32", xp=np, seed=0,
                 tf32=False, backend=None, **variant):
        spec = GRUSpec.of({"reset_after": reset_after, **variant})
        super().__init__(spec, input_size, hidden_size, bias, dtype, xp, seed, tf32, backend)

    def forward(self, x, h=None):
        """x (B, I), h (B, H) or None for zeros -> h1, ctx."""
        (h1,), ctx = self._step(x, h)
        return h1, ctx

    __call__ = forward

    def backward(self, ctx, dh1):
        """dx, dh of one step; the parameter gradients are added into `grads`."""
        dx, (dh,) = self._step_backward(ctx, (dh1,))
        return dx, dh


def reverse_index(T, lengths):
    """[T, B] source steps that read each item's first lengths[b] steps backward; later steps stay put.

    The permutation is its own inverse, so it also maps gradients back.
    """
    t = np.arange(T)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _reverse(xp, x, lengths):
    """x [T, B, ...] with each item's valid steps reversed (all of them without lengths)."""
    if lengths is None:
        return x[::-1]
    return xp.take_along_axis(x, xp.asarray(reverse_index(x.shape[0], lengths))[:, :, None], axis=0)


class _Stack(_Holder):
    """Layers × directions of one variant's sequence function."""

    def __init__(self, spec, input_size, hidden_size, num_layers, bias, batch_first, bidirectional, dtype, xp, seed,
                 graphs, tf32, backend, persistent):
        self.spec = spec
        self.persistent = _checks.persistent(persistent)
        _checks.sizes(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        self.tf32, self.backend = _checks.flag("tf32", tf32), _backends.resolve(backend, xp.__name__)
        batch_first, bidirectional, graphs = (_checks.flag(n, v) for n, v in (
            ("batch_first", batch_first), ("bidirectional", bidirectional), ("graphs", graphs)))
        # graphs only where the step loops launch kernels: the NumPy loop has nothing to capture
        self.graphs = GraphCache() if graphs and self.backend.kernels else None
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.bidirectional = batch_first, bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.xp = xp
        self.widths = spec.state_sizes(hidden_size)  # {state: width}: h is proj_size wide when projected
        self.params = {}
        for layer in range(num_layers):
            size = input_size if layer == 0 else self.widths["h"] * self.num_directions
            for d in range(self.num_directions):
                p = init_params(spec, size, hidden_size, bias=bias, dtype=dtype, xp=xp, seed=seed + layer * 2 + d)
                self.params.update({k + self._suffix(layer, d): v for k, v in p.items()})
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.generator = xp.random.default_rng(seed)  # zoneout's masks

    @staticmethod
    def _suffix(layer, d):
        return f"_l{layer}" + ("_reverse" if d else "")

    def _layer(self, layer, d):
        s = self._suffix(layer, d)
        return {k[: -len(s)]: v for k, v in self.params.items() if k.endswith(s)}

    def _forward(self, x, hx, lengths):
        _checks.array_module({"x": x})
        names = [n + "0" for n in self.spec.states]
        states = _checks.hx(self.spec, hx, names, _is_array, "a numpy or cupy array")
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            layout = "(batch, seq_len, input_size)" if self.batch_first else "(seq_len, batch, input_size)"
            raise ValueError(f"x has shape {tuple(x.shape)}; expected {layout} with input_size={self.input_size}")
        if self.batch_first:
            x = x.swapaxes(0, 1)
        T, B = x.shape[:2]
        _checks.state_shapes(self.spec, self.hidden_size, dict(zip(names, states)),
                             (self.num_layers * self.num_directions, B), "num_layers*num_directions, batch")
        if lengths is not None:
            lengths = _checks.lengths_array(lengths, T, B)
        ctxs, finals, inp = [], [[] for _ in states], x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                s0 = [None if s is None else s[k] for s in states]
                xin = _reverse(self.xp, inp, lengths) if d else inp
                y, sT, ctx = api.forward(self.spec, xin, self._layer(layer, d), dict(zip(names, s0)), lengths=lengths,
                                         graphs=self.graphs, tf32=self.tf32, backend=self.backend,
                                         persistent=self.persistent if self.backend.kernels else False,
                                         **self._masks())
                outs.append(_reverse(self.xp, y, lengths) if d else y)
                ctxs.append(ctx)
                for f, s in zip(finals, sT):
                    f.append(s)
            inp = self.xp.concatenate(outs, axis=-1) if self.bidirectional else outs[0]
        y = inp.swapaxes(0, 1) if self.batch_first else inp
        return y, tuple(self.xp.stack(f) for f in finals), self._context((ctxs, lengths, x.shape, y.shape))

    def _backward(self, ctx, dy, dstates):
        ctxs, lengths, x_shape, y_shape = self._inner(ctx)
        xp, W, D = self.xp, self.widths["h"], self.num_directions
        dy = _checks.grad("dy", dy, y_shape, (ctxs[0].dtype,), xp)
        if self.batch_first:
            dy = dy.swapaxes(0, 1)
        T, B = x_shape[:2]
        names = [f"d{n}T" for n in self.spec.states]
        dstates = [_checks.grad(n, g, (self.num_layers * D, B, width), (ctxs[0].dtype,), xp)
                   for n, g, width in zip(names, dstates, self.widths.values())]
        d0 = [[None] * len(ctxs) for _ in names]
        dinp = dy
        for layer in reversed(range(self.num_layers)):
            dnext = 0
            for d in range(D):
                k = layer * D + d
                dyd = dinp[:, :, d * W : (d + 1) * W]
                dsT = dict(zip(names, (s[k] for s in dstates)))
                dx, ds0, dp = api.backward(ctxs[k], type(self.spec), _reverse(xp, dyd, lengths) if d else dyd, dsT)
                dnext = dnext + (_reverse(xp, dx, lengths) if d else dx)
                self._accumulate(dp, self._suffix(layer, d))
                for out, s in zip(d0, ds0):
                    out[k] = s
            dinp = dnext
        dx = dinp.swapaxes(0, 1) if self.batch_first else dinp
        return dx, tuple(xp.stack(s) for s in d0)


class LSTM(_Stack):
    """A multi-layer, optionally bidirectional LSTM with torch.nn.LSTM's parameter names.

    `peephole`, `candidate` (and any other `variant` flag), `tf32` and
    `backend` as in `rnncells.lstm_forward` (backend=None follows `xp`); the
    peephole weights are named weight_ch_l{k}[_reverse], proj_size's
    weight_hr_l{k}[_reverse] as torch.nn.LSTM's, and layer_norm's gains and
    shift ln_weight_ih_l{k}, ln_weight_hh_l{k}, ln_weight_c_l{k} and
    ln_bias_c_l{k} (starting at 1, 1, 1 and 0).  graphs=True runs the step
    loops as CUDA graphs (see `rnncells.GraphCache`) on the backends that
    launch kernels: "cupy", and "cuda-host", which records and replays them.
    persistent (False, True or "auto") runs them as the persistent kernels on
    those backends, as `rnncells.lstm_forward`'s persistent= does.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, bidirectional=False, *,
                 peephole=None, candidate="tanh", dtype="float32", xp=np, seed=0, graphs=False,
                 tf32=False, backend=None, persistent=False, **variant):
        spec = LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant})
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first,
                         bidirectional, dtype, xp, seed, graphs, tf32, backend, persistent)

    def forward(self, x, hx=None, lengths=None):
        """x (T, B, I) (or (B, T, I) with batch_first), hx = (h0, c0) each (L·D, B, H) or None.

        Returns y (T, B, D·H), (hT, cT) and a ctx for `backward`.  With
        proj_size P, h0, hT and y are P wide: (L·D, B, P), (T, B, D·P).
        """
        return self._forward(x, hx, lengths)

    __call__ = forward

    def backward(self, ctx, dy, dhT=None, dcT=None):
        """dx, (dh0, dc0); the parameter gradients are added into `grads`."""
        return self._backward(ctx, dy, (dhT, dcT))


class GRU(_Stack):
    """A multi-layer, optionally bidirectional GRU with torch.nn.GRU's parameter names.

    `reset_after` (and any other `variant` flag), `tf32` and `backend` as in
    `rnncells.gru_forward` (backend=None follows `xp`).  graphs=True and persistent as in `LSTM`.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, bidirectional=False, *,
                 reset_after=True, dtype="float32", xp=np, seed=0, graphs=False, tf32=False,
                 backend=None, persistent=False, **variant):
        spec = GRUSpec.of({"reset_after": reset_after, **variant})
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, xp, seed, graphs, tf32, backend, persistent)

    def forward(self, x, h0=None, lengths=None):
        """x (T, B, I) (or (B, T, I) with batch_first), h0 (L·D, B, H) or None -> y, hT, ctx."""
        y, (hT,), ctx = self._forward(x, h0, lengths)
        return y, hT, ctx

    __call__ = forward

    def backward(self, ctx, dy, dhT=None):
        """dx, dh0; the parameter gradients are added into `grads`."""
        dx, (dh0,) = self._backward(ctx, dy, (dhT,))
        return dx, dh0
