"""The JUnit XML report: valid against the common JUnit schema
(tests/data/junit.xsd), one test case per gate, per warn/fail finding and per
BatchNormalization layer, with the right failures. No TensorFlow."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_render import bn_record, make_report

from bngap.render import render
from bngap.results import Baseline, Severity, Thresholds

XSD = Path(__file__).parent / "data" / "junit.xsd"


@pytest.fixture(scope="module")
def schema():
    xmlschema = pytest.importorskip("xmlschema")
    return xmlschema.XMLSchema(str(XSD))


def cases(xml: str) -> dict[str, ET.Element]:
    suite = ET.fromstring(xml).find("testsuite")
    return {f"{c.get('classname')}::{c.get('name')}": c for c in suite.findall("testcase")}


def test_valid_and_counted(schema):
    r = make_report(thresholds=Thresholds(output_gap=0.05, loss_delta=10.0, warn_above=0.01))
    xml = render(r, "junit")
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 1
    suite = root.find("testsuite")
    testcases = suite.findall("testcase")
    failed = [c for c in testcases if c.find("failure") is not None]
    assert suite.get("tests") == root.get("tests") == str(len(testcases))
    assert suite.get("failures") == root.get("failures") == str(len(failed))
    # 3 gates, 2 findings at warn/fail (the info one is left out), 3 BN layers
    assert len(testcases) == 3 + 2 + 3
    names = sorted(c.get("name") for c in failed)
    assert names == [
        "finding 1: stats_never_updated (stem/conv[1]_bn)",
        "output gap (relative L2) <= 0.05 (--fail-above)",
        "stem/conv[1]_bn",
    ]


def test_gates_findings_and_layers(schema):
    r = make_report(thresholds=Thresholds(output_gap=0.5, warn_above=0.1))
    xml = render(r, "junit")
    schema.validate(xml)
    c = cases(xml)
    assert c["bngap.gates::output gap (relative L2) <= 0.5 (--fail-above)"].find("failure") is None
    warn_gate = c["bngap.gates::output gap (relative L2) <= 0.1 (--warn-above)"]
    assert warn_gate.find("failure") is None
    assert (
        warn_gate.find("system-out").text
        == "warning: output gap (relative L2) is 0.4123, above 0.1"
    )
    fail = c["bngap.findings::finding 1: stats_never_updated (stem/conv[1]_bn)"].find("failure")
    assert fail.get("type") == "stats_never_updated"
    assert fail.get("message").startswith("The moving statistics of stem/conv[1]_bn")
    assert "fix: Train with the layer" in fail.text
    warning = c["bngap.findings::finding 2: preprocessing_mismatch"]
    assert warning.find("failure") is None and warning.find("system-out").text.startswith(
        "warning: The input"
    )
    assert c["bngap.batchnorm::stem/conv[1]_bn"].find("failure") is not None
    assert c["bngap.batchnorm::block/bn2"].find("failure") is None
    assert "expected local gap 0.041" in c["bngap.batchnorm::head_bn"].find("system-out").text
    props = {p.get("name"): p.get("value") for p in ET.fromstring(xml).iter("property")}
    assert props["output_gap.relative_l2"] == "0.4123" and props["verdict"] == "warn"
    assert props["environment.keras"] == "3.8.0" and props["bngap"]
    assert props["metrics.eval.accuracy"] == "0.6875"


def test_regression_gate_and_no_gate(schema):
    r = dataclasses.replace(
        make_report(thresholds=Thresholds(max_regression=0.1)),
        baseline=Baseline("old.json", "m.keras", 0.2, 1.0, None, None, "pass"),
    )
    xml = render(r, "junit")
    schema.validate(xml)
    gate = cases(xml)[
        "bngap.gates::growth of the output gap against the baseline <= 0.1 (--max-regression)"
    ]
    assert gate.find("failure").get("message") == (
        "growth of the output gap against the baseline is 0.2123, above 0.1"
    )
    plain = render(make_report(findings=(), batchnorm=()), "junit")
    schema.validate(plain)
    only = ET.fromstring(plain).find("testsuite").findall("testcase")
    assert [c.get("name") for c in only] == ["output gap measured (no gate set)"]


def test_odd_names_stay_valid_xml(schema):
    r = make_report(
        batchnorm=(bn_record('a<b>&"c\x01', 1, Severity.FAIL, gap=0.9, mz=3.0),), findings=()
    )
    xml = render(r, "junit")
    schema.validate(xml)
    assert 'bngap.batchnorm::a<b>&"c?' in cases(xml)


def test_the_schema_rejects_what_it_should(schema):
    """The XSD is no rubber stamp: a case without a name, or a suite without
    its test count, is refused."""
    bad = '<testsuites><testsuite name="x" tests="1"><testcase classname="c"/></testsuite></testsuites>'
    assert not schema.is_valid(bad)
    assert not schema.is_valid('<testsuites><testsuite name="x"/></testsuites>')
    assert schema.is_valid('<testsuites><testsuite name="x" tests="0"/></testsuites>')
