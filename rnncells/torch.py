"""PyTorch adapter: drop-in torch.nn.LSTM, GRU, LSTMCell and GRUCell backed by rnncells.

    from rnncells.torch import LSTM          # instead of torch.nn.LSTM
    lstm = LSTM(10, 20, num_layers=2, bidirectional=True, dropout=0.1)
    output, (h_n, c_n) = lstm(packed_or_padded_input, (h0, c0))

Same constructor arguments (LSTM's proj_size included), parameter names,
state_dict keys, inputs (padded, batch_first, unbatched, PackedSequence)
and return values as torch.nn; extra keyword arguments select our variants (`peephole`,
`candidate`, `cell_clip`, `zoneout_c` for the LSTMs, `reset_after` for the
GRUs, `zoneout_h`, `recurrent_dropout` and `layer_norm` for both: the flags
of `rnncells.variants.LSTMSpec` and `GRUSpec`), their extra
weights named weight_ch_l{k}[_reverse] (weight_ch for the cells), and
ln_weight_ih_l{k}, ln_weight_hh_l{k} (LayerNorm's gains, starting at 1) and, for the LSTMs, ln_weight_c_l{k}
and ln_bias_c_l{k} (c's gain and shift, starting at 1 and 0).  Zoneout and recurrent
dropout follow the module's mode, as dropout does: in train mode their
masks are drawn from torch's generator on the input's device
(torch.manual_seed makes them reproducible; one recurrent dropout mask per
layer, direction and call), in eval mode zoneout uses the expectation and
recurrent dropout drops nothing.

Each layer and direction is one `torch.autograd.Function` whose forward and
backward are rnncells' own (the "cpu" backend for CPU tensors; CuPy,
zero-copy through DLPack and on torch's current stream, for CUDA tensors).
Every module takes `cpu_backend=`: "numpy" (no compiled loops), or
"cuda-host", which runs CPU tensors through the CUDA kernels
built for the CPU (graphs=True included): a check of the GPU path without a
GPU, not a fast path.  On CUDA tensors TF32 follows
`torch.backends.cudnn.allow_tf32` at each forward, as torch.nn.LSTM/GRU on
cuDNN do (torch's default allows it); the backward keeps the forward's
choice.  The glue between layers (unpacking, per-item reversal,
concatenation, dropout) is ordinary torch, so dropout draws from torch's
generator.

A forward keeps activations for a backward only when autograd will ask
for one: under torch.no_grad() or torch.inference_mode(), or when neither
the input, the states nor the parameters require grad, it runs the
inference path, which saves nothing.

What autograd checks, as it does for torch.nn on cuDNN:
- Our backward reads the memory of the input, the initial states, the
  parameters and the output.  Writing into any of them in place between
  the forward and the backward (an in-place ReLU on the previous layer's
  output, a reused batch buffer, an optimizer step) makes the backward
  raise autograd's "modified by an inplace operation" error.
- Double backward (differentiating a gradient taken with
  create_graph=True, as a gradient penalty does) is refused: the
  gradients our backward returns carry a node that raises when autograd
  reaches it.  Taking such a gradient and using it as data is fine.

Half precision: modules in float16 or bfloat16 (`dtype=`, `.half()`,
`.to(torch.bfloat16)`) store in it and compute in float32 (see
`rnncells._dtypes`).  Under `torch.autocast` for the input's device, a call
runs in autocast's dtype whatever the parameters' dtype: the input, the
states and each layer's parameters are cast once per forward (autograd
carries the gradients back to float32 master weights), and the outputs are
in that dtype, as torch.nn's RNNs on cuDNN do.  (On the CPU, torch's own
autocast covers torch.nn.LSTM but leaves torch.nn.GRU in float32; ours
treats both alike.)  The modules run NumPy or
CuPy code, which tracers cannot see: `torch.jit.script`, `torch.jit.trace`
and `torch.export` raise, and `torch.compile` compiles the torch code around
each layer and calls our forward and backward as they are (a graph break).
"""

