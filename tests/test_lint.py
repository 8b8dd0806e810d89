"""`bngap lint`: each rule on a real model with the defect and on one without,
no false alarm on healthy keras.applications models, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bngap.cli import main
from bngap.linting import RULES, lint, lint_model

keras = pytest.importorskip("keras")
L = keras.layers


def calibrate(model, x):
    """Sets every BN layer's moving statistics to its input's batch
    statistics on x: one training-mode pass at momentum 0. Returns the model."""
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, L.BatchNormalization)]
    kept = [b.momentum for b in bns]
    try:
        for b in bns:
            b.momentum = 0.0
        model(x, training=True)
    finally:
        for b, m in zip(bns, kept):
            b.momentum = m
    return model


def images(n=16, size=8, seed=0):
    return np.random.default_rng(seed).normal(1.0, 2.0, (n, size, size, 3)).astype("float32")


def conv_bn(**bn):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(name="bn", **bn),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(2, name="head"),
        ],
        name="net",
    )


def rules(model, severities=("warn", "fail", "info")) -> dict:
    return {f.rule: f for f in lint_model(model).findings if f.severity.value in severities}


def healthy():
    return calibrate(conv_bn(), images())


def test_healthy_model_has_no_findings():
    report = lint_model(healthy())
    assert report.findings == ()
    assert report.verdict == "pass" and int(report.exit_status) == 0
    (b,) = report.batchnorm
    var = healthy().get_layer("bn").moving_variance.numpy()
    assert b.variance_min == pytest.approx(float(var.min())) and b.variance_max == pytest.approx(
        float(var.max())
    )
    assert (b.momentum, b.epsilon, b.channels) == (0.99, 0.001, 4)


def test_never_updated():
    m = conv_bn()
    m(images(2))  # built, called in inference mode only
    f = rules(m)["never_updated"]
    assert f.severity.value == "fail" and f.layer == "bn" and "mean 0, variance 1" in f.message
    assert "never_updated" not in rules(healthy())
    # one channel moved: no longer the exact initial values
    mm = m.get_layer("bn").moving_mean
    mm.assign(np.array([0, 0, 0, 1e-7], "float32"))
    assert "never_updated" not in rules(m)


def test_momentum_in_torch_convention():
    f = rules(calibrate(conv_bn(momentum=0.1), images()))["momentum_torch_convention"]
    assert f.severity.value == "warn" and "momentum=0.9" in f.message and "0.9" in f.remedy
    assert "momentum_torch_convention" not in rules(calibrate(conv_bn(momentum=0.9), images()))


def test_momentum_one():
    f = rules(_with_momentum(1.0))["momentum_one"]
    assert f.severity.value == "fail" and f.layer == "bn"
    assert "momentum_one" not in rules(_with_momentum(0.999))


def test_momentum_one_on_frozen_layers_says_what_frozen_layers_do():
    """A frozen BN layer uses its stored statistics in both modes: the
    message must not say that training mode uses each batch's."""
    model = _with_momentum(1.0)
    model.get_layer("bn").trainable = False
    f = rules(model)["momentum_one"]
    assert f.severity.value == "warn"
    assert "training mode uses each batch" not in f.message and "both modes" in f.message


def _with_momentum(m):
    model = healthy()
    model.get_layer("bn").momentum = m
    return model


@pytest.mark.parametrize(
    "bad, severity",
    [(-0.5, "fail"), (np.nan, "fail"), (np.inf, "fail"), (0.0, "warn"), (1e-41, "warn")],
)
def test_bad_variance(bad, severity):
    m = healthy()
    var = m.get_layer("bn").moving_variance
    v = var.numpy()
    v[2] = bad
    var.assign(v)
    f = rules(m)["bad_variance"]
    assert f.severity.value == severity and f.layer == "bn"
    assert sum(f.evidence["channels"]["bn"].values()) == 1
    assert "bad_variance" not in rules(healthy())


def test_epsilon_too_small():
    m = calibrate(conv_bn(epsilon=0.0), images())
    f = rules(m)["epsilon_too_small"]
    assert f.severity.value == "warn" and "epsilon 0" in f.message
    var = m.get_layer("bn").moving_variance
    v = var.numpy()
    v[0] = 0.0
    var.assign(v)
    assert rules(m)["epsilon_too_small"].severity.value == "fail"  # 1/sqrt(0 + 0)
    tiny = calibrate(conv_bn(epsilon=1e-9), images())
    var = tiny.get_layer("bn").moving_variance
    var.assign(np.full(4, 1e-8, "float32"))
    f = rules(tiny)["epsilon_too_small"]
    assert f.severity.value == "warn" and "reaches 9.53e+03" in f.message  # 1/sqrt(1e-8 + 1e-9)
    assert "epsilon_too_small" not in rules(calibrate(conv_bn(epsilon=1e-5), images()))


