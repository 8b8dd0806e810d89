"""Saved JSON reports read back, for `bngap render` and `--baseline`: plain
Python, no TensorFlow."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BngapError
from .results import Baseline, Report


def read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in `path`.

    Raises:
        BngapError: the file is missing, unreadable, or not one JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise BngapError(
            f"{what} {path} does not exist" if not p.exists() else f"{what} {path} is not a file"
        )
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BngapError(f"{what} {path} is not a JSON report (not UTF-8 text)") from e
    except OSError as e:
        raise BngapError(f"cannot read {what} {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise BngapError(f"{what} {path} is not JSON: {e.msg} at line {e.lineno}") from e
    if not isinstance(d, dict):
        raise BngapError(f"{what} {path} is not a bngap JSON report (expected an object)")
    return d


def read_report(path: str | os.PathLike) -> Report:
    """A report that `bngap check --output r.json` wrote, as a `Report`."""
    d = read_json(path, "report")
    kind = d.get("command") or ("fix" if "before" in d and "after" in d else None)
    if kind in ("lint", "fix"):
        raise BngapError(
            f"{path} is a bngap {kind} report; bngap render reads the JSON reports of "
            f"bngap check (bngap {kind} -o FILE writes its other formats)"
        )
    try:
        return Report.from_dict(d)
    except ValueError as e:
        raise BngapError(f"{path}: {e}") from e


def read_baseline(path: str | os.PathLike) -> Baseline:
    """The numbers of an earlier report to compare with (`--baseline`)."""
    d = read_json(path, "baseline")
    try:
        return Baseline.from_report(d, str(path))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        why = str(e)
        if "not a bngap check report" not in why:
            why = f"not a bngap check report ({why})"
        raise BngapError(f"--baseline {path}: {why}") from e
