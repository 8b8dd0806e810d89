"""Reading a Keras 2 .h5 file's model config and walking it: the one walker
every repair uses, layer entries, and the `[layer, node, tensor]` references
that Keras 2 wrote for a layer's inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, one_line

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


def is_layer_entry(v: Any) -> bool:
    """Whether `v` is a layer's entry: {"class_name", "config": {...}, ...}."""
    return isinstance(v, dict) and "class_name" in v and isinstance(v.get("config"), dict)


def layer_entries(cfg: Any) -> Iterator[dict]:
    """Every dict in a model config that looks like a layer entry."""
    return (v for v in walk(cfg) if is_layer_entry(v))


def layer_names(cfg: Any) -> set[str]:
    """The names of every layer in a config, at any depth."""
    return {str(e["config"].get("name") or e.get("name") or "") for e in layer_entries(cfg)}


def sequential_layers(entry: dict) -> list | None:
    """The layer list of a Sequential config entry (both Keras 2 layouts)."""
    if entry.get("class_name") != "Sequential":
        return None
    conf = entry.get("config")
    if isinstance(conf, list):  # Keras <= 2.2: the config is the layer list
        return conf
    if isinstance(conf, dict) and isinstance(conf.get("layers"), list):
        return conf["layers"]
    return None


def is_node_ref(v: Any) -> bool:
    """[layer_name, node_index, tensor_index, ...]: how Keras 2 configs point at a tensor."""
    return (
        isinstance(v, list)
        and len(v) >= 3
        and isinstance(v[0], str)
        and isinstance(v[1], int)
        and isinstance(v[2], int)
    )


def keras_tensor(ref: list) -> dict:
    """A Keras 3 serialized tensor standing for the output `ref` points at
    (shape and dtype are placeholders: the loader swaps in the real tensor)."""
    return {
        "class_name": KERAS_TENSOR,
        "config": {"shape": [], "dtype": "float32", "keras_history": list(ref[:3])},
    }
