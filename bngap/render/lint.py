"""The `bngap lint` report as text, Markdown or JSON: strings, no I/O."""

from __future__ import annotations

import json
import textwrap

from .._version import __version__
from .common import severity_mark

MAX_TEXT_ROWS = 12  # BN rows in the terminal summary beyond the flagged ones


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def lint_headline(report) -> str:
    c = report.counts()
    found = ", ".join(f"{n} {k}" for k, n in c.items() if n) or "no findings"
    n = len(report.batchnorm)
    return (
        f"{report.verdict.upper()} · bngap lint {report.path}: {found} "
        f"({n} BatchNormalization layer{'' if n == 1 else 's'})"
    )


def _flagged(report) -> set[str]:
    return {p for f in report.findings if f.rule != "mode_dependent_layers" for p in f.layers}


def _rows(report, everything: bool):
    flagged = _flagged(report)
    rows = []
    for i, b in enumerate(report.batchnorm):
        if everything or b.path in flagged or i < MAX_TEXT_ROWS:
            rows.append(
                [
                    b.path,
                    "yes" if b.path in flagged else "",
                    f"{b.momentum:g}",
                    f"{b.epsilon:g}",
                    str(b.axis),
                    str(b.channels),
                    _g(b.variance_min),
                    _g(b.variance_max),
                    ", ".join(
                        w for w, on in (("frozen", not b.trainable), ("renorm", b.renorm)) if on
                    ),
                ]
            )
    return rows


_HEAD = [
    "layer",
    "flagged",
    "momentum",
    "epsilon",
    "axis",
    "channels",
    "var min",
    "var max",
    "notes",
]


def render_lint_text(report, *, width: int = 100, all_layers: bool = False) -> str:
    wrap = textwrap.TextWrapper(width=width, initial_indent="   ", subsequent_indent="   ")
    lines = [
        lint_headline(report),
        f"bngap {__version__} · model {report.path} ({report.class_name}, {report.layers} layers, "
        f"{len(report.batchnorm)} BatchNormalization) · no data needed",
        "",
    ]
    if report.findings:
        lines.append("Findings (most severe first)")
        for i, f in enumerate(report.findings, 1):
            extra = f" ({len(f.layers)} layers)" if len(f.layers) > 1 else ""
            lines.append(f"{i}. {severity_mark(f.severity)} {f.rule} · {f.layer or 'model'}{extra}")
            lines += wrap.wrap(f.message)
            lines += wrap.wrap("fix: " + f.remedy)
    else:
        lines.append(
            "No findings: nothing in the file itself looks wrong. "
            "`bngap check MODEL DATA` measures the gap on your data."
        )
    if report.batchnorm:
        rows = _rows(report, all_layers)
        lines += ["", "BatchNormalization layers (moving variance range over channels)"]
        cols = list(zip(_HEAD, *rows))
        widths = [max(len(str(c)) for c in col) for col in cols]
        fmt = "  ".join(("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths))
        lines.append(fmt.format(*_HEAD).rstrip())
        lines.append("─" * len(fmt.format(*_HEAD).rstrip()))
        lines += [fmt.format(*r).rstrip() for r in rows]
        hidden = len(report.batchnorm) - len(rows)
        if hidden:
            lines.append(
                f"... {hidden} more unflagged layers (--all-layers lists them; JSON has all)"
            )
    for n in report.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"


def render_lint_markdown(report) -> str:
    lines = [f"## bngap lint: {lint_headline(report)}", ""]
    if report.findings:
        for i, f in enumerate(report.findings, 1):
            lines += [
                f"{i}. **{severity_mark(f.severity)} `{f.rule}`** (`{f.layer or 'model'}`): {f.message}",
                f"   *Fix:* {f.remedy}",
            ]
    else:
        lines.append("No findings.")
    if report.batchnorm:
        lines += [
            "",
            "### BatchNormalization layers",
            "",
            "| " + " | ".join(_HEAD) + " |",
            "|" + "|".join("---" for _ in _HEAD) + "|",
        ]
        lines += [
            "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"
            for r in _rows(report, True)
        ]
    lines += ["", f"<sub>bngap {__version__} · {report.class_name}, {report.layers} layers</sub>"]
    return "\n".join(lines) + "\n"


def render_lint(report, fmt: str, *, width: int = 100, all_layers: bool = False) -> str:
    """The lint report in the named format ('text', 'json' or 'markdown')."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "markdown":
        return render_lint_markdown(report)
    if fmt == "text":
        return render_lint_text(report, width=width, all_layers=all_layers)
    raise ValueError(f"unknown format {fmt!r}; expected text, json or markdown")