def test_axis_mismatch_after_a_channels_last_convolution():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="conv")(inp)
    h = L.ReLU(name="relu")(h)  # looked through
    bad = L.BatchNormalization(axis=1, name="bn_bad")(h)
    good = L.BatchNormalization(axis=-1, name="bn_good")(L.Conv2D(4, 3, name="conv2")(inp))
    m = keras.Model(inp, [bad, good])
    f = rules(m)["axis_mismatch"]
    assert f.layers == ("bn_bad",) and f.severity.value == "fail"
    assert "conv (Conv2D, channels_last)" in f.message and "axis=-1" in f.remedy


def test_axis_follows_a_channels_first_convolution():
    inp = keras.Input((3, 8, 8))
    h = L.Conv2D(4, 3, data_format="channels_first", name="conv")(inp)
    ok = L.BatchNormalization(axis=1, name="bn_ok")(h)
    bad = L.BatchNormalization(axis=-1, name="bn_bad")(h)
    m = keras.Model(inp, [ok, bad])
    f = rules(m)["axis_mismatch"]
    assert f.layers == ("bn_bad",) and "axis=1" in f.remedy


def test_axis_wording_names_the_slip_that_was_made():
    """After a channels-first convolution the slip is the Keras default
    axis=-1 left in place, not axis=1 carried over."""
    inp = keras.Input((3, 8, 8))
    h = L.Conv2D(4, 3, data_format="channels_first", name="conv")(inp)
    f = rules(keras.Model(inp, L.BatchNormalization(axis=-1, name="bn")(h)))["axis_mismatch"]
    assert "axis=1 from a channels-first model" not in f.message
    assert "channels_first" in f.message and "per channel" in f.message
    assert "per row" not in f.message and "along axis 3" in f.message


@pytest.mark.parametrize(
    "between",
    [
        lambda: L.Permute((3, 1, 2), name="to_channels_first"),  # channels moved to axis 1
        lambda: L.Reshape((4, 36), name="reshape"),  # another layout altogether
    ],
)
def test_axis_check_stops_at_layers_that_move_axes(between):
    """A layer that moves or regroups axes decides the layout itself: the
    check does not look through it to the convolution (no false alarm)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="conv")(inp)  # (6, 6, 4)
    h = between()(h)
    h = L.BatchNormalization(axis=1, name="bn")(h)
    m = keras.Model(inp, L.Flatten()(h))
    x = images()
    assert "axis_mismatch" not in rules(calibrate(m, x))


def test_axis_check_looks_through_a_concatenation():
    """DenseNet's shape: BN after a Concatenate of convolutions."""
    inp = keras.Input((8, 8, 3))
    h = L.Concatenate(name="cat")([L.Conv2D(4, 3, name="a")(inp), L.Conv2D(2, 3, name="b")(inp)])
    m = keras.Model(inp, L.BatchNormalization(axis=1, name="bn")(h))
    f = rules(calibrate(m, images()))["axis_mismatch"]
    assert f.layers == ("bn",) and "a (Conv2D, channels_last)" in f.message


def test_renorm_without_clipping():
    f = rules(calibrate(conv_bn(renorm=True), images()))["renorm_unclipped"]
    assert f.severity.value == "warn" and "renorm_mean" in f.message
    clipped = calibrate(
        conv_bn(renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 1 / 3, "dmax": 5.0}), images()
    )
    assert "renorm_unclipped" not in rules(clipped)


def _transfer(bn_trainable: bool):
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(name="bn"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
        ],
        name="base",
    )
    calibrate(base, images())
    base.trainable = False
    base.get_layer("bn").trainable = bn_trainable
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, L.Dense(2, name="head")(base(inp, training=False)))


def _moves_in_fit(model) -> bool:
    """Whether one fit() step changes the base's BN statistics (Keras itself)."""
    bn = model.get_layer("base").get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    model.compile("sgd", "mse")
    model.fit(
        images(seed=1), np.zeros((16, 2)), epochs=1, batch_size=16, verbose=0
    )  # not the calibration images
    return not np.array_equal(before, bn.moving_mean.numpy())


