"""`bngap.advice` on hand-built records (no Keras): every cause, its wording,
its share of the gap (`explains`) and the order of the findings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bngap.advice import diagnose, rank, with_shares
from bngap.results import (
    BatchNormRecord,
    Cause,
    Finding,
    Kind,
    LayerRecord,
    LeakCheck,
    OutputGap,
    PreprocessingProbe,
    Severity,
)


def bn(path="bn1", order=0, severity=Severity.FAIL, **kw) -> BatchNormRecord:
    base = dict(
        path=path,
        order=order,
        trainable=True,
        momentum=0.99,
        epsilon=1e-3,
        channels=8,
        axis=-1,
        median_abs_z=5.0,
        p95_abs_z=8.0,
        max_abs_z=9.0,
        median_abs_log2_var_ratio=2.0,
        p95_abs_log2_var_ratio=3.0,
        max_abs_log2_var_ratio=3.5,
        expected_local_gap=0.9,
        noise_local_gap=0.01,
        never_updated=False,
        init_fraction=None,
        estimated_updates=None,
        fit_uses_batch_stats=True,
        severity=severity,
        samples=64,
        degenerate_channels=0,
        init_mean=0.0,
        init_variance=1.0,
    )
    base.update(kw)
    return BatchNormRecord(**base)


def layer(path, kind, order=0, effect=None, own=None, fit_mode="training", **kw) -> LayerRecord:
    return LayerRecord(
        path=path,
        class_name=kind.value,
        kind=kind,
        order=order,
        depth=0,
        divergence=0.5,
        own_contribution=own,
        output_effect=effect,
        mode_dependent=True,
        fit_mode=fit_mode,
        fit_training=fit_mode == "training",
        **kw,
    )


def run(
    batchnorm=(),
    layers=(),
    groups=None,
    gap=1.0,
    leaks=(),
    preprocessing=None,
    batch_size=32,
    samples=64,
):
    groups = {"batchnorm": 0.0, "dropout": 0.0, "augmentation": 0.0, "other": 0.0, **(groups or {})}
    return diagnose(
        gap=OutputGap(gap, gap, None),
        groups=groups,
        layers=list(layers),
        batchnorm=list(batchnorm),
        leaks=list(leaks),
        batch_size=batch_size,
        last_batch_size=batch_size,
        samples=samples,
        preprocessing=preprocessing,
    )


BN_LAYERS = [layer("bn1", Kind.BATCHNORM, 0, own=0.9), layer("bn2", Kind.BATCHNORM, 1, own=0.8)]


def test_never_updated():
    recs = [bn("bn1", never_updated=True), bn("bn2", 1, never_updated=True)]
    (f,), _ = run(recs, BN_LAYERS, {"batchnorm": 1.2}, gap=1.2)
    assert f.cause is Cause.STATS_NEVER_UPDATED and f.severity is Severity.FAIL and f.layer == "bn1"
    assert "2 of 2 BatchNormalization layers" in f.message and "mean 0, variance 1" in f.message
    assert f.explains == 1.0  # group gap 1.2 against 1.2


def test_not_converged_wording_and_share():
    recs = [bn("bn1", init_fraction=0.9, estimated_updates=10.4), bn("bn2", 1, init_fraction=0.88)]
    (f,), _ = run(recs, BN_LAYERS, {"batchnorm": 0.8}, gap=1.0)
    assert f.cause is Cause.STATS_NOT_CONVERGED
    assert (
        "still 90% their initial values" in f.message
        and "about 10 updates at momentum 0.99" in f.message
    )
    assert "fit() looks fine while evaluate()" in f.message
    assert f.explains == pytest.approx(0.8)


def test_frozen_and_renorm_layers_are_wrong_in_both_modes():
    frozen = [bn("bn1", init_fraction=0.9, trainable=False, fit_uses_batch_stats=False)]
    (f,), _ = run(frozen, BN_LAYERS[:1], gap=1e-7)
    assert "frozen" in f.message and "fit() looks fine" not in f.message
    assert f.explains is None  # no gap to explain
    renorm = [bn("bn1", init_fraction=0.9, renorm=True)]
    (g,), _ = run(renorm, BN_LAYERS[:1], gap=1e-7)
    assert "batch renormalization" in g.message and "both modes to be wrong alike" in g.message
    assert "fit() looks fine" not in g.message


def test_preprocessing_mismatch_explains_the_flagged_layers():
    probe = PreprocessingProbe(0.0, 255.0, 120.0, ("bn1",), 0.95, (("x / 255", 0.02),), "x / 255")
    findings, _ = run(
        [bn("bn1"), bn("bn2", 1)], BN_LAYERS, {"batchnorm": 0.9}, gap=1.0, preprocessing=probe
    )
    assert [f.cause for f in findings] == [Cause.PREPROCESSING_MISMATCH]
    assert "`x / 255`" in findings[0].message and findings[0].explains == pytest.approx(0.9)


def test_domain_shift_and_the_overridden_training_false():
    recs = [bn("base/bn1", init_fraction=None, init_share_estimate=0.1)]
    plain = [layer("base/bn1", Kind.BATCHNORM, own=0.9)]
    (f,), _ = run(recs, plain, {"batchnorm": 0.7}, gap=0.7)
    assert f.cause is Cause.DOMAIN_SHIFT and "different distribution" in f.message
    assert "did not hold" not in f.message and f.evidence["training_false_overridden"] == []
    overridden = [layer("base/bn1", Kind.BATCHNORM, own=0.9, caller_training=False)]
    (g,), _ = run(recs, overridden, {"batchnorm": 0.7}, gap=0.7)
    assert "base/bn1" in g.message and "called with training=False" in g.message
    assert "training=False did not hold" in g.message
    assert "trainable=False" in g.remedy and "training=False in the call does not" in g.remedy
    # held by training=False (fit_mode inference): not the overridden case
    held = [layer("base/bn1", Kind.BATCHNORM, own=0.0, caller_training=False, fit_mode="inference")]
    (h,), _ = run(recs, held, gap=0.0)
    assert "did not hold" not in h.message


def test_small_batch():
    recs = [bn("bn1", severity=Severity.OK, expected_local_gap=0.01)]
    findings, _ = run(
        recs, [layer("bn1", Kind.BATCHNORM, own=0.6)], {"batchnorm": 0.5}, gap=0.5, batch_size=4
    )
    (f,) = findings
    assert f.cause is Cause.SMALL_BATCH and "batches of 4" in f.message and f.explains == 1.0


def test_small_batch_remedy_asks_for_more_than_the_batch_size_used():
    """At batch size 32 the remedy cannot be 'use 32 or more'."""
    recs = [bn(f"bn{i}", order=i, severity=Severity.OK, expected_local_gap=0.01) for i in range(4)]
    lays = [layer(f"bn{i}", Kind.BATCHNORM, order=i, own=0.6) for i in range(4)]
    for size, want in ((32, "larger than 32"), (64, "larger than 64"), (4, "32 or more")):
        (f,), _ = run(recs, lays, {"batchnorm": 0.5}, gap=0.5, batch_size=size)
        assert f.cause is Cause.SMALL_BATCH and want in f.remedy, (size, f.remedy)


def test_no_small_batch_downstream_of_stale_statistics():
    """MobileNetV2 a few steps in: every BN layer still holds its initial
    statistics. Below the first of them a layer's training-mode input is not
    its inference-mode input (the layers upstream normalise differently), so
    its own contribution cannot be set against its expected gap: no
    small_batch beside stats_not_converged. Above it, the comparison holds."""
    recs = [bn("bn0", order=0, init_fraction=0.99, estimated_updates=9.0)]
    recs += [
        bn(f"bn{i}", order=i, severity=Severity.OK, expected_local_gap=0.8) for i in range(1, 5)
    ]
    lays = [layer(f"bn{i}", Kind.BATCHNORM, order=i, own=10.0) for i in range(5)]
    findings, _ = run(recs, lays, {"batchnorm": 1.6}, gap=1.6)
    assert [f.cause for f in findings] == [Cause.STATS_NOT_CONVERGED]
    # the same noisy layers upstream of the stale one: small_batch stands
    recs = [replace(r, order=5 - r.order) for r in recs]
    lays = [replace(r, order=5 - r.order) for r in lays]
    findings, _ = run(recs, lays, {"batchnorm": 1.6}, gap=1.6)
    assert Cause.SMALL_BATCH in [f.cause for f in findings]


def test_augmentation_and_dropout_only():
    aug = [layer("flip", Kind.AUGMENTATION, effect=0.4)]
    (f,), _ = run(layers=aug, groups={"augmentation": 0.4}, gap=0.4)
    assert f.cause is Cause.AUGMENTATION and f.severity is Severity.INFO and f.explains == 1.0
    drop = [layer("drop", Kind.DROPOUT, effect=0.3)]
    (g,), notes = run(layers=drop, groups={"dropout": 0.3}, gap=0.3)
    assert (
        g.cause is Cause.DROPOUT_ONLY and "expected, not a bug" in g.message and g.explains == 1.0
    )


def test_no_batchnorm_no_batchnorm_sentence():
    findings, notes = run(layers=[layer("drop", Kind.DROPOUT)], groups={"dropout": 0.3}, gap=0.3)
    text = " ".join([f.message for f in findings] + notes)
    assert "BatchNormalization" not in text and "moving statistics" not in text


def test_augmentation_ranks_above_a_model_x_note():
    """The issue's case: a model(x) note (0.089) must not come before the
    augmentation that makes the whole fit/evaluate gap (0.387)."""
    aug = [layer("flip", Kind.AUGMENTATION, effect=0.387)]
    leak = LeakCheck("model(x)", 0.089, ("flip",), 4)
    findings, _ = run(layers=aug, groups={"augmentation": 0.387}, gap=0.387, leaks=[leak])
    assert [f.cause for f in findings] == [Cause.AUGMENTATION, Cause.MODE_LEAK]
    assert findings[1].explains is None and "model(x, training=False)" in findings[1].remedy


def test_inference_leak_fail_stays_a_cause():
    leak = LeakCheck("model(x, training=False)", 0.2, ("block/bn",), 4)
    findings, _ = run(layers=[layer("block/bn", Kind.BATCHNORM)], leaks=[leak], gap=0.01)
    assert findings[0].cause is Cause.MODE_LEAK and findings[0].severity is Severity.FAIL


def _f(cause, sev, explains):
    return Finding(cause, sev, None, "", "", {}, explains)


def test_rank_orders_by_share_then_severity():
    a = _f(Cause.AUGMENTATION, Severity.INFO, 0.9)
    b = _f(Cause.DOMAIN_SHIFT, Severity.FAIL, 0.3)
    c = _f(Cause.STATS_NOT_CONVERGED, Severity.WARN, 0.904)  # equal to a in two decimals
    d = _f(Cause.MODE_LEAK, Severity.WARN, None)
    assert rank([d, b, a, c]) == [c, a, b, d]


def test_second_bn_cause_gets_its_own_layers_effect():
    f1 = Finding(Cause.STATS_NEVER_UPDATED, Severity.FAIL, "bn1", "", "", {"layers": ["bn1"]})
    f2 = Finding(Cause.DOMAIN_SHIFT, Severity.WARN, "bn2", "", "", {"layers": ["bn2"]})
    layers = [
        layer("bn1", Kind.BATCHNORM, effect=0.5),
        layer("bn2", Kind.BATCHNORM, 1, effect=0.25),
    ]
    out = with_shares([f1, f2], {"batchnorm": 1.0}, layers, OutputGap(1.0, 1.0, None))
    assert [f.explains for f in out] == [1.0, 0.25]
    unmeasured = [replace(x, output_effect=None) for x in layers]
    out = with_shares([f1, f2], {"batchnorm": 1.0}, unmeasured, OutputGap(1.0, 1.0, None))
    assert out[1].explains is None
