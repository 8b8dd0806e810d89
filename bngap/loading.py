"""Opening a model file with Keras, safely: safe mode, custom objects, errors in one line.

Also the compiled loss and the declared inputs. The checks before Keras are
`modelfiles`'; a Keras 2 .h5 file goes through `keras2.load`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, one_line
from .keras2.load import load_legacy
from .keras2.ops import layer_classes
from .modelfiles import KERAS_EXTS, LEGACY_EXTS, check_model_path
from .specs import InputSpec


@dataclass
class LoadedModel:
    """A loaded Keras model and what we learnt while loading it."""

    model: Any
    path: str
    inputs: list[InputSpec]
    loss: Any = None  # the compiled loss identifier, if the file has one
    notes: list[str] = field(default_factory=list)


def load_custom_objects(path: str | os.PathLike) -> dict[str, Any]:
    """Executes a trusted Python file and collects the custom objects it defines.

    The file may define a ``custom_objects`` dict; otherwise every class and
    function defined at its top level is offered by name. Classes registered
    with ``@keras.saving.register_keras_serializable`` are found by Keras
    either way.

    Side effects: imports TensorFlow/Keras, runs the file's code, adds the
    file's folder to ``sys.path`` so that it can import its neighbours.
    """
    from .backend import import_keras

    import_keras()
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"--custom-objects file not found: {p}")
    if p.suffix != ".py":
        raise ModelLoadError(f"--custom-objects must be a Python file (.py). Received: {p}")
    name = f"bngap_custom_objects_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import --custom-objects file {p}")
    module = importlib.util.module_from_spec(spec)
    folder = str(p.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to fix
        raise ModelLoadError(
            f"error while running --custom-objects file {p}: {type(e).__name__}: {one_line(e)}"
        ) from e
    sys.modules[name] = module
    explicit = getattr(module, "custom_objects", None)
    if isinstance(explicit, dict):
        return dict(explicit)
    found = {}
    for attr, obj in vars(module).items():
        if attr.startswith("_"):
            continue
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
            obj, "__module__", None
        ) == name:
            found[attr] = obj
    return found


def _translate_load_error(p: Path, e: Exception) -> ModelLoadError:
    """Turns Keras' loading exceptions into one actionable line."""
    msg = str(e)
    if "safe_mode" in msg or "arbitrary code" in msg:
        return ModelLoadError(
            f"{p} contains a Lambda layer with Python code, which could run arbitrary code; "
            "bngap refuses to load it by default. If you trust this file, pass --unsafe"
        )
    m = re.search(
        r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'", msg
    ) or re.search(r"Unknown [a-z ]+: '([^']+)'", msg)  # the legacy .h5 loader's wording
    if m:
        name = m.group(1)
        if name in ("Functional", "Sequential", "Model"):
            return ModelLoadError(
                f"{p} was written by Keras 2 (tf.keras) in the .keras format, which Keras 3 "
                "cannot read; re-save it from tf.keras as .h5 (model.save('model.h5')), "
                "which bngap can read"
            )
        return ModelLoadError(
            f"{p} uses the custom class or function '{name}', which is not registered; pass "
            "--custom-objects FILE.py with its definition"
        )
    if "No model config found" in msg:
        return ModelLoadError(f"{p} holds weights only (no model config); save the whole model")
    if (
        "Unable to open file" in msg
        or "file signature" in msg
        or (isinstance(e, OSError) and "truncated" in msg.lower())
    ):
        return ModelLoadError(
            f"{p} cannot be read as HDF5 (truncated or corrupted?): {one_line(msg, 200)}"
        )
    if "Exception encountered:" in msg:
        # Keras nests the cause under whole layer configs; the innermost line says it
        where = re.findall(r"deserializing class '(\w+)'", msg)
        cause = msg.rsplit("Exception encountered:", 1)[1].strip()
        layer = f" (layer class {where[-1]})" if where else ""
        return ModelLoadError(f"cannot load {p}{layer}: {one_line(cause, 300)}")
    return ModelLoadError(f"cannot load {p}: {type(e).__name__}: {one_line(msg, 300)}")


