"""The check report as one self-contained HTML page, one function per section.

Inline CSS and SVG, no script, no font or image from anywhere: to open
offline, read on a laptop, print.
"""

from __future__ import annotations

from html import escape

from .._version import __version__
from ..results import Report
from ..vocabulary import Severity
from . import charts, svg
from .common import (
    baseline_rows,
    baseline_summary,
    gap_opens_at,
    gates,
    headline,
    init_share,
    num,
    pct,
    severity_mark,
    top_layers,
)
from .htmlpage import figure, page, sev, table


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
        [f"<code>{g.flag} {g.limit:g}</code>", num(g.value), sev(Severity(g.state))]
        for g in gates(r)
    ]
    return (
        ["<h2>Gates</h2>", table(["gate", "value", "result"], rows, numeric=(1,))] if rows else []
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
        out.append(table(["", "training", "inference"], rows, numeric=(1, 2)))
    rows = [
        ["output gap (relative L2)", num(g.relative_l2)],
        ["max abs difference", num(g.max_abs)],
    ]
    if g.top1_agreement is not None:
        rows.append(["top-1 agreement", pct(g.top1_agreement)])
    out += [table(["training vs inference", "value"], rows, numeric=(1,)), "</div>"]
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
        table(["", "baseline", "this run"], rows, numeric=(1, 2)),
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
            f"<li>{sev(f.severity)} <strong>{escape(f.cause.value)}</strong>{where}"
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
        charts.DepthPoint(
            x.path, x.class_name, x.kind.value, x.divergence, x.own_contribution, x.mode_dependent
        )
        for x in ran
    ]
    opens = gap_opens_at(r)
    idx = next((i for i, x in enumerate(ran) if opens is not None and x.path == opens.path), None)
    chart = charts.depth_chart(points, idx, "Divergence of each layer's output along the depth")
    where = (
        f"The gap opens at {opens.path} ({opens.class_name}, divergence {num(opens.divergence)})."
        if opens
        else "No layer's output differs between the modes."
    )
    return [
        "<h2>Where the gap opens</h2>",
        figure(
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
        table(
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
        charts.BNPoint(
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
        figure(
            charts.batchnorm_chart(points, "BatchNormalization statistics against the data"),
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
            sev(b.severity),
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
        table(
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
        figure(
            charts.hbar_chart(
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
            figure(
                charts.hbar_chart(
                    rows2, "Output gap by model output", "output gap per model output"
                ),
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
    return page(f"bngap: {r.model.path} ({r.verdict})", body)
