"""The same check on several Keras backends, each in a process of its own, compared side by side.

The backend is fixed when Keras is imported, so each backend after the first
runs `python -m bngap check ... --format json --save-outputs F.npz` with
`KERAS_BACKEND` set. Each backend's side output (`sideoutput`) holds what
the reports do not; `comparison` sets each run against the first's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .backend import BACKENDS, installed, requested_backend, select_backend
from .comparison import (
    GAP_TOLERANCE,
    TOLERANCE,
    SideOutput,
    compare,
    divergences,
    first_divergent,
    loss_note,
    tolerance,
)
from .errors import BngapError
from .records import BackendRun
from .results import Report
from .sideoutput import library_version

__all__ = [
    "BACKENDS",
    "GAP_TOLERANCE",
    "TOLERANCE",
    "SideOutput",
    "check_across",
    "compare",
    "divergences",
    "first_divergent",
    "parse_backends",
    "run_in_process",
    "select_backend",
    "tolerance",
]

_EXTRA = {"tensorflow": "bngap", "jax": "bngap[jax]", "torch": "bngap[torch]"}


# ------------------------------------------------------------ choosing backends
def parse_backends(value: str, first: str | None = None) -> tuple[list[str], list[str]]:
    """The backends of `--backends all|LIST`, the first one first, and notes.

    `all`: every installed backend, starting with `first` (default: the
    `KERAS_BACKEND` one, else tensorflow). A named backend that is not
    installed is an error that names the extra to install.
    """
    first = first or requested_backend()
    notes: list[str] = []
    if value.strip().lower() == "all":
        order = [first] + [b for b in BACKENDS if b != first]
        chosen = [b for b in order if b in BACKENDS and installed(b)]
        missing = [b for b in order if b in BACKENDS and not installed(b)]
        if missing:
            notes.append(
                "not installed, so not compared: "
                + ", ".join(f'{b} (pip install "{_EXTRA[b]}")' for b in missing)
            )
        if not chosen:
            raise BngapError("--backends all: no Keras backend is installed")
        return chosen, notes
    chosen = []
    for name in (p.strip().lower() for p in value.split(",")):
        if not name:
            continue
        if name not in BACKENDS:
            raise BngapError(
                f"--backends takes all or a comma list of {', '.join(BACKENDS)}. Received: {name!r}"
            )
        if not installed(name):
            raise BngapError(f'the {name} backend is not installed: pip install "{_EXTRA[name]}"')
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise BngapError(f"--backends needs at least one backend. Received: {value!r}")
    return chosen, notes


# ------------------------------------------------------------ running
def _child_args(options) -> list[str]:
    """The measurement options of a check, as command-line arguments."""
    o = options
    args = [
        "--batch-size",
        str(o.batch_size),
        "--seed",
        str(o.seed),
        "--effects",
        "all" if o.effects is None else str(o.effects),
    ]
    for flag, value in (
        ("--limit", o.limit),
        ("--x-key", o.x_key),
        ("--y-key", o.y_key),
        ("--custom-objects", o.custom_objects),
        ("--preprocess", o.preprocess),
    ):
        if value is not None:
            args += [flag, str(value)]
    if o.unsafe:
        args.append("--unsafe")
    return args


def _error_line(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("error:", "internal error:")):
            return ln.split(":", 1)[1].strip() if ln.startswith("error:") else ln
    return lines[-1][:300] if lines else f"exited with status {code}"


def run_in_process(
    backend: str, model: str | os.PathLike, data: Any, options, folder: Path
) -> tuple[dict | None, Path, str | None, float]:
    """`python -m bngap check` on `backend` in a new process: (report dict or
    None, side-output path, error or None, seconds)."""
    report_path, side = folder / f"{backend}.json", folder / f"{backend}.npz"
    paths = (
        [data] if isinstance(data, (str, os.PathLike)) else list(data)
    )  # DATA may be several files
    cmd = [
        sys.executable,
        "-m",
        "bngap",
        "check",
        str(model),
        *map(str, paths),
        "--format",
        "json",
        "--output",
        str(report_path),
        "--save-outputs",
        str(side),
        "-q",
        *_child_args(options),
    ]
    env = dict(os.environ, KERAS_BACKEND=backend)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not report_path.exists() or not side.exists():
        return None, side, _error_line(proc.stderr, proc.returncode), seconds
    return json.loads(report_path.read_text()), side, None, seconds


def _require_files(model: Any, data: Any) -> None:
    """The other processes read the model and the data again: files only."""
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data or [None])
    if not isinstance(model, (str, os.PathLike)) or not all(
        isinstance(p, (str, os.PathLike)) for p in paths
    ):
        raise BngapError(
            "--backends needs the model and the data as files (each backend reads them "
            "in a process of its own)"
        )


def _run_backends(
    model: Any,
    data: Any,
    options,
    backends: list[str],
    folder: Path,
    *,
    progress=None,
    status: Callable[[str], None] | None = None,
) -> tuple[Report, SideOutput, list[BackendRun], dict[str, list[str]]]:
    """The check on every backend, the first here and the others in processes
    of their own, compared with the first: (its report, its side output, one
    run per backend, what diverged of each)."""
    from .pipeline import check

    say = status or (lambda s: None)
    first = backends[0]
    side_path = folder / f"{first}.npz"
    say(f"backend 1 of {len(backends)}: {first}")
    started = time.perf_counter()
    report = check(
        model,
        data,
        options=dataclasses.replace(options, save_outputs=str(side_path)),
        progress=progress,
        status=status,
    )
    seconds = {first: time.perf_counter() - started}
    ref = SideOutput(side_path)
    ref_dict = report.to_dict()
    reports, errors, sides = {first: ref_dict}, {}, {first: ref}
    for i, b in enumerate(backends[1:], 2):
        say(f"backend {i} of {len(backends)}: {b} (a process of its own)")
        rep, side, err, secs = run_in_process(b, model, data, options, folder)
        seconds[b] = secs
        if err:
            errors[b] = err
        else:
            assert rep is not None  # a run without an error wrote its report
            reports[b], sides[b] = rep, SideOutput(side)
    runs = []
    for b in backends:
        if b in errors:
            runs.append(
                BackendRun(
                    backend=b, version=library_version(b), error=errors[b], seconds=seconds[b]
                )
            )
        else:
            runs.append(compare(ref, sides[b], ref_dict, reports[b], seconds[b]))
    diverged = {r.backend: divergences(r, runs[0], ref, sides.get(r.backend)) for r in runs}
    return report, ref, runs, diverged


def _with_runs(
    report: Report,
    ref: SideOutput,
    runs: list[BackendRun],
    diverged: dict[str, list[str]],
    notes: Sequence[str],
) -> Report:
    """The first backend's report with the runs, a `backend_divergence`
    finding when they disagree, and notes on what was compared."""
    from .advice.backends import backend_divergence
    from .advice.ranking import ordered

    finding = backend_divergence(
        runs,
        diverged,
        tolerance=tolerance(ref.meta.get("compute_dtype")),
        dtype=ref.meta.get("compute_dtype") or "float32",
        keras_version=ref.meta.get("keras"),
    )
    findings = tuple(report.findings)
    if finding is not None:
        findings = ordered(findings + (finding,))
    extra = list(notes) + [
        f"{r.backend} could not run the check: {r.error}" for r in runs if r.error
    ]
    note = loss_note(runs, diverged, report.metrics.loss_name if report.metrics else "")
    if note:
        extra.append(note)
    extra.append(
        f"across backends: inference outputs compared on the first {runs[0].compared_samples} "
        f"samples, each layer's output on the first batch ({ref.meta['first_batch']} samples), "
        f"with {runs[0].backend} as the reference"
    )
    return dataclasses.replace(
        report, backends=tuple(runs), findings=findings, notes=tuple(report.notes) + tuple(extra)
    )


def check_across(
    model: Any,
    data: Any,
    options,
    backends: list[str],
    *,
    notes: Sequence[str] = (),
    progress=None,
    status: Callable[[str], None] | None = None,
) -> Report:
    """Checks `model` on `data` on each backend and compares them.

    The first backend runs in this process (Keras must not be imported yet
    with another backend), every other one in a process of its own. The
    report is the first backend's, with `backends` (one `BackendRun` each,
    the first included), a `backend_divergence` finding when they disagree
    beyond float tolerance, and notes.

    Args:
        model, data: paths (the other processes read them too); `data` may
            be a list of paths.
        options: `CheckOptions`; thresholds apply to the first backend's report.
        backends: names, the first being the reference.
    """
    _require_files(model, data)
    select_backend(backends[0])
    with tempfile.TemporaryDirectory(prefix="bngap-backends-") as tmp:
        report, ref, runs, diverged = _run_backends(
            model, data, options, backends, Path(tmp), progress=progress, status=status
        )
    return _with_runs(report, ref, runs, diverged, notes)
