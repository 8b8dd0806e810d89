"""Opening model files safely: format checks, Keras safe mode, custom objects, legacy .h5 files."""

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
from .keras2.config import layer_entries, read_config, written_by_keras2
from .keras2.ops import OP_CLASSES, UnsafeOpError, layer_classes, resolve
from .keras2.repair import (
    describe_dropped,
    drop_refused_arguments,
    first_batch_shape,
    refused_arguments,
    repair_config,
    repair_sequential_input,
)
from .specs import InputSpec

KERAS_EXTS = (".keras",)
LEGACY_EXTS = (".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# How many layer classes may have arguments dropped on Keras 3's word.
MAX_REFUSED_CLASSES = 12


@dataclass
class LoadedModel:
    """A loaded Keras model and what we learnt while loading it."""

    model: Any
    path: str
    inputs: list[InputSpec]
    loss: Any = None  # the compiled loss identifier, if the file has one
    notes: list[str] = field(default_factory=list)


def check_model_path(path: str | os.PathLike) -> Path:
    """Fails with a one-line error when PATH is not a readable model file.

    Pure file checks, no TensorFlow: fast errors for the common mistakes.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
            raise ModelLoadError(
                f"{p} is a TensorFlow SavedModel directory; Keras 3 can only wrap it as an "
                "opaque TFSMLayer, which hides the layers bngap must inspect. Re-save the "
                "model from the code that built it with model.save('model.keras'), or load "
                "it with tf-keras (TF_USE_LEGACY_KERAS=1) and save it as 'model.h5'"
            )
        raise ModelLoadError(f"{p} is a directory; expected a .keras or .h5 model file")
    if not os.access(p, os.R_OK):
        raise ModelLoadError(f"cannot read model file {p}: permission denied")
    ext = p.suffix.lower()
    if p.name.endswith(".weights.h5"):
        raise ModelLoadError(
            f"{p} holds weights only (no model architecture); save the whole model with "
            "model.save('model.keras')"
        )
    if ext not in KERAS_EXTS + LEGACY_EXTS:
        raise ModelLoadError(
            f"unsupported model format '{ext or p.name}': bngap reads .keras (Keras 3) and "
            ".h5/.hdf5 (legacy Keras 2) files. Re-save the model with model.save('model.keras')"
        )
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file {p} is empty (0 bytes)")
    if ext in KERAS_EXTS:
        _check_keras_archive(p)
    else:
        _check_hdf5_signature(p)
    return p


def _check_keras_archive(p: Path) -> None:
    """A .keras file is an intact zip archive with a config, not written by Keras 2."""
    if not zipfile.is_zipfile(p):
        raise ModelLoadError(
            f"{p} is not a valid .keras file: not a zip archive (truncated or corrupted?)"
        )
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelLoadError(f"{p} is a damaged zip archive: {one_line(e)}") from None
    if "config.json" not in names:
        raise ModelLoadError(f"{p} is a zip archive but not a Keras model (it has no config.json)")
    if bad is not None:
        raise ModelLoadError(f"{p} is corrupted: zip member '{bad}' fails its checksum")
    version = _keras_version_of_archive(p)
    if version.startswith("2."):
        raise ModelLoadError(
            f"{p} was written by Keras {version} (tf.keras 2.x) in the .keras format, which "
            "Keras 3 cannot read. Re-save it as .h5 with the Keras that wrote it "
            "(tf_keras.models.load_model(path).save('model.h5')); bngap reads Keras 2 .h5 files"
        )


def _check_hdf5_signature(p: Path) -> None:
    """An .h5 file starts with the HDF5 signature (the rest is for h5py to judge)."""
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        raise ModelLoadError(
            f"{p} is not a valid HDF5 file (wrong signature; truncated, corrupted, or "
            "not a Keras .h5 model)"
        )


def _keras_version_of_archive(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            meta = json.loads(zf.read("metadata.json"))
        return str(meta.get("keras_version", ""))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return ""


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


def _load_legacy(p: Path, keras: Any, kwargs: dict, notes: list[str]) -> Any:
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
            return _load_legacy(source, keras, kwargs, notes)
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
