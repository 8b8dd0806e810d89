"""Iterables of batches (tf.data, lists, DataLoaders) read as columns of rows.

Also the element forms fit() accepts (`split_element`). Plain numpy: this
module does not import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import DataError
from .streaming import RowArray


def _leaves(obj) -> list:
    if isinstance(obj, dict):
        return [obj[k] for k in obj]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    return [obj]


def split_element(elem, names: Sequence[str]) -> tuple[list, Any, bool]:
    """(inputs, labels or None, keyed) of one element, as fit() reads it:
    (x,), (x, y), (x, y, sample_weight) or x; x an array, a tuple of arrays
    or a dict by input name."""
    if isinstance(elem, tuple) and len(elem) in (1, 2, 3):
        x, y = elem[0], (elem[1] if len(elem) > 1 else None)
    else:
        x, y = elem, None
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        if missing:
            raise DataError(
                f"the dataset's inputs miss {', '.join(missing)}. Received keys: {', '.join(x)}"
            )
        return [x[n] for n in (names or list(x))], y, True
    return _leaves(x), y, False


class BatchStream:
    """Rows of an iterable of batches, read forward; a read before the
    current position iterates again from the start (so the iterable must be
    re-iterable: a tf.data.Dataset, a list, a DataLoader).

    Args:
        make_iter: returns a new iterator of elements.
        names: the model's input names (for dict elements).
        unbatched: elements are single samples (a leading axis is added).
    """

    def __init__(
        self, make_iter: Callable[[], Iterator], names: Sequence[str], unbatched: bool, what: str
    ):
        self.make_iter, self.names, self.unbatched, self.what = (
            make_iter,
            list(names),
            unbatched,
            what,
        )
        self.it: Iterator | None = None
        self.pos = 0  # rows consumed from the iterator
        self.buf: list[np.ndarray] = []  # columns (inputs, then labels), rows buf_start..pos
        self.buf_start = 0
        self.keyed = False
        self.has_y: bool | None = None

    def _next(self) -> list[np.ndarray] | None:
        assert self.it is not None
        try:
            elem = next(self.it)
        except StopIteration:
            return None
        except DataError:
            raise
        except Exception as e:  # the user's pipeline failed: a problem with the data, not bngap
            msg = " ".join(str(e).split())[:200]
            raise DataError(f"reading {self.what} failed: {type(e).__name__}: {msg}") from None
        xs, y, self.keyed = split_element(elem, self.names)
        cols = [np.asarray(a) for a in xs] + ([] if y is None else [np.asarray(y)])
        if self.has_y is None:
            self.has_y = y is not None
        elif self.has_y != (y is not None):
            raise DataError(f"{self.what}: some elements have labels and some do not")
        if self.unbatched:
            cols = [c[None] for c in cols]
        if len({len(c) for c in cols}) != 1:
            raise DataError(
                f"{self.what}: an element's inputs and labels have different batch sizes"
            )
        return cols

    def rows(self, a: int, b: int) -> list[np.ndarray]:
        if self.it is None or a < self.buf_start:
            self.it, self.pos, self.buf, self.buf_start = iter(self.make_iter()), 0, [], 0
        pieces = [self.buf] if self.buf else []
        while self.pos < b:
            cols = self._next()
            if cols is None:
                raise DataError(
                    f"{self.what} ended after {self.pos} samples; it yielded more before "
                    "(it must give the same samples each time it is iterated)"
                )
            self.pos += len(cols[0])
            if self.pos <= a:  # wholly before the rows asked for: skipped, not kept
                self.buf_start, pieces = self.pos, []
            else:
                pieces.append(cols)
        if len(pieces) > 1:  # one concatenation per call, not one per element
            pieces = [[np.concatenate(col) for col in zip(*pieces)]]
        self.buf = pieces[0] if pieces else []
        if self.buf_start < a:  # drop rows no longer needed
            self.buf = [c[a - self.buf_start :] for c in self.buf]
            self.buf_start = a
        return [c[a - self.buf_start : b - self.buf_start] for c in self.buf]

    def scan(self, limit: int | None) -> tuple[int, list[tuple], list[np.dtype]]:
        """Counts the samples (up to `limit`), checking that every element
        has the same columns and sample shapes. Returns (samples, shapes
        without the first axis, dtypes)."""
        self.it, n = iter(self.make_iter()), 0
        shapes: list[tuple] = []
        dtypes: list[np.dtype] = []
        while limit is None or n < limit:
            cols = self._next()
            if cols is None:
                break
            got = [c.shape[1:] for c in cols]
            if not n:
                shapes, dtypes = got, [c.dtype for c in cols]
            elif got != shapes:
                raise DataError(
                    f"{self.what}: elements have different sample shapes: {shapes} and {got}"
                )
            else:
                dtypes = [np.result_type(d, c.dtype) for d, c in zip(dtypes, cols)]
            n += len(cols[0])
        self.it = None
        if not n:
            raise DataError(f"{self.what} yielded no samples")
        return (n if limit is None else min(n, limit)), shapes, dtypes

    def columns(self, limit: int | None) -> tuple[list[RowArray], RowArray | None]:
        n, shapes, dtypes = self.scan(limit)
        cols = []
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):

            def read(a, b, i=i, dtype=dtype):
                return np.asarray(self.rows(a, b)[i], dtype=dtype)

            cols.append(RowArray(read, (n,) + tuple(shape), dtype, self.what))
        if self.has_y:
            return cols[:-1], cols[-1]
        return cols, None


def one_shot(obj: Iterable) -> bool:
    """An iterator that can be read once only (a generator)."""
    return iter(obj) is obj
