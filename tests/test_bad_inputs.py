"""The corpus of bad inputs: each gives exit code 2 and exactly one line,
`error: ...`, on stderr (the whole line asserted), and nothing on stdout."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bngap.cli import main

DATA = Path(__file__).parent / "data"

BOOM = '''
import keras

@keras.saving.register_keras_serializable(package="corpus")
class Boom(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf

        if not tf.executing_eagerly():  # building the model: shapes only
            return x
        raise ValueError("this layer always fails")
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, zoo):
    """Broken files next to a good model and good data."""
    d = tmp_path_factory.mktemp("corpus")
    model, data = zoo.files("under_trained")
    good = model.read_bytes()
    (d / "random.keras").write_bytes(os.urandom(2048))
    (d / "truncated.keras").write_bytes(good[: len(good) // 2])
    with zipfile.ZipFile(d / "notkeras.keras", "w") as zf:
        zf.writestr("hello.txt", "hi")
    (d / "empty.keras").touch()
    (d / "model.onnx").write_bytes(b"\x08\x07")
    (d / "fake.h5").write_text("text")
    (d / "saved").mkdir()
    (d / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    np.savez(d / "nox.npz", a=np.zeros((4, 8, 8, 3), "float32"), b=np.zeros(4))
    obj = np.empty(2, dtype=object)
    np.savez(d / "pickled.npz", x=obj)
    (d / "pickle.npz").write_bytes(pickle.dumps([1, 2, 3]))
    np.savez(d / "shape.npz", x=np.zeros((4, 9, 8, 3), "float32"))
    np.savez(d / "rank.npz", x=np.zeros((4, 8, 8), "float32"))
    nan = np.zeros((4, 8, 8, 3), "float32")
    nan[1, 0, 0, 0] = np.nan
    np.savez(d / "nan.npz", x=nan)
    np.savez(d / "zero.npz", x=np.zeros((0, 8, 8, 3), "float32"))
    np.savez(d / "xy.npz", x=np.zeros((4, 8, 8, 3), "float32"), y=np.zeros(3))
    (d / "data.csv").write_text("1,2")
    (d / "boom.py").write_text(BOOM)
    script = (f"import sys; sys.path.insert(0, {str(d)!r}); import keras, boom;"
              "m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name='conv'),"
              "boom.Boom(name='boom')]);"
              f"m.save({str(d / 'boom.keras')!r});"
              f"keras.Sequential([keras.Input((3,))], name='empty').save({str(d / 'nolayers.keras')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return d, model, data


CASES = [
    # (name, args using {d} {model} {data}, exact error line)
    ("missing model", ["{d}/nope.keras", "{data}"], "error: model file not found: {d}/nope.keras"),
    ("directory model", ["{d}", "{data}"], "error: {d} is a directory; expected a .keras or .h5 model file"),
    ("savedmodel", ["{d}/saved", "{data}"],
     "error: {d}/saved is a TensorFlow SavedModel directory; Keras 3 can only wrap it as an opaque "
     "TFSMLayer, which hides the layers bngap must inspect. Re-save the model from the code that built "
     "it with model.save('model.keras'), or load it with tf-keras (TF_USE_LEGACY_KERAS=1) and save it "
     "as 'model.h5'"),
    ("random bytes", ["{d}/random.keras", "{data}"],
     "error: {d}/random.keras is not a valid .keras file: not a zip archive (truncated or corrupted?)"),
    ("truncated", ["{d}/truncated.keras", "{data}"],
     "error: {d}/truncated.keras is not a valid .keras file: not a zip archive (truncated or corrupted?)"),
    ("zip not keras", ["{d}/notkeras.keras", "{data}"],
     "error: {d}/notkeras.keras is a zip archive but not a Keras model (it has no config.json)"),
    ("empty", ["{d}/empty.keras", "{data}"], "error: model file {d}/empty.keras is empty (0 bytes)"),
    ("extension", ["{d}/model.onnx", "{data}"],
     "error: unsupported model format '.onnx': bngap reads .keras (Keras 3) and .h5/.hdf5 (legacy Keras 2) "
     "files. Re-save the model with model.save('model.keras')"),
    ("fake h5", ["{d}/fake.h5", "{data}"],
     "error: {d}/fake.h5 is not a valid HDF5 file (wrong signature; truncated, corrupted, or not a Keras .h5 model)"),
    ("keras2 keras format", [str(DATA / "k2_sequential.keras"), "{data}"],
     f"error: {DATA / 'k2_sequential.keras'} was written by Keras 2.21.0 (tf.keras 2.x) in the .keras format, "
     "which Keras 3 cannot read. Re-save it as .h5 with the Keras that wrote it "
     "(tf_keras.models.load_model(path).save('model.h5')); bngap reads Keras 2 .h5 files"),
    ("lambda", [str(DATA / "k2_lambda.h5"), "{data}"],
     f"error: {DATA / 'k2_lambda.h5'} contains a Lambda layer with Python code, which could run arbitrary "
     "code; bngap refuses to load it by default. If you trust this file, pass --unsafe"),
    ("missing data", ["{model}", "{d}/nope.npz"], "error: data file not found: {d}/nope.npz"),
    ("no x key", ["{model}", "{d}/nox.npz"],
     "error: {d}/nox.npz has no key 'x' for the inputs. Found keys: a, b; choose one with --x-key"),
    ("pickled array", ["{model}", "{d}/pickled.npz"],
     "error: {d}/pickled.npz under key 'x' holds a pickled Python object array; bngap never unpickles "
     "data (unpickling can run arbitrary code). Save plain numeric arrays, e.g. np.savez('data.npz', "
     "x=x.astype('float32'), y=y)"),
    ("pickle file", ["{model}", "{d}/pickle.npz"], None),
    ("wrong shape", ["{model}", "{d}/shape.npz"],
     "error: the input array does not fit the model: expected shape (None, 8, 8, 3), received "
     "(4, 9, 8, 3) (axis 1: 9 != 8)"),
    ("wrong rank", ["{model}", "{d}/rank.npz"],
     "error: the input array has rank 3 but the model expects rank 4: expected shape (None, 8, 8, 3), "
     "received (4, 8, 8)"),
    ("nan", ["{model}", "{d}/nan.npz"],
     "error: the input array contains 1 NaN and 0 infinite values (in 1 of 4 samples); bngap needs finite inputs"),
    ("zero samples", ["{model}", "{d}/zero.npz"], "error: the input array has 0 samples"),
    ("x y mismatch", ["{model}", "{d}/xy.npz"], "error: inputs have 4 samples but the labels have 3; they must match"),
    ("data format", ["{model}", "{d}/data.csv"],
     "error: unsupported data format '.csv': bngap reads .npz (x and optional y), .npy (inputs only) or a folder of images"),
    ("batch size 0", ["{model}", "{data}", "--batch-size", "0"], "error: --batch-size must be at least 1. Received: 0"),
    ("limit 0", ["{model}", "{data}", "--limit", "0"], "error: --limit must be at least 1. Received: 0"),
    ("negative threshold", ["{model}", "{data}", "--fail-above", "-0.1"], "error: --fail-above must be 0 or more. Received: -0.1"),
    ("bad effects", ["{model}", "{data}", "--effects", "many"],
     "error: Invalid value for '--effects': expected a number, 'all' or 'auto'. Received: 'many' (see 'bngap check --help')"),
    ("unknown format", ["{model}", "{data}", "--format", "xml"], None),
    ("unknown option", ["{model}", "{data}", "--frobnicate"],
     "error: No such option '--frobnicate'. Did you mean '--format'? (see 'bngap check --help')"),
    ("missing argument", ["{model}"], "error: Missing argument 'DATA'. (see 'bngap check --help')"),
    ("no layers", ["{d}/nolayers.keras", "{data}"],
     "error: {d}/nolayers.keras holds a model that was never built (no input shape known)"),
    # before the case that registers the class: Keras keeps registrations per process
    ("custom class missing", ["{d}/boom.keras", "{data}"],
     "error: {d}/boom.keras uses the custom class or function 'Boom', which is not registered; "
     "pass --custom-objects FILE.py with its definition"),
    ("forward pass raises", ["{d}/boom.keras", "{data}", "--custom-objects", "{d}/boom.py"],
     "error: the model failed in layer 'boom' (Boom) during the inference pass: ValueError: this layer always fails"),
]


@pytest.mark.parametrize("name,args,line", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(corpus, name, args, line):
    d, model, data = corpus
    fill = {"d": str(d), "model": str(model), "data": str(data)}
    res = CliRunner().invoke(main, ["check", "-q"] + [a.format(**fill) for a in args], prog_name="bngap")
    err = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stdout == ""
    assert len(err) == 1 and err[0].startswith("error: "), err
    if line is not None:
        assert err[0] == line.format(**fill)


def test_huge_batch_size_is_clamped(corpus):
    d, model, data = corpus
    import json

    res = CliRunner().invoke(main, ["check", str(model), str(data), "-q", "--batch-size", "1000000",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"]["batch_size"] == 64  # all the samples


def test_traceback_flag_shows_the_trace(corpus):
    d, model, _ = corpus
    res = CliRunner().invoke(main, ["check", str(model), str(d / "nan.npz"), "-q", "--traceback"])
    assert res.exit_code == 2
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: the input array contains 1 NaN")
