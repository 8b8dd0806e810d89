"""One backend's side output (`--save-outputs F.npz`): what `--backends` compares.

The inference outputs on the first samples, and every layer's output on the
first batch in inference mode and with only the BatchNormalization layers in
training mode (both deterministic, so that any difference is the backend's);
`comparison` reads it back.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import numpy as np

from .backend import numpy_outputs

OUTPUT_BUDGET = 64 * 2**20  # bytes of inference outputs kept for the comparison
SKETCH = 16384  # elements of each layer output kept (same positions on every backend)


def library_version(backend: str) -> str | None:
    """The installed version of a backend's library, read without importing
    it (the other backends run in processes of their own)."""
    try:
        return importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sketch(keras, out) -> np.ndarray:
    """A layer's output as float64, at most SKETCH elements at positions that
    depend only on its size (the same on every backend)."""
    parts = []
    for t in keras.tree.flatten(out):
        if t is None or not hasattr(t, "shape"):
            continue
        a = np.asarray(keras.ops.convert_to_numpy(t))
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            parts.append(a.astype(np.float64).ravel())
    if not parts:
        return np.zeros(0)
    flat = np.concatenate(parts)
    if flat.size > SKETCH:
        flat = flat[np.random.default_rng(flat.size).integers(0, flat.size, SKETCH)]
    return flat


def _inference_outputs(
    model, data, keras, pack, batch_size: int
) -> tuple[list[np.ndarray], Any, int]:
    """The inference outputs of the first batches (up to OUTPUT_BUDGET bytes),
    one array per output: (arrays, the first batch's inputs, samples)."""
    first = None
    outputs: list[list[np.ndarray]] = []
    used = samples = 0
    for xs, _ in data.batches(batch_size):
        out = numpy_outputs(model(pack(xs), training=False))
        if first is None:
            first = xs
            outputs = [[] for _ in out]
        for acc, a in zip(outputs, out):
            acc.append(a)
        used += sum(a.nbytes for a in out)
        samples += len(xs[0])
        if used >= OUTPUT_BUDGET:
            break
    return [np.concatenate(acc) for acc in outputs], first, samples


def _layer_sketches(
    probe, first, keras, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every layer call's output sketch on the first batch, in inference mode
    and with only BN layers in training mode, into `arrays` (and the
    training-mode outputs): (keys by mode, class name by layer path)."""
    keys: dict[str, list[str]] = {"inference": [], "training": []}
    classes: dict[str, str] = {}
    for mode in ("inference", "training"):

        def record(node, call, out, _mode=mode):
            key = f"{node.path}#{call}"
            keys[_mode].append(key)
            classes[node.path] = node.class_name
            arrays[f"{_mode}/{key}"] = _sketch(keras, out)

        final = probe.record_pass(first, record, training=mode == "training")
        if mode == "training":
            for i, a in enumerate(numpy_outputs(final)):
                arrays[f"training_output/{i}"] = a
    return keys, classes


def save_outputs(path: str, model, nodes, data, keras, *, batch_size: int) -> None:
    """Writes the side output of one backend's check to `path` (.npz).

    Holds the inference outputs of the first samples (up to OUTPUT_BUDGET
    bytes), and on the first batch every layer call's output sketch in
    inference mode and with only BN layers in training mode. Side effects:
    none on the model (the probe restores every variable).
    """
    from .backend import pack_inputs
    from .capture import CaptureProbe

    pack = lambda xs: pack_inputs(keras, model, xs, data.names, data.keyed)  # noqa: E731
    with CaptureProbe(model, nodes, keras, pack=pack) as probe:
        outputs, first, samples = _inference_outputs(model, data, keras, pack, batch_size)
        arrays: dict[str, np.ndarray] = {f"output/{i}": a for i, a in enumerate(outputs)}
        keys, classes = _layer_sketches(probe, first, keras, arrays)
    backend = keras.backend.backend()
    policy = getattr(model, "dtype_policy", None)
    meta = {
        "backend": backend,
        "version": library_version(backend),
        "keras": keras.__version__,
        "compute_dtype": getattr(policy, "compute_dtype", None),
        "samples": samples,
        "first_batch": len(first[0]) if first else 0,
        "layers": keys,
        "classes": classes,
    }
    # the keys all hold a "/", so none can fall on savez's allow_pickle
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
