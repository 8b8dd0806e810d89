"""Charts as inline SVG strings, hand-written: no plotting library, no script,
nothing loaded from anywhere. Each chart is one `<svg class="chart">` whose
drawn data points carry `class="mark"` (tests count them) and a `<title>`
(the browser shows it on hover)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 960
LEFT, RIGHT = 56, 16
FONT = 11
SEVERITY_COLOR = {"ok": "#4c9a6a", "info": "#4a7fb5", "warn": "#d49a1a", "fail": "#c0392b"}
KIND_COLOR = {
    "batchnorm": "#c0392b",
    "dropout": "#1f9e89",
    "noise": "#1f9e89",
    "recurrent": "#1f9e89",
    "augmentation": "#8e44ad",
    "custom_training_arg": "#d49a1a",
    "other": "#7f8c8d",
}
BAR = "#5b7db1"
LIGHT = "#9fb3d1"


def _f(v: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def label(v: float | None) -> str:
    """A value as a chart prints it: three significant digits."""
    if v is None or not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.001:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _svg(height: float, title: str, marks: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_f(height)}" '
        f'role="img" aria-label="{escape(title)}" data-marks="{marks}" '
        f'font-family="system-ui, sans-serif" font-size="{FONT}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _nice_max(v: float) -> tuple[float, float]:
    """An axis top at or above `v` and a round tick step (1, 2 or 5 x 10^k)."""
    if not math.isfinite(v) or v <= 0:
        return 1.0, 0.25
    raw = v / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(v / step - 1e-9), step


@dataclass
class _YAxis:
    top: float  # y pixel of the axis' top
    height: float  # pixels
    vmax: float
    step: float

    def y(self, v: float) -> float:
        v = min(max(v, 0.0), self.vmax)
        return self.top + self.height * (1 - v / self.vmax)

    def draw(self, x0: float, x1: float, caption: str) -> list[str]:
        out = []
        n = int(round(self.vmax / self.step))
        for i in range(n + 1):
            v = i * self.step
            y = _f(self.y(v))
            out.append(f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{y}" y2="{y}" stroke="#e3e6ea"/>')
            out.append(
                f'<text x="{_f(x0 - 6)}" y="{y}" dy="0.35em" text-anchor="end" fill="#555">{label(v)}</text>'
            )
        out.append(
            f'<text x="{_f(x0)}" y="{_f(self.top - 6)}" fill="#333" font-weight="600">{escape(caption)}</text>'
        )
        return out


def _y_axis(top: float, height: float, values) -> _YAxis:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    vmax, step = _nice_max(max(finite, default=0.0))
    return _YAxis(top, height, vmax, step)


def _x_ticks(n: int, x_of, y: float, first: int = 1) -> list[str]:
    """About ten labelled ticks along an index axis."""
    if n <= 0:
        return []
    step = max(1, int(_nice_max(n / 2.5)[1] if n > 12 else 1))
    out = []
    for i in range(0, n, step):
        x = _f(x_of(i))
        out.append(f'<line x1="{x}" x2="{x}" y1="{_f(y)}" y2="{_f(y + 4)}" stroke="#999"/>')
        out.append(
            f'<text x="{x}" y="{_f(y + 15)}" text-anchor="middle" fill="#555">{i + first}</text>'
        )
    return out


def _legend(items: list[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """(shape, colour, text) swatches in a row, right-aligned at x."""
    out, widths = [], [24 + 6.2 * len(t) for _, _, t in items]
    cx = x - sum(widths)
    for (shape, color, text), w in zip(items, widths):
        if shape == "dot":
            out.append(f'<circle cx="{_f(cx + 6)}" cy="{_f(y)}" r="4" fill="{color}"/>')
        elif shape == "tick":
            out.append(
                f'<rect x="{_f(cx + 1)}" y="{_f(y - 1.5)}" width="10" height="3" fill="{color}"/>'
            )
        else:
            out.append(
                f'<rect x="{_f(cx)}" y="{_f(y - 5)}" width="12" height="10" fill="{color}"/>'
            )
        out.append(
            f'<text x="{_f(cx + 16)}" y="{_f(y)}" dy="0.35em" fill="#333">{escape(text)}</text>'
        )
        cx += w
    return out


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


@dataclass(frozen=True)
class DepthPoint:
    """One layer along the model's depth."""

    path: str
    class_name: str
    kind: str
    divergence: float | None
    own: float | None
    mode_dependent: bool


