"""The JUnit XML report, for CI systems that show test results (GitLab,
Jenkins, Azure, GitHub test-report actions): one test suite per run."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from .._version import __version__
from ..results import Report
from ..vocabulary import Severity
from .common import gates, headline, num

SUITE = "bngap"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str) -> str:
    """Text XML 1.0 can hold: control characters (in a layer name, say) become '?'."""
    return _NOT_XML.sub("?", str(text))


def _case(
    parent: ET.Element,
    classname: str,
    name: str,
    *,
    failure: str | None = None,
    failure_type: str = "",
    out: str | None = None,
) -> ET.Element:
    case = ET.SubElement(
        parent, "testcase", {"classname": classname, "name": _x(name), "time": "0"}
    )
    if failure is not None:
        el = ET.SubElement(
            case, "failure", {"message": _x(failure.split("\n")[0]), "type": failure_type}
        )
        el.text = _x(failure)
    if out:
        ET.SubElement(case, "system-out").text = _x(out)
    return case


def _gates(suite: ET.Element, r: Report) -> None:
    """One test case per gate given on the command line: a failure when a
    fail gate is exceeded; a warn gate passes with its warning."""
    for g in gates(r):
        if g.state == "fail":
            _case(suite, f"{SUITE}.gates", g.name, failure=g.outcome, failure_type="threshold")
        else:
            _case(
                suite,
                f"{SUITE}.gates",
                g.name,
                out=("warning: " if g.state == "warn" else "") + g.outcome,
            )
    if not r.thresholds.any:
        _case(suite, f"{SUITE}.gates", "output gap measured (no gate set)", out=headline(r))


def render_junit(report: Report) -> str:
    """The report as a JUnit XML document: test cases for the gates (failure
    when exceeded), the findings at warn or fail (failure for fail; a warning
    passes with its message in system-out), and each BatchNormalization
    layer; properties carry the gap and the versions."""
    r = report
    suites = ET.Element("testsuites", {"name": SUITE})
    suite = ET.SubElement(suites, "testsuite", {"name": _x(f"{SUITE} check {r.model.path}")})
    props = ET.SubElement(suite, "properties")
    for k, v in _properties(r).items():
        ET.SubElement(props, "property", {"name": _x(k), "value": _x(v)})

    _gates(suite, r)
    _finding_cases(suite, r)
    _batchnorm_cases(suite, r)

    cases = suite.findall("testcase")
    failures = sum(1 for c in cases if c.find("failure") is not None)
    for el in (suites, suite):
        el.set("tests", str(len(cases)))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", "0")
        el.set("time", f"{r.seconds:.3f}" if math.isfinite(r.seconds) else "0")
    ET.indent(suites, space="  ")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def _properties(r: Report) -> dict[str, str]:
    """The suite's properties: verdict, gap, metrics, groups, baseline, versions."""
    values = {
        "verdict": r.verdict,
        "headline": headline(r),
        "model": r.model.path,
        "data": r.data.path,
        "samples": str(r.data.samples),
        "batch_size": str(r.data.batch_size),
        "output_gap.relative_l2": num(r.output_gap.relative_l2),
        "output_gap.max_abs": num(r.output_gap.max_abs),
    }
    if r.output_gap.top1_agreement is not None:
        values["output_gap.top1_agreement"] = num(r.output_gap.top1_agreement)
    for e in r.output_gap.per_output if len(r.output_gap.per_output) > 1 else ():
        values[f"output_gap.{e.name}"] = num(e.relative_l2)
    if r.metrics:
        for mode, vals in (("train", r.metrics.train), ("eval", r.metrics.eval)):
            for k, v in vals.items():
                values[f"metrics.{mode}.{k}"] = num(v)
    for k, v in r.groups.items():
        values[f"groups.{k}"] = num(v)
    if r.baseline is not None:
        values["baseline.path"] = r.baseline.path
        values["baseline.relative_l2"] = num(r.baseline.relative_l2)
        values["regression"] = num(r.regression)
    values["bngap"] = __version__
    for k, v in r.environment.items():
        values[f"environment.{k}"] = str(v)
    return values


def _finding_cases(suite: ET.Element, r: Report) -> None:
    """A test case per finding at warn (passes, message in system-out) or fail (failure)."""
    for i, f in enumerate(r.findings, 1):
        if f.severity not in (Severity.WARN, Severity.FAIL):
            continue
        name = f"finding {i}: {f.cause.value}" + (f" ({f.layer})" if f.layer else "")
        text = f"{f.message}\nfix: {f.remedy}"
        if f.severity is Severity.FAIL:
            _case(suite, f"{SUITE}.findings", name, failure=text, failure_type=f.cause.value)
        else:
            _case(suite, f"{SUITE}.findings", name, out="warning: " + text)


def _batchnorm_cases(suite: ET.Element, r: Report) -> None:
    """A test case per BatchNormalization layer; a failed audit is a failure."""
    for b in r.batchnorm:
        detail = (
            f"median |z| {num(b.median_abs_z, 2)}, max |z| {num(b.max_abs_z, 2)}, median |log2 var "
            f"ratio| {num(b.median_abs_log2_var_ratio, 2)}, expected local gap "
            f"{num(b.expected_local_gap, 3)} (noise {num(b.noise_local_gap, 3)})"
        )
        if b.severity is Severity.FAIL:
            _case(
                suite,
                f"{SUITE}.batchnorm",
                b.path,
                failure=detail,
                failure_type="batchnorm_statistics",
            )
        elif b.severity is Severity.WARN:
            _case(suite, f"{SUITE}.batchnorm", b.path, out="warning: " + detail)
        else:
            _case(suite, f"{SUITE}.batchnorm", b.path, out=detail)
