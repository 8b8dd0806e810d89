"""GitHub Actions workflow commands (`::error` / `::warning` annotations) for
a report's failing and warning findings and gates."""

from __future__ import annotations

from ..results import Report, Severity
from .common import num


def escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped, as the runner requires."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (title, file): also ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, title: str, message: str, file: str) -> str:
    return f"::{level} file={escape_property(file)},title={escape_property(title)}::{escape_data(message)}"


def annotations(report: Report) -> list[str]:
    """One `::error` per exceeded gate and failing finding, one `::warning`
    per warn gate and warning finding; `file=` names the model file."""
    r, out = report, []
    t = r.thresholds
    limits = {"output_gap": ("output gap (relative L2)", t.output_gap, r.output_gap.relative_l2),
              "loss_delta": ("inference loss minus training loss", t.loss_delta, r.loss_delta),
              "accuracy_drop": ("training accuracy minus inference accuracy", t.accuracy_drop, r.accuracy_drop),
              "regression": ("growth of the output gap against the baseline", t.max_regression, r.regression)}
    for key in r.exceeded:
        what, limit, value = limits[key]
        out.append(_command("error", f"bngap: {what} above {limit:g}",
                            f"{what} is {num(value)}, above {limit:g}. {_first_finding(r)}", r.model.path))
    if r.warned:
        out.append(_command("warning", f"bngap: output gap above {t.warn_above:g}",
                            f"output gap (relative L2) is {num(r.output_gap.relative_l2)}, above "
                            f"{t.warn_above:g}. {_first_finding(r)}", r.model.path))
    for f in r.findings:
        if f.severity in (Severity.FAIL, Severity.WARN):
            where = f" ({f.layer})" if f.layer else ""
            out.append(_command("error" if f.severity is Severity.FAIL else "warning",
                                f"bngap: {f.cause.value}{where}", f"{f.message}\nfix: {f.remedy}", r.model.path))
    return out


def _first_finding(r: Report) -> str:
    top = r.top_finding
    return f"Likely cause: {top.cause.value}." if top else ""
