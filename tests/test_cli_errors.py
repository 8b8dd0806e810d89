"""The command line on bad input: exit 2 with exactly one line, `error: ...`,
on stderr and nothing on stdout; exit 0 and 1 on good input; --traceback for
the details. Runs `bngap.cli.main` in-process with click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bngap.cli import main

DATA = Path(__file__).parent / "data"
MARKER_ENV = "BNGAP_LAMBDA_MARKER"  # tests/data/k2_lambda.h5 creates this file if its code runs


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, prog_name="bngap")


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_clirunner_keeps_stderr_apart():
    """Everything below relies on click >= 8.2, where stderr is always captured on its own."""
    from importlib.metadata import version

    assert tuple(int(p) for p in version("click").split(".")[:2]) >= (8, 2)
    result = _invoke(["check", "-q", "no-such-model.keras", "no-such-data.npz"])
    assert result.stderr == "error: model file not found: no-such-model.keras\n"
    assert result.stdout == ""
    assert result.output == result.stderr  # output interleaves both streams


@pytest.fixture(scope="session")
def files(zoo, tmp_path_factory):
    """A good model and data (zoo: under_trained, input (None, 8, 8, 3), 64
    samples, a real gap) and a folder of broken files next to them."""
    model, data = zoo.files("under_trained")
    d = tmp_path_factory.mktemp("cli_errors")
    good = model.read_bytes()
    (d / "random.keras").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "half.keras").write_bytes(good[: len(good) // 2])
    (d / "model.pt").write_bytes(b"PK\x03\x04")
    (d / "empty.keras").touch()
    (d / "folder").mkdir()
    np.savez(d / "no_x.npz", images=np.zeros((4, 8, 8, 3), "float32"), labels=np.zeros(4))
    np.savez(d / "pickled.npz", x=np.array([{"a": 1}, None], dtype=object))
    np.savez(d / "shape.npz", x=np.zeros((4, 8, 8, 1), "float32"))
    np.savez(d / "rank.npz", x=np.zeros((4, 64, 3), "float32"))
    nan = np.zeros((5, 8, 8, 3), "float32")
    nan[0, 0, 0, 0] = nan[3, 1, 1, 1] = np.nan
    nan[3, 2, 2, 2] = np.inf
    np.savez(d / "nan.npz", x=nan)
    np.savez(d / "zero.npz", x=np.zeros((0, 8, 8, 3), "float32"))
    np.savez(d / "count.npz", x=np.zeros((4, 8, 8, 3), "float32"), y=np.zeros(3))
    np.save(d / "x.npy", np.asarray(np.load(data)["x"][:8]))
    return {
        "d": str(d),
        "model": str(model),
        "data": str(data),
        "lambda": str(DATA / "k2_lambda.h5"),
    }


def _fill(args, files):
    return [a.format(**files) for a in args]


# (id, arguments after `check -q`, exit code, what stderr must contain)
CASES = [
    (
        "missing model",
        ["{d}/nope.keras", "{data}"],
        2,
        "error: model file not found: {d}/nope.keras",
    ),
    (
        "directory as model",
        ["{d}/folder", "{data}"],
        2,
        "error: {d}/folder is a directory; expected a .keras or .h5 model file",
    ),
    (
        "corrupt model",
        ["{d}/random.keras", "{data}"],
        2,
        "error: {d}/random.keras is not a valid .keras file: not a zip archive (truncated or corrupted?)",
    ),
    ("truncated model", ["{d}/half.keras", "{data}"], 2, "is not a valid .keras file"),
    (
        "empty model",
        ["{d}/empty.keras", "{data}"],
        2,
        "error: model file {d}/empty.keras is empty (0 bytes)",
    ),
    (
        "wrong extension",
        ["{d}/model.pt", "{data}"],
        2,
        "error: unsupported model format '.pt': bngap reads .keras (Keras 3) and .h5/.hdf5",
    ),
    (
        "lambda without --unsafe",
        ["{lambda}", "{data}"],
        2,
        "error: {lambda} contains a Lambda layer with Python code, which could run arbitrary code; "
        "bngap refuses to load it by default. If you trust this file, pass --unsafe",
    ),
    (
        "missing custom objects file",
        ["{model}", "{data}", "--custom-objects", "{d}/nope.py"],
        2,
        "error: --custom-objects file not found: {d}/nope.py",
    ),
    ("missing data", ["{model}", "{d}/nope.npz"], 2, "error: data file not found: {d}/nope.npz"),
    (
        "directory without images as data",
        ["{model}", "{d}/folder"],
        2,
        "error: {d}/folder holds no images (.jpg, .jpeg, .png, .bmp, .gif), directly or in class sub-folders",
    ),
    (
        "npz without x",
        ["{model}", "{d}/no_x.npz"],
        2,
        "error: {d}/no_x.npz has no key 'x' for the inputs. Found keys: images, labels; choose one with --x-key",
    ),
    (
        "unknown --x-key",
        ["{model}", "{data}", "--x-key", "pixels"],
        2,
        "error: {data} has no key 'pixels' for the inputs. Found keys: x, y; choose one with --x-key",
    ),
    (
        "pickled npz",
        ["{model}", "{d}/pickled.npz"],
        2,
        "error: {d}/pickled.npz under key 'x' holds a pickled Python object array; bngap never unpickles data",
    ),
    (
        "wrong shape",
        ["{model}", "{d}/shape.npz"],
        2,
        "error: the input array does not fit the model: expected shape (None, 8, 8, 3), received "
        "(4, 8, 8, 1) (axis 3: 1 != 3)",
    ),
    (
        "wrong rank",
        ["{model}", "{d}/rank.npz"],
        2,
        "error: the input array has rank 3 but the model expects rank 4: expected shape (None, 8, 8, 3), "
        "received (4, 64, 3)",
    ),
    (
        "nan data",
        ["{model}", "{d}/nan.npz"],
        2,
        "error: the input array contains 2 NaN and 1 infinite values (in 2 of 5 samples); bngap needs finite inputs",
    ),
    ("zero samples", ["{model}", "{d}/zero.npz"], 2, "error: the input array has 0 samples"),
    (
        "x and y counts",
        ["{model}", "{d}/count.npz"],
        2,
        "error: inputs have 4 samples but the labels have 3; they must match",
    ),
    (
        "--batch-size 0",
        ["{model}", "{data}", "--batch-size", "0"],
        2,
        "error: --batch-size must be at least 1. Received: 0",
    ),
    (
        "--batch-size not a number",
        ["{model}", "{data}", "--batch-size", "many"],
        2,
        "error: Invalid value for '--batch-size': 'many' is not a valid integer.",
    ),
    (
        "--limit 0",
        ["{model}", "{data}", "--limit", "0"],
        2,
        "error: --limit must be at least 1. Received: 0",
    ),
    (
        "negative --fail-above",
        ["{model}", "{data}", "--fail-above", "-1"],
        2,
        "error: --fail-above must be 0 or more. Received: -1.0",
    ),
    (
        "unknown option",
        ["{model}", "{data}", "--frobnicate"],
        2,
        "error: No such option '--frobnicate'",
    ),
    (
        "missing argument",
        ["{model}"],
        2,
        "error: Missing argument 'DATA'. (see 'bngap check --help')",
    ),
    ("no arguments", [], 2, "error: Missing argument 'MODEL'."),
    (
        "unknown --format",
        ["{model}", "{data}", "--format", "xml"],
        2,
        "error: Invalid value for '--format': 'xml' is not one of 'text', 'json', 'markdown', 'html', 'junit'. "
        "(see 'bngap check --help')",
    ),
    # runs
    ("valid model", ["{model}", "{data}"], 0, ""),
    ("npy data", ["{model}", "{d}/x.npy", "--format", "json"], 0, ""),
    ("threshold not exceeded", ["{model}", "{data}", "--fail-above", "1000"], 0, ""),
    ("gap above --fail-above 0", ["{model}", "{data}", "--fail-above", "0"], 1, ""),
]


@pytest.mark.parametrize("args,code,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_exit_codes(files, args, code, expected):
    result = _invoke(["check", "-q"] + _fill(args, files))
    assert result.exit_code == code, (result.exit_code, result.output)
    if code == 2:
        lines = _error_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert expected.format(**files) in lines[0]
        assert result.stdout == ""
    else:
        assert result.stderr == ""  # -q: no status lines
        assert result.stdout.strip()


def test_gap_exit_1_says_fail_and_the_threshold(files):
    result = _invoke(
        ["check", "-q", files["model"], files["data"], "--fail-above", "0", "--format", "json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "fail" and report["output_gap"]["relative_l2"] > 0
    ok = _invoke(["check", "-q", files["model"], files["data"], "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["verdict"] == "pass"


def test_error_after_status_lines_is_still_one_error_line(files):
    """Without -q, status lines (`bngap: ...`) come first; the error is the one last line."""
    d = files["d"]
    result = _invoke(["check", files["model"], f"{d}/nan.npz"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = _error_lines(result)
    assert lines[-1].startswith("error: the input array contains 2 NaN")
    assert len(lines) >= 2 and all(line.startswith("bngap: ") for line in lines[:-1]), lines


def test_lambda_refusal_runs_no_code(files, tmp_path, monkeypatch):
    marker = tmp_path / "lambda-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    result = _invoke(["check", "-q", files["lambda"], files["data"]])
    assert result.exit_code == 2 and "--unsafe" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["fix", "-q", "{d}/nope.keras", "{data}", "-o", "{d}/out.keras"],
            "error: model file not found: {d}/nope.keras",
        ),
        (
            ["fix", "-q", "{model}", "{d}/zero.npz", "-o", "{d}/out.keras"],
            "error: the input array has 0 samples",
        ),
        (
            ["fix", "-q", "{model}", "{data}"],
            "error: say where to write the fixed model: -o/--output FILE",
        ),
        (["frobnicate"], "error: No such command 'frobnicate'."),
    ],
    ids=["fix missing model", "fix zero samples", "fix without output", "unknown command"],
)
def test_other_commands_share_the_error_policy(files, args, expected):
    result = _invoke(_fill(args, files))
    assert result.exit_code == 2 and result.stdout == ""
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(expected.format(**files)), lines
    assert not Path(files["d"], "out.keras").exists()


def test_huge_batch_size_is_clamped_to_the_samples(files):
    result = _invoke(
        [
            "check",
            "-q",
            files["model"],
            files["data"],
            "--batch-size",
            "100000000",
            "--format",
            "json",
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data"]["samples"] == 64 and report["data"]["batch_size"] == 64


def test_traceback_flag_shows_the_traceback(files):
    d = files["d"]
    plain = _invoke(["check", "-q", files["model"], f"{d}/shape.npz"])
    assert "Traceback" not in plain.stderr
    result = _invoke(["check", "-q", "--traceback", files["model"], f"{d}/shape.npz"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "Traceback (most recent call last):" in result.stderr
    assert "bngap.errors.DataError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == _error_lines(plain)[0]


def test_nan_threshold_is_refused(files):
    result = _invoke(["check", "-q", files["model"], files["data"], "--fail-above", "nan"])
    assert result.exit_code == 2
    assert _error_lines(result)[0].startswith("error: --fail-above")


def test_bare_bngap_prints_its_help():
    result = _invoke([])
    assert "error:" not in result.stderr
    assert result.exit_code == 0
    assert "Usage: bngap [OPTIONS] COMMAND [ARGS]..." in result.stdout
    assert "\nCommands:\n" in result.stdout


# ---------------------------------------------- merged from test_bad_inputs.py
BOOM = """
import keras

