"""The inference pass reused by the masked passes.

A masked pass (one layer or group in training mode, everything else in
inference mode) computes, upstream of its first layer in training mode,
exactly what the inference pass of the same batch computed. It takes that
instead of computing it again.

Keras' Functional holds every activation of a pass until the pass ends, so
holding the inference pass's outputs through the training pass would double
the peak memory. What is held is only the frontier of a cut: the inference
outputs made before the cut and used at or after it (the first layer's
input, a skip connection, the input of a nested model the cut is in),
followed by the data flow recorded in the inference pass. The other calls
before the cut hand back one-sample stand-ins that only other skipped calls
receive; a computed layer given one ends the attempt, and the pass runs
again whole.

Only models made of Keras' own layers take part (their inference mode is
deterministic), whose inference pass gave no layer training=True, no mask,
and no tensor made outside a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

Key = tuple[int, int]  # (node index, call number in the pass)
INPUT: Key = (-1, -1)  # producer of the model's inputs
_NEVER = 1 << 60  # last use of a model output: the end of the pass
BUDGET_SHARE = 0.03  # of the inference pass's output bytes, held for the masked passes
BUDGET_FLOOR = 64 << 20  # bytes held in any case (a small model's frontier is a large share)
KEEP_BEST = 2  # cuts kept for the layers with the largest own contribution (first batch)


@dataclass
class _Call:
    start: int
    inputs: list  # producer keys of its tensor arguments (None: made outside a layer)
    end: int = -1
    template: Any = None  # its output's structure, tensors as `_Leaf`s


@dataclass(frozen=True)
class _Leaf:
    """A tensor of the inference pass, as a template: which, and its shape."""

    id: int
    shape: tuple
    dtype: str


@dataclass
class Cut:
    """A masked pass's cut: calls that end before `start` are not computed."""

    start: int
    frontier: dict[int, Any]  # id in the inference pass -> that tensor
    stand_ins: dict[int, Any] = field(default_factory=dict)
    by_shape: dict[tuple, Any] = field(default_factory=dict)  # the stand-in of each shape
    skipped: int = 0  # calls not computed


def itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # bfloat16 and the like
        return 2


def _nbytes(t) -> int:
    from .backend import import_keras

    dtype = import_keras().backend.standardize_dtype(t.dtype)
    return int(np.prod(tuple(t.shape))) * itemsize(dtype)


