"""The user's inputs and labels as a `Dataset` (files, shards, image folders,
data sets, arrays), validated against the model's inputs.

Plain numpy: this module does not import TensorFlow.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .arrayfiles import read_arrays, read_npz_member
from .batchstream import BatchStream, one_shot, split_element
from .errors import DataError, one_line
from .specs import InputSpec
from .streaming import concat_rows, ensure_fits, is_rows
from .validation import target_dtype, validate

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
    dtypes: list = field(
        default_factory=list
    )  # per input: the dtype batches are cast to (None: as is)
    keyed: bool = False  # the user gave the inputs as a dict of names

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

    def subset(self, n: int) -> Dataset:
        return Dataset(
            self.take(0, n),
            _labels(self.y, 0, n),
            self.path,
            self.names,
            list(self.notes),
            keyed=self.keyed,
        )


def _labels(y, start: int, stop: int):
    """Labels of samples start..stop: one array, or one per output name."""
    if y is None:
        return None
    if isinstance(y, dict):
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in y.items()}
    return np.ascontiguousarray(y[start:stop])


def output_labels(
    source, output_names: Sequence[str], samples: int, limit: int | None = None
) -> dict[str, np.ndarray] | None:
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
                    found[n] = read_npz_member(npz, p, key)
    if not found:
        return None
    out = {}
    for n, a in found.items():
        a = a[:limit] if limit is not None and a.ndim else a
        if not a.ndim or len(a) != samples:
            raise DataError(
                f"labels of output '{n}' hold {len(a) if a.ndim else 0} values for "
                f"{samples} samples; give one label per sample"
            )
        out[n] = a
    return out


def load_data(
    path: str | os.PathLike,
    specs: Sequence[InputSpec] = (),
    *,
    x_key: str | None = None,
    y_key: str | None = None,
    limit: int | None = None,
    preprocess: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
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
    paths = data_paths(path)
    if len(paths) > 1:
        shown = (
            os.fspath(path)
            if isinstance(path, (str, os.PathLike))
            else ", ".join(map(os.fspath, path))
        )
        return _load_shards(paths, shown, specs, x_key=x_key, y_key=y_key, limit=limit)
    p = paths[0]
    if saved_dataset(p):
        return _load_saved_dataset(p, specs, limit)
    if p.is_dir():
        from .images import read_image_folder

        xs, y, names, notes = read_image_folder(
            p, specs, limit=limit, preprocess=preprocess, image_size=image_size
        )
    else:
        xs, y, names, notes = read_arrays(p, specs=specs, x_key=x_key, y_key=y_key)
        if preprocess:
            notes.append("--preprocess applies to image folders only; ignored")
    return _finish(xs, y, specs, names, notes, str(p), limit)


def _load_saved_dataset(p: Path, specs: Sequence[InputSpec], limit: int | None) -> Dataset:
    """A directory written by `tf.data.Dataset.save`, read as a stream.

    Side effects: imports TensorFlow.
    """
    from .backend import import_keras

    import_keras()  # TensorFlow reads the directory (its spec is a proto, not a pickle)
    import tensorflow as tf

    ds, why = None, None
    for compression in (None, "GZIP", "SNAPPY"):  # the directory does not say which
        try:
            ds = tf.data.Dataset.load(str(p), compression=compression)
            next(iter(ds.take(1)), None)
            break
        except Exception as e:  # noqa: BLE001 - TensorFlow's own reading errors
            ds, why = None, why or e
    if ds is None:
        raise DataError(
            f"cannot read {p} as a saved tf.data dataset: {one_line(why, 160)}"
        ) from None
    data = from_stream(ds, specs, limit=limit, what=f"the dataset saved in {p}")
    data.path = str(p)
    return data


def data_paths(given) -> list[Path]:
    """The files behind DATA: one path, several, or globs ('shards/*.npz')."""
    items = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if not os.path.exists(text) and glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise DataError(f"no data files match {text}")
            out.extend(Path(f) for f in found)
        else:
            out.append(Path(text))
    if not out:
        raise DataError("no data given")
    return out


def is_data_path(x) -> bool:
    """A path, or a list of paths (shards), as opposed to arrays or a dataset."""
    if isinstance(x, (str, os.PathLike)):
        return True
    return (
        isinstance(x, (list, tuple))
        and bool(x)
        and all(isinstance(a, (str, os.PathLike)) for a in x)
    )


def saved_dataset(p: Path) -> bool:
    """A directory written by tf.data.Dataset.save."""
    return p.is_dir() and (p / "dataset_spec.pb").is_file()


def _load_shards(
    paths: list[Path], shown: str, specs: Sequence[InputSpec], *, x_key, y_key, limit: int | None
) -> Dataset:
    """Several .npz/.npy files read as one data set, in the order given."""
    for p in paths:
        if p.is_dir() or p.suffix.lower() not in (".npz", ".npy"):
            raise DataError(f"several DATA paths must all be .npz or .npy files. Received: {p}")
    parts = [read_arrays(p, specs=specs, x_key=x_key, y_key=y_key) for p in paths]
    names, notes = parts[0][2], list(parts[0][3])
    if any(pt[2] != names for pt in parts):
        raise DataError(
            f"the shards hold different inputs: {names} in {paths[0]}, "
            f"{next(pt[2] for pt in parts if pt[2] != names)} in another"
        )
    labelled = [pt[1] is not None for pt in parts]
    if any(labelled) and not all(labelled):
        raise DataError(
            f"some shards have labels and some do not (none in {paths[labelled.index(False)]})"
        )
    what = f"{len(paths)} shards"
    xs = [
        concat_rows([pt[0][i] for pt in parts], f"input '{names[i]}' of {what}")
        for i in range(len(names))
    ]
    y = concat_rows([pt[1] for pt in parts], f"the labels of {what}") if all(labelled) else None
    notes.append(
        f"read {what} in this order: {', '.join(p.name for p in paths[:4])}"
        f"{', ...' if len(paths) > 4 else ''}"
    )
    return _finish(xs, y, specs, names, notes, shown, limit)


def _finish(
    xs, y, specs, names, notes, path: str, limit: int | None, keyed: bool = False
) -> Dataset:
    if limit is not None and all(a.ndim for a in xs) and (y is None or y.ndim):
        total = xs[0].shape[0]
        xs = [a[:limit] for a in xs]
        y = None if y is None else y[:limit]
        if total > limit:
            notes.append(f"used the first {limit} of {total} samples (--limit)")
    xs, y = validate(xs, y, specs, names, notes)
    dtypes = [
        target_dtype(a, specs[i] if i < len(specs) else None, "", []) if is_rows(a) else None
        for i, a in enumerate(xs)
    ]
    return Dataset(xs, y, path, names, notes, dtypes, keyed=keyed)


def is_stream(x) -> bool:
    """A tf.data.Dataset or another iterable of batches (not arrays)."""
    if isinstance(x, list) and x and isinstance(x[0], (tuple, dict)):
        return True  # a list of (x, y) batches; a list of arrays is one array per input
    if isinstance(x, (np.ndarray, dict, list, tuple, str, bytes)) or hasattr(x, "__array__"):
        return False
    return hasattr(x, "__iter__")


def from_stream(
    ds, specs: Sequence[InputSpec] = (), limit: int | None = None, what: str | None = None
) -> Dataset:
    """A validated Dataset over a tf.data.Dataset or an iterable of numpy
    batches (x, (x,), (x, y) or (x, y, sample_weight) elements, batched or
    not), read batch by batch and re-batched to bngap's batch size.

    A re-iterable source (a tf.data.Dataset, a list, a DataLoader) streams;
    a one-shot iterator (a generator) is read into memory once.
    """
    names = [s.name for s in specs]
    notes: list[str] = []
    kind = type(ds).__name__
    what = what or f"the {kind}"
    if hasattr(ds, "element_spec") and hasattr(ds, "as_numpy_iterator"):  # tf.data
        import tensorflow as tf

        card = int(ds.cardinality())
        if card == tf.data.INFINITE_CARDINALITY and limit is None:
            raise DataError(f"{what} is infinite (repeat()); pass limit=N (--limit N)")
        source: Any = ds
        xs0, _, _ = split_element(ds.element_spec, names)
        unbatched = _unbatched([len(t.shape) for t in tf.nest.flatten(xs0)], specs)
        if unbatched:  # whole batches cross into numpy faster than single samples
            source, unbatched = ds.batch(256), False
        make = source.as_numpy_iterator
    else:
        if one_shot(ds):
            ds = _read_once(ds, specs, limit, what)
            notes.append(
                f"{what} is a one-shot iterator: read into memory (pass a re-iterable, "
                "e.g. a list or a tf.data.Dataset, to stream data bigger than memory)"
            )
        first = next(iter(ds), None)
        if first is None:
            raise DataError(f"{what} yielded no samples")
        xs0, _, _ = split_element(first, names)
        unbatched = _unbatched([np.ndim(a) for a in xs0], specs)
        make = lambda: iter(ds)  # noqa: E731
    stream = BatchStream(make, names, unbatched, what)
    xs, y = stream.columns(limit)
    if not names or len(names) != len(xs):
        names = names if len(names) == len(xs) else [f"x{i}" for i in range(len(xs))]
    return _finish(xs, y, specs, names, notes, f"<{kind}>", None, keyed=stream.keyed)


def _unbatched(ranks: list[int], specs: Sequence[InputSpec]) -> bool:
    """Elements are single samples: every input one rank short of the
    model's (which counts the batch axis). Otherwise they are batches."""
    return (
        len(ranks) == len(specs) > 0
        and all(s.shape is not None for s in specs)
        and all(r == len(s.shape) - 1 for r, s in zip(ranks, specs))
    )


