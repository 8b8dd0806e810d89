"""The report's charts as inline SVG strings.

Divergence along the depth, the BatchNormalization audit, horizontal bars,
and before/after pairs. Each chart is one `<svg class="chart">` whose drawn
data points carry `class="mark"` and a `<title>` (the browser shows it on
hover).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from .svg import (
    BAR,
    KIND_COLOR,
    LEFT,
    RIGHT,
    SEVERITY_COLOR,
    WIDTH,
    Columns,
    YAxis,
    coord,
    frame,
    label,
    legend_row,
    nice_max,
    shorten,
    x_ticks,
    y_axis,
)


@dataclass(frozen=True)
class DepthPoint:
    """One layer along the model's depth."""

    path: str
    class_name: str
    kind: str
    divergence: float | None
    own: float | None
    mode_dependent: bool


DEPTH_LEGEND = [
    ("bar", BAR, "divergence"),
    ("dot", "#c0392b", "own contribution"),
    ("bar", KIND_COLOR["batchnorm"], "batchnorm"),
    ("bar", KIND_COLOR["dropout"], "dropout/noise"),
    ("bar", KIND_COLOR["augmentation"], "augmentation"),
    ("bar", KIND_COLOR["other"], "other"),
]


def depth_chart(points: list[DepthPoint], opens_at: int | None, title: str) -> str:
    """Divergence of each layer's output along the depth (bars), the own
    contribution of mode-dependent layers (dots), and a strip under the axis
    marking the mode-dependent layers by kind; `opens_at` (an index) gets a
    dashed line and its name."""
    top, plot_h = 40, 190
    axis = y_axis(top, plot_h, [v for p in points for v in (p.divergence, p.own)])
    cols = Columns(LEFT, WIDTH - RIGHT, len(points))
    bar_w = min(max(cols.band * 0.8, 0.6), 56)
    base = top + plot_h
    strip = base + 6
    bars = _divergence_bars(points, axis, cols, bar_w, base)
    kinds = _mode_strip(points, cols, max(bar_w, 2), strip)
    dots = _own_dots(points, axis, cols, min(3.5, max(1.6, cols.band * 0.45)))
    body = axis.draw(cols.x0, cols.x1, "relative L2, training vs inference")
    body += bars + kinds + dots
    body.append(
        f'<line x1="{coord(cols.x0)}" x2="{coord(cols.x1)}" y1="{coord(base)}" y2="{coord(base)}" '
        f'stroke="#777"/>'
    )
    body += x_ticks(cols.n, cols.x, strip + 10)
    body.append(
        f'<text x="{coord((cols.x0 + cols.x1) / 2)}" y="{coord(strip + 40)}" text-anchor="middle" '
        f'fill="#555">layers in call order (1 = first); the strip marks mode-dependent layers</text>'
    )
    if opens_at is not None and 0 <= opens_at < cols.n:
        body += _opens_marker(points[opens_at].path, cols, opens_at, top, base)
    body += legend_row(DEPTH_LEGEND, cols.x1, 14)
    return frame(strip + 50, title, len(bars) + len(kinds) + len(dots), body)


def _divergence_bars(
    points: list[DepthPoint], axis: YAxis, cols: Columns, bar_w: float, base: float
) -> list[str]:
    """A bar per layer up to its output's divergence (marks)."""
    out = []
    for i, p in enumerate(points):
        if p.divergence is None:
            continue
        y = axis.y(p.divergence)
        out.append(
            f'<rect class="mark divergence" x="{coord(cols.x(i) - bar_w / 2)}" y="{coord(y)}" '
            f'width="{coord(bar_w)}" height="{coord(base - y)}" fill="{BAR}">'
            f"<title>{i + 1}. {escape(p.path)} ({escape(p.class_name)}): divergence "
            f"{label(p.divergence)}</title></rect>"
        )
    return out


def _mode_strip(points: list[DepthPoint], cols: Columns, width: float, y: float) -> list[str]:
    """A swatch under the axis for each mode-dependent layer, coloured by kind (marks)."""
    out = []
    for i, p in enumerate(points):
        if not p.mode_dependent:
            continue
        color = KIND_COLOR.get(p.kind, KIND_COLOR["other"])
        out.append(
            f'<rect class="mark mode-dependent" x="{coord(cols.x(i) - width / 2)}" y="{coord(y)}" '
            f'width="{coord(width)}" height="8" fill="{color}">'
            f"<title>{escape(p.path)}: {escape(p.kind)} (mode-dependent)</title></rect>"
        )
    return out


