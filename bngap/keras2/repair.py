"""Keras 2 model configs edited in memory so that Keras 3 reads them as Keras 2 ran them."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, one_line
from .ops import OP_CLASSES, template

# Constructor arguments that Keras 2 wrote into layer configs and Keras 3
# rejects; they carry no information Keras 3 needs.
LEGACY_DROPPED_ARGS = {"time_major"}
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
KERAS2_POLICIES = {
    "Policy",
    "PolicyV1",
}  # Keras 3 writes "DTypePolicy" and reads it itself
KERAS_TENSOR = "__keras_tensor__"  # the class name of a serialized tensor in Keras 3 configs


def read_config(p: Path) -> Any:
    """The model config of a legacy .h5 file, parsed."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as e:
        raise ModelLoadError(
            f"{p} cannot be read as HDF5 (truncated or corrupted?): {one_line(e, 200)}"
        ) from None
    if raw is None:
        raise ModelLoadError(
            f"{p} holds no model config: a weights-only file, or not a Keras model at all; save "
            "the whole model with model.save('model.keras')"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


def written_by_keras2(p: Path) -> bool:
    """Whether a legacy .h5 file was written by Keras 2 (or older): Keras 3's
    own legacy writer records keras_version 3.x and needs no repair of its
    node numbering."""
    import h5py

    with h5py.File(p, "r") as f:
        version = f.attrs.get("keras_version", b"")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return not str(version).startswith("3")


def walk(
    cfg: Any,
    *,
    prune: Callable[[Any], bool] | None = None,
    skip_keys: Collection[str] = (),
) -> Iterator[Any]:
    """Every dict and list in a config, each before what it holds.

    What a node holds is read after the caller has seen it, so a caller may
    edit a node and have the edit walked. Nothing under a node for which
    `prune(node)` is true is visited, nor any dict value under `skip_keys`.
    """
    if not isinstance(cfg, (dict, list)):
        return
    yield cfg
    if prune is not None and prune(cfg):
        return
    if isinstance(cfg, dict):
        children = [v for k, v in cfg.items() if k not in skip_keys]
    else:
        children = list(cfg)
    for child in children:
        yield from walk(child, prune=prune, skip_keys=skip_keys)


def _is_layer_entry(v: Any) -> bool:
    return isinstance(v, dict) and "class_name" in v and isinstance(v.get("config"), dict)


def layer_entries(cfg: Any) -> Iterator[dict]:
    """Every dict in a model config that looks like a layer entry."""
    return (v for v in walk(cfg) if _is_layer_entry(v))


def _layer_names(cfg: Any) -> set[str]:
    return {str(e["config"].get("name") or e.get("name") or "") for e in layer_entries(cfg)}


def _sequential_layers(entry: dict) -> list | None:
    """The layer list of a Sequential config entry (both Keras 2 layouts)."""
    if entry.get("class_name") != "Sequential":
        return None
    conf = entry.get("config")
    if isinstance(conf, list):  # Keras <= 2.2: the config is the layer list
        return conf
    if isinstance(conf, dict) and isinstance(conf.get("layers"), list):
        return conf["layers"]
    return None


def _some(names: list[str]) -> str:
    """'a', 'b', 'c' ...: the first three names, quoted."""
    return ", ".join(repr(n) for n in names[:3]) + (" ..." if len(names) > 3 else "")


def _s(n: int) -> str:
    return "s" if n != 1 else ""


def _modernise_sequential_layout(cfg: Any, changes: list[str]) -> None:
    """Keras <= 2.2 stored a Sequential's config as the bare layer list;
    Keras 3 expects {"name", "layers"}."""
    for node in walk(cfg):
        if (
            isinstance(node, dict)
            and node.get("class_name") == "Sequential"
            and isinstance(node.get("config"), list)
        ):
            node["config"] = {
                "name": node.get("name") or "sequential",
                "layers": node["config"],
            }
            changes.append("converted an old Keras 2 Sequential layout (a bare layer list)")


def _is_node_ref(v: Any) -> bool:
    """[layer_name, node_index, tensor_index, ...]: how Keras 2 configs point at a tensor."""
    return (
        isinstance(v, list)
        and len(v) >= 3
        and isinstance(v[0], str)
        and isinstance(v[1], int)
        and isinstance(v[2], int)
    )


def _rename_slashed_layers(cfg: Any, changes: list[str]) -> None:
    """Keras 2 allowed '/' in layer names (DenseNet's 'conv1/conv', MobileNetV3's
    'Conv/BatchNorm'); Keras 3 refuses them. Weights are matched by order, not
    by name, so renaming is safe."""
    names = _layer_names(cfg)
    renamed: dict[str, str] = {}
    for name in sorted(n for n in names if "/" in n):
        new = base = name.replace("/", "_")
        k = 1
        while new in names or new in renamed.values():
            new, k = f"{base}_{k}", k + 1
        renamed[name] = new
    if not renamed:
        return
    for node in walk(cfg):
        if _is_layer_entry(node):
            for holder in (node, node["config"]):
                if holder.get("name") in renamed:
                    holder["name"] = renamed[holder["name"]]
        elif _is_node_ref(node) and node[0] in renamed:
            node[0] = renamed[node[0]]
    shown = ", ".join(f"{a} -> {b}" for a, b in list(renamed.items())[:3])
    more = f" and {len(renamed) - 3} more" if len(renamed) > 3 else ""
    whose = "s whose names contain" if len(renamed) != 1 else " whose name contains"
    changes.append(
        f"renamed {len(renamed)} layer{whose} '/', which Keras 3 refuses ({shown}{more})"
    )


def _unwrap_single_io(entry: dict) -> bool:
    """Keras 2 wrote a single input or output as a one-element list; Keras 3
    then returns a list, and a nested model feeds it on as two tensors."""
    conf = entry.get("config")
    changed = False
    if isinstance(conf, dict) and "layers" in conf:
        for key in ("input_layers", "output_layers"):
            v = conf.get(key)
            if isinstance(v, list) and len(v) == 1 and _is_node_ref(v[0]):
                conf[key] = v[0]
                changed = True
    return changed


def drop_refused_arguments(cfg: Any, class_name: str, keys: list[str]) -> dict[str, list]:
    """Drops the constructor arguments Keras 3 refused from every layer of a
    class; returns each dropped argument's distinct values."""
    dropped: dict[str, list] = {}
    for layer in layer_entries(cfg):
        if layer["class_name"] == class_name:
            for k in keys:
                if k in layer["config"]:
                    v = layer["config"].pop(k)
                    if v not in dropped.setdefault(k, []):
                        dropped[k].append(v)
    return dropped


def describe_dropped(dropped: dict[str, list]) -> str:
    """'groups'=1, 'kernel_initializer': the values a reader can judge."""
    parts = []
    for k, values in dropped.items():
        plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
        if plain and len(values) <= 2:
            parts.append(f"{k!r}={'/'.join(repr(v) for v in values)}")
        else:
            parts.append(repr(k))
    return ", ".join(parts)


_REFUSED_ARGS = re.compile(r"Unrecognized keyword arguments passed to (\w+): \{")


def refused_arguments(message: str) -> tuple[str, list[str]] | None:
    """(class name, argument names) from Keras 3's "Unrecognized keyword
    arguments passed to X: {...}": the dict's own keys, not nested ones."""
    m = _REFUSED_ARGS.search(message)
    if not m:
        return None
    body = message[m.end() :]
    keys, depth, i = [], 1, 0
    while i < len(body) and depth:
        ch = body[i]
        if ch in "'\"":
            end = body.find(ch, i + 1)
            if end < 0:
                break
            if depth == 1 and body[end + 1 : end + 2] == ":":
                keys.append(body[i + 1 : end])
            i = end
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        i += 1
    return (m.group(1), keys) if keys else None


def _keras_tensor(ref: list) -> dict:
    """A Keras 3 serialized tensor standing for the output `ref` points at
    (shape and dtype are placeholders: the loader swaps in the real tensor)."""
    return {
        "class_name": KERAS_TENSOR,
        "config": {"shape": [], "dtype": "float32", "keras_history": list(ref[:3])},
    }


def _tensors_in(value: Any, names: set[str]) -> tuple[Any, bool]:
    """A copy of `value` with every reference to a layer output turned into a
    Keras 3 serialized tensor, and whether there was one."""

    def is_ref(v: Any) -> bool:
        return _is_node_ref(v) and v[0] in names

    if is_ref(value):
        return _keras_tensor(value), True
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
                node[key] = _keras_tensor(v)
                found = True
    return value, found


def _modernise_tensor_kwargs(entry: dict, names: set[str]) -> bool:
    """Keras 2 wrote a tensor passed by keyword (`mha(q, value=v)`, an LSTM's
    `initial_state`) as a reference inside the node's kwargs, which Keras 3's
    legacy reader hands to the layer as a plain list. Such nodes are rewritten
    in Keras 3's own node format, whose reader resolves tensors anywhere."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        return False
    changed = False
    for i, node in enumerate(nodes):
        if not (isinstance(node, list) and node and all(_is_node_ref(r) for r in node)):
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
            kwargs["initial_state"] = [_keras_tensor(r) for r in node[1:]]
            node, has_tensor = node[:1], True
        if not has_tensor:
            continue
        first = [_keras_tensor(r) for r in node]
        args: Any = first[0] if len(first) == 1 else first
        nodes[i] = {"args": [args], "kwargs": kwargs}
        changed = True
    return changed


def _rewrite_op_nodes(entry: dict, names: set[str]) -> None:
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
        tensors = [_keras_tensor(r) for r in refs]
        first: Any = tensors[0] if len(tensors) == 1 else tensors
        rewritten.append({"args": [first], "kwargs": {"bngap_tensors": flat} if flat else {}})
    entry["inbound_nodes"] = rewritten


def _policy_name(dtype: Any) -> str | None:
    """'mixed_float16' from Keras 2's serialized dtype policy
    {"class_name": "Policy", "config": {"name": "mixed_float16"}}."""
    if (
        isinstance(dtype, dict)
        and dtype.get("class_name") in KERAS2_POLICIES
        and isinstance(dtype.get("config"), dict)
        and isinstance(dtype["config"].get("name"), str)
    ):
        name: str = dtype["config"]["name"]
        return "float32" if name == "_infer" else name
    return None


def _inner(cfg: Any) -> Any:
    return cfg.get("config") if isinstance(cfg, dict) else cfg


def _nested_functionals(cfg: Any) -> set[str]:
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


def _self_built_sequentials(cfg: Any) -> set[str]:
    """Names of nested Sequential models that Keras 2 built when they were
    made (an InputLayer, or an input shape on the first layer): Keras 2 gave
    such a model a node of its own, so its first call is node 1, where Keras 3
    counts it as node 0."""
    found = set()
    for entry in layer_entries(_inner(cfg)):
        layers = _sequential_layers(entry)
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


def _shift_node_indices(cfg: Any, names: set[str], outputs_too: bool = True) -> int:
    """Counts Keras 2's node indices of the given nested models the way Keras 3 does."""

    def shifted(v: Any) -> bool:
        return _is_node_ref(v) and v[0] in names and v[1] > 0

    skip = () if outputs_too else ("input_layers", "output_layers")
    n = 0
    for node in walk(cfg, prune=shifted, skip_keys=skip):
        if shifted(node):
            node[1] -= 1
            n += 1
    return n


def _renumber_nested_calls(cfg: Any, changes: list[str]) -> None:
    """Keras 2 counted a nested model's calls from 1 where it had built the
    model itself; Keras 3 counts them from 0."""
    sequentials, functionals = _self_built_sequentials(cfg), _nested_functionals(cfg)
    inner = cfg.get("config")
    shifted = [n for n in sorted(sequentials) if _shift_node_indices(inner, {n})]
    shifted += [
        n for n in sorted(functionals) if _shift_node_indices(inner, {n}, outputs_too=False)
    ]
    if shifted:
        changes.append(
            f"renumbered the calls of nested model{_s(len(shifted))} {_some(shifted)} "
            "as Keras 3 counts them"
        )


def _declare_sequential_input(entry: dict, changes: list[str]) -> None:
    """Older Keras 2 declared a Sequential's input on its first layer only;
    Keras 3 then adds a dimension. An explicit input fixes it."""
    layers = _sequential_layers(entry)
    if not layers or layers[0].get("class_name") == "InputLayer":
        return
    first = layers[0].get("config", {})
    shape = first.get("batch_input_shape")
    if not shape:
        return
    layers.insert(
        0,
        {
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": shape,
                "dtype": first.get("dtype", "float32"),
                "sparse": False,
                "name": f"{first.get('name', 'input')}_input",
            },
        },
    )
    first.pop("batch_input_shape", None)
    changes.append(
        f"declared the Sequential's input {tuple(shape)} explicitly "
        f"(Keras 2 kept it on layer {first.get('name', '')!r})"
    )


