"""Reading .npz and .npy files as raw arrays, never unpickling: the keys
that hold the inputs and labels, memory-mapped or streamed members.

Plain numpy: this module does not import TensorFlow.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, one_line
from .npzmembers import ObjectArray, npz_member
from .specs import InputSpec


def _refuse_pickle(path: Path, key: str | None) -> DataError:
    where = f" under key '{key}'" if key else ""
    return DataError(
        f"{path}{where} holds a pickled Python object array; bngap never unpickles data "
        "(unpickling can run arbitrary code). Save plain numeric arrays, e.g. "
        "np.savez('data.npz', x=x.astype('float32'), y=y)"
    )


def read_npz_member(npz, path: Path, key: str) -> Any:
    """The member, memory-mapped or streamed: nothing is decompressed here."""
    try:
        arr = npz_member(path, npz.zip, key)
    except ObjectArray:
        raise _refuse_pickle(path, key) from None
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise _refuse_pickle(path, key) from None
        raise DataError(f"cannot read key '{key}' of {path}: {one_line(e)}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"cannot read key '{key}' of {path} (corrupted?): {one_line(e)}") from None
    if arr.dtype == object:
        raise _refuse_pickle(path, key)
    return arr


def read_arrays(
    path: str | os.PathLike,
    *,
    specs: Sequence[InputSpec] = (),
    x_key: str | None = None,
    y_key: str | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None, list[str], list[str]]:
    """Reads raw arrays from an .npz or .npy file.

    Args:
        path: an .npz (inputs under `x_key`, default 'x'; labels under
            `y_key`, default 'y' if present) or .npy file (inputs only).
        specs: the model's inputs; with several, the .npz keys are the
            model's input names.

    Returns:
        (inputs, labels or None, input names, notes).
    """
    p = Path(path)
    _check_readable(p)
    ext = p.suffix.lower()
    notes: list[str] = []
    if ext == ".npy":
        if y_key:
            notes.append("--y-key ignored: an .npy file holds inputs only")
        return [_read_npy(p, specs)], None, [specs[0].name] if specs else ["x"], notes
    if ext != ".npz":
        raise DataError(
            f"unsupported data format '{ext or p.name}': bngap reads .npz (x and optional y), "
            ".npy (inputs only) or a folder of images"
        )
    npz = _open_npz(p)
    # the archive stays open: its members are read batch by batch
    keys = list(npz.files)
    if not keys:
        raise DataError(f"{p} holds no arrays")
    xs, names = _npz_inputs(npz, p, keys, specs, x_key, y_key, notes)
    y = None
    if y_key:
        if y_key not in keys:
            raise DataError(
                f"{p} has no key '{y_key}' for the labels. Found keys: {', '.join(keys)}"
            )
        y = read_npz_member(npz, p, y_key)
    elif "y" in keys and "y" not in names:
        y = read_npz_member(npz, p, "y")
    return xs, y, names, notes


def _check_readable(p: Path) -> None:
    """Refuses a data file that is missing, a folder, unreadable or empty."""
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p} is a directory; image folders need the image reader")
    if not os.access(p, os.R_OK):
        raise DataError(f"cannot read data file {p}: permission denied")
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty (0 bytes)")


def _read_npy(p: Path, specs: Sequence[InputSpec]) -> np.ndarray:
    """The one input array of an .npy file, memory-mapped; refused for a multi-input model."""
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        if any(k in str(e) for k in ("allow_pickle", "Object arrays", "Python objects")):
            raise _refuse_pickle(p, None) from None
        raise DataError(f"cannot read {p} as .npy: {one_line(e)}") from None
    except (OSError, EOFError) as e:
        raise DataError(
            f"cannot read {p} as .npy (truncated or corrupted?): {one_line(e)}"
        ) from None
    if len(specs) > 1:
        raise DataError(
            f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); an .npy "
            "file holds one array. Use an .npz with one array per input name"
        )
    return arr


def _open_npz(p: Path) -> Any:
    """The .npz archive, open; a pickle or a broken archive is a one-line data error."""
    try:
        return np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if "pickled" in str(e):  # numpy's advice to allow_pickle is not ours to give
            raise DataError(
                f"{p} is not an .npz archive of arrays but a pickle; bngap never "
                "unpickles data (unpickling can run arbitrary code)"
            ) from None
        raise DataError(
            f"cannot read {p} as .npz (not a zip archive, truncated or corrupted?): "
            f"{one_line(e, 160)}"
        ) from None


def _npz_inputs(
    npz: Any,
    p: Path,
    keys: list[str],
    specs: Sequence[InputSpec],
    x_key: str | None,
    y_key: str | None,
    notes: list[str],
) -> tuple[list[Any], list[str]]:
    """(input arrays, input names) of an .npz: one key per input name for a
    multi-input model, else `x_key`, 'x', an input's name or the only key
    that is not the labels' (said in `notes`)."""
    if len(specs) > 1 and not x_key:
        names = [s.name for s in specs]
        missing = [n for n in names if n not in keys]
        if missing:
            raise DataError(
                f"the model has {len(specs)} inputs; {p} must hold one array per input, "
                f"named after them: {', '.join(names)}. Missing: {', '.join(missing)}. "
                f"Found keys: {', '.join(keys)}"
            )
        return [read_npz_member(npz, p, n) for n in names], names
    key = x_key or "x"
    if key not in keys:
        alt = [s.name for s in specs if s.name in keys]
        others = [k for k in keys if k != (y_key or "y")]
        if not x_key and alt:
            key = alt[0]
        elif not x_key and len(others) == 1:
            key = others[0]
            notes.append(f"inputs read from the only key '{key}'")
        else:
            raise DataError(
                f"{p} has no key '{key}' for the inputs. Found keys: {', '.join(keys)}; "
                "choose one with --x-key"
            )
    return [read_npz_member(npz, p, key)], [specs[0].name if specs else key]
