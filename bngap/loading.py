"""Opening model files safely: format checks, Keras safe mode, custom objects,
and repairs for legacy Keras 2 files that Keras 3 reads wrongly."""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, one_line
from .legacy_ops import OP_CLASSES, UnsafeOpError, layer_classes, resolve, template

KERAS_EXTS = (".keras",)
LEGACY_EXTS = (".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Constructor arguments that Keras 2 wrote into layer configs and Keras 3
# rejects; they carry no information Keras 3 needs.
LEGACY_DROPPED_ARGS = {"time_major"}
RNN_CLASSES = {"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D",
               "ConvLSTM3D", "CuDNNLSTM", "CuDNNGRU"}
# How many layer classes may have arguments dropped on Keras 3's word.
MAX_REFUSED_CLASSES = 12


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input (batch dimension included)."""

    name: str
    shape: tuple          # e.g. (None, 224, 224, 3); None = any size
    dtype: str


@dataclass
class LoadedModel:
    """A loaded Keras model and what we learnt while loading it."""

    model: Any
    path: str
    inputs: list[InputSpec]
    loss: Any = None                 # the compiled loss identifier, if the file has one
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
            raise ModelLoadError(
                f"{p} is a zip archive but not a Keras model (it has no config.json)"
            )
        if bad is not None:
            raise ModelLoadError(f"{p} is corrupted: zip member '{bad}' fails its checksum")
        version = _keras_version_of_archive(p)
        if version.startswith("2."):
            raise ModelLoadError(
                f"{p} was written by Keras {version} (tf.keras 2.x) in the .keras format, which "
                "Keras 3 cannot read. Re-save it as .h5 with the Keras that wrote it "
                "(tf_keras.models.load_model(path).save('model.h5')); bngap reads Keras 2 .h5 files"
            )
    else:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head != HDF5_SIGNATURE:
            raise ModelLoadError(
                f"{p} is not a valid HDF5 file (wrong signature; truncated, corrupted, or "
                "not a Keras .h5 model)"
            )
    return p


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
    from .runtime import import_keras

    import_keras()
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"--custom-objects file not found: {p}")
    if p.suffix != ".py":
        raise ModelLoadError(f"--custom-objects must be a Python file (.py). Received: {p}")
    name = f"bngap_custom_objects_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
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
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
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
    m = (re.search(r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'", msg)
         or re.search(r"Unknown [a-z ]+: '([^']+)'", msg))  # the legacy .h5 loader's wording
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
    if "Unable to open file" in msg or "file signature" in msg or (
            isinstance(e, OSError) and "truncated" in msg.lower()):
        return ModelLoadError(f"{p} cannot be read as HDF5 (truncated or corrupted?): {one_line(msg, 200)}")
    if "Exception encountered:" in msg:
        # Keras nests the cause under whole layer configs; the innermost line says it
        where = re.findall(r"deserializing class '(\w+)'", msg)
        cause = msg.rsplit("Exception encountered:", 1)[1].strip()
        layer = f" (layer class {where[-1]})" if where else ""
        return ModelLoadError(f"cannot load {p}{layer}: {one_line(cause, 300)}")
    return ModelLoadError(f"cannot load {p}: {type(e).__name__}: {one_line(msg, 300)}")


@contextlib.contextmanager
def _lower_case_suffix(p: Path):
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


def _legacy_config(p: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as e:
        raise ModelLoadError(f"{p} cannot be read as HDF5 (truncated or corrupted?): {one_line(e, 200)}") from None
    if raw is None:
        raise ModelLoadError(
            f"{p} holds no model config: a weights-only file, or not a Keras model at all; save "
            "the whole model with model.save('model.keras')"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


def _written_by_keras2(p: Path) -> bool:
    """Whether a legacy .h5 file was written by Keras 2 (or older): Keras 3's
    own legacy writer records keras_version 3.x and needs no repair of its
    node numbering."""
    import h5py

    with h5py.File(p, "r") as f:
        version = f.attrs.get("keras_version", b"")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return not str(version).startswith("3")


def _walk_layer_configs(cfg):
    """Yields every dict in a model config that looks like a layer entry."""
    if isinstance(cfg, dict):
        if "class_name" in cfg and isinstance(cfg.get("config"), dict):
            yield cfg
        for v in cfg.values():
            yield from _walk_layer_configs(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _walk_layer_configs(v)


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


def _modernise_sequential_layout(cfg, changes: list[str]) -> None:
    """Keras <= 2.2 stored a Sequential's config as the bare layer list;
    Keras 3 expects {"name", "layers"}."""
    if isinstance(cfg, dict):
        if cfg.get("class_name") == "Sequential" and isinstance(cfg.get("config"), list):
            cfg["config"] = {"name": cfg.get("name") or "sequential", "layers": cfg["config"]}
            changes.append("converted an old Keras 2 Sequential layout (a bare layer list)")
        for v in cfg.values():
            _modernise_sequential_layout(v, changes)
    elif isinstance(cfg, list):
        for v in cfg:
            _modernise_sequential_layout(v, changes)


def _is_node_ref(v) -> bool:
    """[layer_name, node_index, tensor_index, ...]: how Keras 2 configs point at a tensor."""
    return (isinstance(v, list) and len(v) >= 3 and isinstance(v[0], str)
            and isinstance(v[1], int) and isinstance(v[2], int))


def _rename_refs(cfg, renamed: dict[str, str]) -> None:
    if isinstance(cfg, dict):
        if "class_name" in cfg and isinstance(cfg.get("config"), dict):
            for holder in (cfg, cfg["config"]):
                if holder.get("name") in renamed:
                    holder["name"] = renamed[holder["name"]]
        for v in cfg.values():
            _rename_refs(v, renamed)
    elif isinstance(cfg, list):
        if _is_node_ref(cfg) and cfg[0] in renamed:
            cfg[0] = renamed[cfg[0]]
        for v in cfg:
            _rename_refs(v, renamed)


def _rename_slashed_layers(cfg: dict, changes: list[str]) -> None:
    """Keras 2 allowed '/' in layer names (DenseNet's 'conv1/conv', MobileNetV3's
    'Conv/BatchNorm'); Keras 3 refuses them. Weights are matched by order, not
    by name, so renaming is safe."""
    names = {str(e["config"].get("name") or e.get("name") or "") for e in _walk_layer_configs(cfg)}
    renamed: dict[str, str] = {}
    for name in sorted(n for n in names if "/" in n):
        new = base = name.replace("/", "_")
        k = 1
        while new in names or new in renamed.values():
            new, k = f"{base}_{k}", k + 1
        renamed[name] = new
    if renamed:
        _rename_refs(cfg, renamed)
        shown = ", ".join(f"{a} -> {b}" for a, b in list(renamed.items())[:3])
        more = f" and {len(renamed) - 3} more" if len(renamed) > 3 else ""
        changes.append(f"renamed {len(renamed)} layer{'s whose names contain' if len(renamed) != 1 else ' whose name contains'} "
                       f"'/', which Keras 3 refuses ({shown}{more})")


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


def drop_refused_arguments(cfg: dict, class_name: str, keys: list[str]) -> dict[str, list]:
    """Drops the constructor arguments Keras 3 refused from every layer of a
    class; returns each dropped argument's distinct values."""
    dropped: dict[str, list] = {}
    for layer in _walk_layer_configs(cfg):
        if layer["class_name"] == class_name:
            for k in keys:
                if k in layer["config"]:
                    v = layer["config"].pop(k)
                    if v not in dropped.setdefault(k, []):
                        dropped[k].append(v)
    return dropped


def _describe_dropped(dropped: dict[str, list]) -> str:
    """'groups'=1, 'kernel_initializer': the values a reader can judge."""
    parts = []
    for k, values in dropped.items():
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in values) and len(values) <= 2:
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
    body = message[m.end():]
    keys, depth, i = [], 1, 0
    while i < len(body) and depth:
        ch = body[i]
        if ch in "'\"":
            end = body.find(ch, i + 1)
            if end < 0:
                break
            if depth == 1 and body[end + 1:end + 2] == ":":
                keys.append(body[i + 1:end])
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
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [], "dtype": "float32", "keras_history": list(ref[:3])}}