import contextlib
import dataclasses
import math

import numpy as np

try:
    import torch
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("rnncells.torch needs PyTorch: pip install 'rnncells[torch]'") from e
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _backends, _checks, api
from ._dtypes import BFLOAT16
from ._graphs import GraphCache
from .modules import reverse_index
from .variants import GRUSpec, LSTMSpec

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _array(t):
    """A tensor's data as a NumPy (CPU) or CuPy (CUDA) array, without a copy.

    bfloat16 travels as its bits (int16), which every NumPy, CuPy and DLPack
    understands, and is viewed as ml_dtypes' bfloat16 on arrival.
    """
    if t is None:
        return None
    t = t.detach()
    bf16 = t.dtype == torch.bfloat16
    if bf16:
        t = t.view(torch.int16)
    if t.is_cuda:
        import cupy

        a = cupy.from_dlpack(t)
    else:
        a = t.numpy()
    return a.view(BFLOAT16) if bf16 else a


def _tensor(a):
    """An array as a tensor on the same memory (bfloat16 through its bits, as in _array)."""
    bf16 = a.dtype == BFLOAT16
    if bf16:
        a = a.view(np.int16)
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
    return t.view(torch.bfloat16) if bf16 else t


def _on_stream(device):
    """CuPy work on torch's current stream of a CUDA device (nothing to do on the CPU)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    import cupy

    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(device.index))
    stack.enter_context(cupy.cuda.Stream.from_external(_StreamRef(torch.cuda.current_stream(device))))
    return stack


class _StreamRef:
    """A torch stream through the CUDA stream protocol (older torch streams lack __cuda_stream__)."""

    def __init__(self, stream):
        self.stream = stream  # CuPy keeps this object, and so the stream, alive while it uses it

    def __cuda_stream__(self):
        return 0, self.stream.cuda_stream


def _tf32(x):
    """torch.nn's RNNs on cuDNN use TF32 when torch.backends.cudnn.allow_tf32 (CUDA tensors only)."""
    return x.is_cuda and torch.backends.cudnn.allow_tf32


class _Sequence(torch.autograd.Function):
    """One layer, one direction: rnncells' forward, and rnncells' backward for autograd."""

    @staticmethod
    def forward(ctx, spec, options, keys, lengths, x, *tensors):
        """options: `rnncells.api.forward`'s keyword arguments but lengths and tf32 (training, graphs, backend,
        persistent, masks)."""
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: zero for us
        n = len(spec.states)
        states, params = tensors[:n], dict(zip(keys, map(_array, tensors[n:])))
        ctx.spec, ctx.keys, ctx.given, ctx.device = spec, keys, [s is not None for s in states], x.device
        names = [s + "0" for s in spec.states]
        with _on_stream(x.device):
            y, finals, ctx.rc = api.forward(spec, _array(x), params, dict(zip(names, map(_array, states))),
                                            lengths=lengths, tf32=_tf32(x), **options)
        outs = tuple(map(_tensor, (y, *finals)))
        if options["training"]:  # ctx.rc reads these tensors' memory: autograd refuses a backward after a write to one
            ctx.save_for_backward(x, *tensors, outs[0])
        return outs

    @staticmethod
    def backward(ctx, dy, *dstates):
        if all(g is None for g in (dy, *dstates)):  # nothing flows back through this node
            return (None,) * (5 + len(ctx.given) + len(ctx.keys))
        read = ctx.saved_tensors  # raises if one was modified in place since the forward
        names = [f"d{s}T" for s in ctx.spec.states]
        with _on_stream(ctx.device):  # ctx.rc lives as long as the graph
            dx, dstate, dp = api.backward(ctx.rc, type(ctx.spec), _array(dy), dict(zip(names, map(_array, dstates))))
        grads = [_tensor(dx), *(_tensor(d) if given else None for d, given in zip(dstate, ctx.given)),
                 *(_tensor(dp[k]) for k in ctx.keys)]
        if torch.is_grad_enabled():  # create_graph=True: the gradients depend on whatever of these requires grad
            sources = [t for t in (*read, dy, *dstates) if t is not None and t.requires_grad]
            grads = _Refused.apply(grads, *sources) if sources else grads
        return (None, None, None, None, *grads)


