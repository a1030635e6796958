"""The cell variants: one frozen spec per cell family, the one place that knows what a variant's flags mean.

A spec holds what a variant changes outside its equations: the check of its
flags, its parameters (names, shapes and what each shape means), its
kernels' template arguments and its name.  One spec travels unchanged from
the public functions through the orchestration to the kernels' names.  The
equations live in the reference tape (`rnncells.reference`), the NumPy twin
(`rnncells._numpy`) and the kernels (kernels/*.cu), each reading the spec's
fields.

A new LSTM flag is a field here (checked in `__post_init__`, its values in
`every` and `covering`, passed to the kernels by `template_args` and, for a
value, `kernel_scalars`), and the lines that use it in those three places:
every public entry point takes the flags as keyword arguments (`of`,
`split`), every test that takes `spec` runs every variant of `covering`,
and every kernel is instantiated for every spec of `every`.

A flag may also change the parameters' and the states' shapes without touching a
kernel: `proj_size` (torch.nn.LSTM's projection) is such a field, read by
`param_shapes`, `state_sizes` and the orchestration (`rnncells._sequence`).
And a flag may reach the kernels as arguments alone: `recurrent_dropout` is
a mask pointer (null without it) and a scale in `kernel_scalars`, so it
adds no instantiation.  `layer_norm` adds kernels of its own
(kernels/layernorm.cu, launched by the orchestration between a GEMM and the
cell's kernel); the GRU's cell kernels stay as they are, and the LSTM's
normalisation of c' runs in the cell kernels' block-per-row twins
(lstm_ln_*_step in kernels/lstm.cu), instantiated for the specs without a
peephole (the only ones that allow it).

`__str__` shows a spec's cell and the flags that differ from their
defaults besides `peephole`, `candidate` and `reset_after`, which it always
shows ('lstm peephole=None candidate=tanh cell_clip=0.4').
"""

import itertools
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

PEEPHOLES = (None, "full", "diagonal")
CANDIDATES = ("tanh", "sigmoid")
# The kernels take the clip and the zoneout probabilities as arguments, so one value stands for all of them in
# `every()`: in each of the verification problems (`rnncells.verify.problem`) some cells pass 0.4 and some stay
# below it; zoneout's masks there keep about a third of h and a fifth of c.
CELL_CLIPS = (None, 0.4)
PROJ_SIZE = 3  # the projection the tests run, smaller than some of their hidden sizes and larger than others
ZONEOUTS = ((0.0, 0.0), (0.3, 0.2))  # (zoneout_h, zoneout_c)
LAYER_NORM_EPS = 1e-5  # ε in 1/√(σ² + ε), torch.nn.LayerNorm's default
RECURRENT_DROPOUT = 0.25  # the tests' (a kernel argument and a mask pointer, no template flag: see `kernel_scalars`)
_PEEPHOLE_CODES = {None: "0", "full": "1", "diagonal": "2"}  # PEEPHOLE_* in kernels/common.cuh


def _cpp(flag):
    return "true" if flag else "false"


def _number(name, v, within, expected):
    """v as a float (NumPy's numbers too) if it is a real number for which within(v) holds, else a ValueError
    naming the flag and what it must be."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or not within(v):
        raise ValueError(f"{name}={v!r} must be {expected}")
    return float(v)


def _check_layer_norm(spec):
    """Refuse a layer_norm that is not a bool; store NumPy's bool as a bool."""
    if not isinstance(spec.layer_norm, (bool, np.bool_)):
        raise ValueError(f"layer_norm={spec.layer_norm!r} must be True or False")
    object.__setattr__(spec, "layer_norm", bool(spec.layer_norm))


def _probability(name, p):
    """p as a float in [0, 1), or a ValueError naming the flag."""
    return _number(name, p, lambda p: 0 <= p < 1, "a probability in [0, 1)")


