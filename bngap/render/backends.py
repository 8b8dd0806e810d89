"""The side-by-side table of a check run on several Keras backends (`--backends`):
one column per backend, the reference first."""

from __future__ import annotations

from ..records import BackendRun
from ..results import Report
from .common import num, pct


def title(report: Report) -> str:
    ref = report.backends[0].backend
    return (
        f"Across backends (the same check in a process per backend; first: {ref}, whose "
        "inference outputs the others are compared with)"
    )


def head(report: Report) -> list[str]:
    return [""] + [r.backend for r in report.backends]


def _metric(run: BackendRun, mode: str, key: str) -> str:
    m = run.metrics
    if not m or key not in m.get(mode, {}):
        return "n/a"
    return (pct if key == "accuracy" else num)(m[mode][key])


def rows(report: Report) -> list[list[str]]:
    """Quantities down, backends across. A backend that could not run the
    check says so in its column (its error is in the notes)."""
    runs = report.backends

    def row(label, value):
        return [label] + [
            ("could not run" if label == "output gap (train vs inference)" else "")
            if r.error
            else value(i, r)
            for i, r in enumerate(runs)
        ]

    def layer(i, r):
        if i == 0:
            return "-"
        if not r.first_divergent_layer:
            return "none"
        return f"{r.first_divergent_layer} ({r.first_divergent_mode})"

    out = [
        ["version"] + [r.version or "n/a" for r in runs],
        row("output gap (train vs inference)", lambda i, r: num(r.relative_l2)),
        row(
            "inference vs first: max |diff|",
            lambda i, r: "-" if i == 0 else num(r.max_abs_vs_first),
        ),
        row(
            "inference vs first: rel. L2",
            lambda i, r: "-" if i == 0 else num(r.relative_l2_vs_first),
        ),
    ]
    keys = [
        k
        for k in ("loss", "accuracy")
        if any(r.metrics and k in r.metrics.get("train", {}) for r in runs)
    ]
    for k in keys:
        out.append(row(f"{k}, training mode", lambda i, r, k=k: _metric(r, "train", k)))
        out.append(row(f"{k}, inference mode", lambda i, r, k=k: _metric(r, "eval", k)))
    out.append(row("first divergent layer", layer))
    return out
