"""The copy `bngap fix` writes: where it goes (checked before any work), the
optimizer state the file held kept, written atomically, and reloaded to check
that it reproduces the fixed model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset
from .errors import BngapError


def output_target(
    model: Any, output: str | os.PathLike | None, *, in_place: bool, force: bool
) -> Path | None:
    """Where `fix` writes the fixed model (None: nowhere), checked before any work.

    Raises:
        BngapError: the output is missing, ambiguous, the input itself without
            `in_place`, not .keras/.h5, or exists without `force`.
    """
    target: Path | None = None
    if isinstance(model, (str, os.PathLike)):
        src = Path(model)
        if in_place:
            if output and Path(output).resolve() != src.resolve():
                raise BngapError("give either --in-place or -o/--output, not both")
            target = src
        elif not output:
            raise BngapError("say where to write the fixed model: -o/--output FILE (or --in-place)")
        else:
            target = Path(output)
            if target.resolve() == src.resolve():
                raise BngapError(f"{target} is the input model; pass --in-place to overwrite it")
    elif output:
        target = Path(output)
    if target is not None and target.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise BngapError(f"the output must end in .keras or .h5. Received: {target}")
    if target is not None and target.exists() and not (in_place or force):
        raise BngapError(
            f"{target} already exists; choose another path or pass --force to replace it"
        )
    return target


def save_model(net: Any, target: Path) -> None:
    """Saves the model to `target` atomically (temporary file, then rename)."""
    from .backend import import_tensorflow, installed
    from .writing import replace_atomic

    if installed("tensorflow"):  # Keras' saving imports it on every backend: quietly, first
        import_tensorflow()
    replace_atomic(target, lambda tmp: net.save(tmp), suffix=target.suffix.lower())


def saved_optimizer_state(path: Path) -> list[np.ndarray] | None:
    """The optimizer variables a `.keras` file holds, in order; None for
    other formats or a file without an optimizer. Reads the archive only."""
    if path.suffix.lower() != ".keras":
        return None
    import io
    import zipfile

    import h5py

    try:
        with (
            zipfile.ZipFile(path) as zf,
            zf.open("model.weights.h5") as f,
            h5py.File(io.BytesIO(f.read()), "r") as h5,
        ):
            group = h5.get("optimizer/vars")
            if group is None:
                return None
            return [np.array(group[str(i)]) for i in range(len(group))]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def keep_saved_optimizer(model, saved: list[np.ndarray] | None) -> str | None:
    """Gives the model back the optimizer state its file held.

    Loading a file compiled with an optimizer that was never built (saved
    before any training step: 2 variables) builds a new one for every
    trainable weight and skips the saved state; a copy saved from it would
    carry all those zero slots (ResNet50: 95 MB -> 283 MB) and lose the
    original's iteration count and learning rate. An unbuilt optimizer of
    the same configuration, holding the saved values, replaces it.

    Returns a note when the saved state could not be restored, else None.
    Side effect: may replace `model.optimizer`.
    """
    opt = getattr(model, "optimizer", None)
    if opt is None or saved is None or len(opt.variables) == len(saved):
        return None  # nothing saved, or Keras restored it as it was
    try:
        fresh = type(opt).from_config(opt.get_config())
        if len(fresh.variables) != len(saved):
            return (
                f"the file's optimizer state ({len(saved)} variables) does not fit a "
                f"{type(opt).__name__}; the copy carries a freshly built one"
            )
        fresh.load_own_variables({str(i): v for i, v in enumerate(saved)})
        model.optimizer = fresh
    except Exception as e:  # a custom or wrapped optimizer: keep Keras' one, say so
        return (
            f"the file's optimizer state could not be restored ({type(e).__name__}); the "
            "copy carries a freshly built optimizer"
        )
    return None


def verify_reload(path: Path, model, data: Dataset, keras, *, unsafe: bool, custom) -> float:
    """Reloads the written file and compares its inference output with the
    in-memory model's on a few samples; raises if they differ."""
    from .loading import load_model

    again = load_model(path, unsafe=unsafe, custom_objects_file=custom).model
    from .backend import numpy_outputs, pack_inputs

    xs = data.take(0, min(16, len(data)))

    def outputs(m) -> list[np.ndarray]:
        return numpy_outputs(m(pack_inputs(keras, m, xs, data.names, data.keyed), training=False))

    a, b = outputs(model), outputs(again)
    diff = max(float(np.max(np.abs(p - q))) if p.size else 0.0 for p, q in zip(a, b))
    scale = max(float(np.max(np.abs(p))) if p.size else 0.0 for p in a)
    if diff > 1e-5 * max(1.0, scale):
        raise BngapError(
            f"the saved model {path} does not reproduce the fixed model's outputs "
            f"(max difference {diff:.3g}); it was written, but do not trust it"
        )
    return diff