class _Spec:
    """What both families share: their flags as keyword arguments, their names, their parameters."""

    cell: ClassVar[str]  # "lstm" or "gru"
    gates: ClassVar[int]  # G: the weights have G·H rows
    states: ClassVar[tuple]  # the recurrent states' names

    def kwargs(self):
        """The flags as the public functions take them, e.g. {"peephole": None, "candidate": "tanh"}."""
        return asdict(self)

    @classmethod
    def of(cls, flags):
        """The spec of keyword arguments {flag: value}; a name that is not one of the family's flags is refused."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in flags if k not in names]
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the {cls.cell.upper()} variant flags are "
                            f"{', '.join(names)}")
        return cls(**flags)

    @classmethod
    def split(cls, kwargs):
        """(the spec of the family's flags among kwargs, the other kwargs)."""
        names = {f.name for f in fields(cls)}
        flags = {k: v for k, v in kwargs.items() if k in names}
        return cls(**flags), {k: v for k, v in kwargs.items() if k not in names}

    def shown(self):
        """{flag: value} of the flags a spec is named by: the first ones always, the others where they differ
        from their defaults."""
        return {f.name: getattr(self, f.name) for k, f in enumerate(fields(self))
                if k < self._always or getattr(self, f.name) != f.default}

    def __str__(self):
        """'lstm peephole=full candidate=sigmoid', 'gru reset_after=True zoneout_h=0.3' (see `shown`)."""
        return " ".join([self.cell] + [f"{k}={v}" for k, v in self.shown().items()])

    def state_sizes(self, hidden_size):
        """{state: its width}: hidden_size for each, but h's is proj_size for a projected LSTM."""
        return {n: hidden_size for n in self.states}

    def state_meanings(self):
        """{state: its width in words}, for error messages."""
        return {n: "hidden_size" for n in self.states}

    def hidden_size(self, weight_hh_shape):
        """H from weight_hh's shape (G·H, width of h)."""
        return weight_hh_shape[1]

    def param_shapes(self, input_size, hidden_size, bias=True):
        """{key: shape} of the parameters, in torch.nn's order (weight_ih, weight_hh, bias_ih, bias_hh, extras)."""
        G, H, I = self.gates, hidden_size, input_size
        shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, self.state_sizes(H)["h"])}
        if bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        return {**shapes, **self._extra_shapes(H)}

    def param_meanings(self):
        """{key: the expected shape in words}, for error messages."""
        G = self.gates
        rows = {"weight_ih": "input_size", "weight_hh": "hidden_size"}
        meanings = {k: f"({G}*hidden_size, {cols})" for k, cols in rows.items()}
        meanings.update(bias_ih=f"({G}*hidden_size,)", bias_hh=f"({G}*hidden_size,)")
        return {**meanings, **self._extra_meanings()}

    def needed_for(self, key):
        """Why a parameter is needed, for the message when it is missing."""
        if key.startswith("ln_"):
            return "layer_norm=True"
        return "bias" if key.startswith("bias") else self.cell

    @staticmethod
    def initial_value(key):
        """The value a parameter starts at, or None where it is drawn: the LayerNorm gains 1 and shifts 0, as
        torch.nn.LayerNorm's (a torch parameter's name, ln_bias_c_l0, is read by its prefix)."""
        return 1.0 if key.startswith("ln_weight") else (0.0 if key.startswith("ln_bias") else None)

    def zoneout(self):
        """{state: probability} of each state with zoneout, e.g. {"h": 0.1, "c": 0.05}; {} without."""
        probabilities = {n: getattr(self, f"zoneout_{n}") for n in self.states}
        return {n: p for n, p in probabilities.items() if p > 0}

    def rdrop_scale(self):
        """1 / (1 − recurrent_dropout): d's value for a kept unit (inverted dropout, so evaluation needs none)."""
        return 1.0 / (1.0 - self.recurrent_dropout)

    def random_flags(self):
        """The flags that draw masks in training, as 'zoneout_h=0.1, recurrent_dropout=0.25' ('' for none)."""
        names = [f"zoneout_{n}" for n in self.zoneout()] + (["recurrent_dropout"] if self.recurrent_dropout else [])
        return ", ".join(f"{n}={getattr(self, n)}" for n in names)

    def _extra_shapes(self, H):
        return {}

    def _extra_meanings(self):
        return {}


