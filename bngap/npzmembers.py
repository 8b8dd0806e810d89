""".npz members opened without reading them: memory-mapped, streamed by rows, or read whole.

Plain numpy: this module does not import TensorFlow.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .streaming import RowArray, ensure_fits

# Members smaller than this are read whole, as numpy would (one read, then
# every pass runs from memory); larger ones stay on disk and are read by rows.
READ_WHOLE_BELOW = 16 * 2**20


class ObjectArray(DataError):
    """An array of Python objects: only pickle could read it."""


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