def _own_dots(points: list[DepthPoint], axis: YAxis, cols: Columns, radius: float) -> list[str]:
    """A dot at each mode-dependent layer's own contribution (marks); `radius`
    shrinks on dense models so that the dots still show."""
    out = []
    for i, p in enumerate(points):
        if p.own is None:
            continue
        out.append(
            f'<circle class="mark own" cx="{coord(cols.x(i))}" cy="{coord(axis.y(p.own))}" '
            f'r="{coord(radius)}" fill="#fff" stroke="#c0392b" stroke-width="2">'
            f"<title>{escape(p.path)}: own contribution {label(p.own)}</title></circle>"
        )
    return out


def _opens_marker(path: str, cols: Columns, at: int, top: float, base: float) -> list[str]:
    """A dashed line at the layer where the gap opens, and its name on the
    side with room for it."""
    x = cols.x(at)
    anchor = "start" if x < (cols.x0 + cols.x1) / 2 else "end"
    dx = 4 if anchor == "start" else -4
    return [
        f'<line x1="{coord(x)}" x2="{coord(x)}" y1="{coord(top)}" y2="{coord(base)}" stroke="#333" '
        f'stroke-dasharray="4 3"/>',
        f'<text x="{coord(x + dx)}" y="{coord(top + 12)}" text-anchor="{anchor}" fill="#333">'
        f"gap opens: {escape(shorten(path, 48))}</text>",
    ]


@dataclass(frozen=True)
class BNPoint:
    """One BatchNormalization layer's audit numbers."""

    path: str
    severity: str
    median_abs_z: float | None
    log2_var: float | None
    local_gap: float | None
    noise: float | None


BN_LEGEND = [
    ("bar", SEVERITY_COLOR["ok"], "ok"),
    ("bar", SEVERITY_COLOR["warn"], "warn"),
    ("bar", SEVERITY_COLOR["fail"], "fail"),
    ("tick", "#222", "noise"),
]


def batchnorm_chart(points: list[BNPoint], title: str) -> str:
    """Three panels sharing the BN layers (call order) as x: median |z|,
    median |log2 variance ratio|, and the expected local gap (bars) against
    its sampling noise (black ticks). Bars are coloured by severity."""
    cols = Columns(LEFT, WIDTH - RIGHT, len(points))
    bar_w = min(max(cols.band * 0.75, 0.8), 56)  # few layers: bars, not slabs
    panels = [
        ("median |z| (mean shift in moving standard deviations)", [p.median_abs_z for p in points]),
        ("median |log2 variance ratio| (data / moving)", [p.log2_var for p in points]),
        ("expected local gap (bar) and its noise (tick)", [p.local_gap for p in points]),
    ]
    body: list[str] = []
    marks = 0
    top, panel_h, gap_h = 40, 95, 34
    for k, (caption, values) in enumerate(panels):
        ptop = top + k * (panel_h + gap_h)
        noise = [p.noise for p in points] if k == 2 else []
        axis = y_axis(ptop, panel_h, list(values) + noise)
        body += axis.draw(cols.x0, cols.x1, caption)
        drawn = _severity_bars(points, values, axis, cols, bar_w)
        if noise:
            drawn += _noise_ticks(points, axis, cols, max(bar_w, 3))
        base = ptop + panel_h
        body += drawn
        body.append(
            f'<line x1="{coord(cols.x0)}" x2="{coord(cols.x1)}" y1="{coord(base)}" '
            f'y2="{coord(base)}" stroke="#777"/>'
        )
        marks += len(drawn)
    bottom = top + 3 * panel_h + 2 * gap_h
    body += x_ticks(cols.n, cols.x, bottom)
    body.append(
        f'<text x="{coord((cols.x0 + cols.x1) / 2)}" y="{coord(bottom + 32)}" '
        f'text-anchor="middle" fill="#555">'
        f"BatchNormalization layers in call order (numbers as in the table below)</text>"
    )
    body += legend_row(BN_LEGEND, cols.x1, 14)
    return frame(bottom + 42, title, marks, body)


def _severity_bars(
    points: list[BNPoint], values: list[float | None], axis: YAxis, cols: Columns, bar_w: float
) -> list[str]:
    """A bar per BN layer up to its value in one panel, coloured by the
    layer's severity (marks)."""
    out = []
    base = axis.top + axis.height
    for i, (p, v) in enumerate(zip(points, values)):
        if v is None or not math.isfinite(v):
            continue
        y = axis.y(v)
        out.append(
            f'<rect class="mark bn" x="{coord(cols.x(i) - bar_w / 2)}" y="{coord(y)}" '
            f'width="{coord(bar_w)}" height="{coord(base - y)}" '
            f'fill="{SEVERITY_COLOR.get(p.severity, BAR)}">'
            f"<title>{i + 1}. {escape(p.path)} ({p.severity}): {label(v)}</title></rect>"
        )
    return out