@contextlib.contextmanager
def _lower_case_suffix(p: Path) -> Iterator[Path]:
    """Keras picks the format by the exact suffix: MODEL.H5 is loaded through
    a link named model.h5 (a copy where links are not allowed)."""
    if p.suffix == p.suffix.lower():
        yield p
        return
    tmp = tempfile.mkdtemp(prefix="bngap-")
    alias = Path(tmp) / (p.stem + p.suffix.lower())
    try:
        try:
            alias.symlink_to(p.resolve())
        except OSError:
            shutil.copyfile(p, alias)
        yield alias
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_compiled_loss(p: Path, key: str = "loss") -> Any:
    """The loss the model was compiled with (or another compile setting:
    `key`), read from the file's training config without compiling
    anything. None when absent or unreadable."""
    try:
        if p.suffix.lower() in KERAS_EXTS:
            with zipfile.ZipFile(p) as zf:
                cfg = json.loads(zf.read("config.json"))
            comp = cfg.get("compile_config") or {}
            return comp.get(key)
        import h5py

        with h5py.File(p, "r") as f:
            raw = f.attrs.get("training_config")
        if raw is None:
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        return json.loads(raw).get(key)
    except Exception:  # a missing loss only means we infer one
        return None


def input_specs(model: Any) -> list[InputSpec]:
    """The model's declared inputs; empty when it declares none (subclassed)."""
    specs = []
    inputs = getattr(model, "inputs", None)
    try:
        if inputs:
            for i, t in enumerate(inputs):
                name = getattr(t, "name", None) or f"input_{i}"
                specs.append(InputSpec(str(name), tuple(t.shape), str(t.dtype)))
            return specs
    except (AttributeError, ValueError):
        specs = []
    build: dict[str, Any] = {}
    try:
        build = model.get_build_config() or {}
    except Exception:
        build = {}
    shape = build.get("input_shape")
    if (
        isinstance(shape, (list, tuple))
        and shape
        and all(s is None or isinstance(s, int) for s in shape)
    ):
        specs.append(InputSpec("input", (None,) + tuple(shape[1:]), "float32"))
    return specs


def _open(p: Path, keras: Any, kwargs: dict[str, Any], notes: list[str]) -> Any:
    """One try of Keras' loader (through the Keras 2 repairs for .h5 files)."""
    with warnings.catch_warnings(), _lower_case_suffix(p) as source:
        warnings.simplefilter("ignore")
        if p.suffix.lower() in LEGACY_EXTS:
            return load_legacy(source, keras, kwargs, notes)
        return keras.models.load_model(source, **kwargs)


def _open_compiled_if_asked(
    p: Path, keras: Any, kwargs: dict[str, Any], compile: bool, notes: list[str]
) -> Any:
    """The model, compiled when asked and restorable, else uncompiled (with a note)."""
    if compile:
        try:
            return _open(p, keras, {**kwargs, "compile": True}, notes)
        except Exception as e:  # loss or optimizer not restorable: keep going without
            notes.append(
                f"loaded without its compile configuration ({type(e).__name__}: {one_line(e, 120)})"
            )
    return _open(p, keras, kwargs, notes)


def load_model(
    path: str | os.PathLike,
    *,
    unsafe: bool = False,
    custom_objects_file: str | os.PathLike | None = None,
    compile: bool = False,
) -> LoadedModel:
    """Loads a `.keras` or legacy `.h5` model, safely unless asked otherwise.

    Args:
        path: the model file.
        unsafe: allow deserialising Python code (Lambda layers). Off by
            default: a file could run arbitrary code on load.
        custom_objects_file: a trusted Python file defining custom layers.
        compile: restore the compiled loss, metrics and optimizer too (for
            saving a copy that keeps them); falls back to an uncompiled
            model, with a note, when compiling fails.

    Returns:
        The model (not compiled) with its input specs and notes on repairs.

    Raises:
        ModelLoadError: with a one-line message, for anything the user can fix.
    """
    p = check_model_path(path)
    from .backend import import_keras

    keras = import_keras()
    custom = load_custom_objects(custom_objects_file) if custom_objects_file else {}
    notes: list[str] = []
    # Keras 2's TF-op layers; user definitions win
    custom = {**layer_classes(unsafe), **custom}
    kwargs = dict(compile=False, safe_mode=not unsafe, custom_objects=custom)
    try:
        model = _open_compiled_if_asked(p, keras, kwargs, compile, notes)
    except ModelLoadError:
        raise
    except Exception as e:  # Keras raises many types for bad files
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, ModelLoadError):  # ours, wrapped by Keras
            cause = cause.__cause__ or cause.__context__
        raise (cause or _translate_load_error(p, e)) from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{p} does not hold a Keras model. Received: {type(model).__name__}")
    if not model.built:
        raise ModelLoadError(f"{p} holds a model that was never built (no input shape known)")
    return LoadedModel(
        model=model,
        path=str(p),
        inputs=input_specs(model),
        loss=read_compiled_loss(p),
        notes=notes,
    )
