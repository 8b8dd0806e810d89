"""`--backends`: the same model on TensorFlow, JAX and PyTorch, each in a
process of its own, compared output by output and layer by layer.

The model is a real case of backends parting: raw sensor readings (air
pressure in pascals, ~101325 +- 40) straight into a BatchNormalization
layer. PyTorch's backend computes a batch's variance as E[x^2] - E[x]^2,
which in float32 loses the spread under the mean's square; TensorFlow and
JAX subtract the mean first. Inference (moving statistics) agrees.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from backend_child import BACKENDS, spawn
from click.testing import CliRunner

from bngap import advice
from bngap.cli import main
from bngap.crossbackend import (
    SideOutput,
    check_across,
    compare,
    divergences,
    first_divergent,
    parse_backends,
    run_in_process,
    tolerance,
)
from bngap.errors import BngapError
from bngap.results import BackendRun, Cause, Severity

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "report.schema.json").read_text())
NOT_YET = "needs the TensorFlow backend"  # bngap's check before it ran on every backend


@pytest.fixture(scope="module")
def sensors(keras, tmp_path_factory):
    """Pressure (Pa), temperature (K), humidity (%) into BN, Dense, BN, softmax."""
    folder = tmp_path_factory.mktemp("sensors")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 96
    x = np.stack(
        [rng.normal(101325, 40, n), rng.normal(288, 3, n), rng.normal(60, 10, n)], 1
    ).astype("float32")
    y = (x[:, 0] > 101325).astype("int64")
    L = keras.layers
    m = keras.Sequential(
        [
            keras.Input((3,)),
            L.BatchNormalization(momentum=0.9, name="bn_in"),
            L.Dense(16, activation="relu", name="d1"),
            L.BatchNormalization(momentum=0.9, name="bn1"),
            L.Dense(2, activation="softmax", name="head"),
        ],
        name="sensors",
    )
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=20, batch_size=32, verbose=0)
    mpath, dpath = folder / "sensors.keras", folder / "sensors.npz"
    m.save(mpath)
    np.savez(dpath, x=x, y=y)
    return m, x, mpath, dpath


@pytest.fixture(scope="module")
def sides(sensors, tmp_path_factory):
    """Side outputs of the sensors model on every backend, and on TensorFlow
    with bn1's moving variance 1% larger (a layer computed differently)."""
    _, _, mpath, dpath = sensors
    folder = tmp_path_factory.mktemp("sides")
    jobs = {b: (b, "side_outputs", mpath, dpath, folder / f"{b}.npz") for b in BACKENDS}
    jobs["perturbed"] = (
        "tensorflow",
        "side_outputs",
        mpath,
        dpath,
        folder / "perturbed.npz",
        "bn1",
    )
    runs = spawn(jobs)
    for label, r in runs.items():
        assert "error" not in r, f"{label}: {r.get('error')}"
        assert r["unchanged"], f"{label}: the side output changed the model"
    return {label: SideOutput(folder / f"{label}.npz") for label in runs}


def _run(ref: SideOutput, other: SideOutput) -> BackendRun:
    """compare() with the reports' part left empty (only the side outputs matter here)."""
    empty = {"output_gap": {"relative_l2": None}, "groups": {}}
    return compare(ref, other, empty, empty, None)


