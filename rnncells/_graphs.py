"""CUDA graphs for the step loops: capture a loop once per shape, replay it after.

A step loop is T launches of a GEMM and a pointwise kernel (more for some
variants).  From Python each launch costs microseconds, about what the GPU
needs for a whole step at small batch, so the eager loop is bound by the
host.  A graph makes the loop one launch.

A graph holds device addresses, so everything a loop touches lives in a
*slot*: buffers allocated once, into which each call copies its inputs
(initial states, recurrent weights, lengths; the input GEMM writes xw
there) before the replay.  The outputs y and the context's buffers are the
slot's own, handed to the caller without a copy.  So a slot is free for the
next call only once nobody else holds any of its buffers: when every
buffer's reference count is back to what the slot alone holds (a view, a
context or a DLPack export of a buffer holds it).  A held slot is never
written to: a call finds another free slot of its shape, or makes one and
captures anew, and once `max_slots` of that shape are held it runs the loop
uncaptured, which gives the same results.

Buffers that live only within one call (xw, the per-step GEMM outputs, all
of the backward's) are a workspace shared by the slots of one shape: the
calls that use it follow each other on one stream (the CuPy key includes
the stream), so stacked layers of one shape pay for it once.
"""

import collections
import sys
from typing import NamedTuple


class GraphCache:
    """Captured step loops, kept per shape and variant for replay; pass one as `graphs=`.

    Each forward of a shape takes a free slot (see the module docstring), so a
    model of L layers needs L slots per shape while its contexts live.
    `max_slots` bounds the slots of one shape (each holds what one forward
    hands out: y and what its context keeps); `max_shapes` the shapes kept (sequence lengths that
    vary from batch to batch make new shapes): past it the least recently
    used shape is dropped.  `captures` counts the graphs captured so far.
    Not thread-safe: give each thread its own cache.
    """

    def __init__(self, max_slots=8, max_shapes=16):
        for name, v in (("max_slots", max_slots), ("max_shapes", max_shapes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        self.max_slots, self.max_shapes = max_slots, max_shapes
        self.captures = 0
        self._shapes = collections.OrderedDict()  # key -> _Shape, least recently used first

    def slot(self, key, make, make_work):
        """A free slot for `key`, a new one if none is free, or None when max_slots are held.

        make() gives a new slot's own buffers, make_work() the shape's workspace (once).
        """
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) == self.max_shapes:
                self._shapes.popitem(last=False)  # a held slot keeps its buffers and workspace alive
            shape = self._shapes[key] = _Shape([], {})
        self._shapes.move_to_end(key)
        for s in shape.slots:
            if s.free():
                return s
        if len(shape.slots) == self.max_slots:
            return None
        shape.slots.append(Slot(self, shape, make(), shape.workspace("forward", make_work)))
        return shape.slots[-1]

    def clear(self):
        """Drop every slot, so their memory goes back to the pool (held buffers stay valid for their holders)."""
        self._shapes.clear()


class _Shape(NamedTuple):
    """The slots of one key and the workspace they share ({name: buffers})."""

    slots: list
    work: dict

    def workspace(self, name, make):
        if name not in self.work:
            self.work[name] = make()
        return self.work[name]


class Slot:
    """The buffers of one loop (a SimpleNamespace of arrays: its own and its shape's workspace) and its graphs."""

    def __init__(self, cache, shape, own, work):
        self.cache, self._shape, self._graphs = cache, shape, {}
        # what the slot hands out, with each one's reference count while only the slot holds it
        self._owned = [a for a in vars(own).values() if a is not None]
        self._counts = _refcounts(self._owned)
        vars(own).update(vars(work))
        self.buffers = own

    def free(self):
        """Whether nobody but the slot holds its buffers."""
        return all(now <= then for now, then in zip(_refcounts(self._owned), self._counts))

    def workspace(self, name, make):
        """The shape's shared buffers `name` (the backward's), made with make() on first use."""
        return self._shape.workspace(name, make)

    def run(self, name, ops, loop):
        """Replay the graph `name` of loop(ops), capturing it with ops.capture on first use."""
        if name not in self._graphs:
            self._graphs[name] = ops.capture(loop)
            self.cache.captures += 1
        self._graphs[name]()


def _refcounts(arrays):
    """Each array's reference count, measured the same way whenever it is asked for."""
    return [sys.getrefcount(a) for a in arrays]
