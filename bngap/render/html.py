"""The HTML report: one self-contained file (inline CSS and SVG, no script,
no font or image from anywhere) to open offline, read on a laptop, print."""

from __future__ import annotations

from html import escape

from .._version import __version__
from ..results import Report
from ..vocabulary import Severity
from . import svg
from .common import (
    baseline_rows,
    baseline_summary,
    fix_rows,
    gap_opens_at,
    gates,
    headline,
    init_share,
    num,
    pct,
    severity_mark,
    top_layers,
)

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


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="bngap {escape(__version__)}">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def _table(head: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
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


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def _sev(s: Severity) -> str:
    return f'<span class="sev-{s.value}">{severity_mark(s)}</span>'


def _verdict_class(r: Report) -> str:
    if r.thresholds.any:
        return r.verdict
    top = r.top_finding
    return top.severity.value if top else "ok"


def _header(r: Report) -> list[str]:
    cls = _verdict_class(r)
    word = (
        r.verdict.upper()
        if r.thresholds.any
        else severity_mark(r.top_finding.severity)
        if r.top_finding
        else "OK"
    )
    text = headline(r)
    if text.startswith(word + " · "):  # the badge says it already
        text = text[len(word) + 3 :]
    m, d = r.model, r.data
    last = "" if d.last_batch_size == d.batch_size else f", last batch {d.last_batch_size}"
    return [
        f'<h1><span class="verdict {cls}">{escape(word)}</span>{escape(text)}</h1>',
        f'<p class="dim">bngap {escape(__version__)} · model <code>{escape(m.path)}</code> '
        f"({m.layers} layers, {m.batchnorm_layers} BatchNormalization, {m.dropout_like_layers} dropout/noise, "
        f"{m.parameters:,} parameters) · data <code>{escape(d.path)}</code> ({d.samples} samples, "
        f"batch size {d.batch_size}{last}, labels: {'yes' if d.has_labels else 'no'})</p>",
    ]


def _gates(r: Report) -> list[str]:
    rows = [
        [f"<code>{g.flag} {g.limit:g}</code>", num(g.value), _sev(Severity(g.state))]
        for g in gates(r)
    ]
    return (
        ["<h2>Gates</h2>", _table(["gate", "value", "result"], rows, numeric=(1,))] if rows else []
    )


def _metrics(r: Report) -> list[str]:
    g = r.output_gap
    out = [
        "<h2>Training mode (as in fit()) vs inference mode (as in evaluate(), predict())</h2>",
        '<div class="row">',
    ]
    if r.metrics:
        rows = [
            [
                escape(k),
                (pct if k == "accuracy" else num)(r.metrics.train[k]),
                (pct if k == "accuracy" else num)(r.metrics.eval.get(k)),
            ]
            for k in r.metrics.train
        ]
        out.append(_table(["", "training", "inference"], rows, numeric=(1, 2)))
    rows = [
        ["output gap (relative L2)", num(g.relative_l2)],
        ["max abs difference", num(g.max_abs)],
    ]
    if g.top1_agreement is not None:
        rows.append(["top-1 agreement", pct(g.top1_agreement)])
    out += [_table(["training vs inference", "value"], rows, numeric=(1,)), "</div>"]
    if r.metrics:
        out.append(
            f'<p class="dim">loss: <code>{escape(r.metrics.loss_name)}</code> ({escape(r.metrics.source)})</p>'
        )
    return out


def _baseline(r: Report) -> list[str]:
    if r.baseline is None:
        return []
    rows = [[escape(a), escape(b), escape(c)] for a, b, c in baseline_rows(r)]
    return [
        "<h2>Against the baseline</h2>",
        f'<p class="dim">{escape(baseline_summary(r))}.</p>',
        _table(["", "baseline", "this run"], rows, numeric=(1, 2)),
    ]


def _findings(r: Report) -> list[str]:
    out = ["<h2>Findings (most likely cause first)</h2>"]
    if not r.findings:
        out.append(
            "<p>No cause flagged: the moving statistics describe the data and no layer behaves "
            "unexpectedly.</p>"
        )
        return out
    items = []
    for f in r.findings:
        where = f" · <code>{escape(f.layer)}</code>" if f.layer else ""
        items.append(
            f"<li>{_sev(f.severity)} <strong>{escape(f.cause.value)}</strong>{where}"
            f'<br>{escape(f.message)}<br><span class="remedy">fix: {escape(f.remedy)}</span></li>'
        )
    out.append('<ol class="findings">' + "".join(items) + "</ol>")
    return out


def _depth(r: Report) -> list[str]:
    ran = [x for x in r.layers if x.order >= 0]
    ran.sort(key=lambda x: x.order)
    if not ran:
        return []
    points = [
        svg.DepthPoint(
            x.path, x.class_name, x.kind.value, x.divergence, x.own_contribution, x.mode_dependent
        )
        for x in ran
    ]
    opens = gap_opens_at(r)
    idx = next((i for i, x in enumerate(ran) if opens is not None and x.path == opens.path), None)
    chart = svg.depth_chart(points, idx, "Divergence of each layer's output along the depth")
    where = (
        f"The gap opens at {opens.path} ({opens.class_name}, divergence {num(opens.divergence)})."
        if opens
        else "No layer's output differs between the modes."
    )
    return [
        "<h2>Where the gap opens</h2>",
        _figure(
            chart,
            f"Each bar: how much a layer's output differs between training and inference "
            f"mode (relative L2), in call order; dots: what a mode-dependent layer adds "
            f"by itself on the same input. {where}",
        ),
    ]


def _layers_table(r: Report) -> list[str]:
    tops = top_layers(r, limit=len(r.layers))
    if not tops:
        return []
    rows = [
        [
            f"<code>{escape(x.path)}</code>",
            escape(x.kind.value),
            escape(x.fit_mode + (f" ({x.fit_mode_reason})" if x.fit_mode_reason else "")),
            num(x.own_contribution),
            num(x.output_effect),
            num(x.divergence),
        ]
        for x in tops
    ]
    return [
        "<h2>Mode-dependent layers</h2>",
        '<p class="dim">own: same input in both modes; output effect: output gap with only this layer '
        "in training mode; divergence: of the layer's output in the two passes</p>",
        _table(
            ["layer", "kind", "in fit()", "own", "output effect", "divergence"],
            rows,
            numeric=(3, 4, 5),
        ),
    ]


def _batchnorm_chart(r: Report) -> list[str]:
    if not r.batchnorm:
        return []
    bn = r.batchnorm
    flagged = sum(b.severity is not Severity.OK for b in bn)
    points = [
        svg.BNPoint(
            b.path,
            b.severity.value,
            b.median_abs_z,
            b.median_abs_log2_var_ratio,
            b.expected_local_gap,
            b.noise_local_gap,
        )
        for b in bn
    ]
    first = r.first_flagged_batchnorm
    start = f" The first flagged layer, {first.path}, is where the problem starts." if first else ""
    return [
        f"<h2>BatchNormalization audit: {flagged} of {len(bn)} layers flagged</h2>",
        _figure(
            svg.batchnorm_chart(points, "BatchNormalization statistics against the data"),
            "Per BN layer in call order (numbered as in the BatchNormalization table below): how far "
            "the data's mean lies from the moving mean, how far the variances disagree, and the "
            "expected relative change of the layer's output between moving and data statistics, "
            f"against its sampling noise.{start}",
        ),
    ]


def _batchnorm_table(r: Report) -> list[str]:
    if not r.batchnorm:
        return []
    rows = [
        [
            str(i),
            f"<code>{escape(b.path)}</code>",
            _sev(b.severity),
            num(b.median_abs_z, 2),
            num(b.max_abs_z, 2),
            num(b.median_abs_log2_var_ratio, 2),
            num(b.expected_local_gap, 3),
            num(b.noise_local_gap, 3),
            escape(init_share(b)),
            "yes" if b.trainable else "frozen",
        ]
        for i, b in enumerate(r.batchnorm, 1)
    ]
    return [
        "<h2>BatchNormalization layers</h2>",
        '<p class="dim">z: mean shift in moving standard deviations; log2 var: median |log2| of data '
        "variance / moving variance; gap: expected relative change of the layer's output (moving vs data "
        "statistics) and its sampling noise; init: share of the initial statistics left (~: the channels "
        "disagree)</p>",
        _table(
            [
                "#",
                "layer",
                "",
                "|z| med",
                "|z| max",
                "log2 var",
                "gap",
                "noise",
                "init",
                "trainable",
            ],
            rows,
            numeric=(0, 3, 4, 5, 6, 7, 8),
        ),
    ]


def _groups(r: Report) -> list[str]:
    rows = [(k, v, svg.KIND_COLOR.get(k, svg.KIND_COLOR["other"])) for k, v in r.groups.items()]
    out = [
        "<h2>Gap by cause and by output</h2>",
        _figure(
            svg.hbar_chart(
                rows,
                "Output gap by cause group",
                "output gap with only that group of layers in training mode",
            ),
            "Each bar: the output gap (relative L2) when only that group of layers runs in "
            "training mode and every other layer in inference mode.",
        ),
    ]
    per = r.output_gap.per_output
    if per:
        rows2 = [(e.name, e.relative_l2, svg.BAR) for e in per]
        out.append(
            _figure(
                svg.hbar_chart(rows2, "Output gap by model output", "output gap per model output"),
                "Relative L2 between training- and inference-mode outputs, per model output.",
            )
        )
    return out


def _context(r: Report) -> list[str]:
    out = []
    notes = list(r.notes) + list(r.data.notes)
    if notes:
        out += [
            "<h2>Notes</h2>",
            "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>",
        ]
    env = [f"bngap: {__version__}"] + [f"{k}: {v}" for k, v in r.environment.items()]
    out += [
        "<h2>Environment</h2>",
        "<pre>" + escape("\n".join(env)) + "</pre>",
        f'<p class="dim">checked in {r.seconds:.1f} s with batch size {r.data.batch_size}; '
        f"settings: {escape(', '.join(f'{k}={v}' for k, v in r.settings.items()))}</p>",
    ]
    return out


def render_html(report: Report) -> str:
    """The check report as one self-contained HTML page. Deterministic: the
    same report gives the same bytes (no timestamp, no random ids)."""
    r = report
    body = (
        _header(r)
        + _gates(r)
        + _findings(r)
        + _metrics(r)
        + _baseline(r)
        + _depth(r)
        + _batchnorm_chart(r)
        + _groups(r)
        + _batchnorm_table(r)
        + _layers_table(r)
        + _context(r)
    )
    return _page(f"bngap: {r.model.path} ({r.verdict})", body)


def render_fix_html(result) -> str:
    """The `bngap fix` result as one self-contained HTML page: before and
    after, for the output and for each re-estimated BN layer."""
    r = result
    status = f"written to {r.written}" if r.written else "not written"
    rows = [[escape(k), before, after] for k, before, after in fix_rows(r)]
    body = [
        f'<h1><span class="verdict {"pass" if r.helped else "fail"}">FIX</span>output gap '
        f"{escape(num(r.before.relative_l2))} → {escape(num(r.after.relative_l2))} · {escape(status)}</h1>",
        f'<p class="dim">bngap {escape(__version__)} · re-estimated {len(r.layers)} BatchNormalization layers '
        f"on {r.samples} samples in {r.passes} passes (batch size {r.batch_size})</p>",
        "<h2>Before and after</h2>",
        _table(["", "before", "after"], rows, numeric=(1, 2)),
        _figure(
            svg.hbar_chart(
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
    if r.layers:
        names = [f.path for f in r.layers]
        body += [
            "<h2>Per layer</h2>",
            _figure(
                svg.paired_chart(
                    names,
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
            _table(
                ["#", "layer", "old statistics' gap", "new statistics' noise", "level"],
                [
                    [
                        str(i),
                        f"<code>{escape(f.path)}</code>" + (" (frozen)" if f.frozen else ""),
                        num(f.gap_before, 3),
                        num(f.noise, 3),
                        str(f.level),
                    ]
                    for i, f in enumerate(r.layers, 1)
                ],
                numeric=(0, 2, 3, 4),
            ),
        ]
    if r.skipped:
        body += [
            "<h2>Left alone</h2>",
            _table(
                ["layer", "why"], [[f"<code>{escape(p)}</code>", escape(w)] for p, w in r.skipped]
            ),
        ]
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
    return _page(f"bngap fix: {r.before.relative_l2:.4g} -> {r.after.relative_l2:.4g}", body)
