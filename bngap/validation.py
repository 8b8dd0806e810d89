"""The user's arrays checked against the model's inputs: shapes, dtypes
(integer data cast only when whole), finite values, and labels that match.

Plain numpy, read chunk by chunk so that memory-mapped arrays stay on disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DataError
from .specs import InputSpec
from .streaming import is_rows


def _describe(shape) -> str:
    return (
        "("
        + ", ".join("None" if d is None else str(d) for d in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def target_dtype(arr: np.ndarray, spec: InputSpec | None, label: str, notes: list[str]):
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
        check_finite(arr, label)  # NaN is not a fraction: say what it is
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


CHUNK_BYTES = 2**20  # validation reads on-disk arrays this much at a time


def _chunks(arr: np.ndarray, rows: int | None = None):
    """Slices of the first axis (`rows` rows, default about CHUNK_BYTES), read
    one at a time (memory-mapped and streamed arrays stay on disk)."""
    row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    size = rows or max(1, CHUNK_BYTES // row)
    for start in range(0, arr.shape[0], size):
        yield np.asarray(arr[start : start + size])


def check_finite(arr: np.ndarray, label: str, chunk: int | None = None) -> None:
    if arr.dtype.kind != "f":
        return
    nan = inf = bad_rows = 0
    for part in _chunks(arr, chunk):
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


def _check_shape(arr: np.ndarray, spec: InputSpec | None, label: str) -> None:
    """An array of samples whose rank and fixed axes are the input's."""
    if arr.ndim == 0:
        raise DataError(f"{label} must be an array of samples. Received: a scalar")
    if arr.shape[0] == 0:
        raise DataError(f"{label} has 0 samples")
    if spec is None:
        return
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


def _check_labels(y: np.ndarray, n: int | None) -> None:
    """Numeric, finite labels, one per sample."""
    if y.ndim == 0 or y.shape[0] != n:
        raise DataError(
            f"inputs have {n} samples but the labels have "
            f"{'none (a scalar)' if y.ndim == 0 else y.shape[0]}; they must match"
        )
    if y.dtype.kind not in "biuf":
        raise DataError(f"labels must be numeric. Received: dtype={y.dtype}")
    if y.dtype.kind == "f":
        check_finite(y, "the labels")


def validate(
    xs: list[np.ndarray],
    y: np.ndarray | None,
    specs: Sequence[InputSpec],
    names: list[str],
    notes: list[str],
) -> tuple[list[np.ndarray], np.ndarray | None]:
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
        _check_shape(arr, spec, label)
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise DataError(
                f"the model's inputs have different sample counts: {n} and {arr.shape[0]} "
                f"('{names[0]}' vs '{names[i]}')"
            )
        target = target_dtype(arr, spec, label, notes)
        if target is not None and not is_rows(arr):
            arr = arr.astype(target)  # a memory-mapped array is cast batch by batch instead
        check_finite(arr, label)
        out.append(arr)
    if y is not None:
        _check_labels(y, n)
    return out, y
