"""How often a pass hands each layer output on, counted from Keras' graphs
(`bngap/twinflow.py`): the counts equal the data flow a pass records by
identity, and graphs it does not follow get None."""

from __future__ import annotations

import numpy as np

from bngap.layertree import build_tree
from bngap.probe import Probe
from bngap.twinflow import NEVER, twin_uses


def _runtime_uses(keras, model, nodes, x) -> dict:
    """How often the classic inference pass handed each call's output to a
    layer call, from the data flow `upstream` recorded by identity."""
    with Probe(model, nodes, keras) as probe:
        probe.eval_pass([x])
        counts: dict = {}
        for call in probe.upstream.calls.values():
            for producer in call.inputs:
                counts[producer] = counts.get(producer, 0) + 1
    return counts


def _nested(keras):
    """One input: a nested Sequential, a nested Functional, a skip and a
    tensor concatenated with itself (no layer handing its input back as it
    came, which the data flow by identity gives to the layer before it)."""
    L = keras.layers
    keras.utils.set_random_seed(6)
    inp = keras.Input((6, 6, 3))
    h = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inp))
    seq = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(4, 1), L.ReLU()])
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, L.Add()([inner_in, L.Conv2D(4, 1)(inner_in)]))
    t = L.ReLU()(inner(L.Add()([h, seq(h)])))
    out = L.Dense(2)(L.Flatten()(L.Concatenate()([t, h, t])))
    return keras.Model(inp, out)


def test_twin_uses_match_the_data_flow_of_a_pass(keras):
    model = _nested(keras)
    nodes = build_tree(model, keras)
    uses = twin_uses(model, nodes, keras)
    assert uses is not None
    x = np.random.default_rng(2).normal(0, 1, (4, 6, 6, 3)).astype("float32")
    counted = _runtime_uses(keras, model, nodes, x)
    assert sum(1 for n in uses.values() if n == NEVER) == 1  # the output
    assert max(uses.values(), key=lambda n: n if n != NEVER else -1) >= 3  # h: add, seq, concat
    for key, n in uses.items():
        if n != NEVER:
            assert counted.get(key, 0) == n, nodes[key[0]].path


def test_twin_uses_none_where_the_graph_is_not_followed(keras):
    L = keras.layers
    inp = keras.Input((4,))
    shared = L.Dense(4)
    two_calls = keras.Model(inp, shared(shared(inp)))
    with_op = keras.Model(inp, L.Dense(2)(keras.ops.add(L.Dense(4)(inp), 1.0)))
    a, b = keras.Input((4,)), keras.Input((4,))
    pair = keras.Model([a, b], L.Add()([a, b]))
    nested_pair = keras.Model([a, b], L.Dense(1)(pair([a, b])))
    for model in (two_calls, with_op, nested_pair):
        assert twin_uses(model, build_tree(model, keras), keras) is None, model.name
    plain = keras.Model(inp, L.Dense(2)(L.Dense(4)(inp)))
    assert twin_uses(plain, build_tree(plain, keras), keras) is not None
