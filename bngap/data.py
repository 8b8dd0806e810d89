"""Reading the user's inputs and labels (.npz / .npy / image folder) without
ever unpickling, and validating them against the model's inputs.

Plain numpy: this module does not import TensorFlow.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import DataError, one_line
from .specs import InputSpec

DEFAULT_BATCH_SIZE = 32  # what Model.fit() uses when no batch size is given


@dataclass
class Dataset:
    """Validated model inputs (one array per model input) and optional labels.

    Arrays may be memory-mapped: they are read batch by batch.
    """

    x: list[np.ndarray]
    y: np.ndarray | dict | None  # a dict: one label array per output name (multi-output models)
    path: str
    names: list[str]
    notes: list[str] = field(default_factory=list)
    dtypes: list = field(default_factory=list)  # per input: the dtype batches are cast to (None: as is)
    keyed: bool = False                          # the user gave the inputs as a dict of names

    def __len__(self) -> int:
        return int(self.x[0].shape[0])

    @property
    def shapes(self) -> list[tuple]:
        return [tuple(a.shape) for a in self.x]

    def batches(self, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
        """Consecutive batches of `batch_size` samples, the last one partial
        (as Model.fit() makes them); each input as a float/int array in memory."""
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self.take(start, stop), _labels(self.y, start, stop)

    def take(self, start: int, stop: int) -> list[np.ndarray]:
        """Samples start..stop of every input, in memory, in the model's dtypes."""
        dts = self.dtypes or [None] * len(self.x)
        return [np.ascontiguousarray(a[start:stop], dtype=dt) for a, dt in zip(self.x, dts)]

    def subset(self, n: int) -> "Dataset":
        return Dataset(self.take(0, n), _labels(self.y, 0, n),
                       self.path, self.names, list(self.notes), keyed=self.keyed)


def _labels(y, start: int, stop: int):
    """Labels of samples start..stop: one array, or one per output name."""
    if y is None:
        return None
    if isinstance(y, dict):
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in y.items()}
    return np.ascontiguousarray(y[start:stop])


def output_labels(source, output_names: Sequence[str], samples: int,
                  limit: int | None = None) -> dict[str, np.ndarray] | None:
    """One label array per output of a multi-output model, or None.

    `source` is an .npz path (keys `y_<output name>` or the output name
    itself) or what the caller gave as `y`: a dict by output name or a list
    in output order. Each must hold one label per sample.
    """
    found: dict[str, np.ndarray] = {}
    if isinstance(source, dict):
        found = {n: np.asarray(source[n]) for n in output_names if n in source}
    elif isinstance(source, (list, tuple)) and len(source) == len(output_names):
        found = {n: np.asarray(a) for n, a in zip(output_names, source)}
    elif isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".npz":
        p = Path(source)
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            for n in output_names:
                key = f"y_{n}" if f"y_{n}" in keys else (n if n in keys else None)
                if key is not None:
                    found[n] = _read_npz_member(npz, p, key)
    if not found:
        return None
    out = {}
    for n, a in found.items():
        a = a[:limit] if limit is not None and a.ndim else a
        if not a.ndim or len(a) != samples:
            raise DataError(f"labels of output '{n}' hold {len(a) if a.ndim else 0} values for "
                            f"{samples} samples; give one label per sample")
        out[n] = a
    return out


def _refuse_pickle(path: Path, key: str | None, err: Exception) -> DataError:
    where = f" under key '{key}'" if key else ""
    return DataError(
        f"{path}{where} holds a pickled Python object array; bngap never unpickles data "
        "(unpickling can run arbitrary code). Save plain numeric arrays, e.g. "
        "np.savez('data.npz', x=x.astype('float32'), y=y)"
    )


