"""The same check on several Keras backends, each in a process of its own, compared side by side.

The backend is fixed when Keras is imported, so each backend after the first
runs `python -m bngap check ... --format json --save-outputs F.npz` with
`KERAS_BACKEND` set. The side output holds what the reports do not: the
inference outputs on the same samples, and every layer's output on the first
batch in inference mode and with only the BatchNormalization layers in
training mode (both deterministic, so that any difference is the backend's).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    "save_outputs",
    "tolerance",
]

_EXTRA = {"tensorflow": "bngap", "jax": "bngap[jax]", "torch": "bngap[torch]"}
OUTPUT_BUDGET = 64 * 2**20  # bytes of inference outputs kept for the comparison
SKETCH = 16384  # elements of each layer output kept (same positions on every backend)


# ------------------------------------------------------------ choosing backends
def library_version(backend: str) -> str | None:
    """The installed version of a backend's library, read without importing
    it (the other backends run in processes of their own)."""
    try:
        return importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        return None


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


# ------------------------------------------------------------ the side output
def _sketch(keras, out) -> np.ndarray:
    """A layer's output as float64, at most SKETCH elements at positions that
    depend only on its size (the same on every backend)."""
    parts = []
    for t in keras.tree.flatten(out):
        if t is None or not hasattr(t, "shape"):
            continue
        a = np.asarray(keras.ops.convert_to_numpy(t))
        if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
            parts.append(a.astype(np.float64).ravel())
    if not parts:
        return np.zeros(0)
    flat = np.concatenate(parts)
    if flat.size > SKETCH:
        flat = flat[np.random.default_rng(flat.size).integers(0, flat.size, SKETCH)]
    return flat


def _inference_outputs(
    model, data, keras, pack, batch_size: int
) -> tuple[list[np.ndarray], Any, int]:
    """The inference outputs of the first batches (up to OUTPUT_BUDGET bytes),
    one array per output: (arrays, the first batch's inputs, samples)."""
    first = None
    outputs: list[list[np.ndarray]] = []
    used = samples = 0
    for xs, _ in data.batches(batch_size):
        out = [
            np.asarray(keras.ops.convert_to_numpy(t))
            for t in keras.tree.flatten(model(pack(xs), training=False))
            if t is not None
        ]
        if first is None:
            first = xs
            outputs = [[] for _ in out]
        for acc, a in zip(outputs, out):
            acc.append(a)
        used += sum(a.nbytes for a in out)
        samples += len(xs[0])
        if used >= OUTPUT_BUDGET:
            break
    return [np.concatenate(acc) for acc in outputs], first, samples


def _layer_sketches(
    probe, first, keras, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every layer call's output sketch on the first batch, in inference mode
    and with only BN layers in training mode, into `arrays` (and the
    training-mode outputs): (keys by mode, class name by layer path)."""
    keys: dict[str, list[str]] = {"inference": [], "training": []}
    classes: dict[str, str] = {}
    for mode in ("inference", "training"):

        def record(node, call, out, _mode=mode):
            key = f"{node.path}#{call}"
            keys[_mode].append(key)
            classes[node.path] = node.class_name
            arrays[f"{_mode}/{key}"] = _sketch(keras, out)

        final = probe.record_pass(first, record, training=mode == "training")
        if mode == "training":
            for i, t in enumerate(t for t in keras.tree.flatten(final) if t is not None):
                arrays[f"training_output/{i}"] = np.asarray(keras.ops.convert_to_numpy(t))
    return keys, classes


def save_outputs(path: str, model, nodes, data, keras, *, batch_size: int) -> None:
    """Writes the side output of one backend's check to `path` (.npz).

    Holds the inference outputs of the first samples (up to OUTPUT_BUDGET
    bytes), and on the first batch every layer call's output sketch in
    inference mode and with only BN layers in training mode. Side effects:
    none on the model (the probe restores every variable).
    """
    from .backend import pack_inputs
    from .probe import Probe

    pack = lambda xs: pack_inputs(keras, model, xs, data.names, data.keyed)  # noqa: E731
    with Probe(model, nodes, keras, pack=pack) as probe:
        outputs, first, samples = _inference_outputs(model, data, keras, pack, batch_size)
        arrays: dict[str, np.ndarray] = {f"output/{i}": a for i, a in enumerate(outputs)}
        keys, classes = _layer_sketches(probe, first, keras, arrays)
    backend = keras.backend.backend()
    policy = getattr(model, "dtype_policy", None)
    meta = {
        "backend": backend,
        "version": library_version(backend),
        "keras": keras.__version__,
        "compute_dtype": getattr(policy, "compute_dtype", None),
        "samples": samples,
        "first_batch": len(first[0]) if first else 0,
        "layers": keys,
        "classes": classes,
    }
    # the keys all hold a "/", so none can fall on savez's allow_pickle
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


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


__all__ = ["BACKENDS", "check_across", "parse_backends", "save_outputs", "select_backend"]
