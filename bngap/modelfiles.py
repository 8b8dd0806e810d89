"""Model files checked before Keras opens them: extension, .keras archive, HDF5 signature.

Plain Python (zipfile, json): fast one-line errors for the common mistakes.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from .errors import ModelLoadError, one_line

KERAS_EXTS = (".keras",)
LEGACY_EXTS = (".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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
    """The Keras version in the archive's metadata ("" when it has none)."""
    try:
        with zipfile.ZipFile(p) as zf:
            meta = json.loads(zf.read("metadata.json"))
        return str(meta.get("keras_version", ""))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return ""
