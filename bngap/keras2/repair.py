"""Keras 2 model configs edited in memory so that Keras 3 reads them as Keras 2 ran them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .config import is_layer_entry, is_node_ref, layer_entries, layer_names, sequential_layers, walk
from .nodes import (
    modernise_tensor_kwargs,
    nested_functionals,
    rewrite_op_nodes,
    self_built_sequentials,
    shift_node_indices,
)
from .ops import OP_CLASSES

# Constructor arguments that Keras 2 wrote into layer configs and Keras 3
# rejects; they carry no information Keras 3 needs.
LEGACY_DROPPED_ARGS = {"time_major"}

KERAS2_POLICIES = {
    "Policy",
    "PolicyV1",
}  # Keras 3 writes "DTypePolicy" and reads it itself


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


def _rename_slashed_layers(cfg: Any, changes: list[str]) -> None:
    """Keras 2 allowed '/' in layer names (DenseNet's 'conv1/conv', MobileNetV3's
    'Conv/BatchNorm'); Keras 3 refuses them. Weights are matched by order, not
    by name, so renaming is safe."""
    names = layer_names(cfg)
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
        if is_layer_entry(node):
            for holder in (node, node["config"]):
                if holder.get("name") in renamed:
                    holder["name"] = renamed[holder["name"]]
        elif is_node_ref(node) and node[0] in renamed:
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
            if isinstance(v, list) and len(v) == 1 and is_node_ref(v[0]):
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


def _renumber_nested_calls(cfg: Any, changes: list[str]) -> None:
    """Keras 2 counted a nested model's calls from 1 where it had built the
    model itself; Keras 3 counts them from 0."""
    sequentials, functionals = self_built_sequentials(cfg), nested_functionals(cfg)
    inner = cfg.get("config")
    shifted = [n for n in sorted(sequentials) if shift_node_indices(inner, {n})]
    shifted += [n for n in sorted(functionals) if shift_node_indices(inner, {n}, outputs_too=False)]
    if shifted:
        changes.append(
            f"renumbered the calls of nested model{_s(len(shifted))} {_some(shifted)} "
            "as Keras 3 counts them"
        )


def _declare_sequential_input(entry: dict, changes: list[str]) -> None:
    """Older Keras 2 declared a Sequential's input on its first layer only;
    Keras 3 then adds a dimension. An explicit input fixes it."""
    layers = sequential_layers(entry)
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


@dataclass
class _LayerRepairs:
    """What the per-layer repairs did, for the notes."""

    policies: int = 0
    unwrapped: list[str] = field(default_factory=list)  # nested models' single input/output
    ops: list[str] = field(default_factory=list)  # TF functions of TF-op layers
    keyword_tensors: list[str] = field(default_factory=list)  # layers given tensors by keyword


def _repair_layers(cfg: Any, changes: list[str]) -> _LayerRepairs:
    """The repairs of one layer entry at a time, at every depth."""
    done = _LayerRepairs()
    names = layer_names(cfg)
    for layer in layer_entries(cfg):
        conf = layer["config"]
        policy = _policy_name(conf.get("dtype"))
        if policy:
            conf["dtype"] = policy
            done.policies += 1
        if layer["class_name"] in OP_CLASSES and isinstance(conf.get("function"), str):
            rewrite_op_nodes(layer, names)
            done.ops.append(conf["function"])
        elif modernise_tensor_kwargs(layer, names):
            done.keyword_tensors.append(str(conf.get("name", "")))
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
            done.unwrapped.append(str(conf.get("name", "")))
        _declare_sequential_input(layer, changes)
    return done


def _describe(done: _LayerRepairs) -> list[str]:
    """The notes on the per-layer repairs that are counted, not listed one by one."""
    notes = []
    if done.policies:
        notes.append(
            f"read Keras 2's dtype policies of {done.policies} layer{_s(done.policies)} "
            "by name (e.g. mixed_float16)"
        )
    if done.keyword_tensors:
        takes = "takes" if len(done.keyword_tensors) == 1 else "take"
        notes.append(
            f"passed the tensors that {_some(done.keyword_tensors)} {takes} by keyword as "
            "tensors (Keras 3 reads them as lists from a Keras 2 file)"
        )
    if done.ops:
        kinds = sorted(set(done.ops))
        notes.append(
            f"ran {len(done.ops)} Keras 2 TF-op layer{_s(len(done.ops))} "
            f"({', '.join('tf.' + k for k in kinds[:4])}{' ...' if len(kinds) > 4 else ''}) "
            "with bngap's stand-in"
        )
    if done.unwrapped:
        # The top level is repaired silently: only a nested model's list
        # output changes behaviour (it breaks the layer after it).
        notes.append(
            f"read the single input/output of nested model{_s(len(done.unwrapped))} "
            f"{_some(done.unwrapped)} as Keras 2 did (not as one-element lists)"
        )
    return notes


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
    done = _repair_layers(cfg, changes)
    _unwrap_single_io(cfg)
    return changes + _describe(done)


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
