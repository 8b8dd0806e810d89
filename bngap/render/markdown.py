"""A Markdown report to paste into a bug report, a pull-request comment or a
CI job summary: the verdict and the findings first, the evidence after, the
environment last."""

from __future__ import annotations

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
    top_layers,
)

MAX_BN_ROWS = 20


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('ch') else 's'}"


def render_markdown(report: Report, *, all_layers: bool = False) -> str:
    """The report as Markdown for a bug report or a PR comment, one section
    per part of the report (flagged layers only unless `all_layers`)."""
    r = report
    lines = [f"## bngap report: {headline(r)}", ""]
    lines += _findings(r)
    lines += _modes(r)
    lines += _baseline(r)
    lines += _backends(r)
    lines += _model_and_data(r)
    lines += _layers(r, all_layers)
    lines += _batchnorm(r, all_layers)
    lines += _context(r)
    return "\n".join(lines) + "\n"


def _findings(r: Report) -> list[str]:
    lines = ["### Findings", ""]
    if r.findings:
        for i, f in enumerate(r.findings, 1):
            where = (f" (`{f.layer}`)" if f.layer else "") + (
                f", explains {f.explains:.0%} of the gap" if f.explains is not None else ""
            )
            lines += [
                f"{i}. **{severity_mark(f.severity)} `{f.cause.value}`**{where}: {f.message}",
                f"   *Fix:* {f.remedy}",
            ]
    else:
        lines.append("No cause flagged.")
    return lines


def _modes(r: Report) -> list[str]:
    g = r.output_gap
    lines = ["", "### Training mode (as in fit()) vs inference mode (as in evaluate())", ""]
    rows = [
        ["output gap (relative L2)", num(g.relative_l2)],
        ["max abs difference", num(g.max_abs)],
    ]
    if g.top1_agreement is not None:
        rows.append(["top-1 agreement", pct(g.top1_agreement)])
    if len(g.per_output) > 1:
        rows += [[f"output gap of {e.name}", num(e.relative_l2)] for e in g.per_output]
    lines += _table(["", "value"], rows)
    if r.metrics:
        lines.append("")
        lines += _table(["", "training", "inference"], [list(row) for row in metric_rows(r)])
        lines += ["", f"Loss: `{r.metrics.loss_name}` ({r.metrics.source})."]
    lines += [
        "",
        "Gap by cause (only that group in training mode): "
        + ", ".join(f"{k} {num(v)}" for k, v in r.groups.items()),
        "",
    ]
    opens = gap_opens_at(r)
    if opens is not None:
        lines += [
            f"The gap opens at `{opens.path}` ({opens.class_name}, divergence {num(opens.divergence)}).",
            "",
        ]
    return lines


def _baseline(r: Report) -> list[str]:
    if r.baseline is None:
        return []
    lines = ["### Against the baseline", "", baseline_summary(r) + ".", ""]
    lines += _table(["", "baseline", "this run"], [list(row) for row in baseline_rows(r)])
    lines.append("")
    return lines


def _backends(r: Report) -> list[str]:
    if not r.backends:
        return []
    from . import backends as across

    return [f"### {across.title(r)}", ""] + _table(across.head(r), across.rows(r)) + [""]


def _model_and_data(r: Report) -> list[str]:
    m, d = r.model, r.data
    lines = ["### Model and data", ""]
    lines += _table(
        ["", ""],
        [
            ["model", f"`{m.path}` ({m.class_name} `{m.name}`)"],
            [
                "layers",
                f"{m.layers} ({m.batchnorm_layers} BatchNormalization, {m.dropout_like_layers} dropout/noise)",
            ],
            ["parameters", f"{m.parameters:,}"],
            ["inputs", ", ".join(str(tuple(s)) for s in m.input_shapes) or "n/a"],
            ["outputs", ", ".join(str(tuple(s)) for s in m.output_shapes) or "n/a"],
            [
                "data",
                f"`{d.path}`: {d.samples} samples, shapes "
                f"{', '.join(str(tuple(s)) for s in d.input_shapes)}, "
                f"labels: {'yes' if d.has_labels else 'no'}",
            ],
            [
                "batch size",
                f"{d.batch_size} ({_plural(d.batches, 'batch')}, the last of {d.last_batch_size})",
            ],
        ],
    )
    lines.append("")
    return lines


def _layers(r: Report, all_layers: bool) -> list[str]:
    tops = r.layers if all_layers else top_layers(r)
    if not tops:
        return []
    lines = ["### Layers", ""]
    lines += _table(
        ["layer", "kind", "in fit()", "own", "output effect", "divergence"],
        [
            [
                f"`{x.path}`",
                x.kind.value,
                x.fit_mode + (f" ({x.fit_mode_reason})" if x.fit_mode_reason else ""),
                num(x.own_contribution),
                num(x.output_effect),
                num(x.divergence),
            ]
            for x in tops
        ],
    )
    lines.append("")
    return lines


def _batchnorm(r: Report, all_layers: bool) -> list[str]:
    if not r.batchnorm:
        return []
    bn = r.batchnorm if all_layers else [b for b in r.batchnorm if b.severity is not Severity.OK]
    flagged = sum(b.severity is not Severity.OK for b in r.batchnorm)
    lines = [f"### BatchNormalization audit ({flagged} of {len(r.batchnorm)} flagged)", ""]
    shown = bn if all_layers else bn[:MAX_BN_ROWS]
    if shown:
        lines += _table(
            [
                "layer",
                "severity",
                "median abs z",
                "max abs z",
                "median abs log2 var ratio",
                "local gap",
                "noise",
                "init share",
            ],
            [
                [
                    f"`{b.path}`",
                    severity_mark(b.severity),
                    num(b.median_abs_z, 2),
                    num(b.max_abs_z, 2),
                    num(b.median_abs_log2_var_ratio, 2),
                    num(b.expected_local_gap, 3),
                    num(b.noise_local_gap, 3),
                    init_share(b),
                ]
                for b in shown
            ],
        )
        if len(bn) > len(shown):
            lines.append(
                f"\n... and {len(bn) - len(shown)} more flagged layers (`--all-layers` lists them)."
            )
        lines.append("")
    return lines


def _context(r: Report) -> list[str]:
    lines = []
    notes = list(r.notes) + list(r.data.notes)
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["### Environment", "", "```"]
    lines += [f"bngap: {__version__}"] + [f"{k}: {v}" for k, v in r.environment.items()]
    lines += ["```"]
    return lines