def _tensors_in(value, names: set[str]):
    """`value` with every reference to a layer output turned into a Keras 3
    serialized tensor, and whether there was one."""
    if _is_node_ref(value) and value[0] in names:
        return _keras_tensor(value), True
    if isinstance(value, list):
        items = [_tensors_in(v, names) for v in value]
        return [v for v, _ in items], any(f for _, f in items)
    if isinstance(value, dict):
        items = {k: _tensors_in(v, names) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(f for _, f in items.values())
    return value, False


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
        nodes[i] = {"args": [first[0] if len(first) == 1 else first], "kwargs": kwargs}
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
    rewritten = []
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
        first = tensors[0] if len(tensors) == 1 else tensors
        rewritten.append({"args": [first], "kwargs": {"bngap_tensors": flat} if flat else {}})
    entry["inbound_nodes"] = rewritten


KERAS2_POLICIES = {"Policy", "PolicyV1"}  # Keras 3 writes "DTypePolicy" and reads it itself


def _policy_name(dtype) -> str | None:
    """'mixed_float16' from Keras 2's serialized dtype policy
    {"class_name": "Policy", "config": {"name": "mixed_float16"}}."""
    if (isinstance(dtype, dict) and dtype.get("class_name") in KERAS2_POLICIES
            and isinstance(dtype.get("config"), dict) and isinstance(dtype["config"].get("name"), str)):
        name = dtype["config"]["name"]
        return "float32" if name == "_infer" else name
    return None


def _nested_functionals(cfg) -> set[str]:
    """Names of nested functional models: Keras 2 gave each a node of its own,
    so its first call is node 1, where Keras 3's legacy reader looks for node
    0 among a layer's inputs (it does subtract one for a model's outputs)."""
    found = set()
    for entry in _walk_layer_configs(cfg.get("config") if isinstance(cfg, dict) else cfg):
        conf = entry.get("config")
        if (entry.get("class_name") in ("Functional", "Model") and isinstance(conf, dict)
                and "input_layers" in conf and conf.get("name")):
            found.add(conf["name"])
    return found


def _self_built_sequentials(cfg) -> set[str]:
    """Names of nested Sequential models that Keras 2 built when they were
    made (an InputLayer, or an input shape on the first layer): Keras 2 gave
    such a model a node of its own, so its first call is node 1, where Keras 3
    counts it as node 0."""
    found = set()
    for entry in _walk_layer_configs(cfg.get("config") if isinstance(cfg, dict) else cfg):
        layers = _sequential_layers(entry)
        if not layers:
            continue
        first = layers[0] if isinstance(layers[0], dict) else {}
        conf = first.get("config", {}) if isinstance(first.get("config"), dict) else {}
        if first.get("class_name") == "InputLayer" or conf.get("batch_input_shape") or conf.get("batch_shape"):
            name = entry["config"].get("name") if isinstance(entry.get("config"), dict) else None
            if name:
                found.add(name)
    return found


def _shift_node_indices(cfg, names: set[str], outputs_too: bool = True) -> int:
    """Counts Keras 2's node indices of the given nested models the way Keras 3 does."""
    n = 0
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if outputs_too or k not in ("input_layers", "output_layers"):
                n += _shift_node_indices(v, names, outputs_too)
    elif isinstance(cfg, list):
        if _is_node_ref(cfg) and cfg[0] in names and cfg[1] > 0:
            cfg[1] -= 1
            return 1
        for v in cfg:
            n += _shift_node_indices(v, names, outputs_too)
    return n


def _repair_legacy_config(cfg: dict, keras2: bool = True) -> list[str]:
    """Edits a Keras 2 model config in place so that Keras 3 accepts it.

    Returns what was changed, for the report's notes.
    """
    changes: list[str] = []
    _modernise_sequential_layout(cfg, changes)
    _rename_slashed_layers(cfg, changes)
    if keras2:  # Keras 3's own .h5 files number nodes as Keras 3 reads them
        sequentials, functionals = _self_built_sequentials(cfg), _nested_functionals(cfg)
        shifted = [n for n in sorted(sequentials) if _shift_node_indices(cfg.get("config"), {n})]
        shifted += [n for n in sorted(functionals)
                    if _shift_node_indices(cfg.get("config"), {n}, outputs_too=False)]
        if shifted:
            changes.append(f"renumbered the calls of nested model{'s' if len(shifted) != 1 else ''} "
                           f"{', '.join(repr(n) for n in shifted[:3])}{' ...' if len(shifted) > 3 else ''} "
                           "as Keras 3 counts them")
    policies = 0
    unwrapped: list[str] = []  # nested models whose single input/output was a list
    ops: list[str] = []
    keyword_tensors: list[str] = []
    names = {str(e["config"].get("name") or e.get("name") or "") for e in _walk_layer_configs(cfg)}
    for layer in _walk_layer_configs(cfg):
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
            changes.append(f"dropped Keras 2 argument {key!r} of {layer['class_name']} "
                           f"{conf.get('name', '')!r}")
        # Keras 3 converts a one-element axis list only on the outermost config
        if isinstance(conf.get("axis"), list) and len(conf["axis"]) == 1 and isinstance(conf["axis"][0], int):
            conf["axis"] = conf["axis"][0]
        if _unwrap_single_io(layer) and layer is not cfg:
            unwrapped.append(str(conf.get("name", "")))
        layers = _sequential_layers(layer)
        if layers and layers[0].get("class_name") != "InputLayer":
            first = layers[0].get("config", {})
            shape = first.get("batch_input_shape")
            if shape:
                # Older Keras 2 declared a Sequential's input on its first layer
                # only; Keras 3 then adds a dimension. An explicit input fixes it.
                layers.insert(0, {"class_name": "InputLayer", "config": {
                    "batch_input_shape": shape, "dtype": first.get("dtype", "float32"),
                    "sparse": False, "name": f"{first.get('name', 'input')}_input"}})
                first.pop("batch_input_shape", None)
                changes.append(f"declared the Sequential's input {tuple(shape)} explicitly "
                               f"(Keras 2 kept it on layer {first.get('name', '')!r})")
    _unwrap_single_io(cfg)
    if policies:
        changes.append(f"read Keras 2's dtype policies of {policies} layer{'s' if policies != 1 else ''} "
                       "by name (e.g. mixed_float16)")
    if keyword_tensors:
        changes.append(f"passed the tensors that {', '.join(repr(n) for n in keyword_tensors[:3])}"
                       f"{' ...' if len(keyword_tensors) > 3 else ''} "
                       f"{'takes' if len(keyword_tensors) == 1 else 'take'} by keyword as tensors "
                       "(Keras 3 reads them as lists from a Keras 2 file)")
    if ops:
        kinds = sorted(set(ops))
        changes.append(f"ran {len(ops)} Keras 2 TF-op layer{'s' if len(ops) != 1 else ''} "
                       f"({', '.join('tf.' + k for k in kinds[:4])}{' ...' if len(kinds) > 4 else ''}) "
                       "with bngap's stand-in")
    if unwrapped:
        # The top level is repaired silently: only a nested model's list
        # output changes behaviour (it breaks the layer after it).
        changes.append(f"read the single input/output of nested model{'s' if len(unwrapped) != 1 else ''} "
                       + ", ".join(repr(n) for n in unwrapped[:3]) + (" ..." if len(unwrapped) > 3 else "")
                       + " as Keras 2 did (not as one-element lists)")
    return changes


def _first_batch_shape(cfg: dict) -> tuple | None:
    """The batch_input_shape a legacy Sequential declared on its first layer."""
    if cfg.get("class_name") != "Sequential":
        return None
    layers = cfg.get("config", {})
    layers = layers.get("layers", layers) if isinstance(layers, dict) else layers
    for layer in layers or []:
        shape = layer.get("config", {}).get("batch_input_shape") or layer.get("config", {}).get("batch_shape")
        if shape:
            return tuple(shape)
    return None


def _load_legacy(p: Path, keras, kwargs: dict, notes: list[str]):
    cfg = _legacy_config(p)
    if kwargs.get("safe_mode", True):
        for layer in _walk_layer_configs(cfg):
            # Keras 2 wrote a TF-op layer's inputs as [layer, node, tensor]
            # references; anything else (a dict node can carry any object as
            # the first argument) is not from Keras 2, and not run in safe mode.
            nodes = layer.get("inbound_nodes") if layer["class_name"] in OP_CLASSES else None
            if nodes and not all(isinstance(n, list) for n in nodes):
                raise ModelLoadError(
                    f"{p}: layer {layer['config'].get('name', '')!r}: a TF-op layer whose inputs are "
                    "not references to other layers, which safe mode does not run; pass --unsafe if "
                    "you trust the file")
    original = json.dumps(cfg)
    changes = _repair_legacy_config(cfg, keras2=_written_by_keras2(p))
    unsafe = not kwargs.get("safe_mode", True)
    for layer in _walk_layer_configs(cfg):
        axis = layer["config"].get("axis")
        if layer["class_name"] == "BatchNormalization" and isinstance(axis, list) and len(axis) > 1:
            raise ModelLoadError(
                f"{p}: layer {layer['config'].get('name', '')!r} is a BatchNormalization over several "
                f"axes {axis}, which Keras 2 allowed and Keras 3 does not; bngap cannot run it")
        if layer["class_name"] in OP_CLASSES and isinstance(layer["config"].get("function"), str):
            try:
                resolve(layer["config"]["function"], unsafe=unsafe)
            except UnsafeOpError as e:
                raise ModelLoadError(f"{p}: layer {layer['config'].get('name', '')!r}: {e}") from None
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
                changes.append(f"dropped Keras 2 argument{'s' if len(dropped) != 1 else ''} "
                               f"{_describe_dropped(dropped)} that Keras 3's {refused[0]} does not take")
        else:
            raise ModelLoadError(f"cannot load {p}: Keras 3 refused the Keras 2 arguments of more than "
                                 f"{MAX_REFUSED_CLASSES} layer classes")
        if changes:
            notes.append("repaired legacy config while loading (the file is unchanged): "
                         + "; ".join(changes))
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    declared = _first_batch_shape(cfg)
    return _repair_sequential_input(model, declared, keras, notes)


def _repair_sequential_input(model, declared: tuple | None, keras, notes: list[str]):
    """Rebuilds a legacy Sequential whose input gained an extra leading
    dimension while loading (Keras 2 `batch_input_shape` quirk)."""
    if declared is None or not isinstance(model, keras.Sequential):
        return model
    try:
        loaded = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, ValueError):
        return model
    if len(loaded) == len(declared) + 1 and tuple(loaded[1:]) == tuple(declared):
        fixed = keras.Sequential([keras.Input(shape=tuple(declared[1:]), batch_size=declared[0])]
                                 + list(model.layers), name=model.name)
        notes.append(f"repaired input shape: the file declares {tuple(declared)}, Keras 3 "
                     f"loaded {loaded}; rebuilt the Sequential on the declared input")
        return fixed
    return model


