"""GitHub Actions workflow commands (`::error` / `::warning` annotations) for
a report's failing and warning findings and gates."""

# No `from __future__ import annotations` here: the public annotations()
# below would shadow it (Python 3.10 reads these annotations as they are).
from ..results import Report
from ..vocabulary import Severity
from .common import gates


def escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped, as the runner requires."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (title, file): also ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, title: str, message: str, file: str) -> str:
    return f"::{level} file={escape_property(file)},title={escape_property(title)}::{escape_data(message)}"


def annotations(report: Report) -> list[str]:
    """One `::error` per exceeded fail gate and failing finding, one
    `::warning` per exceeded warn gate and warning finding; `file=` names
    the model file."""
    r, out = report, []
    top = r.top_finding
    cause = f" Likely cause: {top.cause.value}." if top else ""
    for g in gates(r):
        # beside a failure, a warning about the same gap adds nothing
        if g.state == "fail" or (g.state == "warn" and r.verdict == "warn"):
            out.append(
                _command(
                    "error" if g.state == "fail" else "warning",
                    f"bngap: {g.what} above {g.limit:g}",
                    g.outcome + "." + cause,
                    r.model.path,
                )
            )
    for f in r.findings:
        if f.severity in (Severity.FAIL, Severity.WARN):
            where = f" ({f.layer})" if f.layer else ""
            out.append(
                _command(
                    "error" if f.severity is Severity.FAIL else "warning",
                    f"bngap: {f.cause.value}{where}",
                    f"{f.message}\nfix: {f.remedy}",
                    r.model.path,
                )
            )
    return out
