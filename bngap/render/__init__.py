"""Report renderers: each turns a `Report` into a string and does no I/O."""

from __future__ import annotations

from collections.abc import Callable

from ..results import Report
from ..vocabulary import Vocabulary


class Format(Vocabulary):
    """The formats a check report renders to (`--format`, `--output` suffixes)."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"
    HTML = "html"
    JUNIT = "junit"


FORMATS = tuple(f.value for f in Format)


def render(
    report: Report, fmt: str, *, all_layers: bool = False, width: int = 100, color: bool = False
) -> str:
    """The report in the named format ('text', 'json', 'markdown', 'html' or 'junit').

    Raises:
        ValueError: `fmt` is not one of `FORMATS`.
    """
    try:
        form = Format(fmt)
    except ValueError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}") from None
    if form is Format.JSON:
        from .json import render_json

        return render_json(report)
    if form is Format.MARKDOWN:
        from .markdown import render_markdown

        return render_markdown(report, all_layers=all_layers)
    if form is Format.TEXT:
        from .text import render_text

        return render_text(report, all_layers=all_layers, width=width, color=color)
    if form is Format.HTML:
        from .html import render_html

        return render_html(report)
    from .junit import render_junit

    return render_junit(report)


def file_renderers(*, all_layers: bool = False) -> dict[str, Callable[[Report], str]]:
    """format -> renderer for report files (plain text 100 columns wide, no colour)."""

    def renderer(fmt: str) -> Callable[[Report], str]:
        return lambda r: render(r, fmt, all_layers=all_layers, width=100, color=False)

    return {fmt: renderer(fmt) for fmt in FORMATS}