def test_reference_side_output_is_what_keras_computes(sensors, sides, keras):
    model, x, _, _ = sensors
    ref = sides["tensorflow"]
    assert ref.meta["samples"] == 96 and ref.meta["first_batch"] == 32
    assert ref.meta["compute_dtype"] == "float32"
    np.testing.assert_allclose(ref.outputs()[0], model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    saved = [v.numpy() for v in model.non_trainable_variables]
    train = keras.ops.convert_to_numpy(model(x[:32], training=True))
    for v, s in zip(model.non_trainable_variables, saved):
        v.assign(s)
    np.testing.assert_allclose(ref.outputs("training_output")[0], train, rtol=1e-6, atol=1e-7)
    assert ref.meta["layers"]["inference"] == ["bn_in#0", "d1#0", "bn1#0", "head#0"]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backends_agree_in_inference(sides, backend):
    if backend not in sides:
        pytest.skip(f"{backend} is not installed")
    ref, other = sides["tensorflow"], sides[backend]
    a, b = other.outputs()[0].astype(np.float64), ref.outputs()[0].astype(np.float64)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()  # the bar for float32 models
    run = _run(ref, other)
    assert run.max_abs_vs_first == pytest.approx(np.abs(a - b).max(), abs=1e-12)
    assert run.relative_l2_vs_first == pytest.approx(
        np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-9, abs=1e-15
    )
    assert run.compared_samples == 96 and run.backend == backend


def test_jax_agrees_and_torch_parts_at_the_first_batchnorm_in_training_mode(sides):
    if "jax" in sides:
        assert first_divergent(sides["tensorflow"], sides["jax"], tolerance("float32")) == (
            None,
            None,
            None,
        )
    if "torch" not in sides:
        pytest.skip("torch is not installed")
    ref, torch = sides["tensorflow"], sides["torch"]
    layer, mode, rel = first_divergent(ref, torch, tolerance("float32"))
    assert (layer, mode) == ("bn_in", "training") and rel > 1.0
    # the independent reading: bn_in's training-mode output, float64 two-pass, on the sketch
    a, b = torch.layer("training", "bn_in#0"), ref.layer("training", "bn_in#0")
    assert np.linalg.norm(a - b) / np.linalg.norm(b) == pytest.approx(rel, rel=1e-9)
    runs = [_run(ref, ref), _run(ref, torch)]
    diverged = {r.backend: divergences(r, runs[0], ref, s) for r, s in zip(runs, (ref, torch))}
    assert diverged == {"tensorflow": [], "torch": ["training"]}
    f = advice.backend_divergence(
        runs, diverged, tolerance=tolerance("float32"), dtype="float32", keras_version="3"
    )
    assert (
        f.cause is Cause.BACKEND_DIVERGENCE and f.severity is Severity.FAIL and f.layer == "bn_in"
    )
    assert "on torch" in f.message and "bn_in (training mode" in f.message
    assert "--backends tensorflow,torch" in f.remedy and "bn_in alone" in f.remedy
    assert f"torch {torch.meta['version']}" in f.remedy and "keras 3" in f.remedy
    assert runs[1].first_divergent_class == "BatchNormalization" and "E[x^2] - E[x]^2" in f.message
    assert "centre and scale the input of bn_in" in f.remedy


def test_a_layer_computed_differently_is_found(sides):
    ref, other = sides["tensorflow"], sides["perturbed"]
    layer, mode, rel = first_divergent(ref, other, tolerance("float32"))
    assert (layer, mode) == ("bn1", "inference") and rel > 1e-5
    runs = [_run(ref, ref), _run(ref, other)]
    # training mode normalises by the batch's statistics: the moving mean plays no part
    assert runs[1].training_relative_l2_vs_first == 0.0
    assert divergences(runs[1], runs[0], ref, other) == ["inference"]
    f = advice.backend_divergence(
        runs,
        {"tensorflow": ["inference"]},
        tolerance=(1e-5, 1e-3),
        dtype="float32",
        keras_version=None,
    )
    assert f is not None and f.severity is Severity.WARN  # small: relative L2 under 1e-3
    assert (
        advice.backend_divergence(
            runs, {}, tolerance=(1e-5, 1e-3), dtype="float32", keras_version=None
        )
        is None
    )


def test_another_process_runs_the_same_check(sensors, tmp_path):
    """The path every non-reference backend takes: `python -m bngap check
    --save-outputs` in a new process, here on TensorFlow against itself."""
    from bngap.pipeline import CheckOptions, check

    _, _, mpath, dpath = sensors
    opts = CheckOptions(limit=64, effects=0, save_outputs=str(tmp_path / "here.npz"))
    here = check(str(mpath), str(dpath), options=opts)
    report, side, err, _ = run_in_process("tensorflow", str(mpath), str(dpath), opts, tmp_path)
    assert err is None
    assert report["data"]["samples"] == 64 and report["settings"]["effects"] == 0
    assert report["output_gap"]["relative_l2"] == pytest.approx(
        here.output_gap.relative_l2, rel=1e-12
    )
    ref, other = SideOutput(tmp_path / "here.npz"), SideOutput(side)
    run = compare(ref, other, here.to_dict(), report, 1.0)
    assert run.max_abs_vs_first == 0.0 and run.training_relative_l2_vs_first == 0.0
    assert run.first_divergent_layer is None and run.compared_samples == 64


def test_backends_all_end_to_end(sensors, tmp_path, monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    _, _, mpath, dpath = sensors
    out = tmp_path / "report.json"
    res = CliRunner().invoke(
        main,
        [
            "check",
            str(mpath),
            str(dpath),
            "--backends",
            "all",
            "--effects",
            "0",
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    jsonschema.validate(d, SCHEMA)
    runs = {r["backend"]: r for r in d["backends"]}
    assert [r["backend"] for r in d["backends"]][0] == "tensorflow"
    assert set(runs) == {b for b in BACKENDS if b in runs} and "tensorflow" in runs
    tf = runs["tensorflow"]
    assert tf["error"] is None and tf["relative_l2"] == d["output_gap"]["relative_l2"]
    assert tf["metrics"]["train"] == d["metrics"]["train"] and tf["max_abs_vs_first"] == 0.0
    pending = [b for b, r in runs.items() if r["error"] and NOT_YET in r["error"]]
    for b, r in runs.items():
        if b in pending or b == "tensorflow":
            continue
        assert r["error"] is None, r["error"]
        assert r["max_abs_vs_first"] <= 1e-5 and r["compared_samples"] == 96
        assert r["metrics"]["eval"]["loss"] == pytest.approx(d["metrics"]["eval"]["loss"], rel=1e-5)
    causes = {f["cause"]: f for f in d["findings"]}
    if "torch" in runs and "torch" not in pending:
        assert runs["torch"]["first_divergent_layer"] == "bn_in"
        assert causes["backend_divergence"]["layer"] == "bn_in"
    if "jax" in runs and "jax" not in pending:
        assert runs["jax"]["first_divergent_layer"] is None
    if pending:
        pytest.skip(f"bngap check does not run on {', '.join(pending)} on this branch yet")


def test_backends_table_in_text_and_markdown():
    from test_render import make_report

    from bngap.render import render

    runs = (
        BackendRun(
            "tensorflow", "2.21.0", 0.41, 0.0, 0.0, {"train": {"loss": 0.1}, "eval": {"loss": 0.9}}
        ),
        BackendRun(
            "torch",
            "2.13.0",
            0.57,
            1.2e-07,
            3.4e-08,
            {"train": {"loss": 0.3}, "eval": {"loss": 0.9}},
            "bn_in",
            first_divergent_mode="training",
        ),
        BackendRun("jax", "0.10.2", error="the model calls tf.gather, which needs TensorFlow"),
    )
    report = dataclasses.replace(make_report(), backends=runs)
    text = render(report, "text", width=80)
    assert "Across backends" in text and "first: tensorflow" in text
    lines = text.splitlines()
    assert next(ln for ln in lines if ln.startswith("version")).split()[1:] == [
        "2.21.0",
        "2.13.0",
        "0.10.2",
    ]
    assert next(ln for ln in lines if ln.startswith("output gap (train vs")).split()[-5:] == [
        "0.4100",
        "0.5700",
        "could",
        "not",
        "run",
    ]
    assert next(ln for ln in lines if ln.startswith("inference vs first: max")).split()[-2:] == [
        "-",
        "1.20e-07",
    ]
    assert next(ln for ln in lines if ln.startswith("loss, training mode")).split()[-2:] == [
        "0.1000",
        "0.3000",
    ]
    assert next(ln for ln in lines if ln.startswith("first divergent layer")).endswith(
        "bn_in (training)"
    )
    assert max(len(ln) for ln in lines) <= 80
    md = render(report, "markdown")
    assert "| inference vs first: rel. L2 | - | 3.40e-08 |  |" in md
    assert "| output gap (train vs inference) | 0.4100 | 0.5700 | could not run |" in md
    d = report.to_dict()
    assert [r["backend"] for r in d["backends"]] == ["tensorflow", "torch", "jax"]
    assert (
        d["backends"][2]["error"].startswith("the model calls")
        and d["backends"][2]["relative_l2"] is None
    )
    assert "backends" not in make_report().to_dict()  # a plain check keeps its keys


def test_backend_lists(monkeypatch):
    monkeypatch.setattr("bngap.crossbackend.installed", lambda b: True)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert parse_backends("all") == (["jax", "tensorflow", "torch"], [])  # the user's backend first
    monkeypatch.delenv("KERAS_BACKEND")
    assert parse_backends("ALL")[0] == ["tensorflow", "jax", "torch"]
    assert parse_backends("torch, tensorflow,torch")[0] == ["torch", "tensorflow"]
    monkeypatch.setattr("bngap.crossbackend.installed", lambda b: b != "torch")
    chosen, notes = parse_backends("all", first="tensorflow")
    assert chosen == ["tensorflow", "jax"] and 'torch (pip install "bngap[torch]")' in notes[0]
    with pytest.raises(BngapError, match=r'pip install "bngap\[torch\]"'):
        parse_backends("tensorflow,torch")
    with pytest.raises(BngapError, match="Received: 'mxnet'"):
        parse_backends("tensorflow,mxnet")
    with pytest.raises(BngapError, match="as files"):
        check_across(object(), "data.npz", None, ["tensorflow"])


@pytest.mark.parametrize(
    "value,says", [("mxnet", "Received: 'mxnet'"), ("", "at least one backend")]
)
def test_bad_backends_are_one_line_exit_2(zoo, value, says):
    mpath, dpath = zoo.files("healthy")
    res = CliRunner().invoke(main, ["check", str(mpath), str(dpath), "--backends", value, "-q"])
    assert res.exit_code == 2
    assert (
        res.stderr.startswith("error: ")
        and says in res.stderr
        and len(res.stderr.splitlines()) == 1
    )


def test_a_loss_computed_differently_is_explained_not_flagged():
    """Keras' own evaluate() gives a softmax model's cross-entropy from the
    logits on TensorFlow, from clipped probabilities elsewhere (the demo: 10.35
    against 8.41 with outputs equal to 2e-7): a note, not a divergence."""
    from bngap.comparison import loss_note as _loss_note

    def run(backend, loss):
        return BackendRun(backend, metrics={"train": {"loss": 0.0273}, "eval": {"loss": loss}})

    runs = [run("tensorflow", 10.3506), run("jax", 8.4055), run("torch", 10.3507)]
    note = _loss_note(runs, {}, "sparse_categorical_crossentropy")
    assert note.startswith(
        "the loss differs between backends whose outputs agree (inference mode: "
        "10.3506 on tensorflow, 8.4055 on jax)"
    )
    assert "from the logits behind it" in note and "torch" not in note
    assert "logits" not in _loss_note(runs, {}, "mean_squared_error")
    assert _loss_note(runs, {"jax": ["inference"]}, "sparse_categorical_crossentropy") is None
    assert _loss_note(runs[:1] + [run("jax", 10.3509)], {}, "x") is None