def repair_config(cfg: Any, keras2: bool = True) -> list[str]:
    """Edits a Keras 2 model config in place so that Keras 3 accepts it.

    Args:
        cfg: the parsed model config (edited in place).
        keras2: whether Keras 2 wrote it; Keras 3's own .h5 files number
            nodes as Keras 3 reads them.

    Returns:
        What was changed, in words, for the report's notes.
    """
    changes: list[str] = []
    _modernise_sequential_layout(cfg, changes)
    _rename_slashed_layers(cfg, changes)
    if keras2:
        _renumber_nested_calls(cfg, changes)
    policies = 0
    unwrapped: list[str] = []  # nested models whose single input/output was a list
    ops: list[str] = []
    keyword_tensors: list[str] = []
    names = _layer_names(cfg)
    for layer in layer_entries(cfg):
        conf = layer["config"]
        policy = _policy_name(conf.get("dtype"))
        if policy:
            conf["dtype"] = policy
            policies += 1
        if layer["class_name"] in OP_CLASSES and isinstance(conf.get("function"), str):
            _rewrite_op_nodes(layer, names)
            ops.append(conf["function"])
        elif _modernise_tensor_kwargs(layer, names):
            keyword_tensors.append(str(conf.get("name", "")))
        for key in LEGACY_DROPPED_ARGS & set(conf):
            conf.pop(key)
            changes.append(
                f"dropped Keras 2 argument {key!r} of {layer['class_name']} "
                f"{conf.get('name', '')!r}"
            )
        # Keras 3 converts a one-element axis list only on the outermost config
        axis = conf.get("axis")
        if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
            conf["axis"] = axis[0]
        if _unwrap_single_io(layer) and layer is not cfg:
            unwrapped.append(str(conf.get("name", "")))
        _declare_sequential_input(layer, changes)
    _unwrap_single_io(cfg)
    if policies:
        changes.append(
            f"read Keras 2's dtype policies of {policies} layer{_s(policies)} "
            "by name (e.g. mixed_float16)"
        )
    if keyword_tensors:
        takes = "takes" if len(keyword_tensors) == 1 else "take"
        changes.append(
            f"passed the tensors that {_some(keyword_tensors)} {takes} by keyword as tensors "
            "(Keras 3 reads them as lists from a Keras 2 file)"
        )
    if ops:
        kinds = sorted(set(ops))
        changes.append(
            f"ran {len(ops)} Keras 2 TF-op layer{_s(len(ops))} "
            f"({', '.join('tf.' + k for k in kinds[:4])}{' ...' if len(kinds) > 4 else ''}) "
            "with bngap's stand-in"
        )
    if unwrapped:
        # The top level is repaired silently: only a nested model's list
        # output changes behaviour (it breaks the layer after it).
        changes.append(
            f"read the single input/output of nested model{_s(len(unwrapped))} "
            f"{_some(unwrapped)} as Keras 2 did (not as one-element lists)"
        )
    return changes