def read_compiled_loss(p: Path) -> Any:
    """The loss the model was compiled with, read from the file's training
    config without compiling anything. None when absent or unreadable."""
    try:
        if p.suffix.lower() in KERAS_EXTS:
            with zipfile.ZipFile(p) as zf:
                cfg = json.loads(zf.read("config.json"))
            comp = cfg.get("compile_config") or {}
            return comp.get("loss")
        import h5py

        with h5py.File(p, "r") as f:
            raw = f.attrs.get("training_config")
        if raw is None:
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        return json.loads(raw).get("loss")
    except Exception:  # a missing loss only means we infer one
        return None


def input_specs(model) -> list[InputSpec]:
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
    build = {}
    try:
        build = model.get_build_config() or {}
    except Exception:
        build = {}
    shape = build.get("input_shape")
    if isinstance(shape, (list, tuple)) and shape and all(s is None or isinstance(s, int) for s in shape):
        specs.append(InputSpec("input", (None,) + tuple(shape[1:]), "float32"))
    return specs


def load_model(path: str | os.PathLike, *, unsafe: bool = False,
               custom_objects_file: str | os.PathLike | None = None,
               compile: bool = False) -> LoadedModel:
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
    from .runtime import import_keras

    keras = import_keras()
    custom = load_custom_objects(custom_objects_file) if custom_objects_file else {}
    notes: list[str] = []
    # Keras 2's TF-op layers; user definitions win
    custom = {**layer_classes(unsafe), **custom}
    kwargs = dict(compile=False, safe_mode=not unsafe, custom_objects=custom)
    def attempt(kw):
        with warnings.catch_warnings(), _lower_case_suffix(p) as source:
            warnings.simplefilter("ignore")
            if p.suffix.lower() in LEGACY_EXTS:
                return _load_legacy(source, keras, kw, notes)
            return keras.models.load_model(source, **kw)

    try:
        model = None
        if compile:
            try:
                model = attempt({**kwargs, "compile": True})
            except Exception as e:  # loss or optimizer not restorable: keep going without
                notes.append(f"loaded without its compile configuration ({type(e).__name__}: "
                             f"{one_line(e, 120)})")
        if model is None:
            model = attempt(kwargs)
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
    return LoadedModel(model=model, path=str(p), inputs=input_specs(model),
                       loss=read_compiled_loss(p), notes=notes)