def _read_npz_member(npz, path: Path, key: str) -> np.ndarray:
    try:
        arr = npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise _refuse_pickle(path, key, e) from None
        raise DataError(f"cannot read key '{key}' of {path}: {one_line(e)}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"cannot read key '{key}' of {path} (corrupted?): {one_line(e)}") from None
    if arr.dtype == object:
        raise _refuse_pickle(path, key, ValueError("object array"))
    return arr


def read_arrays(path: str | os.PathLike, *, specs: Sequence[InputSpec] = (),
                x_key: str | None = None, y_key: str | None = None) -> tuple[list[np.ndarray], np.ndarray | None, list[str], list[str]]:
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
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p} is a directory; image folders need the image reader")
    if not os.access(p, os.R_OK):
        raise DataError(f"cannot read data file {p}: permission denied")
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty (0 bytes)")
    ext = p.suffix.lower()
    notes: list[str] = []
    if ext == ".npy":
        if y_key:
            notes.append("--y-key ignored: an .npy file holds inputs only")
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        except ValueError as e:
            if any(k in str(e) for k in ("allow_pickle", "Object arrays", "Python objects")):
                raise _refuse_pickle(p, None, e) from None
            raise DataError(f"cannot read {p} as .npy: {one_line(e)}") from None
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read {p} as .npy (truncated or corrupted?): {one_line(e)}") from None
        names = [specs[0].name] if specs else ["x"]
        if len(specs) > 1:
            raise DataError(
                f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); an .npy "
                "file holds one array. Use an .npz with one array per input name"
            )
        return [arr], None, names, notes
    if ext != ".npz":
        raise DataError(
            f"unsupported data format '{ext or p.name}': bngap reads .npz (x and optional y), "
            ".npy (inputs only) or a folder of images"
        )
    try:
        npz = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if "pickled" in str(e):  # numpy's advice to allow_pickle is not ours to give
            raise DataError(f"{p} is not an .npz archive of arrays but a pickle; bngap never "
                            "unpickles data (unpickling can run arbitrary code)") from None
        raise DataError(f"cannot read {p} as .npz (not a zip archive, truncated or corrupted?): "
                        f"{one_line(e, 160)}") from None
    with npz:
        keys = list(npz.files)
        if not keys:
            raise DataError(f"{p} holds no arrays")
        if len(specs) > 1 and not x_key:
            names = [s.name for s in specs]
            missing = [n for n in names if n not in keys]
            if missing:
                raise DataError(
                    f"the model has {len(specs)} inputs; {p} must hold one array per input, "
                    f"named after them: {', '.join(names)}. Missing: {', '.join(missing)}. "
                    f"Found keys: {', '.join(keys)}"
                )
            xs = [_read_npz_member(npz, p, n) for n in names]
        else:
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
            xs = [_read_npz_member(npz, p, key)]
            names = [specs[0].name if specs else key]
        y = None
        if y_key:
            if y_key not in keys:
                raise DataError(f"{p} has no key '{y_key}' for the labels. Found keys: {', '.join(keys)}")
            y = _read_npz_member(npz, p, y_key)
        elif "y" in keys and "y" not in names:
            y = _read_npz_member(npz, p, "y")
    return xs, y, names, notes


