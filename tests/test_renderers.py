"""Renderers on hand-built reports: golden JSON and Markdown, a plain
fixed-width terminal rendering, and the verdict/exit-code policy. No TensorFlow.

Regenerate the golden files after a deliberate change with
BNGAP_UPDATE_GOLDEN=1 python -m pytest tests/test_renderers.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bngap.errors import ExitStatus
from bngap.render import render
from bngap.results import (
    BatchNormRecord, Cause, ChannelDeviation, DataSummary, Finding, GapEntry, Kind, LayerRecord,
    LeakCheck, Metrics, ModelSummary, OutputGap, PreprocessingProbe, Report, Severity, Thresholds,
)

GOLDEN = Path(__file__).parent / "golden"


def make_report(thresholds: Thresholds = Thresholds(), gap: float = 0.4123, metrics: bool = True) -> Report:
    layers = (
        LayerRecord("conv[1]", "Conv2D", Kind.OTHER, 0, 0, 0.0, None, None),
        LayerRecord("base/conv[1]_bn", "BatchNormalization", Kind.BATCHNORM, 1, 1, 0.61, 0.61, 0.35,
                    mode_dependent=True, fit_training=True, fit_mode="training", calls=1),
        LayerRecord("base/frozen_bn", "BatchNormalization", Kind.BATCHNORM, 2, 1, 0.6, 0.0, None,
                    mode_dependent=True, trainable=False, fit_training=True, fit_mode="inference",
                    fit_mode_reason="frozen (trainable=False): Keras 3 BN uses its moving statistics", calls=1),
        LayerRecord("drop", "Dropout", Kind.DROPOUT, 3, 0, 0.9, 1.0, 0.2, mode_dependent=True,
                    fit_training=True, fit_mode="training", calls=1),
        LayerRecord("head", "Dense", Kind.OTHER, 4, 0, gap, None, None, calls=1),
    )
    bn = (
        BatchNormRecord("base/conv[1]_bn", 1, True, 0.99, 1e-3, 8, -1, 2.5, 3.1, 4.0, 2.3, 2.9, 3.3, 0.83, 0.05,
                        False, 0.94, 6.0, True, Severity.FAIL, 64, 0,
                        (ChannelDeviation(3, 4.0, 2.9), ChannelDeviation(1, -2.2, 2.1)), data_mean_abs=4.2,
                        data_std=2.9),
        BatchNormRecord("base/frozen_bn", 2, False, 0.99, 1e-3, 8, -1, 0.1, 0.2, 0.3, 0.1, 0.2, 0.2, 0.05, 0.04,
                        False, None, None, False, Severity.OK, 64, 0),
    )
    findings = (
        Finding(Cause.STATS_NOT_CONVERGED, Severity.FAIL, "base/conv[1]_bn",
                "1 BatchNormalization layers have moving statistics that are still 94% their initial values.",
                "Train for more steps or re-estimate: bngap fix MODEL DATA -o fixed.keras.",
                {"init_fraction": 0.94}),
        Finding(Cause.DROPOUT_ONLY, Severity.INFO, "drop", "Dropout contributes 0.2 of the gap.", "Nothing to fix."),
    )
    return Report(
        model=ModelSummary("model.keras", "toy", "Sequential", 5, 2, 1, 1234, ((None, 8, 8, 3),), ((None, 3),)),
        data=DataSummary("data.npz", 64, metrics, ((64, 8, 8, 3),), 32, 2, 32, ("integer values cast to float32",)),
        output_gap=OutputGap(gap, 0.9, 0.5, (GapEntry("output", gap, 0.9, 0.5),)),
        metrics=Metrics({"loss": 0.25, "accuracy": 1.0}, {"loss": 2.5, "accuracy": 0.3333}, "sparse_categorical_crossentropy",
                        "compiled") if metrics else None,
        groups={"batchnorm": 0.35, "dropout": 0.2, "augmentation": 0.0, "other": 0.0},
        layers=layers, batchnorm=bn, findings=findings,
        leaks=(LeakCheck("model(x, training=False)", 0.0, (), 4), LeakCheck("model(x)", 0.0, (), 4),
               LeakCheck("predict(x)", 1e-7, (), 4)),
        preprocessing=PreprocessingProbe(0.0, 255.0, 127.0, ("base/conv[1]_bn",), 0.9, (("x / 255", 0.8),), None),
        thresholds=thresholds, settings={"batch_size": 32, "seed": 0, "effects": "auto", "limit": None},
        notes=("1 BatchNormalization layers are frozen (trainable=False).",),
        environment={"python": "3.11.7", "platform": "Linux", "tensorflow": "2.21.0", "keras": "3.15.1",
                     "numpy": "2.4.6"},
        seconds=1.5,
    )


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BNGAP_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_json_golden():
    golden("report.json", render(make_report(), "json"))


def test_markdown_golden():
    golden("report.md", render(make_report(), "markdown"))


def test_json_has_the_contract_keys_and_plain_values():
    d = json.loads(render(make_report(), "json"))
    assert d["schema_version"] == "1" and d["verdict"] == "pass"
    assert set(d["model"]) >= {"path", "layers", "batchnorm_layers", "dropout_like_layers"}
    assert set(d["data"]) >= {"path", "samples", "has_labels"}
    assert set(d["output_gap"]) >= {"relative_l2", "max_abs", "top1_agreement"}
    assert set(d["groups"]) == {"batchnorm", "dropout", "augmentation", "other"}
    assert set(d["layers"][0]) >= {"path", "class_name", "kind", "divergence", "own_contribution", "output_effect"}
    assert set(d["batchnorm"][0]) >= {"path", "trainable", "momentum", "epsilon", "channels", "median_abs_z",
                                      "max_abs_z", "median_abs_log2_var_ratio", "never_updated", "severity"}
    assert set(d["findings"][0]) >= {"cause", "severity", "layer", "message", "remedy"}
    assert d["findings"][0]["cause"] == "stats_not_converged" and d["layers"][1]["kind"] == "batchnorm"
    assert d["metrics"]["train"] == {"loss": 0.25, "accuracy": 1.0}


def test_json_numbers_are_plain_and_nan_is_null():
    r = make_report(gap=float("nan"))
    d = json.loads(render(r, "json"))
    assert d["output_gap"]["relative_l2"] is None
    assert json.loads(render(make_report(gap=float("inf")), "json"))["output_gap"]["relative_l2"] is None


ANSI = re.compile(r"\x1b\[")


@pytest.mark.parametrize("width", [80, 120])
def test_text_is_plain_and_fits_the_width(width):
    text = render(make_report(), "text", width=width, color=False)
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert max(len(l) for l in lines) <= width
    assert all(l == l.rstrip() for l in lines)
    assert " ".join(lines[:2]).startswith("output gap 0.4123 (relative L2, train vs inference) · "
                                          "likely cause: stats_not_converged (fail)")
    assert "base/conv[1]_bn" in text and "conv[1]" in text  # [brackets] are not markup
    assert "sparse_categorical_crossentropy" in text


def test_text_in_colour_has_escape_codes():
    assert ANSI.search(render(make_report(), "text", width=100, color=True))


def test_all_layers_lists_every_layer():
    text = render(make_report(), "text", width=140, all_layers=True)
    assert "head" in text and "base/frozen_bn" in text
    md = render(make_report(), "markdown", all_layers=True)
    assert "`head`" in md


@pytest.mark.parametrize("thresholds,gap,exceeded,code", [
    (Thresholds(), 0.4123, (), ExitStatus.OK),
    (Thresholds(output_gap=0.5), 0.4123, (), ExitStatus.OK),
    (Thresholds(output_gap=0.05), 0.4123, ("output_gap",), ExitStatus.GAP_ABOVE_THRESHOLD),
    (Thresholds(output_gap=0.05), 0.05004, (), ExitStatus.OK),          # prints as 0.0500
    (Thresholds(output_gap=0.05), 0.05006, ("output_gap",), ExitStatus.GAP_ABOVE_THRESHOLD),
    (Thresholds(loss_delta=2.0), 0.0, ("loss_delta",), ExitStatus.GAP_ABOVE_THRESHOLD),  # 2.5 - 0.25
    (Thresholds(loss_delta=3.0), 0.0, (), ExitStatus.OK),
    (Thresholds(accuracy_drop=0.5), 0.0, ("accuracy_drop",), ExitStatus.GAP_ABOVE_THRESHOLD),
    (Thresholds(output_gap=1.0, accuracy_drop=0.9), 0.0, (), ExitStatus.OK),
])
def test_exit_policy(thresholds, gap, exceeded, code):
    r = make_report(thresholds=thresholds, gap=gap)
    assert r.exceeded == exceeded
    assert r.exit_status is code
    assert r.verdict == ("fail" if exceeded else "pass")
    assert not r.ok  # a fail-severity finding is not ok even without thresholds


def test_metric_thresholds_without_labels_never_fail():
    r = make_report(thresholds=Thresholds(loss_delta=0.0, accuracy_drop=0.0), metrics=False)
    assert r.exceeded == () and r.loss_delta is None and r.accuracy_drop is None


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render(make_report(), "xml")