def test_trainable_bn_in_frozen_base():
    flagged = _transfer(True)
    f = rules(flagged)["trainable_bn_in_frozen_base"]
    assert f.layers == ("base/bn",) and f.evidence["bases"] == ["base"]
    assert "layer.trainable = False" in f.remedy
    assert _moves_in_fit(flagged)  # what the message says fit() does
    held = _transfer(False)
    assert "trainable_bn_in_frozen_base" not in rules(held)
    assert not _moves_in_fit(held)


class NoTrainingNet(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = L.Conv2D(4, 3)
        self.bn = L.BatchNormalization()
        self.pool = L.GlobalAveragePooling2D()

    def call(self, x):
        return self.pool(self.bn(self.conv(x)))


class WithTrainingNet(NoTrainingNet):
    def call(self, x, training=None):
        return self.pool(self.bn(self.conv(x), training=training))


def test_call_without_training():
    for cls, expected in ((NoTrainingNet, True), (WithTrainingNet, False)):
        m = cls()
        calibrate(m, images())
        found = rules(m)
        assert ("call_without_training" in found) is expected, cls
    f = rules(calibrate(NoTrainingNet(), images()))["call_without_training"]
    assert "fit() calls the model without one" in f.message and "never updated" in f.message
    # what fit() itself does with each
    for cls, moves in ((NoTrainingNet, False), (WithTrainingNet, True)):
        m = calibrate(cls(), images())
        before = m.bn.moving_mean.numpy().copy()
        m.compile("sgd", "mse")
        m.fit(images(seed=1), np.zeros((16, 4)), epochs=1, batch_size=16, verbose=0)
        assert (not np.array_equal(before, m.bn.moving_mean.numpy())) is moves, cls


def test_mode_dependent_layers_are_info():
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.RandomFlip(name="flip"),
            L.Flatten(),
            L.Dropout(0.3, name="drop"),
            L.Dense(2),
        ]
    )
    report = lint_model(m)
    (f,) = report.findings
    assert f.rule == "mode_dependent_layers" and f.severity.value == "info"
    assert set(f.layers) == {"flip", "drop"} and report.verdict == "pass"
    assert "mode_dependent_layers" not in rules(healthy())


def test_every_rule_id_is_in_the_list():
    assert len(RULES) == len(set(RULES)) == 10


def test_every_rule_id_has_one_check_in_rule_order():
    from bngap.lintrules import CHECKS

    assert [r.value for r in CHECKS] == list(RULES)
    assert len(set(CHECKS.values())) == len(RULES)
    assert all(c.__name__ == r.value for r, c in CHECKS.items())


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_no_false_alarm_on_calibrated_applications(name):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
    calibrate(model, np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32"))
    report = lint_model(model)
    assert [f.rule for f in report.findings if f.severity.value != "info"] == []
    assert len(report.batchnorm) == {"ResNet50": 53, "MobileNetV2": 52, "EfficientNetB0": 49}[name]
    uncalibrated = getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=10
    )
    assert lint_model(uncalibrated).findings[0].rule == "never_updated"
    del model, uncalibrated


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_command_line_formats_and_exit_codes(tmp_path):
    m = calibrate(conv_bn(momentum=0.1), images())
    path = tmp_path / "torchish.keras"
    m.save(path)
    res = run("lint", path, "-q")
    assert res.exit_code == 0, res.output  # a warning does not fail by default
    assert "WARN momentum_torch_convention · bn" in res.stdout
    res = run("lint", path, "--fail-on", "warn", "--format", "json", "-q")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["verdict"] == "fail" and data["findings"][0]["rule"] == "momentum_torch_convention"
    assert set(data["findings"][0]) >= {"rule", "severity", "layer", "message", "remedy"}
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads((Path(__file__).parents[1] / "docs" / "lint.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert schema["properties"]["findings"]["items"]["properties"]["rule"]["enum"] == list(RULES)
    (bn,) = data["batchnorm"]
    assert bn["momentum"] == pytest.approx(0.1) and bn["epsilon"] == pytest.approx(0.001)
    assert bn["variance_min"] <= bn["variance_max"]
    out = tmp_path / "lint.md"
    res = run("lint", path, "--format", "markdown", "-o", out, "-q")
    assert res.exit_code == 0 and out.read_text().startswith("## bngap lint: WARN")
    res = run("lint", tmp_path / "missing.keras", "-q")
    assert (
        res.exit_code == 2
        and res.stderr.startswith("error: ")
        and len(res.stderr.strip().splitlines()) == 1
    )
    # the file is read, never changed
    assert lint(path).findings[0].rule == "momentum_torch_convention"