# One chart drawn layer over layer (bars, strip, dots, marker, legend) on one shared axis: long, one job.
def depth_chart(points: list[DepthPoint], opens_at: int | None, title: str) -> str:
    """Divergence of each layer's output along the depth (bars), the own
    contribution of mode-dependent layers (dots), and a strip under the axis
    marking the mode-dependent layers by kind; `opens_at` (an index) gets a
    dashed line and its name."""
    n = len(points)
    top, plot_h = 40, 190
    axis = _y_axis(top, plot_h, [v for p in points for v in (p.divergence, p.own)])
    x0, x1 = LEFT, WIDTH - RIGHT
    band = (x1 - x0) / max(n, 1)
    bar_w = min(max(band * 0.8, 0.6), 56)

    def x_of(i: int) -> float:
        return x0 + band * (i + 0.5)

    body = axis.draw(x0, x1, "relative L2, training vs inference")
    marks = 0
    base = top + plot_h
    for i, p in enumerate(points):
        if p.divergence is None:
            continue
        y = axis.y(p.divergence)
        body.append(
            f'<rect class="mark divergence" x="{_f(x_of(i) - bar_w / 2)}" y="{_f(y)}" '
            f'width="{_f(bar_w)}" height="{_f(base - y)}" fill="{BAR}">'
            f"<title>{i + 1}. {escape(p.path)} ({escape(p.class_name)}): divergence "
            f"{label(p.divergence)}</title></rect>"
        )
        marks += 1
    strip = base + 6
    dot_r = min(3.5, max(1.6, band * 0.45))  # dense models: smaller dots that still show
    for i, p in enumerate(points):
        if not p.mode_dependent:
            continue
        color = KIND_COLOR.get(p.kind, KIND_COLOR["other"])
        body.append(
            f'<rect class="mark mode-dependent" x="{_f(x_of(i) - max(bar_w, 2) / 2)}" y="{_f(strip)}" '
            f'width="{_f(max(bar_w, 2))}" height="8" fill="{color}">'
            f"<title>{escape(p.path)}: {escape(p.kind)} (mode-dependent)</title></rect>"
        )
        marks += 1
    for i, p in enumerate(points):
        if p.own is None:
            continue
        body.append(
            f'<circle class="mark own" cx="{_f(x_of(i))}" cy="{_f(axis.y(p.own))}" r="{_f(dot_r)}" '
            f'fill="#fff" stroke="#c0392b" stroke-width="2">'
            f"<title>{escape(p.path)}: own contribution {label(p.own)}</title></circle>"
        )
        marks += 1
    body.append(
        f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(base)}" y2="{_f(base)}" stroke="#777"/>'
    )
    body += _x_ticks(n, x_of, strip + 10)
    body.append(
        f'<text x="{_f((x0 + x1) / 2)}" y="{_f(strip + 40)}" text-anchor="middle" fill="#555">'
        f"layers in call order (1 = first); the strip marks mode-dependent layers</text>"
    )
    if opens_at is not None and 0 <= opens_at < n:
        x = x_of(opens_at)
        name = _short(points[opens_at].path, 48)
        anchor = "start" if x < (x0 + x1) / 2 else "end"
        dx = 4 if anchor == "start" else -4
        body.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(top)}" y2="{_f(base)}" stroke="#333" '
            f'stroke-dasharray="4 3"/>'
        )
        body.append(
            f'<text x="{_f(x + dx)}" y="{_f(top + 12)}" text-anchor="{anchor}" fill="#333">'
            f"gap opens: {escape(name)}</text>"
        )
    body += _legend(
        [
            ("bar", BAR, "divergence"),
            ("dot", "#c0392b", "own contribution"),
            ("bar", KIND_COLOR["batchnorm"], "batchnorm"),
            ("bar", KIND_COLOR["dropout"], "dropout/noise"),
            ("bar", KIND_COLOR["augmentation"], "augmentation"),
            ("bar", KIND_COLOR["other"], "other"),
        ],
        x1,
        14,
    )
    return _svg(strip + 50, title, marks, body)


@dataclass(frozen=True)
class BNPoint:
    """One BatchNormalization layer's audit numbers."""

    path: str
    severity: str
    median_abs_z: float | None
    log2_var: float | None
    local_gap: float | None
    noise: float | None