def _apply(spec, options, keys, lengths, x, *tensors):
    """_Sequence.apply, training only when autograd will call its backward; under torch.compile, first a graph
    break that says why (NumPy/CuPy code inside)."""
    # decided here, not from ctx.needs_input_grad inside forward: that follows requires_grad even under no_grad
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors))
    if torch.compiler.is_compiling():  # only then is torch._dynamo loaded: importing it ourselves made
        # DistributedDataParallel's gloo workers deadlock at exit (9 runs in 25)
        torch._dynamo.graph_break(msg="rnncells' LSTM/GRU layers run NumPy/CuPy code, which torch.compile "
                                  "cannot trace: it calls them between compiled graphs, so fullgraph=True "
                                  "cannot hold a model that uses them")
    return _Sequence.apply(spec, {**options, "training": training}, keys, lengths, x, *tensors)


class _Refused(torch.autograd.Function):
    """Gradients that autograd may not differentiate again: their backward raises."""

    @staticmethod
    def forward(ctx, grads, *sources):
        return tuple(grads)  # the same tensors, which autograd now gives this node as their grad_fn

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            "rnncells.torch does not support double backward: a gradient taken through its LSTM/GRU with "
            "create_graph=True (as a gradient penalty does) cannot be differentiated again; detach that gradient, "
            "or compute that loss with torch.nn's modules on the CPU"
        )


def _reverse(x, lengths):
    """Each item's valid steps reversed, as torch ops so autograd sees it (see modules.reverse_index)."""
    if lengths is None:
        return x.flip(0)
    idx = torch.as_tensor(reverse_index(x.shape[0], lengths), device=x.device)
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