@dataclass(frozen=True)
class LSTMSpec(_Spec):
    """An LSTM variant: `peephole` None, "full" (c Wchᵀ) or "diagonal" (w∘c); `candidate` "tanh" or "sigmoid";
    `cell_clip` None or a positive number, c' clipped to [−cell_clip, cell_clip] after each update;
    `zoneout_h`, `zoneout_c` in [0, 1): the probability that a unit of h (of c) keeps its previous value;
    `proj_size` 0, or P > 0 for torch.nn.LSTM's projection h = W_hr (o∘tanh c') (Sak et al. 2014), which makes
    h, the output and weight_hh's columns P wide (not with zoneout_h, which would zone out the projection);
    `recurrent_dropout` in [0, 1): the probability that a unit of h is dropped from the recurrent GEMM, one mask
    per sequence (Gal & Ghahramani 2016; Keras's recurrent_dropout), not with proj_size;
    `layer_norm` True: haste's LayerNormLSTM (Ba et al. 2016), each GEMM's output normalised over its 4H
    columns with a gain of its own (ln_weight_ih, ln_weight_hh), the biases added after, and c' normalised over
    its H units before the output's tanh, h' = o∘tanh(LN(c')∘γ_c + β_c) (ln_weight_c, ln_bias_c), the state c'
    itself left as it is; not with a peephole or proj_size."""

    peephole: object = None
    candidate: str = "tanh"
    cell_clip: object = None
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    proj_size: int = 0
    recurrent_dropout: float = 0.0
    layer_norm: bool = False

    cell: ClassVar[str] = "lstm"
    _always: ClassVar[int] = 2  # __str__ shows peephole and candidate always
    gates: ClassVar[int] = 4  # i, f, g, o
    states: ClassVar[tuple] = ("h", "c")

    def __post_init__(self):
        if self.peephole not in PEEPHOLES:
            raise ValueError(f"peephole={self.peephole!r} is not one of None, 'full', 'diagonal'")
        if self.candidate not in CANDIDATES:
            raise ValueError(f"candidate={self.candidate!r} is not one of 'tanh', 'sigmoid'")
        if self.cell_clip is not None:
            object.__setattr__(self, "cell_clip", _number("cell_clip", self.cell_clip, lambda c: 0 < c < float("inf"),
                                                          "None or a positive finite number"))
        for name in ("zoneout_h", "zoneout_c", "recurrent_dropout"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        p = self.proj_size
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ValueError(f"proj_size={p!r} must be 0 (no projection) or a positive integer")
        object.__setattr__(self, "proj_size", int(p))
        if p and self.zoneout_h:
            raise ValueError(f"zoneout_h={self.zoneout_h} with proj_size={p} is not supported: zoneout of a "
                             "projected h is not implemented (zoneout_c is)")
        if p and self.recurrent_dropout:
            raise ValueError(f"recurrent_dropout={self.recurrent_dropout} with proj_size={p} is not supported: "
                             "dropout of a projected h is not implemented")
        _check_layer_norm(self)
        if self.layer_norm and self.peephole is not None:
            raise ValueError(f"layer_norm=True with peephole={self.peephole!r} is not supported: haste's "
                             "LayerNormLSTM has no peepholes, and whether they read c or LN(c) is a choice of its own")
        if self.layer_norm and p:
            raise ValueError(f"layer_norm=True with proj_size={p} is not supported: the normalisation of a projected "
                             "LSTM is not implemented")

    @staticmethod
    def every():
        """Every combination of the kernels' template flags, one value standing for each clip and zoneout (see
        CELL_CLIPS): every kernel is instantiated for each."""
        return [LSTMSpec(p, c, clip, *z) for p, c, clip, z in itertools.product(PEEPHOLES, CANDIDATES, CELL_CLIPS,
                                                                                ZONEOUTS)]

    @staticmethod
    def covering():
        """The variants the tests run: every peephole and candidate; cell_clip, then zoneout, then proj_size,
        with every peephole; recurrent_dropout without a peephole and with the full one (whose GEMM gives dc
        too); everything at once (the projection with zoneout on c only); layer_norm alone, and with every other
        flag it allows (the sigmoid candidate, the clip, zoneout, recurrent dropout)."""
        clip, zoneout = CELL_CLIPS[1], dict(zip(("zoneout_h", "zoneout_c"), ZONEOUTS[1]))
        return ([LSTMSpec(p, c) for p, c in itertools.product(PEEPHOLES, CANDIDATES)]
                + [LSTMSpec(p, cell_clip=clip) for p in PEEPHOLES] + [LSTMSpec(p, **zoneout) for p in PEEPHOLES]
                + [LSTMSpec(p, proj_size=PROJ_SIZE) for p in PEEPHOLES]
                + [LSTMSpec(p, recurrent_dropout=RECURRENT_DROPOUT) for p in (None, "full")]
                + [LSTMSpec("diagonal", "sigmoid", clip, **zoneout, recurrent_dropout=RECURRENT_DROPOUT),
                   LSTMSpec("full", "tanh", clip, zoneout_c=zoneout["zoneout_c"], proj_size=PROJ_SIZE),
                   LSTMSpec(layer_norm=True),
                   LSTMSpec(None, "sigmoid", clip, **zoneout, recurrent_dropout=RECURRENT_DROPOUT, layer_norm=True)])

    def template_args(self):
        """The kernels' template arguments after <S, C>: PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT (the values
        are kernel arguments, `kernel_scalars`)."""
        return (_PEEPHOLE_CODES[self.peephole], _cpp(self.candidate == "sigmoid"), _cpp(self.cell_clip is not None),
                _cpp(self.zoneout()))

    def kernel_scalars(self):
        """The kernels' variant arguments: (cell_clip, zoneout_h, zoneout_c, rdrop_scale), 0 (1 for the scale)
        for what is off.  Recurrent dropout has no template flag: its mask pointer is null without it, a branch
        uniform over the grid, where a flag would double every LSTM instantiation."""
        return (self.cell_clip or 0.0, self.zoneout_h, self.zoneout_c, self.rdrop_scale())

    def state_sizes(self, hidden_size):
        """{"h": proj_size or hidden_size, "c": hidden_size}."""
        return {"h": self.proj_size or hidden_size, "c": hidden_size}

    def state_meanings(self):
        """{"h": "proj_size" or "hidden_size", "c": "hidden_size"}."""
        return {"h": "proj_size" if self.proj_size else "hidden_size", "c": "hidden_size"}

    def hidden_size(self, weight_hh_shape):
        """H from weight_hh's shape (4H, width of h): its rows / 4 with a projection, else its columns."""
        return weight_hh_shape[0] // 4 if self.proj_size else weight_hh_shape[1]

    def needed_for(self, key):
        """Why a parameter is needed: the peephole weights for `peephole`, weight_hr for `proj_size`."""
        return {"weight_ch": f"peephole={self.peephole!r}", "weight_hr": f"proj_size={self.proj_size}"}.get(
            key, super().needed_for(key))

    def _extra_shapes(self, H):
        shapes = {}
        if self.peephole == "full":
            shapes["weight_ch"] = (3 * H, H)  # rows i, f, o
        if self.peephole == "diagonal":
            shapes["weight_ch"] = (3 * H,)
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, H)  # torch.nn.LSTM's weight_hr_l{k}, after the biases
        if self.layer_norm:
            shapes.update(ln_weight_ih=(4 * H,), ln_weight_hh=(4 * H,), ln_weight_c=(H,), ln_bias_c=(H,))
        return shapes

    def _extra_meanings(self):
        meanings = {}
        if self.peephole is not None:
            meanings["weight_ch"] = "(3*hidden_size, hidden_size)" if self.peephole == "full" else "(3*hidden_size,)"
        if self.proj_size:  # h is proj_size wide
            meanings.update(weight_hh="(4*hidden_size, proj_size)", weight_hr="(proj_size, hidden_size)")
        if self.layer_norm:
            meanings.update(ln_weight_ih="(4*hidden_size,)", ln_weight_hh="(4*hidden_size,)",
                            ln_weight_c="(hidden_size,)", ln_bias_c="(hidden_size,)")
        return meanings


