"""SVG drawing, by hand: chart frame, axes, columns, ticks, legends, colours, coordinates.

The charts (`render.charts`) are drawn with these. No plotting library, no
script, nothing loaded from anywhere.
"""

from __future__ import annotations

import math
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


def coord(v: float) -> str:
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


def frame(height: float, title: str, marks: int, body: list[str]) -> str:
    """One chart: an `<svg class="chart">` of the page's width around `body`,
    with its title (shown on hover) and the number of drawn data points it
    holds (`data-marks`; each carries `class="mark"`, and tests count them)."""
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {coord(height)}" '
        f'role="img" aria-label="{escape(title)}" data-marks="{marks}" '
        f'font-family="system-ui, sans-serif" font-size="{FONT}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def nice_max(v: float) -> tuple[float, float]:
    """An axis top at or above `v` and a round tick step (1, 2 or 5 x 10^k)."""
    if not math.isfinite(v) or v <= 0:
        return 1.0, 0.25
    raw = v / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(v / step - 1e-9), step


@dataclass(frozen=True)
class Columns:
    """`n` columns of equal width between x0 and x1, one per item."""

    x0: float
    x1: float
    n: int

    @property
    def band(self) -> float:
        return (self.x1 - self.x0) / max(self.n, 1)

    def x(self, i: int) -> float:
        """The centre of column `i`."""
        return self.x0 + self.band * (i + 0.5)


@dataclass
class YAxis:
    """A value axis: values from 0 to `vmax` drawn from `top` down `height` pixels."""

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
            y = coord(self.y(v))
            out.append(
                f'<line x1="{coord(x0)}" x2="{coord(x1)}" y1="{y}" y2="{y}" stroke="#e3e6ea"/>'
            )
            out.append(
                f'<text x="{coord(x0 - 6)}" y="{y}" dy="0.35em" text-anchor="end" fill="#555">{label(v)}</text>'
            )
        out.append(
            f'<text x="{coord(x0)}" y="{coord(self.top - 6)}" fill="#333" font-weight="600">{escape(caption)}</text>'
        )
        return out


def y_axis(top: float, height: float, values) -> YAxis:
    """The axis that fits the finite values among `values`, with round ticks."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    vmax, step = nice_max(max(finite, default=0.0))
    return YAxis(top, height, vmax, step)


def x_ticks(n: int, x_of, y: float, first: int = 1) -> list[str]:
    """About ten labelled ticks along an index axis."""
    if n <= 0:
        return []
    step = max(1, int(nice_max(n / 2.5)[1] if n > 12 else 1))
    out = []
    for i in range(0, n, step):
        x = coord(x_of(i))
        out.append(f'<line x1="{x}" x2="{x}" y1="{coord(y)}" y2="{coord(y + 4)}" stroke="#999"/>')
        out.append(
            f'<text x="{x}" y="{coord(y + 15)}" text-anchor="middle" fill="#555">{i + first}</text>'
        )
    return out


def legend_row(items: list[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """(shape, colour, text) swatches in a row, right-aligned at x."""
    out, widths = [], [24 + 6.2 * len(t) for _, _, t in items]
    cx = x - sum(widths)
    for (shape, color, text), w in zip(items, widths):
        if shape == "dot":
            out.append(f'<circle cx="{coord(cx + 6)}" cy="{coord(y)}" r="4" fill="{color}"/>')
        elif shape == "tick":
            out.append(
                f'<rect x="{coord(cx + 1)}" y="{coord(y - 1.5)}" width="10" height="3" fill="{color}"/>'
            )
        else:
            out.append(
                f'<rect x="{coord(cx)}" y="{coord(y - 5)}" width="12" height="10" fill="{color}"/>'
            )
        out.append(
            f'<text x="{coord(cx + 16)}" y="{coord(y)}" dy="0.35em" fill="#333">{escape(text)}</text>'
        )
        cx += w
    return out


def shorten(text: str, limit: int) -> str:
    """`text`, or its end after an ellipsis when longer than `limit`."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