def first_batch_shape(cfg: Any) -> tuple | None:
    """The batch_input_shape a legacy Sequential declared on its first layer."""
    if cfg.get("class_name") != "Sequential":
        return None
    layers = cfg.get("config", {})
    layers = layers.get("layers", layers) if isinstance(layers, dict) else layers
    for layer in layers or []:
        conf = layer.get("config", {})
        shape = conf.get("batch_input_shape") or conf.get("batch_shape")
        if shape:
            return tuple(shape)
    return None


def repair_sequential_input(
    model: Any, declared: tuple | None, keras: Any, notes: list[str]
) -> Any:
    """Rebuilds a legacy Sequential whose input gained an extra leading
    dimension while loading (Keras 2 `batch_input_shape` quirk)."""
    if declared is None or not isinstance(model, keras.Sequential):
        return model
    try:
        loaded = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, ValueError):
        return model
    if len(loaded) == len(declared) + 1 and tuple(loaded[1:]) == tuple(declared):
        inputs = keras.Input(shape=tuple(declared[1:]), batch_size=declared[0])
        fixed = keras.Sequential([inputs, *model.layers], name=model.name)
        notes.append(
            f"repaired input shape: the file declares {tuple(declared)}, Keras 3 "
            f"loaded {loaded}; rebuilt the Sequential on the declared input"
        )
        return fixed
    return model
