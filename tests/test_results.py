"""The verdict policy with warn and baseline gates, and the report's exact
round trip through its JSON form (what `bngap render` relies on). No TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
from test_render import make_report

from bngap.errors import ExitStatus
from bngap.render import FORMATS, render
from bngap.results import Baseline, Report, Thresholds


def baseline_of(gap: float | None) -> Baseline:
    return Baseline(
        "old.json",
        "models/tiny_resnet.keras",
        gap,
        1.0,
        0.9,
        None,
        "pass",
        "stats_not_converged",
        1,
    )


@pytest.mark.parametrize(
    "thresholds,gap,old,verdict,exceeded,warned",
    [
        (Thresholds(warn_above=0.05), 0.04, None, "pass", (), ()),
        (Thresholds(warn_above=0.05), 0.05004, None, "pass", (), ()),  # prints 0.0500
        (Thresholds(warn_above=0.05), 0.05006, None, "warn", (), ("output_gap",)),
        (Thresholds(output_gap=0.2, warn_above=0.05), 0.1, None, "warn", (), ("output_gap",)),
        (
            Thresholds(output_gap=0.2, warn_above=0.05),
            0.3,
            None,
            "fail",
            ("output_gap",),
            ("output_gap",),
        ),
        (Thresholds(max_regression=0.05), 0.30, 0.25, "pass", (), ()),  # grew by exactly 0.05
        (Thresholds(max_regression=0.05), 0.30006, 0.25, "fail", ("regression",), ()),
        (Thresholds(max_regression=0.0), 0.10, 0.25, "pass", (), ()),  # improved
        (Thresholds(max_regression=0.05), 0.9, None, "pass", (), ()),  # no baseline value
        (Thresholds(max_regression=0.05), math.inf, 0.25, "fail", ("regression",), ()),
        (Thresholds(), 0.9, 0.1, "pass", (), ()),  # baseline shown, no gate
    ],
)
def test_warn_and_regression_policy(thresholds, gap, old, verdict, exceeded, warned):
    r = make_report(gap=gap, thresholds=thresholds, findings=())
    if old is not None or thresholds.max_regression is not None:
        r = dataclasses.replace(r, baseline=baseline_of(old))
    assert r.exceeded == exceeded and r.warned == warned
    assert r.verdict == verdict
    assert r.exit_status is (ExitStatus.GAP_ABOVE_THRESHOLD if verdict == "fail" else ExitStatus.OK)
    d = r.to_dict()
    assert d["verdict"] == verdict and d["warned"] == list(warned)


def test_regression_is_the_growth_as_printed():
    r = dataclasses.replace(make_report(gap=0.41234), baseline=baseline_of(0.11236))
    assert r.regression == pytest.approx(0.4123 - 0.1124)
    assert r.to_dict()["baseline"]["regression"] == pytest.approx(0.2999)
    assert r.to_dict()["baseline"]["relative_l2"] == 0.11236


def test_baseline_from_a_saved_report():
    old = make_report(gap=0.25, thresholds=Thresholds(output_gap=0.05))
    b = Baseline.from_report(json.loads(render(old, "json")), "old.json")
    assert (b.path, b.model_path, b.relative_l2, b.max_abs, b.top1_agreement) == (
        "old.json",
        "models/tiny_resnet.keras",
        0.25,
        3.25,
        0.6875,
    )
    assert b.verdict == "fail" and b.top_cause == "stats_never_updated" and b.flagged_batchnorm == 2
    assert b.metrics.eval == {"loss": 1.875, "accuracy": 0.6875}
    with pytest.raises(ValueError, match="not a bngap check report"):
        Baseline.from_report({"schema_version": "1"}, "x.json")


def reports() -> list[Report]:
    base = make_report(
        thresholds=Thresholds(output_gap=0.05, loss_delta=0.1, warn_above=0.01, max_regression=0.02)
    )
    return [
        make_report(),
        dataclasses.replace(base, baseline=baseline_of(0.2)),
        make_report(metrics=None, findings=(), batchnorm=()),
        dataclasses.replace(make_report(gap=float("nan")), seconds=float("inf")),
    ]


@pytest.mark.parametrize("index", range(4))
def test_round_trip_is_exact(index):
    r = reports()[index]
    d = r.to_dict()
    back = Report.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    again = Report.from_dict(back.to_dict())
    assert again == back  # a fixed point after one trip
    for fmt in FORMATS:  # every rendering of the loaded report equals the once-loaded one's
        assert render(again, fmt) == render(back, fmt)


def test_round_trip_restores_types():
    back = Report.from_dict(json.loads(render(reports()[1], "json")))
    assert back == reports()[1]  # every field, enums and tuples included
    assert back.model.input_shapes == ((None, 32, 32, 3),)
    assert back.preprocessing.candidates == (("x / 255", 0.12), ("x / 127.5 - 1", 0.31))


def test_newer_keys_are_ignored_and_bad_reports_refused():
    d = make_report().to_dict()
    d["layers"][0]["added_later"] = 1
    d["something_new"] = {"a": 1}
    assert Report.from_dict(d).to_dict()["layers"][0] == make_report().to_dict()["layers"][0]
    with pytest.raises(ValueError, match="schema version 1"):
        Report.from_dict({"schema_version": "2"})
    with pytest.raises(ValueError, match="not a readable bngap check report"):
        Report.from_dict({"schema_version": "1", "model": {}})


@pytest.mark.parametrize(
    "thresholds,start",
    [
        (
            Thresholds(output_gap=0.5, warn_above=0.1),
            "WARN · output gap 0.4123 (relative L2, train vs inference) <= 0.5, > 0.1 (warn) · ",
        ),
        (
            Thresholds(warn_above=0.1),
            "WARN · output gap 0.4123 (relative L2, train vs inference) > 0.1 (warn) · ",
        ),
        (
            Thresholds(output_gap=0.1, warn_above=0.05),
            "FAIL · output gap 0.4123 (relative L2, train vs inference) > 0.1 · ",
        ),
        (
            Thresholds(warn_above=0.5),
            "PASS · output gap 0.4123 (relative L2, train vs inference) · ",
        ),
    ],
)
def test_every_output_shows_the_warn_verdict(thresholds, start):
    r = make_report(thresholds=thresholds)
    assert render(r, "text", width=200).startswith(start)
    assert render(r, "markdown").startswith("## bngap report: " + start)
    assert json.loads(render(r, "json"))["verdict"] == start.split(" ")[0].lower()
    assert f'<property name="verdict" value="{start.split(" ")[0].lower()}" />' in render(
        r, "junit"
    )
    assert (
        f'<span class="verdict {start.split(" ")[0].lower()}">{start.split(" ")[0]}</span>'
        in render(r, "html")
    )


def test_text_and_markdown_show_the_baseline_side_by_side():
    r = dataclasses.replace(
        make_report(thresholds=Thresholds(max_regression=0.5)), baseline=baseline_of(0.2)
    )
    text = render(r, "text", width=100)
    block = text[text.index("Against the baseline") : text.index("Gap by cause")]
    assert (
        "baseline old.json (model models/tiny_resnet.keras): the output gap changed by +0.2123 "
        "(at most +0.5 allowed)"
    ) in " ".join(block.split())
    assert re.search(r"^output gap \(relative L2\) +0\.2000 +0\.4123$", block, re.M)
    assert re.search(r"^most likely cause +stats_not_converged +stats_never_updated$", block, re.M)
    md = render(r, "markdown")
    assert "| output gap (relative L2) | 0.2000 | 0.4123 |" in md
    assert "| verdict | pass | pass |" in md


def test_a_saved_report_with_a_nan_loss_renders_in_every_format():
    """NaN is saved as null: read back, the loss is None, and the loss delta
    is not measured (it was a crash: None minus a float)."""
    from bngap.results import Metrics

    nan_loss = Metrics(
        train={"loss": 0.25, "accuracy": 0.9},
        eval={"loss": float("nan"), "accuracy": 0.5},
        loss_name="sparse_categorical_crossentropy",
        source="compiled",
    )
    r = make_report(metrics=nan_loss, thresholds=Thresholds(loss_delta=0.1))
    back = Report.from_dict(json.loads(render(r, "json")))
    assert back.metrics.eval["loss"] is None
    assert back.loss_delta is None
    for fmt in FORMATS:
        assert render(back, fmt)
    assert back.exit_status == r.exit_status
