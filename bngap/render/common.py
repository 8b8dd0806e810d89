"""Wording and number formats shared by the renderers."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import LayerRecord
from ..results import Report, format_number
from ..vocabulary import Severity

SPARK = "▁▂▃▄▅▆▇█"
OPENS_AT = 0.01  # divergence at which we say the gap has opened


num = format_number  # as reports show numbers (and thresholds compare them)


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def headline(report: Report) -> str:
    """One line: verdict, gap size, most likely cause."""
    gap = report.output_gap.relative_l2
    parts = []
    if report.thresholds.any:
        parts.append(report.verdict.upper())
    parts.append(f"output gap {num(gap)} (relative L2, train vs inference)")
    if report.thresholds.output_gap is not None:
        op = ">" if "output_gap" in report.exceeded else "<="
        parts[-1] += f" {op} {report.thresholds.output_gap:g}"
    if report.verdict == "warn":
        sep = "," if report.thresholds.output_gap is not None else ""
        parts[-1] += f"{sep} > {report.thresholds.warn_above:g} (warn)"
    for name in ("loss_delta", "accuracy_drop"):
        if name in report.exceeded:
            parts.append(f"{name.replace('_', ' ')} above its threshold")
    if "regression" in report.exceeded:
        parts.append(
            f"grew by {num(report.regression)} against the baseline "
            f"(at most {report.thresholds.max_regression:g})"
        )
    top = report.top_finding
    if top is not None:
        parts.append(f"likely cause: {top.cause.value} ({top.severity.value})")
    elif gap < 1e-6:
        parts.append("no gap")
    else:
        parts.append("no cause flagged")
    return " · ".join(parts)


def metric_rows(report: Report) -> list[tuple[str, str, str]]:
    """(label, training, inference) rows of loss and accuracy: the headline
    (for several outputs: the weighted total loss, as evaluate() reports it),
    then each output's own."""
    m = report.metrics
    if m is None:
        return []

    def fmt(k, v):
        return pct(v) if k == "accuracy" else num(v)

    total = "loss (weighted total)" if m.per_output else "loss"
    rows = [(total if k == "loss" else k, fmt(k, m.train[k]), fmt(k, m.eval[k])) for k in m.train]
    for o in m.per_output:
        weight = f" (x{o.weight:g})" if o.weight != 1.0 else ""
        rows += [
            (
                f"{o.name} {k}" + (weight if k == "loss" else ""),
                fmt(k, o.train[k]),
                fmt(k, o.eval[k]),
            )
            for k in o.train
        ]
    return rows


def gap_opens_at(report: Report) -> LayerRecord | None:
    """The first layer (in call order) whose output differs between modes."""
    for r in report.layers:
        if r.divergence is not None and r.divergence >= OPENS_AT:
            return r
    return None


def sparkline(values: list[float], width: int) -> str:
    """Divergence along depth as one line of block characters."""
    if not values:
        return ""
    if len(values) > width:  # bucket: the max of each bucket keeps spikes visible
        step = len(values) / width
        values = [
            max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
            for i in range(width)
        ]
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(
        SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values
    )


def top_layers(report: Report, limit: int = 8) -> list[LayerRecord]:
    """Mode-dependent layers ranked by output effect, then own contribution."""
    recs = [r for r in report.layers if r.mode_dependent and r.order >= 0]

    def key(r: LayerRecord):
        return (r.output_effect if r.output_effect is not None else -1.0, r.own_contribution or 0.0)

    recs.sort(key=key, reverse=True)
    return recs[:limit]


def severity_mark(s: Severity) -> str:
    return {"ok": "ok", "info": "INFO", "warn": "WARN", "fail": "FAIL"}[s.value]


def init_share(b) -> str:
    """The BN table's 'init' cell: the initial values' share left in the
    moving statistics; '~' marks an estimate whose channels do not agree."""
    if b.never_updated:
        return "never"
    if b.init_fraction is not None:
        return pct(b.init_fraction)
    if b.init_share_estimate is not None and b.init_share_estimate >= 0.5:
        return "~" + pct(b.init_share_estimate)
    return "-"


