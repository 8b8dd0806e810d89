"""Arrays read row range by row range: .npz members (memory-mapped or
streamed), shards joined end to end, and iterables of batches (tf.data).

Peak memory depends on the rows asked for, not on the file. Plain numpy:
this module does not import TensorFlow.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

# Members smaller than this are read whole, as numpy would (one read, then
# every pass runs from memory); larger ones stay on disk and are read by rows.
READ_WHOLE_BELOW = 16 * 2**20


# ------------------------------------------------------------------ memory
def memory_available() -> int | None:
    """Bytes this process may still allocate: the least of the free system
    memory, the cgroup's room and the address-space limit (None: unknown)."""
    room: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    room.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, used_file in (
        ("memory.max", "memory.current"),  # cgroup v2, then v1
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:  # v1 writes a huge number for "none"
                room.append(int(limit) - int(Path("/sys/fs/cgroup", used_file).read_text()))
            break
        except (OSError, ValueError):
            continue
    try:
        import resource  # not on Windows
    except ImportError:
        return max(0, min(room)) if room else None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status") as f:
                vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
            room.append(soft - vm)
        except (OSError, StopIteration):
            pass
    return max(0, min(room)) if room else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def ensure_fits(nbytes: int, what: str, hint: str = "") -> None:
    """Raises a DataError, before allocating, when `nbytes` cannot fit."""
    room = memory_available()
    if room is not None and nbytes > room:
        raise DataError(
            f"{what} needs {_gb(nbytes)} in memory at once, more than the {_gb(room)} "
            f"this process can still allocate{hint}"
        )


class ObjectArray(DataError):
    """An array of Python objects: only pickle could read it."""


# -------------------------------------------------------------- row arrays
class RowArray:
    """A read-only array whose rows are read on demand.

    Numpy-like enough for bngap's readers: `shape`, `dtype`, `ndim`, `len`,
    `a[i:j]` (another RowArray, nothing read) and `np.asarray(a)` (reads
    those rows). `reader(start, stop)` returns rows start..stop as an array.
    """

    def __init__(
        self,
        reader: Callable[[int, int], np.ndarray],
        shape: tuple,
        dtype,
        what: str,
        start: int = 0,
        stop: int | None = None,
    ):
        self._reader, self._full, self.dtype, self._what = (
            reader,
            tuple(shape),
            np.dtype(dtype),
            what,
        )
        self._start = start
        self._stop = self._full[0] if stop is None else stop

    @property
    def shape(self) -> tuple:
        return (self._stop - self._start,) + self._full[1:]

    @property
    def ndim(self) -> int:
        return len(self._full)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(len(self))
            return RowArray(
                self._reader,
                self._full,
                self.dtype,
                self._what,
                self._start + a,
                self._start + max(a, b),
            )
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} rows")
            return self[i : i + 1].__array__()[0]
        return self.__array__()[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        ensure_fits(
            self.nbytes,
            f"reading {len(self)} samples of {self._what}",
            "; a smaller --batch-size needs less",
        )
        try:
            arr = self._reader(self._start, self._stop)
        except MemoryError:
            raise DataError(
                f"out of memory reading {len(self)} samples of {self._what} ({_gb(self.nbytes)})"
            ) from None
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowArray({self._what}, shape={self.shape}, dtype={self.dtype})"


def is_rows(a: Any) -> bool:
    """True for arrays that stay on disk or in a stream until sliced."""
    return isinstance(a, (np.memmap, RowArray))


# ------------------------------------------------------------- npz members
def _local_data_offset(fh, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose name and
    extra field lengths may differ from the central directory's."""
    fh.seek(info.header_offset)
    head = fh.read(30)
    if head[:4] != b"PK\x03\x04":
        raise DataError(f"bad zip local header for member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_header(f, label: str) -> tuple[tuple, bool, np.dtype]:
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(f)
        else:
            # version 3.0 (utf-8 field names): numpy reads it only through a private helper
            shape, fortran, dtype = npf._read_array_header(f, version)  # type: ignore[attr-defined]
    except ValueError as e:
        raise DataError(f"cannot read {label} as an array: {str(e)[:160]}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {label} (corrupted?): {str(e)[:160]}") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


class _Stream:
    """One compressed member, read forward; a backward read starts over.
    It holds its own handle on the archive, open as long as it is used."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, label: str, shape, dtype):
        self.zf, self.info, self.label = zipfile.ZipFile(path), info, label
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.shape, self.dtype = shape, dtype
        self.f: Any = None  # the open member (zipfile.ZipExtFile)
        self.start = 0  # the member offset of row 0

    def read(self, a: int, b: int) -> np.ndarray:
        if self.f is None:
            self.f = self.zf.open(self.info)
            _read_header(self.f, self.label)
            self.start = self.f.tell()
        out = np.empty((b - a,) + tuple(self.shape[1:]), self.dtype)
        view, want, got = out.reshape(-1).view(np.uint8).data, (b - a) * self.row, 0
        try:
            self.f.seek(self.start + a * self.row)  # forward: decompressed and dropped in chunks
            while got < want:  # into the array, a piece at a time: no whole-size temporaries
                piece = self.f.read1(min(want - got, 2**18))
                if not piece:
                    raise DataError(f"{self.label} is truncated: rows {a}..{b} are missing")
                view[got : got + len(piece)] = piece
                got += len(piece)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"cannot read {self.label} (corrupted?): {str(e)[:160]}") from None
        return out


def npz_member(path: Path, zf: zipfile.ZipFile, key: str) -> np.ndarray | RowArray:
    """Member `key` of an open .npz, without reading its data: memory-mapped
    when the archive stores it uncompressed, else streamed row by row.

    Raises:
        DataError: object (pickled) arrays, encrypted or unreadable members.
    """
    label = f"key '{key}' of {path}"
    info = zf.getinfo(key + ".npy")
    if info.flag_bits & 0x1:
        raise DataError(f"{label} is encrypted")
    with zf.open(info) as f:
        shape, fortran, dtype = _read_header(f, label)
        header_len = f.tell()
    if dtype.hasobject:
        raise ObjectArray(label)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not shape or nbytes < READ_WHOLE_BELOW:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as fh:
            offset = _local_data_offset(fh, info) + header_len
        if nbytes == 0:
            return np.zeros(shape, dtype)
        return np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
    if fortran:  # columns first: no row is contiguous, read it whole
        ensure_fits(nbytes, f"{label} (Fortran order, compressed: read whole)")
        return np.lib.format.read_array(zf.open(info), allow_pickle=False)
    stream = _Stream(path, info, label, shape, dtype)
    return RowArray(stream.read, shape, dtype, label)


# ------------------------------------------------------------------ shards
def concat_rows(parts: Sequence[Any], what: str) -> Any:
    """Arrays joined along the first axis without reading them."""
    if len(parts) == 1:
        return parts[0]
    inner = {tuple(p.shape[1:]) for p in parts}
    if len(inner) != 1 or len({p.ndim for p in parts}) != 1:
        raise DataError(
            f"the shards of {what} have different sample shapes: "
            f"{', '.join(str(tuple(p.shape)) for p in parts)}"
        )
    dtype = np.result_type(*[p.dtype for p in parts])
    bounds = np.cumsum([0] + [len(p) for p in parts])

    def read(a: int, b: int) -> np.ndarray:
        out = []
        for k, p in enumerate(parts):
            lo, hi = max(a, bounds[k]), min(b, bounds[k + 1])
            if lo < hi:
                out.append(np.asarray(p[lo - bounds[k] : hi - bounds[k]], dtype=dtype))
        return np.concatenate(out) if len(out) != 1 else out[0]

    return RowArray(read, (int(bounds[-1]),) + inner.pop(), dtype, what)


# --------------------------------------------------------------- iterables
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
