"""The terminal report (rich), plain and width-safe when colour is off."""

from __future__ import annotations

import io
import textwrap

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .._version import __version__
from ..results import Report
from ..vocabulary import Severity
from .common import (
    baseline_rows,
    baseline_summary,
    gap_opens_at,
    headline,
    init_share,
    metric_rows,
    num,
    pct,
    severity_mark,
    sparkline,
    top_layers,
)

MAX_BN_ROWS = 12
MIN_WIDTH = 80
_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


def _table(*columns: str, right: tuple[int, ...] = (), first_width: int = 0) -> Table:
    """A plain table whose first column (layer paths) folds when space is short;
    the other columns keep their values whole."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, c in enumerate(columns):
        if i == 0:
            t.add_column(
                c, overflow="fold", min_width=min(first_width, 12) if first_width else None
            )
        else:
            t.add_column(c, justify="right" if i in right else "left", no_wrap=True)
    return t


def _para(con: Console, text: str, indent: int = 3, style: str = "", hang: int = 0) -> None:
    """A paragraph whose wrapped lines stay indented (no trailing spaces);
    `hang` indents the continuation lines further (for bullets)."""
    pad = " " * indent
    wrapped = textwrap.fill(
        text,
        width=max(20, con.width - 1),
        initial_indent=pad,
        subsequent_indent=pad + " " * hang,
        break_on_hyphens=False,
        break_long_words=False,
    )
    con.print(Text(wrapped, style=style), soft_wrap=True)


def render_text(
    report: Report, *, all_layers: bool = False, width: int = 100, color: bool = False
) -> str:
    """The report as terminal text. No ANSI codes unless `color`. Narrower
    than MIN_WIDTH, the tables would crop numbers: the terminal wraps instead."""
    width = max(width, MIN_WIDTH)
    buf = io.StringIO()
    con = Console(
        file=buf,
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
        legacy_windows=False,
        soft_wrap=False,
    )
    _header(con, report)
    _modes(con, report)
    _baseline(con, report)
    _groups(con, report)
    _depth(con, report, width)
    _layers(con, report, all_layers, width)
    _batchnorm(con, report, all_layers, width)
    _backends(con, report)
    _findings(con, report)
    _notes(con, report)
    text = buf.getvalue()
    if not color:  # rich pads table cells; a log wants no trailing spaces
        text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    return text


def _header(con: Console, r: Report) -> None:
    """The headline, coloured by the verdict or the top finding, and the run's context."""
    top = r.top_finding
    sev = top.severity.value if top else "ok"
    if r.thresholds.any:
        sev = {"fail": "fail", "warn": "warn"}.get(r.verdict, "ok")
    _para(con, headline(r), indent=0, style=_STYLE.get(sev, ""))
    last = (
        ""
        if r.data.last_batch_size == r.data.batch_size
        else f", last batch {r.data.last_batch_size}"
    )
    _para(
        con,
        f"bngap {__version__} · model {r.model.path} ({r.model.layers} layers, "
        f"{r.model.batchnorm_layers} BatchNormalization, {r.model.dropout_like_layers} "
        f"dropout/noise) · data {r.data.path} ({r.data.samples} samples, batch size "
        f"{r.data.batch_size}{last})"
        + (
            f" · backend {r.environment['backend']} {r.environment.get('backend_version', '')}".rstrip()
            if r.environment.get("backend")
            else ""
        ),
        indent=0,
        style="dim",
    )
    con.print()


def _modes(con: Console, r: Report) -> None:
    """Metrics in both modes and the output gap."""
    g = r.output_gap
    con.print(
        Text(
            "Training mode (as in fit()) vs inference mode (as in evaluate(), predict())",
            style="bold",
        )
    )
    t = _table("", "training", "inference", right=(1, 2))
    if r.metrics:
        for label, tr, ev in metric_rows(r):
            t.add_row(escape(label), tr, ev)
        con.print(t)
    line = f"output gap: relative L2 {num(g.relative_l2)}, max |diff| {num(g.max_abs)}"
    if g.top1_agreement is not None:
        line += f", top-1 agreement {pct(g.top1_agreement)}"
    _para(con, line, indent=0)
    if len(g.per_output) > 1:
        for e in g.per_output:
            con.print(
                f"  {escape(e.name)}: relative L2 {num(e.relative_l2)}, max |diff| {num(e.max_abs)}"
            )
    if r.metrics:
        con.print(Text(f"loss: {r.metrics.loss_name} ({r.metrics.source})", style="dim"))
    con.print()


def _baseline(con: Console, r: Report) -> None:
    """This run's numbers beside the `--baseline` report's."""
    if r.baseline is None:
        return
    con.print(Text("Against the baseline", style="bold"))
    _para(con, baseline_summary(r), indent=0, style="dim")
    t = _table("", "baseline", "this run", right=(1, 2))
    for what, old, new in baseline_rows(r):
        t.add_row(escape(what), escape(old), escape(new))
    con.print(t)
    con.print()


def _groups(con: Console, r: Report) -> None:
    con.print(Text("Gap by cause (output gap with only that group in training mode)", style="bold"))
    con.print("  " + "   ".join(f"{k} {num(v)}" for k, v in r.groups.items()))
    con.print()


def _depth(con: Console, r: Report, width: int) -> None:
    """Divergence along the depth as a sparkline, and where it opens."""
    g = r.output_gap
    divs = [x.divergence for x in r.layers if x.divergence is not None and x.order >= 0]
    if not divs:
        return
    opens = gap_opens_at(r)
    con.print(
        Text("Where the gap opens (divergence of each layer's output, in call order)", style="bold")
    )
    con.print("  " + sparkline(divs, max(10, width - 4)), markup=False)
    if opens is not None:
        _para(
            con,
            f"first divergent layer: {opens.path} ({opens.class_name}, divergence "
            f"{num(opens.divergence)}); at the output"
            + (" (all outputs)" if len(g.per_output) > 1 else "")
            + f": {num(g.relative_l2)}",
            indent=2,
        )
    else:
        _para(con, "no layer's output differs between the modes", indent=2)
    con.print()


