"""Renderers and the verdict/exit policy on a hand-built `Report`: golden
JSON and Markdown, the contract's JSON keys and enums, a plain 80-column
terminal rendering, and the threshold table with its rounding rule.
No TensorFlow.

After a deliberate change to a rendering, regenerate the golden files with

    BNGAP_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render.py

and read the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bngap.errors import ExitStatus
from bngap.render import render
from bngap.results import (
    BatchNormRecord,
    Cause,
    ChannelDeviation,
    DataSummary,
    Finding,
    GapEntry,
    Kind,
    LayerRecord,
    LeakCheck,
    Metrics,
    ModelSummary,
    OutputGap,
    PreprocessingProbe,
    Report,
    Severity,
    Thresholds,
    exceeds,
    format_number,
)

GOLDEN = Path(__file__).parent / "golden"
ANSI = re.compile(r"\x1b\[")

ENVIRONMENT = {
    "python": "3.12.3",
    "platform": "Linux-6.8-x86_64",
    "tensorflow": "2.18.0",
    "keras": "3.8.0",
    "numpy": "2.1.3",
}

KINDS = {
    "batchnorm",
    "dropout",
    "noise",
    "augmentation",
    "recurrent",
    "custom_training_arg",
    "other",
}
CAUSES = {
    "stats_never_updated",
    "stats_not_converged",
    "preprocessing_mismatch",
    "domain_shift",
    "dropout_only",
    "augmentation",
    "small_batch",
    "mode_leak",
}


def bn_record(
    path: str,
    order: int,
    severity: Severity,
    *,
    gap: float,
    noise: float | None = 0.02,
    never: bool = False,
    init: float | None = None,
    updates: float | None = None,
    trainable: bool = True,
    mz: float = 0.1,
) -> BatchNormRecord:
    return BatchNormRecord(
        path=path,
        order=order,
        trainable=trainable,
        momentum=0.99,
        epsilon=1e-3,
        channels=16,
        axis=-1,
        median_abs_z=mz,
        p95_abs_z=mz * 1.5,
        max_abs_z=mz * 2,
        median_abs_log2_var_ratio=mz / 2,
        p95_abs_log2_var_ratio=mz,
        max_abs_log2_var_ratio=mz * 1.2,
        expected_local_gap=gap,
        noise_local_gap=noise,
        never_updated=never,
        init_fraction=init,
        estimated_updates=updates,
        fit_uses_batch_stats=trainable,
        severity=severity,
        samples=128,
        degenerate_channels=0,
        worst_channels=(ChannelDeviation(3, mz * 2, mz),),
        data_mean_abs=1.25,
        data_std=2.5,
        init_share_estimate=init,
        init_share_spread=None if init is None else 0.0,
    )


def make_report(
    *,
    gap: float = 0.4123,
    thresholds: Thresholds = Thresholds(),
    metrics: Metrics | None | str = "default",
    findings: tuple | None = None,
    batchnorm: tuple | None = None,
) -> Report:
    layers = (
        LayerRecord("stem/conv", "Conv2D", Kind.OTHER, 0, 1, 0.0, None, None, calls=1),
        LayerRecord(
            "stem/conv[1]_bn",
            "BatchNormalization",
            Kind.BATCHNORM,
            1,
            1,
            0.7342,
            0.7342,
            0.3561,
            mode_dependent=True,
            fit_training=True,
            fit_mode="training",
            calls=1,
        ),
        LayerRecord("stem/relu", "ReLU", Kind.OTHER, 2, 1, 0.7101, None, None, calls=1),
        LayerRecord(
            "block/bn2",
            "BatchNormalization",
            Kind.BATCHNORM,
            3,
            1,
            0.5205,
            0.2104,
            0.0812,
            mode_dependent=True,
            trainable=False,
            fit_training=True,
            fit_mode="inference",
            fit_mode_reason="frozen (trainable=False): Keras 3 BN uses its moving statistics",
            calls=1,
        ),
        LayerRecord(
            "dropout",
            "Dropout",
            Kind.DROPOUT,
            4,
            0,
            0.6,
            0.3125,
            0.0521,
            mode_dependent=True,
            fit_training=True,
            fit_mode="training",
            calls=1,
        ),
        LayerRecord("logits", "Dense", Kind.OTHER, 5, 0, gap, None, None, calls=1),
        LayerRecord("unused_head", "Dense", Kind.OTHER, -1, 0, None, None, None),
    )
    if batchnorm is None:
        batchnorm = (
            bn_record(
                "stem/conv[1]_bn",
                1,
                Severity.FAIL,
                gap=0.8731,
                never=True,
                init=1.0,
                updates=0.0,
                mz=4.2,
            ),
            bn_record(
                "block/bn2",
                3,
                Severity.WARN,
                gap=0.3017,
                init=0.4,
                updates=91.17,
                trainable=False,
                mz=1.1,
            ),
            bn_record("head_bn", 6, Severity.OK, gap=0.0412, noise=0.0388),
        )
    if findings is None:
        findings = (
            Finding(
                Cause.STATS_NEVER_UPDATED,
                Severity.FAIL,
                "stem/conv[1]_bn",
                "The moving statistics of stem/conv[1]_bn still hold their initial values (mean 0, "
                "variance 1); its input has mean 4.2 and standard deviation 2.5.",
                "Train with the layer in training mode, or re-estimate the statistics: "
                "bngap fix MODEL DATA -o fixed.keras.",
                {"layers": ["stem/conv[1]_bn"]},
            ),
            Finding(
                Cause.PREPROCESSING_MISMATCH,
                Severity.WARN,
                None,
                "The input spans 0..255; the first BatchNormalization layers fit x / 255 better.",
                "Scale the input as in training (x / 255).",
                {"best": "x / 255"},
            ),
            Finding(
                Cause.DROPOUT_ONLY,
                Severity.INFO,
                "dropout",
                "Dropout contributes 0.0521 of the output gap; this is expected in training mode.",
                "Nothing to fix.",
            ),
        )
    if metrics == "default":
        metrics = Metrics(
            {"loss": 0.3125, "accuracy": 0.9375},
            {"loss": 1.875, "accuracy": 0.6875},
            "sparse_categorical_crossentropy",
            "compiled",
        )
    return Report(
        model=ModelSummary(
            "models/tiny_resnet.keras",
            "tiny_resnet",
            "Functional",
            7,
            3,
            1,
            20512,
            ((None, 32, 32, 3),),
            ((None, 10),),
            ("image",),
            ("logits",),
        ),
        data=DataSummary(
            "data/val.npz",
            128,
            metrics is not None,
            ((128, 32, 32, 3),),
            32,
            4,
            32,
            ("uint8 inputs cast to float32",),
        ),
        output_gap=OutputGap(gap, 3.25, 0.6875, (GapEntry("logits", gap, 3.25, 0.6875),)),
        metrics=metrics,
        groups={"batchnorm": 0.4011, "dropout": 0.0521, "augmentation": 0.0, "other": 0.0},
        layers=layers,
        batchnorm=batchnorm,
        findings=findings,
        leaks=(
            LeakCheck("predict(x)", 0.0, (), 4),
            LeakCheck("model(x)", None, (), 0, "no call path"),
        ),
        preprocessing=PreprocessingProbe(
            0.0,
            255.0,
            120.5,
            ("stem/conv[1]_bn",),
            0.95,
            (("x / 255", 0.12), ("x / 127.5 - 1", 0.31)),
            "x / 255",
        ),
        thresholds=thresholds,
        settings={"batch_size": 32, "limit": None, "seed": 0, "effects": "auto"},
        notes=("1 BatchNormalization layer is frozen (trainable=False).",),
        environment=dict(ENVIRONMENT),
        seconds=2.5,
    )


@pytest.fixture
def report() -> Report:
    return make_report(thresholds=Thresholds(output_gap=0.05))


def check_golden(name: str, text: str) -> None:
    """Compares `text` with tests/golden/NAME (rewrites it with BNGAP_UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("BNGAP_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; create it with BNGAP_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"{name} differs from its golden file (BNGAP_UPDATE_GOLDEN=1 rewrites it)"
    )


# ------------------------------------------------------------------ golden


def test_json_golden(report):
    check_golden("render_report.json", render(report, "json"))


def test_markdown_golden(report):
    check_golden("render_report.md", render(report, "markdown"))


# -------------------------------------------------------------------- JSON


def test_json_has_every_contract_key(report):
    d = json.loads(render(report, "json"))
    assert d["schema_version"] == "1"
    assert d["verdict"] == "fail"  # 0.4123 > 0.05
    assert set(d["model"]) >= {"path", "layers", "batchnorm_layers", "dropout_like_layers"}
    assert (
        d["model"]["path"],
        d["model"]["layers"],
        d["model"]["batchnorm_layers"],
        d["model"]["dropout_like_layers"],
    ) == ("models/tiny_resnet.keras", 7, 3, 1)
    assert d["data"] == {**d["data"], "path": "data/val.npz", "samples": 128, "has_labels": True}
    assert d["output_gap"]["relative_l2"] == 0.4123
    assert d["output_gap"]["max_abs"] == 3.25 and d["output_gap"]["top1_agreement"] == 0.6875
    assert d["metrics"]["train"] == {"loss": 0.3125, "accuracy": 0.9375}
    assert d["metrics"]["eval"] == {"loss": 1.875, "accuracy": 0.6875}
    assert d["groups"] == {
        "batchnorm": 0.4011,
        "dropout": 0.0521,
        "augmentation": 0.0,
        "other": 0.0,
    }
    assert len(d["layers"]) == 7
    for layer in d["layers"]:
        assert set(layer) >= {
            "path",
            "class_name",
            "kind",
            "divergence",
            "own_contribution",
            "output_effect",
        }
        assert layer["kind"] in KINDS
    assert d["layers"][1]["path"] == "stem/conv[1]_bn" and d["layers"][1]["kind"] == "batchnorm"
    assert d["layers"][6]["divergence"] is None
    assert len(d["batchnorm"]) == 3
    for bn in d["batchnorm"]:
        assert set(bn) >= {
            "path",
            "trainable",
            "momentum",
            "epsilon",
            "channels",
            "median_abs_z",
            "max_abs_z",
            "median_abs_log2_var_ratio",
            "never_updated",
            "severity",
        }
        assert bn["severity"] in {"ok", "warn", "fail"}
        assert isinstance(bn["trainable"], bool) and isinstance(bn["never_updated"], bool)
        assert isinstance(bn["channels"], int) and isinstance(bn["epsilon"], float)
    assert [b["severity"] for b in d["batchnorm"]] == ["fail", "warn", "ok"]
    assert [f["cause"] for f in d["findings"]] == [
        "stats_never_updated",
        "preprocessing_mismatch",
        "dropout_only",
    ]
    for f in d["findings"]:
        assert set(f) >= {"cause", "severity", "layer", "message", "remedy"}
        assert f["cause"] in CAUSES and f["severity"] in {"info", "warn", "fail"}
    assert d["findings"][1]["layer"] is None


def test_json_verdict_pass_without_thresholds():
    d = json.loads(render(make_report(), "json"))
    assert d["verdict"] == "pass" and d["exceeded"] == []


def test_json_metrics_null_without_labels():
    d = json.loads(render(make_report(metrics=None), "json"))
    assert d["metrics"] is None and d["data"]["has_labels"] is False


def _walk(obj, where="$"):
    """Yields (where, value) for every leaf of a JSON-like structure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), f"non-string key at {where}: {k!r}"
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")
    else:
        yield where, obj


def test_numbers_are_plain_and_nonfinite_becomes_null():
    nan, inf = float("nan"), float("inf")
    layers = (
        LayerRecord(
            "a", "Dense", Kind.OTHER, np.int64(0), 0, np.float32(0.25), np.float64(nan), None
        ),
    )
    bn = (
        dataclasses.replace(
            bn_record("bn", 1, Severity.WARN, gap=inf, noise=None),
            max_abs_z=nan,
            channels=np.int64(16),
            trainable=np.bool_(True),
        ),
    )
    r = Report(
        model=ModelSummary("m.keras", "m", "Sequential", 1, 1, 0, 10, ((None, 4),), ((None, 2),)),
        data=DataSummary("d.npy", 8, True, ((8, 4),), 8, 1, 8),
        output_gap=OutputGap(np.float64(inf), np.float32(2.5), nan),
        metrics=Metrics({"loss": np.float32(0.5)}, {"loss": nan}, "mse", "inferred"),
        groups={"batchnorm": nan, "dropout": np.float32(0.125), "augmentation": 0, "other": inf},
        layers=layers,
        batchnorm=bn,
        findings=(
            Finding(
                Cause.MODE_LEAK, Severity.WARN, "a", "m", "r", {"x": nan, "y": np.float64(1.5)}
            ),
        ),
        settings={"seed": np.int64(3), "scale": np.float32(nan)},
        seconds=np.float64(0.5),
    )
    d = r.to_dict()
    for where, v in _walk(d):
        assert v is None or type(v) in (bool, int, float, str), f"{where} is {type(v).__name__}"
        if type(v) is float:
            assert math.isfinite(v), where
    assert d["output_gap"] == {
        **d["output_gap"],
        "relative_l2": None,
        "max_abs": 2.5,
        "top1_agreement": None,
    }
    assert d["metrics"]["eval"]["loss"] is None and d["metrics"]["train"]["loss"] == 0.5
    assert d["groups"] == {"batchnorm": None, "dropout": 0.125, "augmentation": 0, "other": None}
    assert d["layers"][0]["divergence"] == 0.25 and d["layers"][0]["own_contribution"] is None
    assert (
        d["batchnorm"][0]["expected_local_gap"] is None and d["batchnorm"][0]["max_abs_z"] is None
    )
    assert d["batchnorm"][0]["channels"] == 16 and d["batchnorm"][0]["trainable"] is True
    assert d["findings"][0]["evidence"] == {"x": None, "y": 1.5}
    assert d["settings"] == {"seed": 3, "scale": None}
    json.loads(render(r, "json"))  # strict JSON: no NaN / Infinity literals


# -------------------------------------------------------------------- text

HEADLINE = (
    "FAIL · output gap 0.4123 (relative L2, train vs inference) > 0.05 · "
    "likely cause: stats_never_updated (fail)"
)


def first_paragraph(text: str) -> str:
    """The lines before the `bngap VERSION · model ...` line, joined."""
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("bngap "))
    return " ".join(lines[:end])


@pytest.mark.parametrize("width", [80, 100])
def test_text_is_plain_and_fits_the_width(report, width):
    text = render(report, "text", width=width, color=False)
    assert not ANSI.search(text) and "\x1b" not in text
    lines = text.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert too_long == []
    assert [line for line in lines if line != line.rstrip()] == []
    assert text.endswith("\n") and not text.endswith("\n\n\n")


def test_text_headline_first(report):
    text = render(report, "text", width=80, color=False)
    assert text.startswith("FAIL · output gap 0.4123")
    assert first_paragraph(text) == HEADLINE
    wide = render(report, "text", width=140, color=False)
    assert wide.splitlines()[0] == HEADLINE


def test_text_keeps_bracketed_names_intact(report):
    text = render(report, "text", width=80, color=False)
    assert "stem/conv[1]_bn" in text
    assert "conv\\[1]" not in text  # markup escaping leaves no backslash behind
    odd = make_report(
        batchnorm=(bn_record("x/[bold]odd[/bold]", 1, Severity.FAIL, gap=0.9, mz=3.0),)
    )
    odd_text = render(odd, "text", width=120, color=False)
    assert re.search(
        r"^x/\[bold\]odd\[/bold\]\s+FAIL\s+3\.00", odd_text, re.M
    )  # the table row itself
    assert re.search(r"^stem/conv\[1\]_bn\s+batchnorm\s+training", text, re.M)


def test_long_names_fold_without_trailing_spaces():
    long_path = "encoder/stage_3/block_12/conv_2_batchnorm_with_a_long_name"
    r = make_report(batchnorm=(bn_record(long_path, 1, Severity.FAIL, gap=0.9, mz=3.0),))
    text = render(r, "text", width=80, color=False)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert [line for line in lines if line != line.rstrip()] == []
    row = next(i for i, line in enumerate(lines) if "FAIL      3.00" in line)
    assert lines[row].startswith("encoder/") and not lines[row].startswith(long_path)  # folded
    assert lines[row].endswith("0.900   0.020      -")  # the last columns kept whole
    assert lines[row + 1].strip() and "FAIL" not in lines[row + 1]  # the name goes on below


@pytest.mark.parametrize("width", [60, 64, 72])
def test_narrow_text_keeps_every_table_value_whole(report, width):
    # Wider lines than asked for would be acceptable here (a terminal wraps
    # them); a cropped number is not.
    text = render(report, "text", width=width, color=False)
    table_values = [
        "0.7342",
        "0.5205",
        "0.6000",
        "0.3561",
        "0.0812",
        "0.873",
        "0.302",
        "0.020",
        "never",
        "40.0%",
    ]
    assert [v for v in table_values if v not in text] == []
    assert "\u2026" not in text  # no ellipsis either
    assert "block/bn2" in text


def test_text_in_colour_has_escape_codes(report):
    assert ANSI.search(render(report, "text", width=80, color=True))


def test_text_sections(report):
    text = render(report, "text", width=80, color=False)
    assert (
        "BatchNormalization audit: 2 of 3 layers flagged; the first, stem/conv[1]_bn, is where "
        "the problem starts"
    ) in " ".join(text.split())
    assert "head_bn" not in text  # OK layers are listed with --all-layers only
    assert "sparse_categorical_crossentropy" in text
    assert "93.8%" in text and "68.8%" in text  # accuracies as percentages
    assert "- uint8 inputs cast to float32" in text
    everything = render(report, "text", width=140, color=False, all_layers=True)
    assert "head_bn" in everything and "unused_head" in everything


def test_text_caps_the_bn_table_but_counts_the_rest():
    many = tuple(bn_record(f"b{i}/bn", i, Severity.WARN, gap=0.3) for i in range(15))
    text = render(make_report(batchnorm=many), "text", width=100, color=False)
    assert "b11/bn" in text and "b12/bn" not in text
    assert "... and 3 more flagged layers (--all-layers shows all)" in text


def test_text_without_findings_says_so():
    r = make_report(gap=0.0, findings=(), batchnorm=())
    text = render(r, "text", width=80, color=False)
    assert text.splitlines()[0] == "output gap 0.0000 (relative L2, train vs inference) · no gap"
    assert "No cause flagged" in text


def test_markdown_headline_and_escaped_cells(report):
    md = render(report, "markdown")
    assert md.splitlines()[0] == "## bngap report: " + HEADLINE
    for key, value in ENVIRONMENT.items():
        assert f"{key}: {value}" in md
    odd = make_report(findings=(), batchnorm=(bn_record("a|b", 1, Severity.WARN, gap=0.3),))
    assert "`a\\|b`" in render(odd, "markdown")  # a pipe in a name does not split the table row


def test_unknown_format(report):
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render(report, "xml")


# ------------------------------------------------------------ verdict policy


def metrics_of(train_loss, eval_loss, train_acc, eval_acc) -> Metrics:
    return Metrics(
        {"loss": train_loss, "accuracy": train_acc},
        {"loss": eval_loss, "accuracy": eval_acc},
        "sparse_categorical_crossentropy",
        "compiled",
    )


CALM = metrics_of(0.5, 0.5, 0.9, 0.9)


@pytest.mark.parametrize(
    "thresholds,gap,metrics,exceeded",
    [
        (Thresholds(), 5.0, CALM, ()),  # no gate, never fails
        (Thresholds(output_gap=0.05), 0.04, CALM, ()),
        (Thresholds(output_gap=0.05), 0.05, CALM, ()),  # equal is not above
        (Thresholds(output_gap=0.05), 0.05004, CALM, ()),  # prints 0.0500
        (Thresholds(output_gap=0.05), 0.05006, CALM, ("output_gap",)),  # prints 0.0501
        (Thresholds(output_gap=0.05), 0.4123, CALM, ("output_gap",)),
        (Thresholds(output_gap=0.05), math.inf, CALM, ("output_gap",)),  # NaN/Inf in one mode only
        (Thresholds(output_gap=0.0), 0.00004, CALM, ()),  # rounds to 0.0000
        (Thresholds(output_gap=0.0), 0.00006, CALM, ("output_gap",)),
        (Thresholds(loss_delta=0.05), 0.0, metrics_of(0.1, 0.15004, 0.9, 0.9), ()),
        (Thresholds(loss_delta=0.05), 0.0, metrics_of(0.1, 0.15006, 0.9, 0.9), ("loss_delta",)),
        (
            Thresholds(loss_delta=0.05),
            0.0,
            metrics_of(2.0, 0.5, 0.9, 0.9),
            (),
        ),  # inference loss lower
        (Thresholds(accuracy_drop=0.05), 0.0, metrics_of(0.5, 0.5, 0.9, 0.84996), ()),
        (
            Thresholds(accuracy_drop=0.05),
            0.0,
            metrics_of(0.5, 0.5, 0.9, 0.84994),
            ("accuracy_drop",),
        ),
        (
            Thresholds(accuracy_drop=0.05),
            0.0,
            metrics_of(0.5, 0.5, 0.5, 0.9),
            (),
        ),  # inference more accurate
        (Thresholds(loss_delta=0.0, accuracy_drop=0.0), 0.0, None, ()),  # no labels: no metric gate
        (
            Thresholds(0.05, 0.05, 0.05),
            0.3,
            metrics_of(0.1, 2.0, 0.9, 0.1),
            ("output_gap", "loss_delta", "accuracy_drop"),
        ),
        (Thresholds(1.0, 0.05, 1.0), 0.3, metrics_of(0.1, 2.0, 0.9, 0.1), ("loss_delta",)),
    ],
)
def test_threshold_policy(thresholds, gap, metrics, exceeded):
    r = make_report(gap=gap, thresholds=thresholds, metrics=metrics, findings=())
    assert r.exceeded == exceeded
    assert r.verdict == ("fail" if exceeded else "pass")
    assert r.exit_status is (ExitStatus.GAP_ABOVE_THRESHOLD if exceeded else ExitStatus.OK)
    assert int(r.exit_status) == (1 if exceeded else 0)
    assert r.ok is (not exceeded)  # no findings here: only the thresholds decide
    assert json.loads(render(r, "json"))["verdict"] == r.verdict


@pytest.mark.parametrize(
    "severities,ok",
    [
        ((), True),
        ((Severity.INFO,), True),
        ((Severity.WARN, Severity.INFO), True),
        (
            (Severity.INFO, Severity.FAIL),
            False,
        ),  # a failing finding is not ok, even without thresholds
    ],
)
def test_ok_reads_the_findings(severities, ok):
    findings = tuple(Finding(Cause.DOMAIN_SHIFT, s, None, "m", "r") for s in severities)
    r = make_report(findings=findings)
    assert r.ok is ok
    assert (
        r.exit_status is ExitStatus.OK and r.verdict == "pass"
    )  # findings never set the exit code


def test_loss_delta_and_accuracy_drop():
    r = make_report(metrics=metrics_of(0.25, 1.0, 0.75, 0.5))
    assert r.loss_delta == 0.75 and r.accuracy_drop == 0.25
    no_acc = make_report(metrics=Metrics({"loss": 1.0}, {"loss": 1.5}, "mse", "inferred"))
    assert no_acc.loss_delta == 0.5 and no_acc.accuracy_drop is None


@pytest.mark.parametrize(
    "value,threshold,expected",
    [
        (0.05004, 0.05, False),
        (0.05006, 0.05, True),
        (None, 0.05, False),
        (0.9, None, False),
        (-1.0, 0.0, False),
        (1e-5, 0.0, False),
        (2e-4, 1e-4, True),
    ],
)
def test_exceeds(value, threshold, expected):
    assert exceeds(value, threshold) is expected


@pytest.mark.parametrize(
    "value,text",
    [
        (None, "n/a"),
        (0.0, "0.0000"),
        (0.41234, "0.4123"),
        (0.05004, "0.0500"),
        (1e-5, "1.00e-05"),
        (-2e-5, "-2.00e-05"),
        (1234.5, "1234.5000"),
        (2e6, "2.00e+06"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


# ------------------------------------------------ merged from test_renderers.py


def test_text_headline_without_thresholds_names_the_cause_without_a_verdict():
    text = render(make_report(), "text", width=80, color=False)
    assert first_paragraph(text) == (
        "output gap 0.4123 (relative L2, train vs inference) · "
        "likely cause: stats_never_updated (fail)"
    )


def test_markdown_all_layers_lists_every_layer():
    md = render(make_report(), "markdown")
    everything = render(make_report(), "markdown", all_layers=True)
    for name in ("`unused_head`", "`logits`", "`head_bn`"):
        assert name not in md and name in everything, name


def test_no_labels_no_loss_delta_nor_accuracy_drop():
    r = make_report(metrics=None, thresholds=Thresholds(loss_delta=0.0, accuracy_drop=0.0))
    assert r.loss_delta is None and r.accuracy_drop is None and r.exceeded == ()


def test_file_renderers_each_render_their_own_format(report):
    # One closure per format: a late-bound loop variable would give every
    # format the last one's renderer.
    from bngap.render import FORMATS, file_renderers

    renderers = file_renderers(all_layers=True)
    assert sorted(renderers) == sorted(FORMATS)
    for fmt, renderer in renderers.items():
        assert renderer(report) == render(report, fmt, all_layers=True, width=100, color=False)
    assert json.loads(renderers["json"](report))["verdict"] == report.verdict
