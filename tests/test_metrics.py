"""`bngap.metrics`: loss and accuracy as evaluate() computes them, for a
two-output model with per-output labels (Keras itself is the reference)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bngap.cli import main
from bngap.pipeline import CheckOptions, check
from bngap.render import render


@pytest.fixture(scope="module")
def two_heads(keras):
    """A classification head and a regression head on a shared BN trunk,
    compiled with per-output losses and loss weights, trained a few steps."""
    L = keras.layers
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (64, 6)).astype("float32")
    y_cls = (x[:, 0] > 2.0).astype("int64") + (x[:, 1] > 2.0).astype("int64")
    y_reg = x[:, 2:3] * 0.5
    inp = keras.Input((6,))
    h = L.BatchNormalization(name="bn")(L.Dense(16, name="trunk")(inp))
    h = L.ReLU()(h)
    cls = L.Dense(3, activation="softmax", name="cls")(h)
    reg = L.Dense(1, name="reg")(h)
    m = keras.Model(inp, [cls, reg], name="two_heads")
    m.compile(
        "adam",
        loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.25},
        metrics={"cls": ["accuracy"]},
    )
    m.fit(x, {"cls": y_cls, "reg": y_reg}, epochs=2, batch_size=32, verbose=0)
    return m, x, y_cls, y_reg


def test_per_output_and_total_losses_equal_evaluate(two_heads):
    m, x, y_cls, y_reg = two_heads
    # full batches: evaluate()'s per-output means (of batch means) are per-sample means too
    want = m.evaluate(x, {"cls": y_cls, "reg": y_reg}, batch_size=32, verbose=0, return_dict=True)
    r = check(m, x, {"cls": y_cls, "reg": y_reg})
    assert r.metrics is not None
    per = {o.name: o for o in r.metrics.per_output}
    assert per["cls"].eval["loss"] == pytest.approx(want["cls_loss"], rel=1e-5)
    assert per["reg"].eval["loss"] == pytest.approx(want["reg_loss"], rel=1e-5)
    assert per["cls"].eval["accuracy"] == pytest.approx(want["cls_accuracy"], abs=1e-6)
    assert "accuracy" not in per["reg"].eval  # a regression head
    assert r.metrics.eval["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert (per["cls"].weight, per["reg"].weight) == (1.0, 0.25)
    assert (
        per["cls"].loss_name == "sparse_categorical_crossentropy"
        and per["cls"].source == "compiled"
    )


def test_total_loss_equals_evaluate_with_a_partial_batch(two_heads):
    m, x, y_cls, y_reg = two_heads
    want = m.evaluate(
        x[:50], {"cls": y_cls[:50], "reg": y_reg[:50]}, batch_size=32, verbose=0, return_dict=True
    )
    r = check(m, x[:50], [y_cls[:50], y_reg[:50]])  # a list, in output order
    assert r.metrics.eval["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_training_mode_losses_equal_keras_on_the_same_batches(two_heads, keras):
    m, x, y_cls, y_reg = two_heads
    r = check(m, x, {"cls": y_cls, "reg": y_reg})
    sc, mse = keras.losses.SparseCategoricalCrossentropy(), keras.losses.MeanSquaredError()
    saved = [v.numpy().copy() for v in m.variables]
    cls_l, reg_l = [], []
    for s in range(0, 64, 32):
        a, b = m(x[s : s + 32], training=True)
        cls_l.append(float(sc(y_cls[s : s + 32], a)))
        reg_l.append(float(mse(y_reg[s : s + 32], b)))
    for v, s in zip(m.variables, saved):
        v.assign(s)
    per = {o.name: o for o in r.metrics.per_output}
    assert per["cls"].train["loss"] == pytest.approx(np.mean(cls_l), rel=1e-5)
    assert per["reg"].train["loss"] == pytest.approx(np.mean(reg_l), rel=1e-5)
    assert r.metrics.train["loss"] == pytest.approx(
        np.mean(cls_l) + 0.25 * np.mean(reg_l), rel=1e-5
    )


def test_npz_keys_per_output_and_the_reports(two_heads, tmp_path):
    m, x, y_cls, y_reg = two_heads
    mpath, dpath = tmp_path / "m.keras", tmp_path / "d.npz"
    m.save(mpath)
    np.savez(dpath, x=x, y_cls=y_cls, reg=y_reg)  # y_<name> and the bare name both work
    res = CliRunner().invoke(main, ["check", str(mpath), str(dpath), "--format", "json", "-q"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    per = {o["name"]: o for o in d["metrics"]["per_output"]}
    assert set(per) == {"cls", "reg"} and per["reg"]["weight"] == 0.25
    want = m.evaluate(x, {"cls": y_cls, "reg": y_reg}, batch_size=32, verbose=0, return_dict=True)
    assert d["metrics"]["eval"]["loss"] == pytest.approx(want["loss"], rel=1e-5)
    gaps = {e["name"]: e["relative_l2"] for e in d["output_gap"]["per_output"]}
    assert set(gaps) == {"cls", "reg"}
    r = check(str(mpath), str(dpath))
    text, md = render(r, "text", width=120), render(r, "markdown")
    for out in (text, md):
        assert "cls" in out and "reg" in out
    assert f"at the output (all outputs): {r.output_gap.relative_l2:.4f}" in text.replace(
        "\n  ", " "
    )
    assert "cls accuracy" in text and "cls accuracy" in md


def test_single_y_for_a_multi_output_model_is_ignored_with_a_note(two_heads):
    m, x, y_cls, _ = two_heads
    r = check(m, x, y_cls)
    assert r.metrics is None and any("one label array per output" in n for n in r.notes)


def test_json_with_per_output_metrics_validates_against_the_schema(two_heads):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    m, x, y_cls, y_reg = two_heads
    schema = json.loads((Path(__file__).parents[1] / "docs" / "report.schema.json").read_text())
    d = json.loads(render(check(m, x, {"cls": y_cls, "reg": y_reg}), "json"))
    jsonschema.validate(d, schema)
    assert len(d["metrics"]["per_output"]) == 2
    assert all("explains" in f for f in d["findings"])


def test_no_accuracy_for_a_regression_output_of_several_columns(keras):
    """A box head (2 real-valued columns, MAE) has no accuracy: an argmax
    over its columns compared with the argmax of real-valued targets is no
    metric Keras reports. One-hot class labels still get theirs."""
    L = keras.layers
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 2.0, (48, 6)).astype("float32")
    y_box = rng.normal(size=(48, 2)).astype("float32")
    y_cls = np.eye(3, dtype="float32")[np.arange(48) % 3]
    inp = keras.Input((6,))
    h = L.ReLU()(L.BatchNormalization(name="bn")(L.Dense(8)(inp)))
    m = keras.Model(
        inp, [L.Dense(3, activation="softmax", name="cls")(h), L.Dense(2, name="box")(h)]
    )
    m.compile(
        "adam",
        loss={"cls": "categorical_crossentropy", "box": "mae"},
        loss_weights={"cls": 0.7, "box": 2.5},
        metrics={"cls": ["accuracy"]},
    )
    m.fit(x, {"cls": y_cls, "box": y_box}, epochs=1, batch_size=16, verbose=0)
    want = m.evaluate(x, {"cls": y_cls, "box": y_box}, batch_size=48, verbose=0, return_dict=True)
    r = check(m, x, {"cls": y_cls, "box": y_box}, options=CheckOptions(batch_size=48))
    per = {o.name: o for o in r.metrics.per_output}
    assert "accuracy" not in per["box"].eval and "accuracy" not in per["box"].train
    assert per["box"].eval["loss"] == pytest.approx(want["box_loss"], rel=1e-5)
    assert per["cls"].eval["accuracy"] == pytest.approx(want["cls_accuracy"], abs=1e-6)
    assert r.metrics.eval["loss"] == pytest.approx(want["loss"], rel=1e-5)
    # the same for a single-output regressor of two values
    single = keras.Model(inp, m.get_layer("box").output)
    single.compile("adam", "mse")
    r1 = check(single, x, y_box, options=CheckOptions(batch_size=48))
    assert set(r1.metrics.eval) == {"loss"}
    assert r1.metrics.eval["loss"] == pytest.approx(
        single.evaluate(x, y_box, batch_size=48, verbose=0), rel=1e-5
    )


def test_accuracy_drop_gate_applies_to_a_multi_output_model(two_heads, tmp_path):
    """--fail-above-accuracy-drop on a model with several outputs gates the
    largest drop among its class outputs; it was never applied (the total
    has no accuracy) and the run passed without a word."""
    from bngap.results import Thresholds

    m, x, y_cls, y_reg = two_heads
    r = check(m, x, {"cls": y_cls, "reg": y_reg})
    per = {o.name: o for o in r.metrics.per_output}
    drop = per["cls"].train["accuracy"] - per["cls"].eval["accuracy"]
    assert r.accuracy_drop == pytest.approx(drop)
    below = check(
        m,
        x,
        {"cls": y_cls, "reg": y_reg},
        options=CheckOptions(thresholds=Thresholds(accuracy_drop=round(drop, 4) - 0.5)),
    )
    above = check(
        m,
        x,
        {"cls": y_cls, "reg": y_reg},
        options=CheckOptions(thresholds=Thresholds(accuracy_drop=round(drop, 4) + 0.5)),
    )
    assert "accuracy_drop" in below.exceeded and below.verdict == "fail"
    assert above.exceeded == () and above.verdict == "pass"


def test_accuracy_gate_on_a_model_without_accuracy_says_it_was_not_applied(two_heads, tmp_path):
    m, x, y_cls, y_reg = two_heads
    reg = type(m)(m.inputs, m.get_layer("reg").output)
    reg.compile("adam", "mse")
    reg.save(tmp_path / "reg.keras")
    np.savez(tmp_path / "reg.npz", x=x, y=y_reg)
    res = CliRunner().invoke(
        main,
        [
            "check",
            str(tmp_path / "reg.keras"),
            str(tmp_path / "reg.npz"),
            "-q",
            "--fail-above-accuracy-drop",
            "0.1",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "accuracy" not in json.loads(res.stdout)["metrics"]["eval"]
    assert "--fail-above-accuracy-drop" in res.stderr and "not applied" in res.stderr
