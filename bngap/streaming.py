"""Arrays read row range by row range (`RowArray`), shards joined, the memory a read may take.

The readers behind them: `npzmembers` (.npz members), `batchstream`
(iterables of batches), `images`. Peak memory depends on the rows asked for,
not on the file. Plain numpy: this module does not import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


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
