"""Report renderers: each turns a `Report` into a string and does no I/O."""

from __future__ import annotations

from ..results import Report

FORMATS = ("text", "json", "markdown")


def render(report: Report, fmt: str, *, all_layers: bool = False, width: int = 100,
           color: bool = False) -> str:
    """The report in the named format ('text', 'json' or 'markdown')."""
    if fmt == "json":
        from .json import render_json

        return render_json(report)
    if fmt == "markdown":
        from .markdown import render_markdown

        return render_markdown(report, all_layers=all_layers)
    if fmt == "text":
        from .text import render_text

        return render_text(report, all_layers=all_layers, width=width, color=color)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
