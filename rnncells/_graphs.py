"""CUDA graphs for the step loops: capture a loop once per shape, replay it after (issue 8).

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
"""

import collections
import sys


class GraphCache:
    """Captured step loops, kept per shape and variant for replay; pass one as `graphs=`.

    Each forward of a shape takes a free slot (see the module docstring), so a
    model of L layers needs L slots per shape while its contexts live.
    `max_slots` bounds the slots of one shape (each holds a forward's and a
    backward's buffers); `max_shapes` the shapes kept (sequence lengths that
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
        self._slots = collections.OrderedDict()  # key -> [Slot], least recently used first

    def slot(self, key, make):
        """A free slot for `key`, a new one made from make() if none is free, or None when max_slots are held."""
        if key not in self._slots and len(self._slots) == self.max_shapes:
            self._slots.popitem(last=False)  # a held slot's buffers stay valid for their holders
        slots = self._slots.setdefault(key, [])
        self._slots.move_to_end(key)
        for s in slots:
            if s.free():
                return s
        if len(slots) == self.max_slots:
            return None
        slots.append(Slot(self, make()))
        return slots[-1]

    def clear(self):
        """Drop every slot, so their memory goes back to the pool (held buffers stay valid for their holders)."""
        self._slots.clear()


class Slot:
    """The buffers of one loop (a SimpleNamespace of arrays) and the graphs captured on them."""

    def __init__(self, cache, buffers):
        self.cache, self.buffers = cache, buffers
        self._graphs, self._extras = {}, {}
        self._groups = []  # (arrays, their reference counts when only the slot held them)
        self._own(buffers)

    def _own(self, buffers):
        arrays = [a for a in vars(buffers).values() if a is not None]
        self._groups.append((arrays, _refcounts(arrays)))

    def free(self):
        """Whether nobody but the slot holds its buffers."""
        return all(now <= then for arrays, counts in self._groups for now, then in zip(_refcounts(arrays), counts))

    def extra(self, name, make):
        """More buffers on the slot (the backward's), made with make(True) on first use."""
        if name not in self._extras:
            self._extras[name] = make(True)
            self._own(self._extras[name])
        return self._extras[name]

    def run(self, name, ops, loop):
        """Replay the graph `name` of loop(ops), capturing it with ops.capture on first use."""
        if name not in self._graphs:
            self._graphs[name] = ops.capture(loop)
            self.cache.captures += 1
        self._graphs[name]()


def _refcounts(arrays):
    """Each array's reference count, measured the same way whenever it is asked for."""
    return [sys.getrefcount(a) for a in arrays]
