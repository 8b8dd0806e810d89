"""Writing files atomically: a temporary file in the same folder, then a
rename, so an interrupted run leaves the old file or the complete new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import BngapError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes `data` to `path` atomically. Returns the path."""
    mode = "w" if isinstance(data, str) else "wb"

    def fill(tmp: Path) -> None:
        with open(tmp, mode, encoding="utf-8" if mode == "w" else None) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return replace_atomic(path, fill)


def replace_atomic(path: str | os.PathLike, fill: Callable[[Path], None], suffix: str = "") -> Path:
    """Calls `fill(tmp)` to write a temporary file next to `path`, then
    renames it over `path`. On any error the temporary file is removed and
    `path` is untouched."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise BngapError(f"cannot write {target}: folder {folder} does not exist")
    if target.is_dir():
        raise BngapError(f"cannot write {target}: it is a directory")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix,
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        os.replace(tmp, target)
    except PermissionError as e:
        raise BngapError(f"cannot write {target}: permission denied") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
