"""The Python API, the Keras callback, and image folders as data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
from click.testing import CliRunner

import bngap
from bngap.cli import main
from bngap.images import parse_preprocess


def test_import_and_help_do_not_import_tensorflow():
    code = (
        "import sys, bngap, bngap.cli, bngap.results, bngap.advice, bngap.render.text;"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-m", "bngap", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bngap check" in out.stdout


def test_check_api_on_model_and_on_paths(zoo):
    model, x, y = zoo.get("under_trained")
    r = bngap.check(model, x, y, fail_above=0.05)
    assert isinstance(r, bngap.Report)
    assert not r.ok and r.verdict == "fail"
    assert r.to_dict()["findings"][0]["cause"] == "stats_not_converged"
    mpath, dpath = zoo.files("healthy")
    r = bngap.check(str(mpath), str(dpath))
    assert r.ok and r.data.has_labels


def _train(keras, callbacks, epochs=3):
    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dropout(0.2),
            L.Dense(2),
        ]
    )
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (64, 6)).astype("float32")
    y = (x[:, 0] > 3).astype("int64")
    hist = m.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
    return m, hist, x


def test_gap_monitor_records_warns_and_changes_nothing(keras):
    plain, _, x = _train(keras, [])
    monitor = bngap.GapMonitor(x[:32], warn_above=0.1)
    buf = io.StringIO()
    with redirect_stdout(buf):
        watched, hist, _ = _train(keras, [monitor])
    assert [e for e, _ in monitor.history] == [0, 1, 2]
    assert hist.history["bngap_gap"] == pytest.approx([v for _, v in monitor.history])
    assert monitor.history[0][1] > 0.1  # 2 BN updates: far from converged
    assert "bngap: epoch 1: training-mode and inference-mode outputs differ" in buf.getvalue()
    for a, b in zip(plain.variables, watched.variables):
        assert a.numpy().tobytes() == b.numpy().tobytes(), a.path


def test_gap_monitor_stops_and_recalibrates(keras):
    monitor = bngap.GapMonitor(
        np.zeros((1, 6), "float32") + 3, stop_above=0.0, warn_above=None, verbose=False
    )
    _, hist, _ = _train(keras, [monitor], epochs=5)
    assert len(hist.history["loss"]) == 1
    rng = np.random.default_rng(1)
    held = rng.normal(3, 2, (64, 6)).astype("float32")
    monitor = bngap.GapMonitor(held, batch_size=64, recalibrate_at_end=True, verbose=False)
    m, _, _ = _train(keras, [monitor])
    assert monitor.measure() < monitor.history[-1][1]
    bn = next(layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization))
    inp = np.asarray(keras.Model(m.inputs, bn.input)(held, training=False), np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), inp.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), inp.var(0), rtol=1e-5, atol=1e-5)


def _write_png(path, pixels):
    import tensorflow as tf

    path.write_bytes(tf.io.encode_png(pixels.astype("uint8")).numpy())


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir()
        for i in range(4):
            img = rng.uniform(0, 120, (10, 12, 3))
            img[..., c] += 120
            _write_png(root / name / f"{i}.png", img)
    return root


def test_image_folder_checks_end_to_end(zoo, image_folder):
    mpath, _ = zoo.files("under_trained")
    res = CliRunner().invoke(
        main,
        [
            "check",
            str(mpath),
            str(image_folder),
            "--format",
            "json",
            "-q",
            "--preprocess",
            "scale=1/255",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["data"]["samples"] == 8 and d["data"]["has_labels"]
    assert d["data"]["input_shapes"] == [[8, 8, 8, 3]]
    assert any("2 classes: cats, dogs" in n for n in d["data"]["notes"])


def test_image_folder_reader(image_folder):
    from bngap.data import load_data
    from bngap.specs import InputSpec

    spec = [InputSpec("img", (None, 6, 6, 3), "float32")]
    ds = load_data(image_folder, spec, limit=4, preprocess="scale=1/255")
    assert ds.x[0].shape == (4, 6, 6, 3)
    assert sorted(ds.y.tolist()) == [0, 0, 1, 1]  # --limit takes classes in turn
    assert ds.x[0].min() >= 0.0 and ds.x[0].max() <= 1.0
    raw = load_data(image_folder, spec)
    assert raw.x[0].max() > 200  # 0..255 without --preprocess


@pytest.mark.parametrize(
    "spec,pixel,expected",
    [
        ("tf", 255.0, 1.0),
        ("scale=1/255", 255.0, 1.0),
        ("scale=0.5", 4.0, 2.0),
        ("torch", 255.0, (1 - 0.485) / 0.229),
    ],
)
def test_preprocess_modes(spec, pixel, expected):
    out = parse_preprocess(spec)(np.full((1, 1, 1, 3), pixel, np.float32))
    assert out[0, 0, 0, 0] == pytest.approx(expected, rel=1e-5)


def test_caffe_preprocess_swaps_to_bgr_and_centres():
    x = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    out = parse_preprocess("caffe")(x)
    assert out[0, 0, 0].tolist() == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68])


def test_bad_preprocess_is_a_usage_error():
    from bngap.errors import DataError

    with pytest.raises(DataError, match="unknown --preprocess"):
        parse_preprocess("imagenet")


def test_compiled_loss_objects_are_used(keras):
    L = keras.layers
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), L.Dense(8), L.BatchNormalization(), L.Dense(1)])
    m.compile("adam", keras.losses.Huber())
    rng = np.random.default_rng(0)
    x, y = rng.normal(2, 3, (64, 4)).astype("float32"), rng.normal(0, 5, (64, 1)).astype("float32")
    m.fit(x, y, epochs=1, verbose=0)
    r = bngap.check(m, x, y)
    assert r.metrics.loss_name == "huber_loss" and r.metrics.source == "compiled"
    assert r.metrics.eval["loss"] == pytest.approx(
        m.evaluate(x, y, verbose=0, batch_size=32), rel=1e-5
    )
    r = bngap.check(m, x, y, loss=keras.losses.MeanAbsoluteError())
    assert r.metrics.eval["loss"] == pytest.approx(
        float(np.mean(np.abs(m.predict(x, verbose=0) - y))), rel=1e-5
    )


def test_warn_above_from_python(zoo):
    model, x, y = zoo.get("under_trained")
    r = bngap.check(model, x, y, warn_above=0.01, effects=0)
    assert r.verdict == "warn" and r.warned == ("output_gap",) and int(r.exit_status) == 0
    assert r.to_dict()["thresholds"]["warn_above"] == 0.01


def test_lint_stays_callable_after_its_module_is_imported(keras, tmp_path):
    """`bngap.lint(model)` works on every call, also after `bngap lint` ran:
    a submodule named `lint` would replace the function on the package as
    soon as anything imported it (the first call did)."""
    m = keras.Sequential(
        [keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    first = bngap.lint(m)
    m.save(tmp_path / "m.keras")
    assert CliRunner().invoke(main, ["lint", str(tmp_path / "m.keras"), "-q"]).exit_code == 1
    second = bngap.lint(m)
    assert (
        [f.rule for f in first.findings] == [f.rule for f in second.findings] == ["never_updated"]
    )