def _noise_ticks(points: list[BNPoint], axis: YAxis, cols: Columns, width: float) -> list[str]:
    """A black tick at each BN layer's sampling noise of its local gap (marks)."""
    out = []
    for i, p in enumerate(points):
        if p.noise is None or not math.isfinite(p.noise):
            continue
        y = axis.y(p.noise)
        out.append(
            f'<rect class="mark noise" x="{coord(cols.x(i) - width / 2)}" y="{coord(y - 1)}" '
            f'width="{coord(width)}" height="2" fill="#222">'
            f"<title>{escape(p.path)}: noise {label(p.noise)}</title></rect>"
        )
    return out


def hbar_chart(rows: Sequence[tuple[str, float | None, str]], title: str, caption: str) -> str:
    """Horizontal bars, one row each: (label, value, colour)."""
    label_w = min(360, 40 + 6.6 * max((len(r[0]) for r in rows), default=4))
    x0, x1 = label_w, WIDTH - 90
    top, row_h = 30, 26
    axis_vals = [v for _, v, _ in rows if v is not None and math.isfinite(v)]
    vmax, _ = nice_max(max(axis_vals, default=0.0))
    body = [f'<text x="8" y="16" fill="#333" font-weight="600">{escape(caption)}</text>']
    marks = 0
    for i, (name, v, color) in enumerate(rows):
        y = top + i * row_h
        body.append(
            f'<text x="{coord(x0 - 8)}" y="{coord(y + row_h / 2 - 2)}" dy="0.35em" text-anchor="end" '
            f'fill="#333">{escape(shorten(name, 52))}</text>'
        )
        if v is None or not math.isfinite(v):
            body.append(
                f'<text x="{coord(x0 + 4)}" y="{coord(y + row_h / 2 - 2)}" dy="0.35em" fill="#777">n/a</text>'
            )
            continue
        w = (x1 - x0) * min(max(v, 0.0), vmax) / vmax
        body.append(
            f'<rect class="mark hbar" x="{coord(x0)}" y="{coord(y + 3)}" width="{coord(w)}" height="{row_h - 10}" '
            f'fill="{color}"><title>{escape(name)}: {label(v)}</title></rect>'
        )
        body.append(
            f'<text x="{coord(x0 + w + 6)}" y="{coord(y + row_h / 2 - 2)}" dy="0.35em" fill="#333">{label(v)}</text>'
        )
        marks += 1
    h = top + len(rows) * row_h
    body.append(
        f'<line x1="{coord(x0)}" x2="{coord(x0)}" y1="{top}" y2="{coord(h - 4)}" stroke="#777"/>'
    )
    return frame(h + 8, title, marks, body)


def paired_chart(
    names: list[str],
    before: list[float | None],
    after: list[float | None],
    title: str,
    caption: str,
    legend: tuple[str, str],
) -> str:
    """Two bars per item along the x axis (before, after): e.g. each BN
    layer's expected local gap with its old statistics against the noise of
    its new ones."""
    cols = Columns(LEFT, WIDTH - RIGHT, len(names))
    bar_w = min(max(cols.band * 0.38, 0.6), 28)
    top, plot_h = 40, 190
    axis = y_axis(top, plot_h, list(before) + list(after))
    base = top + plot_h
    body = axis.draw(cols.x0, cols.x1, caption)
    marks = 0
    for i, name in enumerate(names):
        cx = cols.x(i)
        for v, dx, color, what in (
            (before[i], -bar_w, "#c0392b", legend[0]),
            (after[i], 0.0, "#4c9a6a", legend[1]),
        ):
            if v is None or not math.isfinite(v):
                continue
            y = axis.y(v)
            body.append(
                f'<rect class="mark pair" x="{coord(cx + dx)}" y="{coord(y)}" width="{coord(bar_w)}" '
                f'height="{coord(base - y)}" fill="{color}"><title>{escape(name)}: {escape(what)} '
                f"{label(v)}</title></rect>"
            )
            marks += 1
    body.append(
        f'<line x1="{coord(cols.x0)}" x2="{coord(cols.x1)}" y1="{coord(base)}" y2="{coord(base)}" '
        f'stroke="#777"/>'
    )
    body += x_ticks(cols.n, cols.x, base)
    body += legend_row([("bar", "#c0392b", legend[0]), ("bar", "#4c9a6a", legend[1])], cols.x1, 14)
    return frame(base + 30, title, marks, body)
