"""The result of `bngap fix` in its three forms: text summary, JSON, HTML page."""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from typing import Any

from .._version import __version__
from .charts import hbar_chart, paired_chart
from .common import fix_rows, num
from .htmlpage import figure, page, table


def render_fix_result(r, fmt: str) -> str:
    """The result of `bngap fix` in the named format ('text' or 'json')."""
    if fmt == "json":
        return json.dumps(r.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "text":
        return render_fix(r)
    raise ValueError(f"unknown format {fmt!r}; expected text or json")


def fix_renderers() -> dict[str, Callable[[Any], str]]:
    """format -> renderer of a fix result, on stdout or in files (`bngap fix -o`)."""
    return {
        "json": lambda r: render_fix_result(r, "json"),
        "text": render_fix,
        "html": render_fix_html,
    }


def render_fix(r) -> str:
    """The text summary: the gap before and after, the largest corrections."""
    lines = []
    verdict = ("written to " + r.written) if r.written else "not written"
    lines.append(
        f"bngap fix: output gap {num(r.before.relative_l2)} -> {num(r.after.relative_l2)} "
        f"(relative L2, train vs inference) · {verdict}"
    )
    lines.append(
        f"re-estimated {len(r.layers)} BatchNormalization layers on {r.samples} samples "
        f"in {r.passes} passes (batch size {r.batch_size})"
    )
    lines.append("")
    rows = fix_rows(r)
    w = max(len(a) for a, _, _ in rows)
    lines.append(f"{'':<{w}}  {'before':>10}  {'after':>10}")
    for a, b, c in rows:
        lines.append(f"{a:<{w}}  {b:>10}  {c:>10}")
    lines.append("")
    if r.layers:
        worst = sorted(r.layers, key=lambda f: f.gap_before, reverse=True)[:5]
        lines.append("largest corrections (expected local gap of the old statistics on this data):")
        for f in worst:
            extra = " (frozen)" if f.frozen else ""
            lines.append(
                f"  {f.path}{extra}: {num(f.gap_before, 3)}, new statistics' noise {num(f.noise, 3)}"
            )
    if r.skipped:
        lines.append(
            f"left alone: {len(r.skipped)} layers (e.g. {r.skipped[0][0]}: {r.skipped[0][1]})"
        )
    if r.reload_max_abs_diff is not None:
        lines.append(
            f"verified: the saved file reloads and matches the fixed model (max difference {r.reload_max_abs_diff:.2g})"
        )
    for n in r.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"


def render_fix_html(r) -> str:
    """The `bngap fix` result as one self-contained HTML page: before and
    after, for the output and for each re-estimated BN layer."""
    body = _fix_header(r) + _fix_before_after(r) + _fix_per_layer(r) + _fix_left_alone(r)
    if r.reload_max_abs_diff is not None:
        body.append(
            f"<p>verified: the saved file reloads and matches the fixed model (max difference "
            f"{r.reload_max_abs_diff:.2g})</p>"
        )
    if r.notes:
        body += [
            "<h2>Notes</h2>",
            "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in r.notes) + "</ul>",
        ]
    return page(f"bngap fix: {r.before.relative_l2:.4g} -> {r.after.relative_l2:.4g}", body)


def _fix_header(r) -> list[str]:
    status = f"written to {r.written}" if r.written else "not written"
    return [
        f'<h1><span class="verdict {"pass" if r.helped else "fail"}">FIX</span>output gap '
        f"{escape(num(r.before.relative_l2))} → {escape(num(r.after.relative_l2))} · "
        f"{escape(status)}</h1>",
        f'<p class="dim">bngap {escape(__version__)} · re-estimated {len(r.layers)} '
        f"BatchNormalization layers on {r.samples} samples in {r.passes} passes (batch size "
        f"{r.batch_size})</p>",
    ]


def _fix_before_after(r) -> list[str]:
    rows = [[escape(k), before, after] for k, before, after in fix_rows(r)]
    return [
        "<h2>Before and after</h2>",
        table(["", "before", "after"], rows, numeric=(1, 2)),
        figure(
            hbar_chart(
                [
                    ("before", r.before.relative_l2, "#c0392b"),
                    ("after", r.after.relative_l2, "#4c9a6a"),
                ],
                "Output gap before and after",
                "output gap (relative L2)",
            ),
            "The output gap between training and inference mode, before and after re-estimation.",
        ),
    ]


def _fix_per_layer(r) -> list[str]:
    if not r.layers:
        return []
    rows = [
        [
            str(i),
            f"<code>{escape(f.path)}</code>" + (" (frozen)" if f.frozen else ""),
            num(f.gap_before, 3),
            num(f.noise, 3),
            str(f.level),
        ]
        for i, f in enumerate(r.layers, 1)
    ]
    return [
        "<h2>Per layer</h2>",
        figure(
            paired_chart(
                [f.path for f in r.layers],
                [f.gap_before for f in r.layers],
                [f.noise for f in r.layers],
                "Expected local gap per BN layer, before and after",
                "expected local gap",
                ("old statistics", "new statistics' noise"),
            ),
            "Per re-estimated BN layer, in call order: the expected relative change of its output "
            "that the old statistics caused on this data, and the sampling noise left in the "
            "new ones.",
        ),
        table(
            ["#", "layer", "old statistics' gap", "new statistics' noise", "level"],
            rows,
            numeric=(0, 2, 3, 4),
        ),
    ]


def _fix_left_alone(r) -> list[str]:
    if not r.skipped:
        return []
    return [
        "<h2>Left alone</h2>",
        table(["layer", "why"], [[f"<code>{escape(p)}</code>", escape(w)] for p, w in r.skipped]),
    ]
