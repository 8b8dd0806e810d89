"""bngap against Keras' own fit(), on every installed backend.

`tests/fit_zoo.py` runs the zoo in one process per backend (the backend is
fixed at `import keras`); the three processes start together, once per
session. Absent backends are skipped on a user's machine, never in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fit_zoo import MIXED, TRAINED_FIRST, ZOO

from bngap.backend import BACKENDS, installed

HERE = Path(__file__).parent
MODELS = [fn.__name__ for fn in ZOO]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.pop("KERAS_BACKEND", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def zoo_runs(tmp_path_factory) -> dict:
    """backend -> {model name -> what fit_zoo measured} (or {"error": ...})."""
    saved = tmp_path_factory.mktemp("saved_under_jax")
    procs = {}
    for b in BACKENDS:
        if installed(b):
            extra = {"BNGAP_ZOO_SAVE": str(saved)} if b == "jax" else {}
            procs[b] = subprocess.Popen(
                [sys.executable, str(HERE / "fit_zoo.py"), b],
                env=_env(**extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
    runs: dict = {"saved_under_jax": saved}
    for b, p in procs.items():
        out, err = p.communicate(timeout=900)
        if "BNGAP-ZOO-JSON " not in out:
            runs[b] = {"error": f"fit_zoo.py {b} exited {p.returncode}: {err[-3000:]}"}
        else:
            runs[b] = json.loads(out.split("BNGAP-ZOO-JSON ", 1)[1])
    return runs


def _need(backend: str) -> None:
    if not installed(backend):
        if os.environ.get("CI"):
            pytest.fail(f"the {backend} backend must be installed in CI")
        pytest.skip(f"the {backend} backend is not installed")


def _result(zoo_runs, backend: str, model: str) -> dict:
    _need(backend)
    run = zoo_runs[backend]
    assert "error" not in run, run.get("error")
    r = run[model]
    assert "error" not in r, r.get("traceback", r.get("error"))
    return r


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_loss_and_accuracy_equal_fit(zoo_runs, backend, model):
    """bngap's training-mode numbers are fit()'s own, batch-size weighted over
    one epoch of the same batches (fit() with SGD(0.0), shuffle=False);
    1e-5 relative, 1e-3 under mixed precision."""
    r = _result(zoo_runs, backend, model)
    assert r["bngap"]["loss"] == pytest.approx(
        r["fit"]["loss"], rel=1e-3 if model in MIXED else 1e-5
    )
    assert r["bngap"]["accuracy"] == pytest.approx(r["fit"]["accuracy"], rel=1e-6)  # fit(): float32
    assert r["check_left_model_unchanged"] and r["fit_weights_unchanged"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_in_fit_column_is_what_fit_gave_each_layer(zoo_runs, backend, model):
    """The `training` value each layer received inside fit() (recorded by
    wrappers during a real fit()), and for BN layers: "training" in fit()
    exactly when fit() updated its moving statistics."""
    r = _result(zoo_runs, backend, model)
    for path, rec in r["layers"].items():
        got = [v for v in r["received"].get(path, []) if v is not None]
        expected = None if not got else any(got)
        assert rec["fit_training"] == expected, (path, rec, r["received"].get(path))
        if rec["kind"] == "batchnorm":
            assert (rec["fit_mode"] == "training") == r["bn_updated"][path], (path, rec)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_whose_call_lacks_training(zoo_runs, backend):
    """fit() calls it as model(x): no gap, BN in inference mode with the
    reason, statistics never updated, 'both modes are wrong', and the remedy
    names the class and the signature."""
    r = _result(zoo_runs, backend, "subclassed_no_training")
    assert "subclassed_no_training" in TRAINED_FIRST
    assert r["gap"] < 1e-6
    assert r["bngap"]["loss"] == pytest.approx(r["bngap_eval"]["loss"], rel=1e-6)
    bn = r["layers"]["bn"]
    assert (
        bn["fit_mode"] == "inference"
        and "NoTraining.call() has no training argument" in bn["reason"]
    )
    top = r["findings"][0]
    assert top["cause"] == "stats_never_updated"
    assert "Both modes are wrong" in top["message"]
    assert (
        "NoTraining.call" in top["remedy"] and "def call(self, x, training=None)" in top["remedy"]
    )


def test_jax_fit_does_not_pass_training_through_the_call_context(zoo_runs):
    """Keras 3.15.1's JAX trainer (stateless_call) does not hand training=True
    to layers a subclassed call() calls without it; TensorFlow's does. bngap
    follows each backend's fit()."""
    jax_bn = _result(zoo_runs, "jax", "subclassed_implicit")["layers"]["bn"]
    tf_bn = _result(zoo_runs, "tensorflow", "subclassed_implicit")["layers"]["bn"]
    assert tf_bn["fit_mode"] == "training"
    assert jax_bn["fit_mode"] == "inference" and "stateless_call" in jax_bn["reason"]


