"""A Keras 2 .h5 file loaded through a repaired copy of its config; the file is never written.

What Keras 3 or safe mode cannot run is refused before Keras tries.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .config import layer_entries, read_config, written_by_keras2
from .ops import OP_CLASSES, UnsafeOpError, resolve
from .repair import (
    describe_dropped,
    drop_refused_arguments,
    first_batch_shape,
    refused_arguments,
    repair_config,
    repair_sequential_input,
)

# How many layer classes may have arguments dropped on Keras 3's word.
MAX_REFUSED_CLASSES = 12


def _refuse_unsafe_op_nodes(cfg: Any, p: Path) -> None:
    """Keras 2 wrote a TF-op layer's inputs as [layer, node, tensor]
    references; anything else (a dict node can carry any object as the first
    argument) is not from Keras 2, and not run in safe mode."""
    for layer in layer_entries(cfg):
        nodes = layer.get("inbound_nodes") if layer["class_name"] in OP_CLASSES else None
        if nodes and not all(isinstance(n, list) for n in nodes):
            raise ModelLoadError(
                f"{p}: layer {layer['config'].get('name', '')!r}: a TF-op layer whose inputs are "
                "not references to other layers, which safe mode does not run; pass --unsafe if "
                "you trust the file"
            )


def _refuse_unrunnable(cfg: Any, p: Path, unsafe: bool) -> None:
    """What Keras 3 (or safe mode) cannot run, said before Keras tries."""
    for layer in layer_entries(cfg):
        conf = layer["config"]
        axis = conf.get("axis")
        if layer["class_name"] == "BatchNormalization" and isinstance(axis, list) and len(axis) > 1:
            raise ModelLoadError(
                f"{p}: layer {conf.get('name', '')!r} is a BatchNormalization over several "
                f"axes {axis}, which Keras 2 allowed and Keras 3 does not; bngap cannot run it"
            )
        if layer["class_name"] in OP_CLASSES and isinstance(conf.get("function"), str):
            try:
                resolve(conf["function"], unsafe=unsafe)
            except UnsafeOpError as e:
                raise ModelLoadError(f"{p}: layer {conf.get('name', '')!r}: {e}") from None


def load_legacy(p: Path, keras: Any, kwargs: dict, notes: list[str]) -> Any:
    """Loads a legacy .h5 file through a repaired copy of its config (the file
    itself is never written)."""
    cfg = read_config(p)
    unsafe = not kwargs.get("safe_mode", True)
    if not unsafe:
        _refuse_unsafe_op_nodes(cfg, p)
    original = json.dumps(cfg)
    changes = repair_config(cfg, keras2=written_by_keras2(p))
    _refuse_unrunnable(cfg, p, unsafe)
    source = p
    tmpdir = None
    try:
        for _ in range(MAX_REFUSED_CLASSES + 1):
            if json.dumps(cfg) != original:
                import h5py

                if tmpdir is None:
                    tmpdir = tempfile.mkdtemp(prefix="bngap-")
                    source = Path(tmpdir) / p.name
                    shutil.copyfile(p, source)
                with h5py.File(source, "r+") as f:
                    f.attrs["model_config"] = json.dumps(cfg)
            try:
                model = keras.models.load_model(source, **kwargs)
                break
            except Exception as e:
                refused = refused_arguments(str(e))
                # Only Keras' own layers: their Keras 2 extras (DepthwiseConv2D's
                # groups=1, SeparableConv2D's kernel_*) carry nothing Keras 3 uses.
                if not refused or not hasattr(keras.layers, refused[0]):
                    raise
                dropped = drop_refused_arguments(cfg, *refused)
                if not dropped:
                    raise
                changes.append(
                    f"dropped Keras 2 argument{'s' if len(dropped) != 1 else ''} "
                    f"{describe_dropped(dropped)} that Keras 3's {refused[0]} does not take"
                )
        else:
            raise ModelLoadError(
                f"cannot load {p}: Keras 3 refused the Keras 2 arguments of more than "
                f"{MAX_REFUSED_CLASSES} layer classes"
            )
        if changes:
            notes.append(
                "repaired legacy config while loading (the file is unchanged): "
                + "; ".join(changes)
            )
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return repair_sequential_input(model, first_batch_shape(cfg), keras, notes)
