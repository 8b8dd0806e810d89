"""Keras 2's references between layers in Keras 3's terms: the calls of nested
models renumbered, tensors passed by keyword, and TF-op layers' arguments."""

from __future__ import annotations

import copy
from typing import Any

from .config import KERAS_TENSOR, is_node_ref, keras_tensor, layer_entries, sequential_layers, walk
from .ops import template

RNN_CLASSES = {
    "LSTM",
    "GRU",
    "SimpleRNN",
    "RNN",
    "Bidirectional",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "CuDNNLSTM",
    "CuDNNGRU",
}


def _tensors_in(value: Any, names: set[str]) -> tuple[Any, bool]:
    """A copy of `value` with every reference to a layer output turned into a
    Keras 3 serialized tensor, and whether there was one."""

    def is_ref(v: Any) -> bool:
        return is_node_ref(v) and v[0] in names

    if is_ref(value):
        return keras_tensor(value), True
    value = copy.deepcopy(value)
    found = False

    def done(v: Any) -> bool:
        """A reference becomes a tensor in its holder; neither is walked into again."""
        return is_ref(v) or (isinstance(v, dict) and v.get("class_name") == KERAS_TENSOR)

    for node in walk(value, prune=done):
        if done(node):
            continue
        for key, v in list(node.items()) if isinstance(node, dict) else list(enumerate(node)):
            if is_ref(v):
                node[key] = keras_tensor(v)
                found = True
    return value, found


def modernise_tensor_kwargs(entry: dict, names: set[str]) -> bool:
    """Keras 2 wrote a tensor passed by keyword (`mha(q, value=v)`, an LSTM's
    `initial_state`) as a reference inside the node's kwargs, which Keras 3's
    legacy reader hands to the layer as a plain list. Such nodes are rewritten
    in Keras 3's own node format, whose reader resolves tensors anywhere."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        return False
    changed = False
    for i, node in enumerate(nodes):
        if not (isinstance(node, list) and node and all(is_node_ref(r) for r in node)):
            continue
        kwargs = node[-1][3] if len(node[-1]) > 3 and isinstance(node[-1][3], dict) else {}
        rnn = entry.get("class_name") in RNN_CLASSES
        if rnn:
            # Keras 2 wrote initial_state=None, constants=None; Keras 3 has no `constants`
            empty = [k for k in ("initial_state", "constants") if k in kwargs and kwargs[k] is None]
            for ref in node:
                if len(ref) > 3 and isinstance(ref[3], dict):
                    for k in empty:
                        ref[3].pop(k, None)
            kwargs = {k: v for k, v in kwargs.items() if k not in empty}
        kwargs, has_tensor = _tensors_in(kwargs, names)
        if rnn and len(node) > 1 and "initial_state" not in kwargs:
            # Keras 2 folded an RNN's initial_state into its inputs: [x, h0, c0]
            kwargs["initial_state"] = [keras_tensor(r) for r in node[1:]]
            node, has_tensor = node[:1], True
        if not has_tensor:
            continue
        first = [keras_tensor(r) for r in node]
        args: Any = first[0] if len(first) == 1 else first
        nodes[i] = {"args": [args], "kwargs": kwargs}
        changed = True
    return changed


def rewrite_op_nodes(entry: dict, names: set[str]) -> None:
    """A Keras 2 TF-op layer's nodes in Keras 3's node format: the first
    argument (layer outputs, or a constant Keras 2 wrote as
    ["_CONSTANT_VALUE", -1, value] for `1.0 - x`), the tensors among the
    keyword arguments as a flat list, the constants in the layer's config."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        return
    rewritten: list[dict[str, Any]] = []
    for node in nodes:
        refs = [node] if node and isinstance(node[0], str) else list(node)
        kwargs = refs[-1][3] if len(refs[-1]) > 3 and isinstance(refs[-1][3], dict) else {}
        kwargs, _ = _tensors_in(kwargs, names)
        flat: list = []
        entry["config"]["call_kwargs"] = template(kwargs, flat)
        if refs[0][0] == "_CONSTANT_VALUE":
            entry["config"]["first_constant"] = [refs[0][2]]
            rewritten.append({"args": [flat], "kwargs": {}})
            continue
        tensors = [keras_tensor(r) for r in refs]
        first: Any = tensors[0] if len(tensors) == 1 else tensors
        rewritten.append({"args": [first], "kwargs": {"bngap_tensors": flat} if flat else {}})
    entry["inbound_nodes"] = rewritten


def _inner(cfg: Any) -> Any:
    return cfg.get("config") if isinstance(cfg, dict) else cfg


def nested_functionals(cfg: Any) -> set[str]:
    """Names of nested functional models: Keras 2 gave each a node of its own,
    so its first call is node 1, where Keras 3's legacy reader looks for node
    0 among a layer's inputs (it does subtract one for a model's outputs)."""
    found = set()
    for entry in layer_entries(_inner(cfg)):
        conf = entry["config"]
        if (
            entry.get("class_name") in ("Functional", "Model")
            and "input_layers" in conf
            and conf.get("name")
        ):
            found.add(conf["name"])
    return found


def self_built_sequentials(cfg: Any) -> set[str]:
    """Names of nested Sequential models that Keras 2 built when they were
    made (an InputLayer, or an input shape on the first layer): Keras 2 gave
    such a model a node of its own, so its first call is node 1, where Keras 3
    counts it as node 0."""
    found = set()
    for entry in layer_entries(_inner(cfg)):
        layers = sequential_layers(entry)
        if not layers:
            continue
        first = layers[0] if isinstance(layers[0], dict) else {}
        conf = first.get("config", {}) if isinstance(first.get("config"), dict) else {}
        declared = conf.get("batch_input_shape") or conf.get("batch_shape")
        if first.get("class_name") == "InputLayer" or declared:
            name = entry["config"].get("name")
            if name:
                found.add(name)
    return found


def shift_node_indices(cfg: Any, names: set[str], outputs_too: bool = True) -> int:
    """Counts Keras 2's node indices of the given nested models the way Keras 3 does."""

    def shifted(v: Any) -> bool:
        return is_node_ref(v) and v[0] in names and v[1] > 0

    skip = () if outputs_too else ("input_layers", "output_layers")
    n = 0
    for node in walk(cfg, prune=shifted, skip_keys=skip):
        if shifted(node):
            node[1] -= 1
            n += 1
    return n
