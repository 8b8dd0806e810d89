"""BatchNormalization statistics held still during a pass: a training-mode
call moves `moving_mean`/`moving_variance`, and bngap undoes that at once,
so a layer called twice in one pass sees the same statistics both times."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from .closedform import Moving
from .layertree import LayerNode
from .vocabulary import Kind


class BatchNormState:
    """The BN layers' statistics and the values to put back (the guard's snapshot)."""

    def __init__(self, nodes: list[LayerNode], guard: Any, ops: Any):
        self.nodes, self.guard, self.ops = nodes, guard, ops
        self._cache: dict[int, list] | None = None
        self._moving: dict[int, Moving] = {}
        self._index: dict[int, int] | None = None  # id(variable) -> its place in the guard

    def _where(self) -> dict[int, int]:
        """Where each of the guard's variables is in its list (which never changes)."""
        if self._index is None:
            self._index = {id(v): i for i, v in enumerate(self.guard.variables)}
        return self._index

    def forget(self) -> None:
        """The snapshot changed (`fix` committed new statistics): look it up again."""
        self._cache = None
        self._moving = {}

    def moving(self, node: LayerNode) -> Moving:
        """A BN layer's parameters as every pass uses them (the snapshot the
        guard restores), in float64, read once until `forget`."""
        got = self._moving.get(node.index)
        if got is None:
            layer = node.layer
            got = Moving(
                epsilon=float(np.float32(layer.epsilon)),  # added to a float32 variance
                gamma=self._value(layer.gamma) if layer.scale else None,
                beta=self._value(layer.beta) if layer.center else None,
                mean=self._value(layer.moving_mean),
                variance=self._value(layer.moving_variance),
            )
            self._moving[node.index] = got
        return got

    def _value(self, v) -> np.ndarray:
        """A variable's saved value (read now if the guard holds none), in float64."""
        i = self._where().get(id(v))
        return np.asarray(backend.to_numpy(v if i is None else self.guard.saved[i]), np.float64)

    def variables(self, node: LayerNode) -> list:
        """(variable, saved value) of a BN layer's moving statistics."""
        if self._cache is None:
            cache: dict[int, list] = {}
            where = self._where()
            for n in self.nodes:
                if n.kind is Kind.BATCHNORM:
                    found = (where.get(id(v)) for v in n.layer.non_trainable_variables)
                    cache[n.index] = [
                        (self.guard.variables[i], self.guard.saved[i])
                        for i in found
                        if i is not None
                    ]
            self._cache = cache
        return self._cache.get(node.index, [])

    def indices(self) -> frozenset[int]:
        """Where the BN layers' statistics are in the guard's variables."""
        where = self._where()
        return frozenset(
            where[id(v)]
            for n in self.nodes
            if n.kind is Kind.BATCHNORM
            for v, _ in self.variables(n)
        )

    def restore(self, node: LayerNode) -> None:
        """Puts the saved statistics back right after an eager call."""
        for v, saved in self.variables(node):
            v.assign(saved)

    def keep(self, nodes: list[LayerNode]) -> list[tuple[Any, Any]]:
        """The current values of these layers' statistics, read now (a copy:
        `ops.convert_to_tensor` of a variable is the variable itself); works
        inside a traced graph too, where saved numpy values would be baked
        in as constants and go stale when `fix` commits new ones."""
        return [(v, self.ops.copy(v)) for n in nodes for v, _ in self.variables(n)]

    @staticmethod
    def put_back(kept: list[tuple[Any, Any]]) -> None:
        for v, before in kept:
            v.assign(before)


def batchnorm_below(node: LayerNode) -> list[LayerNode]:
    """The BN layers inside a container layer (none for a leaf)."""
    out: list[LayerNode] = []
    todo = list(node.children)
    while todo:
        n = todo.pop()
        if n.kind is Kind.BATCHNORM:
            out.append(n)
        todo.extend(n.children)
    return out
