"""The HTML pages' frame and building blocks: inline CSS, page, table, figure, severity."""

from __future__ import annotations

from html import escape

from .._version import __version__
from ..vocabulary import Severity
from .common import severity_mark

CSS = """
:root { --fail: #c0392b; --warn: #d49a1a; --ok: #4c9a6a; --info: #4a7fb5; --ink: #1d2330; --dim: #5d6675; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
p.dim, .dim { color: var(--dim); font-size: 13px; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 700;
           letter-spacing: .04em; margin-right: 8px; }
.verdict.fail { background: var(--fail); } .verdict.warn { background: var(--warn); }
.verdict.pass, .verdict.ok { background: var(--ok); } .verdict.info { background: var(--info); }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
.sev-fail { color: var(--fail); font-weight: 700; } .sev-warn { color: var(--warn); font-weight: 700; }
.sev-ok { color: var(--ok); } .sev-info { color: var(--info); font-weight: 700; }
ol.findings li { margin-bottom: 10px; } .remedy { font-style: italic; }
svg.chart { width: 100%; height: auto; display: block; margin: 6px 0 14px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 48px; align-items: flex-start; }
figure { margin: 0; } figcaption { color: var(--dim); font-size: 13px; }
pre { background: #f6f7f9; padding: 8px 12px; font-size: 12.5px; overflow-x: auto; }
@media print { body { font-size: 11pt; } main { max-width: none; padding: 0; }
  figure, table, li { break-inside: avoid; } h2 { break-after: avoid; } }
"""


def page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="bngap {escape(__version__)}">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def table(head: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """Cells are HTML already (escaped by the caller)."""
    th = "".join(
        f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def sev(s: Severity) -> str:
    return f'<span class="sev-{s.value}">{severity_mark(s)}</span>'