def batchnorm_chart(points: list[BNPoint], title: str) -> str:
    """Three panels sharing the BN layers (call order) as x: median |z|,
    median |log2 variance ratio|, and the expected local gap (bars) against
    its sampling noise (black ticks). Bars are coloured by severity."""
    n = len(points)
    x0, x1 = LEFT, WIDTH - RIGHT
    band = (x1 - x0) / max(n, 1)
    bar_w = min(max(band * 0.75, 0.8), 56)  # few layers: bars, not slabs

    def x_of(i: int) -> float:
        return x0 + band * (i + 0.5)

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
        extra = [p.noise for p in points] if k == 2 else []
        axis = _y_axis(ptop, panel_h, list(values) + extra)
        body += axis.draw(x0, x1, caption)
        base = ptop + panel_h
        for i, (p, v) in enumerate(zip(points, values)):
            if v is None or not math.isfinite(v):
                continue
            y = axis.y(v)
            body.append(
                f'<rect class="mark bn" x="{_f(x_of(i) - bar_w / 2)}" y="{_f(y)}" width="{_f(bar_w)}" '
                f'height="{_f(base - y)}" fill="{SEVERITY_COLOR.get(p.severity, BAR)}">'
                f"<title>{i + 1}. {escape(p.path)} ({p.severity}): {label(v)}</title></rect>"
            )
            marks += 1
        if k == 2:
            for i, p in enumerate(points):
                if p.noise is None or not math.isfinite(p.noise):
                    continue
                y = axis.y(p.noise)
                body.append(
                    f'<rect class="mark noise" x="{_f(x_of(i) - max(bar_w, 3) / 2)}" y="{_f(y - 1)}" '
                    f'width="{_f(max(bar_w, 3))}" height="2" fill="#222">'
                    f"<title>{escape(p.path)}: noise {label(p.noise)}</title></rect>"
                )
                marks += 1
        body.append(
            f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(base)}" y2="{_f(base)}" stroke="#777"/>'
        )
    bottom = top + 3 * panel_h + 2 * gap_h
    body += _x_ticks(n, x_of, bottom)
    body.append(
        f'<text x="{_f((x0 + x1) / 2)}" y="{_f(bottom + 32)}" text-anchor="middle" fill="#555">'
        f"BatchNormalization layers in call order (numbers as in the table below)</text>"
    )
    body += _legend(
        [
            ("bar", SEVERITY_COLOR["ok"], "ok"),
            ("bar", SEVERITY_COLOR["warn"], "warn"),
            ("bar", SEVERITY_COLOR["fail"], "fail"),
            ("tick", "#222", "noise"),
        ],
        x1,
        14,
    )
    return _svg(bottom + 42, title, marks, body)


def hbar_chart(rows: Sequence[tuple[str, float | None, str]], title: str, caption: str) -> str:
    """Horizontal bars, one row each: (label, value, colour)."""
    label_w = min(360, 40 + 6.6 * max((len(r[0]) for r in rows), default=4))
    x0, x1 = label_w, WIDTH - 90
    top, row_h = 30, 26
    axis_vals = [v for _, v, _ in rows if v is not None and math.isfinite(v)]
    vmax, _ = _nice_max(max(axis_vals, default=0.0))
    body = [f'<text x="8" y="16" fill="#333" font-weight="600">{escape(caption)}</text>']
    marks = 0
    for i, (name, v, color) in enumerate(rows):
        y = top + i * row_h
        body.append(
            f'<text x="{_f(x0 - 8)}" y="{_f(y + row_h / 2 - 2)}" dy="0.35em" text-anchor="end" '
            f'fill="#333">{escape(_short(name, 52))}</text>'
        )
        if v is None or not math.isfinite(v):
            body.append(
                f'<text x="{_f(x0 + 4)}" y="{_f(y + row_h / 2 - 2)}" dy="0.35em" fill="#777">n/a</text>'
            )
            continue
        w = (x1 - x0) * min(max(v, 0.0), vmax) / vmax
        body.append(
            f'<rect class="mark hbar" x="{_f(x0)}" y="{_f(y + 3)}" width="{_f(w)}" height="{row_h - 10}" '
            f'fill="{color}"><title>{escape(name)}: {label(v)}</title></rect>'
        )
        body.append(
            f'<text x="{_f(x0 + w + 6)}" y="{_f(y + row_h / 2 - 2)}" dy="0.35em" fill="#333">{label(v)}</text>'
        )
        marks += 1
    h = top + len(rows) * row_h
    body.append(f'<line x1="{_f(x0)}" x2="{_f(x0)}" y1="{top}" y2="{_f(h - 4)}" stroke="#777"/>')
    return _svg(h + 8, title, marks, body)


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
    n = len(names)
    x0, x1 = LEFT, WIDTH - RIGHT
    band = (x1 - x0) / max(n, 1)
    bar_w = min(max(band * 0.38, 0.6), 28)
    top, plot_h = 40, 190
    axis = _y_axis(top, plot_h, list(before) + list(after))
    base = top + plot_h
    body = axis.draw(x0, x1, caption)
    marks = 0
    for i, name in enumerate(names):
        cx = x0 + band * (i + 0.5)
        for v, dx, color, what in (
            (before[i], -bar_w, "#c0392b", legend[0]),
            (after[i], 0.0, "#4c9a6a", legend[1]),
        ):
            if v is None or not math.isfinite(v):
                continue
            y = axis.y(v)
            body.append(
                f'<rect class="mark pair" x="{_f(cx + dx)}" y="{_f(y)}" width="{_f(bar_w)}" '
                f'height="{_f(base - y)}" fill="{color}"><title>{escape(name)}: {escape(what)} '
                f"{label(v)}</title></rect>"
            )
            marks += 1
    body.append(
        f'<line x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(base)}" y2="{_f(base)}" stroke="#777"/>'
    )
    body += _x_ticks(n, lambda i: x0 + band * (i + 0.5), base)
    body += _legend([("bar", "#c0392b", legend[0]), ("bar", "#4c9a6a", legend[1])], x1, 14)
    return _svg(base + 30, title, marks, body)