class Upstream:
    """What the inference pass computed, by call, and the frontiers kept."""

    def __init__(self, keras, pure: bool):
        self.keras, self.ops = keras, keras.ops
        self.pure = pure  # every layer is one of Keras' own
        self.wanted: set[Key] | None = None  # cuts the masked passes asked for (later batches)
        self.reset()

    def reset(self) -> None:
        self.calls: dict[Key, _Call] = {}
        self.usable = False
        self._inputs: dict[int, Any] = {}  # the model's inputs: id -> tensor
        self._producer: dict[int, Key] = {}
        self._tick = 0
        self._last_use: dict[Key, int] = {}
        self._live: dict[Key, tuple[int, dict[int, Any]]] = {}
        self._dropped: dict[Key, int] = {}  # producers not held (budget): their last use
        self._frontiers: dict[Key, dict[int, Any]] = {}
        self._best: list[tuple[float, Key]] = []
        self._group_first: dict[str, Key] = {}
        self._group_cuts: set[Key] = set()  # kept for a group's pass
        self._budget = 0
        self._size_of: dict[int, int] = {}  # bytes of each inference output, by id
        self._named_in: dict[int, list[Key]] = {}  # id of a tensor: calls whose template has it
        self._gone = 0  # ids given to tensors let go (`forget`): negative, each its own

    def _tensors(self, structure) -> list:
        return [t for t in self.keras.tree.flatten(structure) if hasattr(t, "shape")]

    # ------------------------------------------------- the inference pass
    def begin(self, inputs, budget: int = 0) -> None:
        """`budget`: bytes the frontiers may hold while the pass goes, where
        it is known before the pass (`lockstep.py`); else set by `finished`."""
        self.reset()
        self._budget = budget
        self.usable = self.pure
        for t in self._tensors(inputs):
            self._producer[id(t)] = INPUT
            self._inputs[id(t)] = t

    def entered(self, key: Key, args, kwargs) -> None:
        if not self.usable:
            return
        if kwargs.get("training") or kwargs.get("mask") is not None:
            self.usable = False  # a leak into training mode, or masks: not followed
            return
        inputs = [self._producer.get(id(t)) for t in self._tensors((args, kwargs))]
        if None in inputs:
            self.usable = False  # made outside a layer (the model's own code, a cast)
            return
        self.calls[key] = _Call(self._tick, inputs)
        self._tick += 1

    def left(self, key: Key, out) -> None:
        call = self.calls.get(key) if self.usable else None
        if call is None:
            return
        call.end = self._tick
        self._tick += 1
        keras = self.keras
        call.template = keras.tree.map_structure(
            lambda t: (
                _Leaf(id(t), tuple(t.shape), keras.backend.standardize_dtype(t.dtype))
                if hasattr(t, "shape")
                else t
            ),
            out,
        )
        inner = call.end > call.start + 1  # layers were called inside it
        for t in self._tensors(out):
            self._named_in.setdefault(id(t), []).append(key)
            if id(t) in self._producer:
                continue  # a container's output is its last layer's
            if inner:  # made by the container's own code (Bidirectional's merge, an op):
                self.usable = False  # what it read of its inner layers is not followed
                return
            self._producer[id(t)] = key

    def finished(self, outputs) -> None:
        """After the inference pass: when each output is last used."""
        if not self.usable:
            return
        last: dict[Key, int] = {}
        for t in self._tensors(outputs):
            p = self._producer.get(id(t))
            if p is None:  # made outside a layer (an op on the outputs): not followed
                self.usable = False
                return
            last[p] = _NEVER
        for call in self.calls.values():
            for p in call.inputs:  # held until the call ends: a nested model spanning a cut
                last[p] = max(last.get(p, -1), call.end)
        self._last_use = last
        sizes = self._size_of
        for call in self.calls.values():
            for leaf in self.keras.tree.flatten(call.template):
                if isinstance(leaf, _Leaf):
                    sizes[leaf.id] = int(np.prod(leaf.shape)) * itemsize(leaf.dtype)
        self._budget = max(BUDGET_FLOOR, int(BUDGET_SHARE * sum(sizes.values())))
        self._producer.clear()

    def forget(self, t) -> None:
        """A tensor let go during the pass (`lockstep.py`): its id may be
        reused, so the templates naming it name no tensor from now on."""
        self._producer.pop(id(t), None)
        if any(id(t) in frontier for frontier in self._frontiers.values()):
            return  # held by a kept frontier: the id stays its own
        keys = self._named_in.pop(id(t), ())
        if not keys:
            return
        self._gone -= 1
        gone, old = self._gone, id(t)
        for key in keys:
            call = self.calls[key]
            call.template = self.keras.tree.map_structure(
                lambda v: replace(v, id=gone) if isinstance(v, _Leaf) and v.id == old else v,
                call.template,
            )

    # -------------------------------------------------- the training pass
    def reached(self, key: Key) -> None:
        """The training pass starts this call: outputs used before it are let go."""
        call = self.calls.get(key) if self.usable else None
        if call is None:
            return
        for p in [p for p, (last, _) in self._live.items() if last < call.start]:
            del self._live[p]
        for p in [p for p, last in self._dropped.items() if last < call.start]:
            del self._dropped[p]

    def passed(self, key: Key, stored) -> None:
        """The training pass finished this call: its inference output, popped
        from the store, is held while a later call uses it (making room by
        letting go of the weakest cuts kept so far)."""
        if not self.usable or stored is None or key not in self.calls or self.wanted == set():
            return  # nothing to hold for: no masked pass asked for a cut
        last = self._last_use.get(key, -1)
        if last <= self.calls[key].start:
            return
        leaves = {id(t): t for t in self._tensors(stored)}
        while self._best and self._held(leaves) > self._budget:
            self._let_go(self._best.pop())
        if self._held(leaves) > self._budget:
            self._dropped[key] = last
            return
        self._live[key] = (last, leaves)

    def _let_go(self, best: tuple[float, Key]) -> None:
        if best[1] not in self._group_cuts:
            self._frontiers.pop(best[1], None)

    def _held(self, extra: dict[int, Any] | None = None) -> int:
        seen: dict[int, Any] = {}
        for _, leaves in self._live.values():
            seen.update(leaves)
        for frontier in self._frontiers.values():
            seen.update(frontier)
        seen.update(extra or {})
        size = self._size_of
        return sum(size[i] if i in size else _nbytes(t) for i, t in seen.items())

    def frontier_now(self) -> dict[int, Any] | None:
        """The inference outputs held at this point of the training pass (call
        `reached` first); None when one of them was not held."""
        if not self.usable or self._dropped:
            return None
        out: dict[int, Any] = {}
        for _, leaves in self._live.values():
            out.update(leaves)
        return out

    def choosing(self) -> bool:
        """Cuts are chosen as the pass goes (first batch), not asked for."""
        return self.usable and self.wanted is None

    def wants(self, key: Key) -> bool:
        """A cut at this call may be kept: chosen as the pass goes, or asked for."""
        return self.usable and key[1] == 0 and (self.wanted is None or key in self.wanted)

    def keep(self, key: Key, frontier: dict[int, Any] | None) -> bool:
        """Keeps the frontier of a cut at `key`, within the memory budget."""
        if frontier is None or key in self._frontiers:
            return key in self._frontiers
        if self._held(frontier) > self._budget:
            return False
        self._frontiers[key] = frontier
        return True

    def offer(self, key: Key, group: str, score: float, frontier: dict[int, Any] | None) -> None:
        """A layer in training mode, with its own contribution: its cut is kept
        when it is its group's first (but for the first group: its cut is the
        model's first layer in training mode, with little before it), or among
        the largest contributions, the weakest let go first when memory is short."""
        if frontier is None:
            return
        if group not in self._group_first:
            first = not self._group_first
            self._group_first[group] = key
            if not first and self.keep(key, frontier):
                self._group_cuts.add(key)
        if score <= 0.0 or (len(self._best) >= KEEP_BEST and score <= self._best[-1][0]):
            return
        self._best.append((score, key))
        self._best.sort(reverse=True)
        self._frontiers.setdefault(key, frontier)
        while self._best and (len(self._best) > KEEP_BEST or self._held() > self._budget):
            self._let_go(self._best.pop())

    # ------------------------------------------------------ masked passes
    def cut_for(self, first_calls: list[Key]) -> tuple[Key, Cut | None]:
        """The cut of a masked pass whose layers in training mode are first
        called at `first_calls`: the earliest of them, and its frontier."""
        starts = [(self.calls[k].start, k) for k in first_calls if k in self.calls]
        if not self.usable or not starts or len(starts) != len(first_calls):
            return (INPUT, None)
        start, key = min(starts)
        frontier = self._frontiers.get(key)
        return key, (None if frontier is None else Cut(start, frontier))

    def stand_in(self, cut: Cut, key: Key):
        """What a call before the cut hands back: its inference output where
        a computed call uses it, else a one-sample tensor of its shape."""
        ops = self.ops

        def leaf(v):
            if not isinstance(v, _Leaf):
                return v
            real = cut.frontier.get(v.id, self._inputs.get(v.id))
            if real is not None:  # held, or a model input handed on (Identity, Dropout)
                return real
            shape = (1, *v.shape[1:])
            t = cut.by_shape.get((shape, v.dtype))
            if t is None:  # one a shape: only the calls skipped take them
                t = cut.by_shape[(shape, v.dtype)] = ops.zeros(shape, dtype=v.dtype)
                cut.stand_ins[id(t)] = t
            return t

        return self.keras.tree.map_structure(leaf, self.calls[key].template)

    def touches_stand_in(self, cut: Cut, args, kwargs) -> bool:
        return any(cut.stand_ins.get(id(t)) is t for t in self._tensors((args, kwargs)))


__all__ = ["Upstream", "Cut", "INPUT", "BUDGET_SHARE", "itemsize"]