@dataclass(frozen=True)
class GRUSpec(_Spec):
    """A GRU variant: reset_after=True is torch.nn.GRU / cuDNN, False is Cho et al. / Keras; `zoneout_h` in
    [0, 1): the probability that a unit of h keeps its previous value; `recurrent_dropout` as the LSTM's;
    `layer_norm` True: haste's LayerNormGRU (Ba et al. 2016), each GEMM's output normalised over its 3H
    columns with a gain of its own (ln_weight_ih, ln_weight_hh), bias_ih and bias_hh added after, reset_after
    only."""

    reset_after: bool = True
    zoneout_h: float = 0.0
    recurrent_dropout: float = 0.0
    layer_norm: bool = False

    cell: ClassVar[str] = "gru"
    _always: ClassVar[int] = 1  # __str__ shows reset_after always
    gates: ClassVar[int] = 3  # r, z, n
    states: ClassVar[tuple] = ("h",)

    def __post_init__(self):
        if not isinstance(self.reset_after, (bool, np.bool_)):
            raise ValueError(f"reset_after={self.reset_after!r} must be True or False")
        object.__setattr__(self, "reset_after", bool(self.reset_after))  # NumPy's bool too, stored as a bool
        for name in ("zoneout_h", "recurrent_dropout"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        _check_layer_norm(self)
        if self.layer_norm and not self.reset_after:
            raise ValueError("layer_norm=True with reset_after=False is not supported: before the reset, h Whhᵀ is "
                             "two GEMMs (r∘h meets Whn), not one output to normalise")

    @staticmethod
    def every():
        """Every combination of the kernels' template flags (one zoneout value standing for each)."""
        return [GRUSpec(r, z) for r, z in itertools.product((True, False), (0.0, ZONEOUTS[1][0]))]

    @staticmethod
    def covering():
        """The variants the tests run: every combination of template flags; recurrent_dropout with each reset,
        and with zoneout before the reset (where both meet in the rz kernels); layer_norm alone, and with zoneout
        and recurrent dropout (which its recurrent normalisation reads)."""
        return GRUSpec.every() + [GRUSpec(r, z, RECURRENT_DROPOUT) for r, z in ((True, 0.0), (False, 0.0),
                                                                                 (False, ZONEOUTS[1][0]))] + [
            GRUSpec(layer_norm=True), GRUSpec(True, ZONEOUTS[1][0], RECURRENT_DROPOUT, layer_norm=True)]

    def template_args(self):
        """The template argument of the kernels that write h: ZONEOUT (reset before and after are kernels of
        their own, not a template argument)."""
        return (_cpp(self.zoneout()),)

    def kernel_scalars(self):
        """The kernels' variant arguments: (zoneout_h, rdrop_scale), as the LSTM's."""
        return (self.zoneout_h, self.rdrop_scale())

    def _extra_shapes(self, H):
        return {"ln_weight_ih": (3 * H,), "ln_weight_hh": (3 * H,)} if self.layer_norm else {}

    def _extra_meanings(self):
        return {"ln_weight_ih": "(3*hidden_size,)", "ln_weight_hh": "(3*hidden_size,)"} if self.layer_norm else {}


def every():
    """Every combination of template flags of every cell family (what the kernels are instantiated for)."""
    return LSTMSpec.every() + GRUSpec.every()


def covering():
    """The variants the tests and `rnncells check` run: each flag's code with every other it meets."""
    return LSTMSpec.covering() + GRUSpec.covering()
