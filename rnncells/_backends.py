"""The four ways to run a cell, behind one type.

    reference   the float64 tape (`rnncells.reference`): how the others are verified
    numpy       the orchestration (`_sequence`) over the NumPy twin of the kernels (`_numpy`)
    cpu         the same with the step loops of small steps compiled whole (`_cpu`; the NumPy backend
                where g++ is missing): the default for NumPy arrays
    cuda-host   the orchestration over the CUDA kernels built for the CPU (`_host`), on NumPy arrays:
                how the kernels are verified without a GPU
    cupy        the orchestration over the CUDA kernels on the current device (`_cupy`)

Each is a `Backend`: forward(spec, x, params, states, lengths, training,
graphs, tf32, masks, plan) and backward(ctx, dy, dstates, tf32), on checked,
contiguous arrays (masks: zoneout's, see `rnncells._sequence.forward`;
plan: a persistent plan from `persistent_plan`, or None).
A test builds its own (the host kernels on NaN-poisoned buffers)
and passes it as `backend=`.
"""

import abc
import importlib

import numpy as np

from . import _checks, _numpy, _sequence


class Backend(abc.ABC):
    """One way to run the cells.

    `name` is what messages call it, `arrays` the array module it takes
    ("numpy" or "cupy"), `kernels` whether its step loops launch the CUDA
    kernels (then graphs= applies and sizes are limited to 32-bit indices),
    `grad_dtypes(dtype)` the dtypes an incoming gradient may have.
    """

    name, arrays, kernels = "", "numpy", False

    @abc.abstractmethod
    def forward(self, spec, x, params, states, lengths, training=True, graphs=None, tf32=False, masks=None,
                plan=None):
        """y [T, B, H], the final states (a tuple, one per spec.states) and a ctx (None unless training)."""

    @abc.abstractmethod
    def backward(self, ctx, dy, dstates, tf32=False):
        """dx [T, B, I], the initial states' gradients (a tuple) and {key: dparam} of the forward that made ctx."""

    def grad_dtypes(self, dtype):
        """The forward's dtype: a backend computes in the dtype of its inputs."""
        return (np.dtype(dtype),)

    def persistent_plan(self, spec, dtype, H, tf32=False):
        """(a plan for the persistent kernels, None), or (None, why this backend cannot run them here)."""
        return None, f"backend {self.name!r} has no persistent kernels (they run on 'cupy' and 'cuda-host')"

    def __repr__(self):
        return f"<rnncells backend {self.name!r}>"


class Reference(Backend):
    """The float64 tape; it casts any float input (and incoming gradient) to float64.

    The verification layer is imported when this backend first runs, so the
    fast backends never load it.
    """

    name = "reference"

    def forward(self, spec, x, params, states, lengths, training=True, graphs=None, tf32=False, masks=None,
                plan=None):
        from . import reference

        return reference.forward(spec, x, params, states, lengths, training, masks)

    def backward(self, ctx, dy, dstates, tf32=False):
        from . import reference

        return reference.backward(ctx, dy, dstates)

    def grad_dtypes(self, dtype):
        return _checks.FLOATS


class Orchestrated(Backend):
    """The orchestration of `_sequence` over a backend's per-step ops.

    `ops(tf32)` gives the per-step ops in a math mode; `xp` is the module
    that allocates the buffers (a test's poisoned stand-in, say), by default
    the arrays' own, imported on first use (so CuPy only where it runs).
    """

    def __init__(self, name, ops, xp=None, arrays="numpy", kernels=True):
        self.name, self.ops, self._xp, self.arrays, self.kernels = name, ops, xp, arrays, kernels

    @property
    def xp(self):
        return self._xp or importlib.import_module(self.arrays)

    def forward(self, spec, x, params, states, lengths, training=True, graphs=None, tf32=False, masks=None,
                plan=None):
        return _sequence.forward(self.ops(tf32), self.xp, spec, x, params, states, lengths, training, graphs, masks,
                                 plan)

    def persistent_plan(self, spec, dtype, H, tf32=False):
        if not self.kernels:
            return super().persistent_plan(spec, dtype, H, tf32)
        return self.ops(tf32).persistent_plan(spec, dtype, H)

    def backward(self, ctx, dy, dstates, tf32=False):
        return _sequence.backward(self.ops(tf32), self.xp, ctx, dy, dstates)


# imported when first used: g++'s build, and CuPy, only where they run
def _host_ops(tf32):
    from . import _host

    return _host.ops(tf32)


def _cpu_ops(tf32):
    from . import _cpu

    return _cpu.ops()


def _cupy_ops(tf32):
    from . import _cupy

    return _cupy.ops(tf32)


_NAMED = {
    "reference": Reference(),
    "numpy": Orchestrated("numpy", lambda tf32: _numpy, kernels=False),  # a CPU has no TF32
    "cpu": Orchestrated("cpu", _cpu_ops, kernels=False),
    "cuda-host": Orchestrated("cuda-host", _host_ops),
    "cupy": Orchestrated("cupy", _cupy_ops, arrays="cupy"),
}
NAMES = tuple(_NAMED)
DEFAULT = {"numpy": "cpu", "cupy": "cupy"}  # the backend of a call's arrays when backend=None


def named(name):
    """The backend of a name in NAMES."""
    return _NAMED[name]


def resolve(backend, arrays):
    """The backend of a call on arrays of module `arrays` ("numpy" or "cupy"): `backend` (None for the arrays'
    own, a name in NAMES, or a Backend) checked against them."""
    if not isinstance(backend, Backend):
        name = DEFAULT[arrays] if backend is None else backend
        if name not in NAMES:
            raise ValueError(f"backend={name!r} is not one of {', '.join(map(repr, NAMES))}")
        backend = named(name)
    if backend.arrays != arrays:
        raise TypeError(f"backend={backend.name!r} cannot run on {arrays} arrays")
    return backend


def gpu_available():
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False