def _read_once(it, specs: Sequence[InputSpec], limit: int | None, what: str) -> list:
    """A one-shot iterator's elements, kept (up to `limit` samples)."""
    items, n, size = [], 0, 0
    for elem in it:
        xs, y, _ = split_element(elem, [s.name for s in specs])
        size += sum(np.asarray(a).nbytes for a in xs) + (0 if y is None else np.asarray(y).nbytes)
        ensure_fits(2 * size, f"{what} (a one-shot iterator, kept in memory for several passes)")
        items.append(elem)
        n += 1 if _unbatched([np.ndim(a) for a in xs], specs) else len(np.asarray(xs[0]))
        if limit is not None and n >= limit:
            break
    return items


def from_arrays(x, y=None, specs: Sequence[InputSpec] = (), limit: int | None = None) -> Dataset:
    """A validated Dataset from in-memory arrays (the Python API's path).

    `x` is an array, or a list/dict of arrays for a multi-input model; a
    tf.data.Dataset or an iterable of batches streams (`from_stream`).
    """
    if is_stream(x):
        if y is not None:
            raise DataError("labels come from the dataset itself: give (x, y) elements, not y=")
        return from_stream(x, specs, limit=limit)
    if isinstance(x, dict):
        names = [s.name for s in specs] if specs else list(x)
        missing = [n for n in names if n not in x]
        if missing:
            raise DataError(
                f"inputs missing for: {', '.join(missing)}. Received keys: {', '.join(x)}"
            )
        xs = [np.asarray(x[n]) for n in names]
    elif isinstance(x, (list, tuple)):
        xs = [np.asarray(a) for a in x]
        names = (
            [s.name for s in specs] if len(specs) == len(xs) else [f"x{i}" for i in range(len(xs))]
        )
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