def _pack_like(y, packed):
    """y (T, B, F), batch in the original order, as a PackedSequence laid out like `packed`."""
    order = packed.sorted_indices
    order = torch.arange(y.shape[1], device=y.device) if order is None else order
    rows = [y[t, order[:n]] for t, n in enumerate(packed.batch_sizes.tolist())]
    return PackedSequence(torch.cat(rows), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


def _check_construction(dtype, sizes):
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in _DTYPES:
        raise NotImplementedError(f"dtype={dtype} is not supported by rnncells.torch (float32, float64, float16 "
                                  "and bfloat16 are)")
    _checks.sizes(**sizes)
    return dtype


def _cast(dtype, x, states):
    """x and the states in the call's dtype (themselves when they have it: no copy), through autograd."""
    return x.to(dtype), [None if s is None else s.to(dtype) for s in states]


def _exporting():
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5; earlier torch.export sees .numpy()
    return is_exporting is not None and is_exporting()


_CPU_BACKENDS = ("cpu", "numpy", "cuda-host")


def _cpu_backend(name):
    if name not in _CPU_BACKENDS:
        raise ValueError(f"cpu_backend={name!r} is not one of {', '.join(map(repr, _CPU_BACKENDS))}")
    return name


class _Module(nn.Module):
    """What the sequence modules and the cells share: the checks each call makes before any work, and the
    backend that runs it."""

    def _backend(self, x):
        """The backend of a call on x: CuPy's for CUDA tensors, `cpu_backend`'s for CPU ones."""
        return _backends.named("cupy" if x.is_cuda else self.cpu_backend)

    def _training_masks(self, x):
        """Zoneout's and recurrent dropout's masks for a call on x (T, B, ·), as `rnncells.api.training_masks`
        gives them: drawn from torch's generator in train mode (as dropout), {} (zoneout's expectation, no
        dropout) in eval mode; None without either."""
        zoned, p_drop = self.spec.zoneout(), self.spec.recurrent_dropout
        if not (zoned or p_drop):
            return None
        if not self.training:
            return {}
        shape = (*x.shape[:2], self.hidden_size)
        masks = {n: _array((torch.rand(shape, device=x.device) < p).to(torch.uint8)) for n, p in zoned.items()}
        if p_drop:
            masks["rdrop"] = _array((torch.rand(shape[1:], device=x.device) >= p_drop).to(torch.uint8))
        return masks

    def _options_repr(self, shown=()):
        """The variant's flags and cpu_backend where they differ from their defaults (but those `shown` already),
        for extra_repr, so a module without our variants reads as torch.nn's."""
        defaults = type(self.spec)().kwargs()
        s = "".join(f", {k}={v!r}" for k, v in self.spec.kwargs().items() if v != defaults[k] and k not in shown)
        return s + ("" if self.cpu_backend == "cpu" else f", cpu_backend={self.cpu_backend!r}")

    def __prepare_scriptable__(self):  # torch.jit.script calls this first
        raise NotImplementedError(f"rnncells.torch.{type(self).__name__} cannot be scripted: its forward runs "
                                  "NumPy/CuPy code that TorchScript cannot compile")

    def _check_call(self, x, hx, names):
        """x (the unpacked input) and hx -> (the dtype the call runs in, hx as a list of states or Nones);
        refuses what the kernels lack."""
        if torch.jit.is_tracing() or _exporting():
            raise NotImplementedError(
                f"rnncells.torch.{type(self).__name__} cannot be traced or exported (torch.jit.trace, "
                "torch.export): its forward runs NumPy/CuPy code that a tracer cannot record. torch.compile "
                "works: it calls the layers as they are"
            )
        dtype = next(self.parameters()).dtype
        if dtype not in _DTYPES:
            raise NotImplementedError(f"the parameters are {dtype} (after .to()); rnncells.torch supports float32, "
                                      "float64, float16 and bfloat16")
        if torch.is_autocast_enabled(x.device.type):  # as torch.nn's RNNs: everything in autocast's dtype
            dtype = torch.get_autocast_dtype(x.device.type)
            if x.dtype not in _DTYPES:
                raise TypeError(f"input has dtype {x.dtype}; expected a floating-point dtype")
        elif x.dtype != dtype:
            raise TypeError(f"input has dtype {x.dtype}; expected {dtype}, the parameters' dtype")
        return dtype, _checks.hx(self.spec, hx, names, torch.is_tensor, "a tensor")


class _RNN(_Module):
    """Layers × directions of one cell kind, with torch.nn.RNNBase's arguments and names."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, graphs=False, cpu_backend="cpu",
                 persistent=False, spec):
        super().__init__()
        self.cpu_backend = _cpu_backend(cpu_backend)
        self._persistent = _checks.persistent(persistent)
        bias, batch_first, bidirectional = (_checks.flag(n, v) for n, v in (
            ("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)))
        # graphs of the step loops where a call launches kernels: CUDA tensors, or CPU ones on cuda-host
        self._graphs = GraphCache() if _checks.flag("graphs", graphs) else None
        if proj_size:  # given by position: LSTM's keyword proj_size is already in its spec
            if not isinstance(spec, LSTMSpec):
                raise ValueError(f"proj_size={proj_size!r}: projections are an LSTM's, not a GRU's")
            spec = dataclasses.replace(spec, proj_size=proj_size)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1) or isinstance(dropout, bool):
            raise ValueError(f"dropout={dropout!r} must be a number in [0, 1]")
        dtype = _check_construction(dtype, dict(input_size=input_size, hidden_size=hidden_size,
                                                num_layers=num_layers))
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.spec = bidirectional, getattr(spec, "proj_size", 0), spec
        D = 2 if bidirectional else 1
        self._keys = list(spec.param_shapes(1, 1, bias=bias))
        self._widths = spec.state_sizes(hidden_size)  # {state: width}: h is proj_size wide when projected
        for layer in range(num_layers):
            size = input_size if layer == 0 else self._widths["h"] * D
            for d in range(D):
                shapes = spec.param_shapes(size, hidden_size, bias=bias)
                for key, shape in shapes.items():  # torch's order: weight_ih, weight_hh, bias_ih, bias_hh
                    w = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
                    self.register_parameter(key + self._suffix(layer, d), w)
        self.reset_parameters()

    @staticmethod
    def _suffix(layer, d):
        return f"_l{layer}" + ("_reverse" if d else "")

    def reset_parameters(self):
        """Every parameter from U(-1/√H, 1/√H), in registration order, as torch.nn does; LayerNorm gains 1 and
        shifts 0, as torch.nn.LayerNorm's."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, w in self.named_parameters():
            value = self.spec.initial_value(name)
            if value is not None:
                nn.init.constant_(w, value)
            else:
                nn.init.uniform_(w, -k, k)

    def flatten_parameters(self):
        """torch compacts its weights for cuDNN here; ours need no compaction, so this does nothing."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("proj_size", 0), ("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):  # torch.nn's order
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + self._options_repr(shown=("proj_size",))

    def _states(self, states, B, unbatched):
        """The states as (L·D, B, width) tensors (or Nones), checked: h0 proj_size wide when projected."""
        states = [None if s is None else (s.unsqueeze(1) if unbatched else s) for s in states]
        LD = self.num_layers * (2 if self.bidirectional else 1)
        _checks.state_shapes(self.spec, self.hidden_size, dict(zip(("h0", "c0"), states)), (LD, B),
                             "num_layers*num_directions, batch")
        return states

    def _run(self, input, hx):
        packed = isinstance(input, PackedSequence)
        if not (packed or torch.is_tensor(input)):
            raise TypeError(f"input must be a tensor or a PackedSequence, got {type(input).__name__}")
        unbatched = not packed and input.dim() == 2
        if packed:
            x, lengths = pad_packed_sequence(input)
            lengths = lengths.numpy()
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"input has {input.dim()} dimensions; expected 2 (unbatched) or 3")
            x, lengths = input, None
            x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features; expected input_size={self.input_size}")
        dtype, states = self._check_call(x, hx, ("h0", "c0"))
        states = self._states(states, x.shape[1], unbatched)
        x, states = _cast(dtype, x, states)
        D = 2 if self.bidirectional else 1
        finals, inp = [[] for _ in states], x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                inp = nn.functional.dropout(inp, self.dropout, self.training)
            outs = []
            for d in range(D):
                k = layer * D + d
                params = [getattr(self, key + self._suffix(layer, d)).to(dtype) for key in self._keys]
                s0 = [None if s is None else s[k] for s in states]
                xin = _reverse(inp, lengths) if d else inp
                backend = self._backend(xin)
                options = {"graphs": self._graphs if backend.kernels else None, "backend": backend,
                           "persistent": self._persistent if backend.kernels else False,
                           "masks": self._training_masks(xin)}
                y, *sT = _apply(self.spec, options, self._keys, lengths, xin, *s0, *params)
                outs.append(_reverse(y, lengths) if d else y)
                for f, s in zip(finals, sT):
                    f.append(s)
            inp = torch.cat(outs, dim=-1) if D == 2 else outs[0]
        finals = [torch.stack(f) for f in finals]
        if packed:
            out = _pack_like(inp, input)
        elif unbatched:
            out, finals = inp.squeeze(1), [f.squeeze(1) for f in finals]
        else:
            out = inp.transpose(0, 1) if self.batch_first else inp
        return out, tuple(finals)


class LSTM(_RNN):
    """Drop-in torch.nn.LSTM, proj_size included (weight_hr_l{k}); `peephole` and `candidate` as in
    rnncells.lstm_forward.

    graphs=True: the step loops run as CUDA graphs (`rnncells.GraphCache`) on CUDA tensors, and recorded
    and replayed on CPU tensors with cpu_backend="cuda-host" ("cpu", the default, "numpy" or "cuda-host":
    what runs CPU tensors; see the module docstring).  persistent (False, True or "auto"): the step loops as
    the persistent kernels where a call launches kernels, as rnncells.lstm_forward's persistent= says.
    """

    def __init__(self, *args, peephole=None, candidate="tanh", **kwargs):
        spec, kwargs = LSTMSpec.split({"peephole": peephole, "candidate": candidate, **kwargs})
        super().__init__(*args, spec=spec, **kwargs)

    def forward(self, input, hx=None):
        """input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence.

        Returns output, (h_n, c_n) exactly as torch.nn.LSTM does.
        """
        return self._run(input, hx)


class GRU(_RNN):
    """Drop-in torch.nn.GRU; `reset_after=False` gives the Cho et al. / Keras variant.

    graphs=True: the step loops run as CUDA graphs (`rnncells.GraphCache`) on CUDA tensors, and recorded
    and replayed on CPU tensors with cpu_backend="cuda-host" ("cpu", the default, "numpy" or "cuda-host":
    what runs CPU tensors; see the module docstring).  persistent as in LSTM.
    """

    def __init__(self, *args, reset_after=True, **kwargs):
        spec, kwargs = GRUSpec.split({"reset_after": reset_after, **kwargs})
        super().__init__(*args, spec=spec, **kwargs)

    def forward(self, input, hx=None):
        """input as for LSTM; returns output, h_n exactly as torch.nn.GRU does."""
        out, (h,) = self._run(input, hx)
        return out, h


class _Cell(_Module):
    """One step, with torch.nn.RNNCellBase's arguments and names."""

    def __init__(self, input_size, hidden_size, bias, device, dtype, spec, cpu_backend):
        super().__init__()
        self.cpu_backend = _cpu_backend(cpu_backend)
        bias = _checks.flag("bias", bias)
        dtype = _check_construction(dtype, dict(input_size=input_size, hidden_size=hidden_size))
        self.input_size, self.hidden_size, self.bias, self.spec = input_size, hidden_size, bias, spec
        shapes = spec.param_shapes(input_size, hidden_size, bias=bias)
        for key, shape in shapes.items():
            self.register_parameter(key, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self._keys = list(shapes)
        self.reset_parameters()

    reset_parameters = _RNN.reset_parameters

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + self._options_repr()

    def _step(self, input, hx):
        if not torch.is_tensor(input):
            raise TypeError(f"input must be a tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"input has {input.dim()} dimensions; expected 1 (unbatched) or 2")
        dtype, states = self._check_call(input, hx, ("h", "c"))
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        states = [None if s is None else (s.unsqueeze(0) if unbatched else s) for s in states]
        x, states = _cast(dtype, x, states)
        params = [getattr(self, k).to(dtype) for k in self._keys]
        options = {"backend": self._backend(x), "masks": self._training_masks(x.unsqueeze(0))}
        _, *out = _apply(self.spec, options, self._keys, None, x.unsqueeze(0), *states, *params)
        return tuple(o.squeeze(0) for o in out) if unbatched else tuple(out)


class LSTMCell(_Cell):
    """Drop-in torch.nn.LSTMCell; `peephole` and `candidate` as in rnncells.lstm_forward."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, peephole=None,
                 candidate="tanh", cpu_backend="cpu", **variant):
        spec = LSTMSpec.of({"peephole": peephole, "candidate": candidate, **variant})
        super().__init__(input_size, hidden_size, bias, device, dtype, spec, cpu_backend)

    def forward(self, input, hx=None):
        """input (B, I) or (I,); hx = (h, c) or None -> (h1, c1), as torch.nn.LSTMCell."""
        return self._step(input, hx)


class GRUCell(_Cell):
    """Drop-in torch.nn.GRUCell; `reset_after=False` gives the Cho et al. / Keras variant."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True,
                 cpu_backend="cpu", **variant):
        spec = GRUSpec.of({"reset_after": reset_after, **variant})
        super().__init__(input_size, hidden_size, bias, device, dtype, spec, cpu_backend)

    def forward(self, input, hx=None):
        """input (B, I) or (I,); hx (B, H) or None -> h1, as torch.nn.GRUCell."""
        (h,) = self._step(input, hx)
        return h
