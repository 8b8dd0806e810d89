"""How often a pass hands each layer output on, read from Keras' graphs.

The lockstep pass (`lockstep.py`) computes each layer's inference output
beside its training call and lets go of it after its last use. A Keras 3
Functional holds every tensor of a pass until the pass ends, so that is the
only place the last use is known early: the graph itself. This module counts,
for every output of every layer, how many times a pass gives that tensor to
a layer call (a nested model's call and its own first layers both count).

Only models whose every container is a Functional (a built Sequential's
included), whose graphs call nothing but their layers, each layer once, and
whose nested models take one input are counted; any other gets None.
"""

from __future__ import annotations

from typing import Any

from .layertree import LayerNode

Key = tuple[int, int]  # (node index, flat output index)
NEVER = 1 << 60  # uses of a model output: held to the end of the pass


class _NotCounted(Exception):
    """The model's graphs are not of the shape counted here."""


def _functional(layer: Any, keras: Any):
    """The Functional graph a container runs, or None where there is none."""
    from keras.src.models.functional import Functional

    if isinstance(layer, Functional):
        return layer
    if isinstance(layer, keras.Sequential):
        return getattr(layer, "_functional", None)
    return None


def _graph_nodes(fn) -> list:
    """The graph's calls in the order `_run_through_graph` makes them."""
    out: list = []
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        out.extend(n for n in fn._nodes_by_depth[depth] if n.operation and not n.is_input)
    return out


def twin_uses(model: Any, nodes: list[LayerNode], keras: Any) -> dict[Key, int] | None:
    """{(node index, flat output index): times a pass hands that output to a
    layer call}, NEVER for the model's outputs; None where the model is not
    of the shape this counts (see the module's doc)."""
    by_layer = {id(n.layer): n for n in nodes}
    groups: dict[int, Key | None] = {}  # id of a KerasTensor -> the output it is at run time
    uses: dict[Key, int] = {}
    seen: set[int] = set()

    def walk(fn) -> None:
        for gnode in _graph_nodes(fn):
            layer = gnode.operation
            node = by_layer.get(id(layer))
            if node is None or id(layer) in seen:
                raise _NotCounted  # an op that is no layer of the tree, or a shared layer
            seen.add(id(layer))
            args = gnode.arguments.keras_tensors
            for kt in args:
                if id(kt) not in groups:
                    raise _NotCounted
                g = groups[id(kt)]
                if g is not None:
                    uses[g] = uses.get(g, 0) + 1
            if node.children:
                inner = _functional(layer, keras)
                if inner is None or len(args) != 1 or len(inner.inputs) != 1:
                    raise _NotCounted
                groups[id(inner.inputs[0])] = groups[id(args[0])]
                walk(inner)
                if len(inner.outputs) != len(gnode.outputs):
                    raise _NotCounted
                for kt, inner_kt in zip(gnode.outputs, inner.outputs):
                    groups[id(kt)] = groups[id(inner_kt)]
            else:
                for i, kt in enumerate(gnode.outputs):
                    groups[id(kt)] = (node.index, i)
                    uses.setdefault((node.index, i), 0)

    top = _functional(model, keras)
    if top is None:
        return None
    for kt in top.inputs:
        groups[id(kt)] = None  # the model's inputs: the caller holds them
    try:
        walk(top)
    except _NotCounted:
        return None
    if len(seen) != len(nodes):
        return None  # a layer the graphs do not call (a Sequential's own loop, an RNN cell)
    for kt in top.outputs:
        g = groups.get(id(kt))
        if g is not None:
            uses[g] = NEVER
    return uses


__all__ = ["twin_uses", "NEVER"]
