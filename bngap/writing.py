"""Writing files atomically: a temporary file in the same folder, then a
rename, so an interrupted run leaves the old file or the complete new one."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

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


# Report files: the format follows the extension.
REPORT_EXTENSIONS = {
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xml": "junit",
    ".txt": "text",
}


def output_format(path: str | os.PathLike, default: str | None = None) -> str | None:
    """The report format a file name asks for (`.json`, `.md`, `.html`,
    `.xml` for JUnit, `.txt`), else `default`."""
    return REPORT_EXTENSIONS.get(Path(path).suffix.lower(), default)


def plan_outputs(
    paths, formats, *, default: str | None = None, inputs=()
) -> list[tuple[Path, str]]:
    """(path, format) for each report file, checked before any work is done.

    Args:
        paths: the `--output` files, in the order given.
        formats: the formats this command can write.
        default: the format of a file whose extension names none (today's
            `--format` + `--output`), or None to refuse such a file.
        inputs: files the command reads; none may be overwritten.

    Raises:
        BngapError: a path names an input, repeats, has a format the
            command cannot write, or lies in a missing or read-only folder.
    """
    plan: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    known = ", ".join(
        sorted(
            e
            for e, f in REPORT_EXTENSIONS.items()
            if f in formats and e not in (".htm", ".markdown")
        )
    )
    for given in paths:
        out = Path(given)
        fmt = output_format(out, default)
        if fmt is None or fmt not in formats:
            what = f"a {fmt} report" if fmt else "this extension"
            raise BngapError(f"--output {given}: cannot write {what} here; use one of {known}")
        resolved = out.resolve()
        if resolved in seen:
            raise BngapError(f"--output {given} is given twice")
        seen.add(resolved)
        for source in inputs:
            if source is not None and Path(source).resolve() == resolved:
                raise BngapError(
                    f"--output {given} is one of the inputs; choose another file for the report"
                )
        folder = resolved.parent
        if not folder.is_dir():
            raise BngapError(f"cannot write {given}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise BngapError(f"cannot write {given}: permission denied")
        plan.append((out, fmt))
    return plan


def write_outputs(subject, plan, renderers) -> list[Path]:
    """Renders `subject` once per format and writes each file atomically.

    Every file is rendered before the first is written, so a renderer that
    fails leaves no file half done. Used by `check`, `fix` and `render`
    (and any command with reports to write).

    Args:
        subject: what the renderers take (a `Report`, a `FixResult`, ...).
        plan: (path, format) pairs from `plan_outputs`.
        renderers: format -> callable(subject) -> str.

    Returns:
        The paths written.
    """
    texts: dict[str, str] = {}
    for _, fmt in plan:
        if fmt not in texts:
            texts[fmt] = renderers[fmt](subject)
    return [write_atomic(path, texts[fmt]) for path, fmt in plan]