@keras.saving.register_keras_serializable(package="corpus")
class Boom(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf

        if not tf.executing_eagerly():  # building the model: shapes only
            return x
        raise ValueError("this layer always fails")
"""


@pytest.fixture(scope="session")
def corpus(files):
    """The bad files above plus those that need more making: one folder."""
    import os
    import pickle
    import subprocess
    import sys
    import zipfile

    d = Path(files["d"])
    (d / "saved").mkdir()
    (d / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    with zipfile.ZipFile(d / "notkeras.keras", "w") as zf:
        zf.writestr("hello.txt", "hi")
    (d / "fake.h5").write_text("text")
    (d / "pickle.npz").write_bytes(pickle.dumps([1, 2, 3]))
    (d / "data.csv").write_text("1,2")
    (d / "boom.py").write_text(BOOM)
    # Saved from another process, so that Boom is not registered here.
    script = (
        f"import sys; sys.path.insert(0, {str(d)!r}); import keras, boom;"
        "m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name='conv'),"
        "boom.Boom(name='boom')]);"
        f"m.save({str(d / 'boom.keras')!r});"
        f"keras.Sequential([keras.Input((3,))], name='empty').save({str(d / 'nolayers.keras')!r})"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return {**files, "k2": str(DATA)}


# (id, arguments after `check -q`, the whole error line; None: any one `error:` line)
WHOLE_LINE_CASES = [
    (
        "savedmodel",
        ["{d}/saved", "{data}"],
        "error: {d}/saved is a TensorFlow SavedModel directory; Keras 3 can only wrap it as an opaque "
        "TFSMLayer, which hides the layers bngap must inspect. Re-save the model from the code that built "
        "it with model.save('model.keras'), or load it with tf-keras (TF_USE_LEGACY_KERAS=1) and save it "
        "as 'model.h5'",
    ),
    (
        "zip not keras",
        ["{d}/notkeras.keras", "{data}"],
        "error: {d}/notkeras.keras is a zip archive but not a Keras model (it has no config.json)",
    ),
    (
        "fake h5",
        ["{d}/fake.h5", "{data}"],
        "error: {d}/fake.h5 is not a valid HDF5 file (wrong signature; truncated, corrupted, or not a "
        "Keras .h5 model)",
    ),
    (
        "keras2 keras format",
        ["{k2}/k2_sequential.keras", "{data}"],
        "error: {k2}/k2_sequential.keras was written by Keras 2.21.0 (tf.keras 2.x) in the .keras format, "
        "which Keras 3 cannot read. Re-save it as .h5 with the Keras that wrote it "
        "(tf_keras.models.load_model(path).save('model.h5')); bngap reads Keras 2 .h5 files",
    ),
    ("pickle file", ["{model}", "{d}/pickle.npz"], None),
    (
        "data format",
        ["{model}", "{d}/data.csv"],
        "error: unsupported data format '.csv': bngap reads .npz (x and optional y), .npy (inputs only) "
        "or a folder of images",
    ),
    (
        "bad effects",
        ["{model}", "{data}", "--effects", "many"],
        "error: Invalid value for '--effects': expected a number, 'all' or 'auto'. Received: 'many' "
        "(see 'bngap check --help')",
    ),
    (
        "unknown option suggests one",
        ["{model}", "{data}", "--frobnicate"],
        "error: No such option '--frobnicate'. Did you mean '--format'? (see 'bngap check --help')",
    ),
    (
        "no layers",
        ["{d}/nolayers.keras", "{data}"],
        "error: {d}/nolayers.keras holds a model that was never built (no input shape known)",
    ),
    # before the case that registers the class: Keras keeps registrations per process
    (
        "custom class missing",
        ["{d}/boom.keras", "{data}"],
        "error: {d}/boom.keras uses the custom class or function 'Boom', which is not registered; "
        "pass --custom-objects FILE.py with its definition",
    ),
    (
        "forward pass raises",
        ["{d}/boom.keras", "{data}", "--custom-objects", "{d}/boom.py"],
        "error: the model failed in layer 'boom' (Boom) during the inference pass: ValueError: this "
        "layer always fails",
    ),
]


@pytest.mark.parametrize(
    "args,line", [c[1:] for c in WHOLE_LINE_CASES], ids=[c[0] for c in WHOLE_LINE_CASES]
)
def test_bad_input_is_one_whole_line_exit_2(corpus, args, line):
    result = _invoke(["check", "-q"] + _fill(args, corpus))
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    if line is not None:
        assert lines[0] == line.format(**corpus)
