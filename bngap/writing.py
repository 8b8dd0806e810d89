"""Writing files atomically: a temporary file in the same folder, then a
rename, so an interrupted run leaves the old file or the complete new one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
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


def _create_temporary(folder: Path, suffix: str) -> Path:
    """An empty new file next to the target, with the permissions an ordinary
    new file gets (0666 less the umask), and a short name."""
    for _ in range(100):
        tmp = folder / f".bngap-{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name in {folder}")  # pragma: no cover


def replace_atomic(path: str | os.PathLike, fill: Callable[[Path], None], suffix: str = "") -> Path:
    """Calls `fill(tmp)` to write a temporary file next to `path`, then
    renames it over `path`. On any error the temporary file is removed and
    `path` is untouched. A replaced file keeps its permissions.

    Raises:
        BngapError: the folder is missing or not writable, or the name is not
            one the file system accepts.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    tmp: Path | None = None
    try:
        with _file_system_errors(target):
            if not folder.is_dir():
                raise BngapError(f"cannot write {target}: folder {folder} does not exist")
            if target.is_dir():
                raise BngapError(f"cannot write {target}: it is a directory")
            old_mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
            tmp = _create_temporary(folder, suffix or target.suffix)
        try:
            fill(tmp)
        except PermissionError as e:
            raise BngapError(f"cannot write {target}: permission denied") from e
        with _file_system_errors(target):
            if old_mode is not None:
                os.chmod(tmp, old_mode)
            os.replace(tmp, target)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return target


@contextlib.contextmanager
def _file_system_errors(target: Path):
    """The file system's refusals, as one-line errors about `target`."""
    try:
        yield
    except PermissionError as e:
        raise BngapError(f"cannot write {target}: permission denied") from e
    except OSError as e:
        raise BngapError(f"cannot write {target}: {e.strerror or e}") from e