@pytest.mark.parametrize("model", MODELS)
def test_inference_outputs_agree_across_backends(zoo_runs, model):
    """Same weights, same inputs: every backend's inference outputs within
    1e-5 of the largest output (float32; 1e-2 with float16 inside)."""
    have = [b for b in BACKENDS if installed(b)]
    if len(have) < 2:
        pytest.skip("one backend installed")
    first = np.asarray(_result(zoo_runs, have[0], model)["inference"])
    for b in have[1:]:
        other = np.asarray(_result(zoo_runs, b, model)["inference"])
        tol = 1e-2 if model in MIXED else 1e-5
        assert np.max(np.abs(other - first)) <= tol * np.max(np.abs(first)), b


@pytest.mark.parametrize("backend", BACKENDS)
def test_environment_names_the_backend(zoo_runs, backend):
    env = _result(zoo_runs, backend, "functional")["environment"]
    assert env["backend"] == backend
    assert env["backend_version"] == env[backend] and env["keras"]


def test_keras_file_saved_under_jax_checks_the_same_here(zoo_runs):
    """A .keras file written under JAX, checked under TensorFlow (this process)."""
    import bngap

    jax_gap = _result(zoo_runs, "jax", "functional")["gap"]
    folder = zoo_runs["saved_under_jax"]
    report = bngap.check(
        str(folder / "model.keras"), str(folder / "data.npz"), batch_size=16, seed=3
    )
    assert report.environment["backend"] == "tensorflow"
    assert report.output_gap.relative_l2 == pytest.approx(jax_gap, rel=1e-4)


def _cli(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "bngap", *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=600,
    )


def test_cli_backend_torch_on_a_file_saved_under_jax(zoo_runs):
    _need("torch")
    jax_gap = _result(zoo_runs, "jax", "functional")["gap"]
    folder = zoo_runs["saved_under_jax"]
    out = _cli(
        "check",
        str(folder / "model.keras"),
        str(folder / "data.npz"),
        "--backend",
        "torch",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--format",
        "json",
        "-q",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["environment"]["backend"] == "torch" and report["environment"]["torch"]
    assert report["output_gap"]["relative_l2"] == pytest.approx(jax_gap, rel=1e-4)


def test_cli_backend_jax_on_a_file_saved_under_tensorflow(tmp_path, zoo):
    """A file written here (TensorFlow), checked with --backend jax: the same
    gap, metrics and first finding as the TensorFlow check."""
    _need("jax")
    import bngap

    mpath, dpath = zoo.files("under_trained")
    here = bngap.check(str(mpath), str(dpath), limit=40)
    out = _cli(
        "check",
        str(mpath),
        str(dpath),
        "--backend",
        "jax",
        "--limit",
        "40",
        "--format",
        "json",
        "-q",
    )
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["environment"]["backend"] == "jax" and report["environment"]["jax"]
    assert report["output_gap"]["relative_l2"] == pytest.approx(
        here.output_gap.relative_l2, rel=1e-4
    )
    assert [f["cause"] for f in report["findings"]] == [f.cause.value for f in here.findings]


def test_missing_backend_is_one_line_and_exit_2(tmp_path):
    """As on a machine without JAX: `jax` hidden from the import system."""
    code = (
        "import sys; sys.modules['jax'] = None; from bngap.cli import main; "
        "main(['check', 'm.keras', 'd.npz', '--backend', 'jax'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and 'pip install "bngap[jax]"' in lines[0]
    )


def test_python_api_refuses_a_second_backend(keras, zoo):
    """Keras already runs on TensorFlow in this process: asking for JAX is a
    clear error, not a silent TensorFlow run."""
    import bngap
    from bngap.errors import BngapError

    model, x, y = zoo.get("under_trained")
    with pytest.raises(BngapError, match="already imported with the tensorflow backend"):
        bngap.check(model, x, y, backend="jax")


def test_keras2_tf_op_layers_need_tensorflow(tmp_path):
    """Keras 2 TF-op layers run TensorFlow functions: on another backend, one
    line and exit 2 (not a shape-inference error from deep inside Keras)."""
    _need("torch")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 32, 32, 3), "float32"))
    out = _cli(
        "check",
        str(HERE / "data" / "k2_applications_like.h5"),
        str(tmp_path / "d.npz"),
        "--backend",
        "torch",
        "-q",
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "TF-op layers" in lines[0] and "--backend tensorflow" in lines[0]


def test_reports_name_the_backend(zoo):
    """JSON environment, the text header and the Markdown report name it."""
    import bngap
    from bngap.render import render

    model, x, y = zoo.get("under_trained")
    report = bngap.check(model, x[:16], y[:16], effects=0)
    env = report.to_dict()["environment"]
    assert env["backend"] == "tensorflow" and env["backend_version"] == env["tensorflow"]
    assert f"backend tensorflow {env['tensorflow']}" in render(
        report, "text", width=200, color=False
    )
    assert "backend: tensorflow" in render(report, "markdown")


def test_keras_already_running_is_used_when_nothing_is_asked(keras, monkeypatch):
    """Keras imported first by the user (its backend from keras.json, say):
    bngap runs on that one; asking for another is the clear error."""
    from bngap.backend import select_backend
    from bngap.errors import BngapError

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert select_backend(None) == keras.backend.backend()
    with pytest.raises(BngapError, match="already imported"):
        select_backend("torch" if keras.backend.backend() != "torch" else "jax")
    with pytest.raises(BngapError, match="unknown backend"):
        select_backend("numpy")