def _describe(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _target_dtype(arr: np.ndarray, spec: InputSpec | None, label: str, notes: list[str]):
    """The dtype the model needs these values in (None: as they are).

    Integer images become float (with a note); whole-number floats feed an
    integer input; anything else that does not fit is a DataError.
    """
    want = spec.dtype if spec else "float32"
    kind = arr.dtype.kind
    want_kind = np.dtype(want).kind if want not in ("string",) else "U"
    if kind == "b":
        target = np.dtype(want if want_kind in "fiu" else "float32")
        notes.append(f"{label}: boolean values cast to {target}")
        return target
    if kind in "iu" and want_kind == "f":
        notes.append(f"{label}: integer values ({arr.dtype}) cast to {want}")
        return np.dtype(want)
    if kind == "f" and want_kind in "iu":
        _check_finite(arr, label)  # NaN is not a fraction: say what it is
        whole = all(np.all(np.equal(np.mod(part, 1), 0)) for part in _chunks(arr))
        if not whole:
            raise DataError(
                f"{label} holds fractional values but the model expects integers ({want}). "
                f"Received: dtype={arr.dtype}"
            )
        notes.append(f"{label}: whole-number floats cast to {want}")
        return np.dtype(want)
    if kind in "fiu":
        if arr.dtype != np.dtype(want) and kind == "f" and want_kind == "f":
            return np.dtype(want)
        return None
    raise DataError(f"{label} must be numeric. Received: dtype={arr.dtype}")


def _chunks(arr: np.ndarray, size: int = 4096):
    """Slices of the first axis, read one at a time (memory-mapped arrays stay on disk)."""
    for start in range(0, arr.shape[0], size):
        yield np.asarray(arr[start:start + size])


def _check_finite(arr: np.ndarray, label: str, chunk: int = 4096) -> None:
    if arr.dtype.kind != "f":
        return
    nan = inf = bad_rows = 0
    for start in range(0, arr.shape[0], chunk):
        part = np.asarray(arr[start:start + chunk])
        isnan, isinf = np.isnan(part), np.isinf(part)
        nan += int(isnan.sum())
        inf += int(isinf.sum())
        if part.ndim > 1:
            bad_rows += int(np.any((isnan | isinf).reshape(part.shape[0], -1), axis=1).sum())
        else:
            bad_rows += int((isnan | isinf).sum())
    if nan or inf:
        raise DataError(
            f"{label} contains {nan} NaN and {inf} infinite values (in {bad_rows} of "
            f"{arr.shape[0]} samples); bngap needs finite inputs"
        )


def validate(xs: list[np.ndarray], y: np.ndarray | None, specs: Sequence[InputSpec],
             names: list[str], notes: list[str]) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Checks inputs against the model's input specs before any forward pass.

    Integer images are cast to float (with a note); everything else that does
    not fit is a DataError that says what was expected and what was received.
    """
    if specs and len(xs) != len(specs):
        raise DataError(
            f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}) but "
            f"{len(xs)} input array{'s were' if len(xs) != 1 else ' was'} given; give one array per input"
        )
    n = None
    out = []
    for i, arr in enumerate(xs):
        label = f"input '{names[i]}'" if len(xs) > 1 else "the input array"
        spec = specs[i] if i < len(specs) else None
        if arr.ndim == 0:
            raise DataError(f"{label} must be an array of samples. Received: a scalar")
        if arr.shape[0] == 0:
            raise DataError(f"{label} has 0 samples")
        if spec is not None:
            want = tuple(spec.shape)
            if arr.ndim != len(want):
                hint = ""
                if arr.ndim + 1 == len(want) and want[-1] == 1:
                    hint = " (add a channel axis: x[..., None])"
                raise DataError(
                    f"{label} has rank {arr.ndim} but the model expects rank {len(want)}: "
                    f"expected shape {_describe(want)}, received {_describe(arr.shape)}{hint}"
                )
            for axis, (got, exp) in enumerate(zip(arr.shape[1:], want[1:]), start=1):
                if exp is not None and got != exp:
                    raise DataError(
                        f"{label} does not fit the model: expected shape {_describe(want)}, "
                        f"received {_describe(arr.shape)} (axis {axis}: {got} != {exp})"
                    )
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise DataError(f"the model's inputs have different sample counts: {n} and {arr.shape[0]} "
                            f"('{names[0]}' vs '{names[i]}')")
        target = _target_dtype(arr, spec, label, notes)
        if target is not None and not isinstance(arr, np.memmap):
            arr = arr.astype(target)  # a memory-mapped array is cast batch by batch instead
        _check_finite(arr, label)
        out.append(arr)
    if y is not None:
        if y.ndim == 0 or y.shape[0] != n:
            raise DataError(
                f"inputs have {n} samples but the labels have "
                f"{'none (a scalar)' if y.ndim == 0 else y.shape[0]}; they must match"
            )
        if y.dtype.kind not in "biuf":
            raise DataError(f"labels must be numeric. Received: dtype={y.dtype}")
        if y.dtype.kind == "f":
            _check_finite(y, "the labels")
    return out, y


def load_data(path: str | os.PathLike, specs: Sequence[InputSpec] = (), *,
              x_key: str | None = None, y_key: str | None = None,
              limit: int | None = None, preprocess: str | None = None,
              image_size: tuple[int, int] | None = None) -> Dataset:
    """Reads and validates the user's data for a model with `specs` inputs.

    Args:
        path: .npz, .npy, or a folder of images (sub-folders = classes).
        specs: the model's inputs (from `loading.input_specs`).
        limit: use only the first `limit` samples.
        preprocess: for image folders, the preprocessing to apply.
        image_size: for image folders, (height, width); default from specs.

    Raises:
        DataError: one line saying what was expected and what was received.
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1. Received: {limit}")
    p = Path(path)
    if p.is_dir():
        from .images import read_image_folder

        xs, y, names, notes = read_image_folder(p, specs, limit=limit, preprocess=preprocess,
                                                image_size=image_size)
    else:
        xs, y, names, notes = read_arrays(p, specs=specs, x_key=x_key, y_key=y_key)
        if preprocess:
            notes.append("--preprocess applies to image folders only; ignored")
    if limit is not None and all(a.ndim for a in xs) and (y is None or y.ndim):
        total = xs[0].shape[0]
        xs = [a[:limit] for a in xs]
        y = None if y is None else y[:limit]
        if total > limit:
            notes.append(f"used the first {limit} of {total} samples (--limit)")
    xs, y = validate(xs, y, specs, names, notes)
    dtypes = [_target_dtype(a, specs[i] if i < len(specs) else None, "", []) if isinstance(a, np.memmap)
              else None for i, a in enumerate(xs)]
    return Dataset(xs, y, str(p), names, notes, dtypes)


def from_arrays(x, y=None, specs: Sequence[InputSpec] = (), limit: int | None = None) -> Dataset:
    """A validated Dataset from in-memory arrays (the Python API's path).

    `x` is an array, or a list/dict of arrays for a multi-input model.
    """
    if isinstance(x, dict):
        names = [s.name for s in specs] if specs else list(x)
        missing = [n for n in names if n not in x]
        if missing:
            raise DataError(f"inputs missing for: {', '.join(missing)}. Received keys: {', '.join(x)}")
        xs = [np.asarray(x[n]) for n in names]
    elif isinstance(x, (list, tuple)):
        xs = [np.asarray(a) for a in x]
        names = [s.name for s in specs] if len(specs) == len(xs) else [f"x{i}" for i in range(len(xs))]
    else:
        xs = [np.asarray(x)]
        names = [specs[0].name] if specs else ["x"]
    y = None if y is None else np.asarray(y)
    notes: list[str] = []
    if limit is not None:
        xs = [a[:limit] if a.ndim else a for a in xs]
        y = y if y is None or not y.ndim else y[:limit]
    xs, y = validate(xs, y, specs, names, notes)
    return Dataset(xs, y, "<in-memory>", names, notes, keyed=isinstance(x, dict))