def _layers(con: Console, r: Report, all_layers: bool, width: int) -> None:
    """The mode-dependent layers (or all of them), strongest first."""
    tops = r.layers if all_layers else top_layers(r)
    if not tops:
        return
    title = "All layers" if all_layers else "Mode-dependent layers"
    title += (
        " (own: same input in both modes; effect: output gap with only this layer in "
        "training mode, every other one in inference mode)"
    )
    _para(con, title, indent=0, style="bold")
    t = _table(
        "layer",
        "kind",
        "in fit()",
        "own",
        "effect",
        "divergence",
        right=(3, 4, 5),
        first_width=min(max(len(x.path) for x in tops), width // 3),
    )
    for x in tops:
        mode = x.fit_mode + (f" ({_short_reason(x.fit_mode_reason)})" if x.fit_mode_reason else "")
        t.add_row(
            escape(x.path),
            x.kind.value,
            escape(mode),
            num(x.own_contribution),
            num(x.output_effect),
            num(x.divergence),
        )
    con.print(t)
    con.print()


def _batchnorm(con: Console, r: Report, all_layers: bool, width: int) -> None:
    """The BN audit table: flagged layers first in call order (all with --all-layers)."""
    bn = r.batchnorm if all_layers else [b for b in r.batchnorm if b.severity is not Severity.OK]
    hidden = 0
    if not all_layers and len(bn) > MAX_BN_ROWS:  # the first flagged layers tell where it starts
        hidden = len(bn) - MAX_BN_ROWS
        bn = bn[:MAX_BN_ROWS]
    if not r.batchnorm:
        return
    flagged = sum(b.severity is not Severity.OK for b in r.batchnorm)
    first = r.first_flagged_batchnorm
    title = (
        f"BatchNormalization audit: {flagged} of {len(r.batchnorm)} layers flagged"
        + (f"; the first, {first.path}, is where the problem starts" if first else "")
        + (
            ""
            if all_layers or not flagged or flagged == len(r.batchnorm)
            else " (--all-layers shows all)"
        )
    )
    _para(con, title, indent=0, style="bold")
    if bn:
        _para(
            con,
            "z: mean shift in moving standard deviations; log2 var: median |log2| of "
            "data variance / moving variance; gap: expected relative change of the layer's "
            "output (moving vs data statistics) and its sampling noise; init: share of the "
            "initial statistics left (~: the channels disagree)",
            indent=0,
            style="dim",
        )
        t = _table(
            "layer",
            "",
            "|z| med",
            "|z| max",
            "log2 var",
            "gap",
            "noise",
            "init",
            right=(2, 3, 4, 5, 6, 7),
            first_width=min(max(len(b.path) for b in bn), width // 3),
        )
        for b in bn:
            t.add_row(
                escape(b.path),
                Text(severity_mark(b.severity), style=_STYLE[b.severity.value]),
                num(b.median_abs_z, 2),
                num(b.max_abs_z, 2),
                num(b.median_abs_log2_var_ratio, 2),
                num(b.expected_local_gap, 3),
                num(b.noise_local_gap, 3),
                init_share(b),
            )
        con.print(t)
        if hidden:
            con.print(f"  ... and {hidden} more flagged layers (--all-layers shows all)")
    con.print()


def _backends(con: Console, r: Report) -> None:
    """With --backends: the same check on each backend, side by side."""
    if not r.backends:
        return
    from . import backends as across

    _para(con, across.title(r), indent=0, style="bold")
    t = _table(*across.head(r), right=tuple(range(1, len(r.backends) + 1)))
    for row in across.rows(r):
        t.add_row(*(escape(c) for c in row))
    con.print(t)
    con.print()


def _findings(con: Console, r: Report) -> None:
    if not r.findings:
        _para(
            con,
            "No cause flagged: "
            + (
                "the moving statistics describe the data and no layer behaves unexpectedly."
                if r.model.batchnorm_layers
                else "no layer behaves unexpectedly."
            ),
            indent=0,
        )
        con.print()
        return
    con.print(Text("Findings (most likely cause first)", style="bold"))
    for i, f in enumerate(r.findings, 1):
        head = Text(
            f"{i}. {severity_mark(f.severity)} {f.cause.value}", style=_STYLE[f.severity.value]
        )
        if f.layer:
            head.append(f" · {f.layer}", style="")
        if f.explains is not None:
            head.append(f" · explains {f.explains:.0%} of the gap", style="")
        con.print(head)
        _para(con, f.message)
        _para(con, "fix: " + f.remedy, style="italic")
    con.print()


def _notes(con: Console, r: Report) -> None:
    notes = list(r.notes) + list(r.data.notes)
    if notes:
        con.print(Text("Notes", style="bold"))
        for n in notes:
            _para(con, "- " + n, indent=2, hang=2)


def _short_reason(reason: str) -> str:
    """A table-sized version of why a layer runs in inference mode in fit()."""
    if reason.startswith("frozen"):
        return "frozen"
    if "training=False" in reason:
        return "training=False"
    if "no training flag" in reason:
        return "no flag"
    if reason.startswith("renorm"):
        return "renorm statistics"
    if "has no training argument" in reason:
        return "call() has no training"
    if "stateless_call" in reason:
        return "no flag on JAX"
    return reason