def baseline_rows(report: Report) -> list[tuple[str, str, str]]:
    """(what, baseline, this run) rows of the side-by-side comparison with
    the `--baseline` report; empty without one."""
    b, r = report.baseline, report
    if b is None:
        return []
    g = r.output_gap
    rows = [
        ("output gap (relative L2)", num(b.relative_l2), num(g.relative_l2)),
        ("max abs difference", num(b.max_abs), num(g.max_abs)),
    ]
    if b.top1_agreement is not None or g.top1_agreement is not None:
        rows.append(("top-1 agreement", pct(b.top1_agreement), pct(g.top1_agreement)))
    if b.metrics and r.metrics:
        for k in r.metrics.eval:
            if k in b.metrics.eval:
                f = pct if k == "accuracy" else num
                rows.append((f"{k}, inference mode", f(b.metrics.eval[k]), f(r.metrics.eval[k])))
    top = r.top_finding
    rows.append(
        (
            "flagged BatchNormalization layers",
            str(b.flagged_batchnorm),
            str(sum(x.severity is not Severity.OK for x in r.batchnorm)),
        )
    )
    rows.append(("most likely cause", b.top_cause or "none", top.cause.value if top else "none"))
    rows.append(("verdict", b.verdict, r.verdict))
    return rows


def baseline_summary(report: Report) -> str:
    """One sentence: the baseline, and how much the gap grew against it."""
    b, limit = report.baseline, report.thresholds.max_regression
    assert b is not None  # the renderers call this only for a report with a baseline
    grew = (
        f"the output gap changed by {report.regression:+.4f}"
        if report.regression is not None
        else "no comparable output gap"
    )
    if limit is not None:
        grew += f" (at most +{limit:g} allowed)"
    return f"baseline {b.path} (model {b.model_path}): {grew}"


@dataclass(frozen=True)
class Gate:
    """One gate given on the command line, and how the report fares against it."""

    flag: str  # the option, e.g. --fail-above
    what: str  # the value it bounds, in words
    limit: float
    value: float | None
    state: str  # "fail", "warn" or "ok"

    @property
    def name(self) -> str:
        return f"{self.what} <= {self.limit:g} ({self.flag})"

    @property
    def outcome(self) -> str:
        """One sentence: the value against the limit."""
        if self.value is None:
            return f"{self.what}: not measured (no labels or no baseline value)"
        if self.state == "ok":
            return f"{self.what} is {num(self.value)}"
        return f"{self.what} is {num(self.value)}, above {self.limit:g}"


def gates(report: Report) -> list[Gate]:
    """The report's gates in a fixed order: the fail gates, then --warn-above."""
    r, t = report, report.thresholds
    fail = [
        (
            "output_gap",
            "--fail-above",
            "output gap (relative L2)",
            t.output_gap,
            r.output_gap.relative_l2,
        ),
        (
            "loss_delta",
            "--fail-above-loss-delta",
            "inference loss minus training loss",
            t.loss_delta,
            r.loss_delta,
        ),
        (
            "accuracy_drop",
            "--fail-above-accuracy-drop",
            "training accuracy minus inference accuracy",
            t.accuracy_drop,
            r.accuracy_drop,
        ),
        (
            "regression",
            "--max-regression",
            "growth of the output gap against the baseline",
            t.max_regression,
            r.regression,
        ),
    ]
    out = [
        Gate(flag, what, limit, value, "fail" if key in r.exceeded else "ok")
        for key, flag, what, limit, value in fail
        if limit is not None
    ]
    if t.warn_above is not None:
        out.append(
            Gate(
                "--warn-above",
                "output gap (relative L2)",
                t.warn_above,
                r.output_gap.relative_l2,
                "warn" if r.warned else "ok",
            )
        )
    return out


def fix_rows(r) -> list[tuple[str, str, str]]:
    """(what, before, after) for a `bngap fix` result: the output gap, then
    loss and accuracy in each mode when labels were given."""
    rows = [
        ("output gap (relative L2)", num(r.before.relative_l2), num(r.after.relative_l2)),
        ("max abs difference", num(r.before.max_abs), num(r.after.max_abs)),
    ]
    if r.before.top1_agreement is not None:
        rows.append(("top-1 agreement", pct(r.before.top1_agreement), pct(r.after.top1_agreement)))
    if r.metrics_before and r.metrics_after:
        for k in r.metrics_before.eval:
            fmt = pct if k == "accuracy" else num
            for mode, before, after in (
                ("inference", r.metrics_before.eval, r.metrics_after.eval),
                ("training", r.metrics_before.train, r.metrics_after.train),
            ):
                rows.append((f"{k}, {mode} mode", fmt(before[k]), fmt(after[k])))
    return rows
