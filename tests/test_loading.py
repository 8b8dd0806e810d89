"""Model loading through `bngap.loading`: Keras 3 and checked-in Keras 2
files load and run, code in a file never runs without --unsafe, custom layers
come from --custom-objects, and every bad file gets its own one-line message.

The Keras 2 files in tests/data are written by tests/data/make_legacy_models.py
(its docstring records what Keras 3 alone does with each).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bngap.errors import ModelLoadError
from bngap.loading import LoadedModel, load_model
from bngap.modelfiles import check_model_path

DATA = Path(__file__).parent / "data"
MARKER_ENV = "BNGAP_LAMBDA_MARKER"  # the Lambda layers below create this file when they run

UNSUPPORTED = (
    "unsupported model format '{ext}': bngap reads .keras (Keras 3) and .h5/.hdf5 "
    "(legacy Keras 2) files. Re-save the model with model.save('model.keras')"
)
LAMBDA_REFUSED = (
    "{p} contains a Lambda layer with Python code, which could run arbitrary code; "
    "bngap refuses to load it by default. If you trust this file, pass --unsafe"
)


def _call(model, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # A functional model with a named input warns about a bare tensor.
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(model(x, training=False))


def _run(loaded: LoadedModel, n: int = 2, seed: int = 0) -> np.ndarray:
    """Calls the model in inference mode on random data of its declared input shape."""
    spec = loaded.inputs[0]
    assert spec.shape[0] is None and all(d is not None for d in spec.shape[1:]), spec
    x = np.random.default_rng(seed).normal(0, 1, (n,) + tuple(spec.shape[1:])).astype("float32")
    return _call(loaded.model, x)


def _load_error(path, **kw) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_model(path, **kw)
    return str(e.value)


def _check_error(path) -> str:
    with pytest.raises(ModelLoadError) as e:
        check_model_path(path)
    return str(e.value)


# ------------------------------------------------------------ Keras 3 files
@pytest.fixture(scope="session")
def k3_files(tmp_path_factory, keras):
    """A tiny Dense-BN-Dense model saved as .keras and as Keras 3's legacy .h5,
    plus its weights-only file."""
    L = keras.layers
    folder = tmp_path_factory.mktemp("k3_models")
    m = keras.Sequential(
        [
            keras.Input((6,), name="features"),
            L.Dense(4, name="dense"),
            L.BatchNormalization(name="bn"),
            L.Dense(2, name="out"),
        ],
        name="k3",
    )
    m.save(folder / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(folder / "model.h5")
    m.save_weights(folder / "model.weights.h5")
    return folder


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_keras3_file_loads_and_runs(k3_files, name):
    path = k3_files / name
    assert check_model_path(path) == path
    loaded = load_model(path)
    assert loaded.path == str(path)
    assert [(s.shape, s.dtype) for s in loaded.inputs] == [((None, 6), "float32")]
    assert _run(loaded).shape == (2, 2)
    assert loaded.notes == []  # nothing needed repairing


# ------------------------------------------------------ checked-in Keras 2 files
KERAS2 = [
    # (file, declared input shape, output shape, a note that must be present or None)
    ("k2_sequential_bn.h5", (None, 8, 8, 3), (3, 3), None),
    ("k2_functional_bn.h5", (None, 6), (3, 2), None),
    ("k2_lstm.h5", (None, 68, 21), (3, 2), "dropped Keras 2 argument 'time_major' of LSTM 'lstm'"),
    (
        "k2_no_input_layer.h5",
        (None, 5),
        (3, 1),
        "declared the Sequential's input (None, 5) explicitly (Keras 2 kept it on layer 'dense')",
    ),
]


@pytest.mark.parametrize("name,in_shape,out_shape,note", KERAS2, ids=[k[0] for k in KERAS2])
def test_keras2_file_loads_and_runs(name, in_shape, out_shape, note):
    loaded = load_model(DATA / name)
    assert [s.shape for s in loaded.inputs] == [in_shape]
    out = _run(loaded, n=3)
    assert out.shape == out_shape and np.all(np.isfinite(out))
    if note is None:
        assert loaded.notes == []
    else:
        assert len(loaded.notes) == 1, loaded.notes
        assert loaded.notes[0].startswith(
            "repaired legacy config while loading (the file is unchanged): "
        )
        assert note in loaded.notes[0]


def test_keras2_repairs_leave_the_file_alone():
    before = {n: (DATA / n).read_bytes() for n in ("k2_lstm.h5", "k2_no_input_layer.h5")}
    for n in before:
        load_model(DATA / n)
    assert before == {n: (DATA / n).read_bytes() for n in before}


def test_keras2_batchnorm_statistics_are_the_files(keras):
    """Keras 3 uses the moving statistics Keras 2 trained, not fresh ones."""
    import h5py

    bn = load_model(DATA / "k2_sequential_bn.h5").model.get_layer("bn")
    with h5py.File(DATA / "k2_sequential_bn.h5", "r") as f:
        mean = np.asarray(f["model_weights/bn/bn/moving_mean:0"])
        var = np.asarray(f["model_weights/bn/bn/moving_variance:0"])
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), var)
    assert np.all(mean != 0.0) and np.all(var != 1.0)  # one epoch of fit() moved them


@pytest.mark.parametrize(
    "name,words",
    [
        ("k2_lstm.h5", "Unrecognized keyword arguments passed to LSTM: {'time_major': False}"),
        ("k2_no_input_layer.h5", "Shapes used to initialize variables must be fully-defined"),
    ],
)
def test_keras3_alone_still_needs_the_repairs(keras, name, words):
    """Pins the Keras behaviour the repairs exist for: when a Keras release
    reads these files by itself, this fails and the repair can go."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as e:
            keras.models.load_model(DATA / name, compile=False)
    assert words in str(e.value)


def test_keras2_keras_format_is_explained():
    p = DATA / "k2_sequential.keras"
    assert _load_error(p) == (
        f"{p} was written by Keras 2.21.0 (tf.keras 2.x) in the .keras format, which Keras 3 "
        "cannot read. Re-save it as .h5 with the Keras that wrote it "
        "(tf_keras.models.load_model(path).save('model.h5')); bngap reads Keras 2 .h5 files"
    )


# ----------------------------------------- Keras 2 applications-style models
# Real keras.applications models saved by Keras 2 (MobileNetV2/V3, DenseNet,
# EfficientNet, Xception, and any of them nested in a Sequential) hit every
# quirk below; k2_applications_like.h5 packs them into one tiny model.
APPS = DATA / "k2_applications_like.h5"


@pytest.fixture(scope="session")
def apps_loaded(keras):
    return load_model(APPS)


def test_keras2_applications_model_computes_what_keras2_computed(apps_loaded):
    expected = np.load(DATA / "k2_applications_like.expected.npz")
    out = _call(apps_loaded.model, expected["x"])
    np.testing.assert_allclose(out, expected["inference"], rtol=1e-5, atol=1e-6)
    base = apps_loaded.model.layers[0]
    assert base.name == "tiny_mobile"
    np.testing.assert_allclose(
        _call(base, expected["x"]), expected["base_inference"], rtol=1e-4, atol=1e-5
    )
    # The nested model hands the next layer one tensor, as in Keras 2
    assert not isinstance(base.output, (list, tuple))


def test_keras2_applications_model_says_what_was_repaired(apps_loaded):
    assert len(apps_loaded.notes) == 1
    note = apps_loaded.notes[0]
    for words in (
        "renamed 6 layers whose names contain '/', which Keras 3 refuses (block1/dw -> block1_dw",
        "ran 10 Keras 2 TF-op layers (tf.__operators__.add, tf.__operators__.getitem, tf.concat, "
        "tf.math.multiply ...) with bngap's stand-in",
        "read the single input/output of nested model 'tiny_mobile' as Keras 2 did",
        "dropped Keras 2 argument 'groups'=1 that Keras 3's DepthwiseConv2D does not take",
        "dropped Keras 2 arguments 'groups'=1, 'kernel_initializer', 'kernel_regularizer'=None, "
        "'kernel_constraint'=None that Keras 3's SeparableConv2D does not take",
    ):
        assert words in note, words
    names = {layer.name for layer in apps_loaded.model.layers[0].layers}
    assert {"conv1_conv", "conv1_bn", "block1_dw_bn", "head_bn"} <= names
    assert not any("/" in n for n in names)


def test_keras2_applications_batchnorm_statistics_are_the_files(apps_loaded):
    """Renamed layers still get their own weights (Keras matches by order)."""
    import h5py

    base = apps_loaded.model.layers[0]
    with h5py.File(APPS, "r") as f:
        group = f["model_weights/tiny_mobile"]
        stored = {
            n.decode() if isinstance(n, bytes) else n: np.asarray(group[n])
            for n in group.attrs["weight_names"]
        }
    for old, new in (
        ("conv1/bn", "conv1_bn"),
        ("block1/dw_bn", "block1_dw_bn"),
        ("head/bn", "head_bn"),
    ):
        bn = base.get_layer(new)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), stored[f"{old}/moving_mean:0"])
        np.testing.assert_array_equal(
            bn.moving_variance.numpy(), stored[f"{old}/moving_variance:0"]
        )
        assert np.all(bn.moving_variance.numpy() != 1.0)  # fit() moved them


def test_tensors_passed_by_keyword_reach_the_layer_as_tensors(keras):
    """mha(q, v) and LSTM(initial_state=[h0, c0]) from a Keras 2 file compute
    what Keras 2 computed."""
    p = DATA / "k2_keyword_tensors.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="value_shape"):  # Keras 3 alone
            keras.models.load_model(p, compile=False)
    loaded = load_model(p)
    expected = np.load(DATA / "k2_keyword_tensors.expected.npz")
    np.testing.assert_allclose(
        _call(loaded.model, expected["x"]), expected["inference"], rtol=1e-5, atol=1e-6
    )
    assert "passed the tensors that 'mha', 'lstm' take by keyword as tensors" in loaded.notes[0]


@pytest.mark.parametrize(
    "name,inputs,rtol,note,keras_alone",
    [
        (
            "k2_shared_sequential",
            ("left", "right"),
            1e-5,
            "renumbered the calls of nested model 'tower' as Keras 3 counts them",
            "disconnected nodes",
        ),
        (
            "k2_nested_calls",
            ("feature", "steps"),
            1e-5,
            "renumbered the calls of nested model 'shared' as Keras 3 counts them",
            "TFOpLambda",
        ),  # shared(fi * 2.0): Keras 3 stops at the TF op first
        (
            "k2_tf_op_arguments",
            ("va", "idx"),
            1e-5,
            "ran 7 Keras 2 TF-op layers (tf.__operators__.getitem, tf.compat.v1.gather, tf.compat.v1.pad",
            "TFOpLambda",
        ),
        # float16 arithmetic: Keras 2 and 3 round differently in the last bits
        (
            "k2_mixed_float16",
            ("x",),
            3e-3,
            "read Keras 2's dtype policies of 4 layers by name (e.g. mixed_float16)",
            "quantization_mode",
        ),
    ],
)
def test_keras2_graph_quirks_compute_what_keras2_computed(
    keras, name, inputs, rtol, note, keras_alone
):
    p = DATA / f"{name}.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match=keras_alone):
            keras.models.load_model(p, compile=False)
    loaded = load_model(p)
    expected = np.load(DATA / f"{name}.expected.npz")
    x = [expected[k] for k in inputs]
    out = _call(loaded.model, x if len(x) > 1 else x[0])
    np.testing.assert_allclose(out, expected["inference"], rtol=rtol, atol=rtol)
    assert note in loaded.notes[0]


def test_keras3_alone_refuses_the_applications_model(keras):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="TFOpLambda"):  # the first thing it cannot read
            keras.models.load_model(APPS, compile=False)


def test_tf_op_outside_the_allowlist_needs_unsafe(keras):
    p = DATA / "k2_tf_op_outside_allowlist.h5"
    assert _load_error(p) == (
        f"{p}: layer 'tf.debugging.check_numerics': the model calls tf.debugging.check_numerics, "
        "which safe mode does not run (only tensor math is allowed); pass --unsafe if you trust "
        "the file"
    )
    loaded = load_model(p, unsafe=True)
    x = np.arange(8, dtype="float32").reshape(2, 4)
    w, b = loaded.model.get_layer("out").get_weights()
    np.testing.assert_allclose(_call(loaded.model, x), x @ w + b, rtol=1e-6)


def test_public_load_model_warns_with_the_repairs(keras):
    import bngap

    with pytest.warns(UserWarning, match="bngap: repaired legacy config"):
        model = bngap.load_model(APPS)
    assert isinstance(model, keras.Model)


def test_a_fixed_copy_of_a_keras2_model_with_tf_ops_reloads(tmp_path, apps_loaded, keras):
    """bngap fix saves the stand-in layers; bngap loads them back (plain Keras
    would need them as custom objects)."""
    path = tmp_path / "copy.keras"
    apps_loaded.model.save(path)
    again = load_model(path)
    x = np.load(DATA / "k2_applications_like.expected.npz")["x"]
    np.testing.assert_array_equal(_call(again.model, x), _call(apps_loaded.model, x))


def test_a_config_word_like_truncated_is_not_called_a_corrupt_file():
    from bngap.loading import _translate_load_error

    e = TypeError(
        "Error when deserializing class 'Dense' using config={'kernel_initializer': "
        "{'class_name': 'TruncatedNormal'}}.\n\nException encountered: bad units: -1"
    )
    assert (
        str(_translate_load_error(Path("m.h5"), e))
        == "cannot load m.h5 (layer class Dense): bad units: -1"
    )


# ------------------------------------------------------------------- Lambda
@pytest.fixture(scope="session")
def lambda_files(tmp_path_factory, keras):
    """Keras 3 models whose Python lambda doubles its input and, if it ever
    runs, creates the file named by $BNGAP_LAMBDA_MARKER."""
    assert MARKER_ENV not in os.environ  # building the model runs the lambda once
    folder = tmp_path_factory.mktemp("lambda_models")
    inp = keras.Input((3,))
    # Self-contained: a deserialised lambda sees Keras' module globals, not ours.
    touch = lambda t: (
        [
            open(p, "w").close()  # noqa: E731
            for p in [__import__("os").environ.get("BNGAP_LAMBDA_MARKER")]
            if p
        ],
        t * 2,
    )[1]
    m = keras.Model(inp, keras.layers.Lambda(touch, name="double")(inp))
    m.save(folder / "lambda.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(folder / "lambda.h5")
    return folder


@pytest.fixture()
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "lambda-ran"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


@pytest.mark.parametrize(
    "where,name", [("k3", "lambda.keras"), ("k3", "lambda.h5"), ("k2", "k2_lambda.h5")]
)
def test_lambda_refused_without_unsafe_and_its_code_never_runs(lambda_files, marker, where, name):
    path = (lambda_files if where == "k3" else DATA) / name
    assert check_model_path(path) == path  # the file itself is fine
    assert _load_error(path) == LAMBDA_REFUSED.format(p=path)
    assert not marker.exists()
    loaded = load_model(path, unsafe=True)
    np.testing.assert_array_equal(
        _call(loaded.model, np.ones((2, 3), "float32")), np.full((2, 3), 2.0)
    )
    assert (
        marker.exists()
    )  # the same file's code does run once allowed: the check above means something


# ----------------------------------------------------------- custom objects
LAYER_SOURCE = '''
import keras

class Triple(keras.layers.Layer):
    """Multiplies by three; not registered with Keras."""

    def call(self, x):
        return x * 3.0
'''


@pytest.fixture(scope="session")
def custom_files(tmp_path_factory, keras):
    """A model with a custom layer whose module Keras cannot import later.

    The class is defined by importing the source under a module name that is
    then forgotten, as if the model had been saved by someone else's code.
    """
    folder = tmp_path_factory.mktemp("custom_models")
    src = folder / "saved_by_elsewhere.py"
    src.write_text(LAYER_SOURCE)
    name = "bngap_test_gone_module"
    spec = importlib.util.spec_from_file_location(name, src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        m = keras.Sequential([keras.Input((3,)), module.Triple(name="triple")], name="custom")
        m.save(folder / "custom.keras")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.save(folder / "custom.h5")
    finally:
        del sys.modules[name]
    src.unlink()
    # What a user hands to --custom-objects: the class under its own name ...
    (folder / "triple_layers.py").write_text(LAYER_SOURCE)
    # ... or under any name, mapped explicitly by a `custom_objects` dict.
    (folder / "triple_mapped.py").write_text(
        LAYER_SOURCE.replace("class Triple", "class _TripleImpl")
        + "\ndef helper():\n    return 1\n\ncustom_objects = {'Triple': _TripleImpl}\n"
    )
    return folder


CUSTOM_REFUSED = (
    "{p} uses the custom class or function 'Triple', which is not registered; "
    "pass --custom-objects FILE.py with its definition"
)


@pytest.mark.parametrize(
    "name",
    [
        "custom.keras",
        "custom.h5",  # the legacy loader says "Unknown layer: 'Triple'"
    ],
)
def test_custom_layer_without_its_file_names_the_option(custom_files, name):
    path = custom_files / name
    msg = _load_error(path)
    assert "--custom-objects" in msg, msg
    assert msg == CUSTOM_REFUSED.format(p=path)


@pytest.mark.parametrize("name", ["custom.keras", "custom.h5"])
@pytest.mark.parametrize("plugin", ["triple_layers.py", "triple_mapped.py"])
def test_custom_layer_loads_with_its_file(custom_files, name, plugin):
    loaded = load_model(custom_files / name, custom_objects_file=custom_files / plugin)
    np.testing.assert_array_equal(
        _call(loaded.model, np.ones((1, 3), "float32")), np.full((1, 3), 3.0)
    )


def test_custom_objects_dict_is_taken_as_is(custom_files):
    from bngap.loading import load_custom_objects

    assert list(load_custom_objects(custom_files / "triple_mapped.py")) == ["Triple"]
    # Without a dict: the file's own top-level classes and functions, not its imports.
    assert list(load_custom_objects(custom_files / "triple_layers.py")) == ["Triple"]


def test_custom_objects_file_errors(tmp_path, k3_files):
    model = k3_files / "model.keras"
    assert _load_error(model, custom_objects_file=tmp_path / "nope.py") == (
        f"--custom-objects file not found: {tmp_path / 'nope.py'}"
    )
    txt = tmp_path / "layers.txt"
    txt.write_text("x = 1\n")
    assert _load_error(model, custom_objects_file=txt) == (
        f"--custom-objects must be a Python file (.py). Received: {txt}"
    )
    bad = tmp_path / "broken.py"
    bad.write_text("import keras\nraise RuntimeError('cannot build the layers here')\n")
    assert _load_error(model, custom_objects_file=bad) == (
        f"error while running --custom-objects file {bad}: RuntimeError: cannot build the layers here"
    )


# ---------------------------------------------------------- not a model file
@pytest.fixture(scope="session")
def savedmodel_dir(tmp_path_factory, keras):
    import tensorflow as tf

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return x * 2.0

    path = tmp_path_factory.mktemp("savedmodel") / "exported"
    tf.saved_model.save(Doubler(), str(path))
    return path


def test_savedmodel_directory(savedmodel_dir):
    msg = (
        f"{savedmodel_dir} is a TensorFlow SavedModel directory; Keras 3 can only wrap it as an "
        "opaque TFSMLayer, which hides the layers bngap must inspect. Re-save the model from the "
        "code that built it with model.save('model.keras'), or load it with tf-keras "
        "(TF_USE_LEGACY_KERAS=1) and save it as 'model.h5'"
    )
    assert _check_error(savedmodel_dir) == msg
    assert _load_error(savedmodel_dir) == msg
    # Pointing at the .pb inside it is an unknown extension.
    assert _load_error(savedmodel_dir / "saved_model.pb") == UNSUPPORTED.format(ext=".pb")


def _zip_without_config(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("notes.txt", "a zip archive, but not a Keras model")


def _bad_json_keras(src: Path, p: Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, b"{not json" if n == "config.json" else zin.read(n))


# (case, file name, how to make it from (path, k3 folder), expected message; {p} is the path)
BAD_FILES = [
    ("missing", "nope.keras", None, "model file not found: {p}"),
    (
        "directory",
        "folder.keras",
        lambda p, k3: p.mkdir(),
        "{p} is a directory; expected a .keras or .h5 model file",
    ),
    (
        "random bytes",
        "random.keras",
        lambda p, k3: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "{p} is not a valid .keras file: not a zip archive (truncated or corrupted?)",
    ),
    (
        "first half of a .keras",
        "half.keras",
        lambda p, k3: p.write_bytes(
            (k3 / "model.keras").read_bytes()[: (k3 / "model.keras").stat().st_size // 2]
        ),
        "{p} is not a valid .keras file: not a zip archive (truncated or corrupted?)",
    ),
    (
        "zip, not keras",
        "other.keras",
        lambda p, k3: _zip_without_config(p),
        "{p} is a zip archive but not a Keras model (it has no config.json)",
    ),
    ("empty .keras", "empty.keras", lambda p, k3: p.touch(), "model file {p} is empty (0 bytes)"),
    ("empty .h5", "empty.h5", lambda p, k3: p.touch(), "model file {p} is empty (0 bytes)"),
    (
        "text as .h5",
        "text.h5",
        lambda p, k3: p.write_text("definitely not HDF5"),
        "{p} is not a valid HDF5 file (wrong signature; truncated, corrupted, or not a Keras .h5 model)",
    ),
    (
        "weights only",
        "model.weights.h5",
        lambda p, k3: p.write_bytes((k3 / "model.weights.h5").read_bytes()),
        "{p} holds weights only (no model architecture); save the whole model with model.save('model.keras')",
    ),
    (
        ".pt",
        "model.pt",
        lambda p, k3: p.write_bytes(b"PK\x03\x04torch"),
        UNSUPPORTED.format(ext=".pt"),
    ),
    (
        ".onnx",
        "model.onnx",
        lambda p, k3: p.write_bytes(b"\x08\x07"),
        UNSUPPORTED.format(ext=".onnx"),
    ),
    (".pb", "model.pb", lambda p, k3: p.write_bytes(b"\x08\x01"), UNSUPPORTED.format(ext=".pb")),
    (
        "no extension",
        "model",
        lambda p, k3: p.write_bytes(b"\x08\x01"),
        UNSUPPORTED.format(ext="model"),
    ),
]


@pytest.mark.parametrize("case,name,make,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_specific_line(tmp_path, k3_files, case, name, make, message):
    p = tmp_path / name
    if make is not None:
        make(p, k3_files)
    expected = message.format(p=p)
    assert _check_error(p) == expected  # caught by the file checks, before TensorFlow
    assert _load_error(p) == expected


def test_truncated_h5_passes_the_file_checks_then_fails_in_one_line(tmp_path, k3_files):
    whole = (k3_files / "model.h5").read_bytes()
    p = tmp_path / "truncated.h5"
    p.write_bytes(whole[: len(whole) // 2])
    assert check_model_path(p) == p  # the HDF5 signature is intact
    msg = _load_error(p)
    assert msg.startswith(f"{p} cannot be read as HDF5 (truncated or corrupted?): ")
    assert "truncated file" in msg and "\n" not in msg


def test_weights_file_without_the_weights_name(tmp_path, k3_files):
    p = tmp_path / "weights_renamed.h5"
    p.write_bytes((k3_files / "model.weights.h5").read_bytes())
    assert _load_error(p) == (
        f"{p} holds no model config: a weights-only file, or not a Keras "
        "model at all; save the whole model with model.save('model.keras')"
    )


def test_keras_file_with_broken_config(tmp_path, k3_files):
    p = tmp_path / "badconfig.keras"
    _bad_json_keras(k3_files / "model.keras", p)
    assert check_model_path(p) == p
    assert _load_error(p).startswith(f"cannot load {p}: JSONDecodeError: ")


def test_damaged_member_inside_a_keras_zip(tmp_path, k3_files):
    p = tmp_path / "damaged.keras"
    with (
        zipfile.ZipFile(k3_files / "model.keras") as zin,
        zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zout,
    ):
        for n in zin.namelist():
            zout.writestr(n, zin.read(n))
    raw = bytearray(p.read_bytes())
    start = raw.find(b"\x89HDF")  # inside the stored model.weights.h5 member
    raw[start + 100 : start + 140] = bytes(b ^ 0xFF for b in raw[start + 100 : start + 140])
    p.write_bytes(bytes(raw))
    assert _check_error(p) == f"{p} is corrupted: zip member 'model.weights.h5' fails its checksum"


def test_unreadable_file(tmp_path, k3_files):
    p = tmp_path / "locked.keras"
    p.write_bytes((k3_files / "model.keras").read_bytes())
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("file permissions are not enforced for this user (root)")
        assert _check_error(p) == f"cannot read model file {p}: permission denied"
        assert _load_error(p) == f"cannot read model file {p}: permission denied"
    finally:
        p.chmod(0o600)


# ------------------------------------------------------------ bugs found here
@pytest.mark.parametrize("src,upper", [("k2", "MODEL.H5"), ("k3", "MODEL.KERAS")])
def test_upper_case_extension(tmp_path, k3_files, src, upper):
    origin = DATA / "k2_sequential_bn.h5" if src == "k2" else k3_files / "model.keras"
    p = tmp_path / upper
    p.write_bytes(origin.read_bytes())
    try:
        loaded = load_model(p)
    except ModelLoadError as e:  # refusing is fine too, if it says what to do
        assert "File format not supported" not in str(e)
        assert p.stem + p.suffix.lower() in str(e), str(e)
    else:
        assert _run(loaded).shape[0] == 2


def test_keras22_sequential_layer_list_layout(tmp_path):
    import json

    import h5py

    p = tmp_path / "k22_sequential.h5"
    p.write_bytes((DATA / "k2_no_input_layer.h5").read_bytes())
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"] = cfg["config"]["layers"]  # the layout of Keras <= 2.2
        f.attrs["model_config"] = json.dumps(cfg)
    loaded = load_model(p)
    assert _run(loaded).shape == (2, 1)


def test_tf_op_layer_fed_anything_but_layer_outputs_is_refused_in_safe_mode(tmp_path, keras):
    """A dict node could hand the function any object (e.g. a config that old
    Keras would deserialise, Lambda code included): Keras 2 never writes one."""
    import json
    import shutil

    import h5py

    p = tmp_path / "odd_node.h5"
    shutil.copyfile(DATA / "k2_functional_bn.h5", p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"].append(
            {
                "class_name": "TFOpLambda",
                "name": "odd",
                "config": {"name": "odd", "dtype": "float32", "function": "math.multiply"},
                "inbound_nodes": [
                    {"args": [{"cell": {"class_name": "Sequential", "config": {}}}], "kwargs": {}}
                ],
            }
        )
        f.attrs["model_config"] = json.dumps(cfg)
    assert _load_error(p) == (
        f"{p}: layer 'odd': a TF-op layer whose inputs are not references to other layers, which safe "
        "mode does not run; pass --unsafe if you trust the file"
    )


def test_keras2_batchnorm_over_several_axes_is_explained(tmp_path):
    import json
    import shutil

    import h5py

    p = tmp_path / "multi_axis.h5"
    shutil.copyfile(DATA / "k2_sequential_bn.h5", p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["axis"] = [1, 3]
        f.attrs["model_config"] = json.dumps(cfg)
    assert _load_error(p) == (
        f"{p}: layer 'bn' is a BatchNormalization over several axes [1, 3], which "
        "Keras 2 allowed and Keras 3 does not; bngap cannot run it"
    )


def test_keras3_h5_with_nested_models_called_twice_is_left_as_it_is(tmp_path, keras):
    """Keras 3's own .h5 numbers nested calls as Keras 3 reads them: renumbering
    them as for a Keras 2 file would silently wire the wrong calls."""
    L = keras.layers
    fi = keras.Input((3,))
    functional = keras.Model(fi, L.BatchNormalization()(L.Dense(4)(fi)), name="functional")
    tower = keras.Sequential([keras.Input((3,)), L.Dense(4), L.BatchNormalization()], name="tower")
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], L.Concatenate()([functional(a), functional(b), tower(a), tower(b)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "k3_nested.h5")
    rng = np.random.default_rng(0)
    x = [rng.normal(0, 1, (4, 3)).astype("float32"), rng.normal(5, 1, (4, 3)).astype("float32")]
    loaded = load_model(tmp_path / "k3_nested.h5")
    np.testing.assert_array_equal(_call(loaded.model, x), _call(model, x))
    assert loaded.notes == []


# --------------------------------------------- merged from test_load_model.py
REGISTERED_LAYER = """
import keras

@keras.saving.register_keras_serializable(package="userpkg")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kw):
        super().__init__(**kw)
        self.factor = factor
    def call(self, x):
        return x * self.factor
    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_registered_custom_layer_needs_its_file(tmp_path, keras):
    """A class registered under a package ('userpkg>Scale') is named and found
    like an unregistered one."""
    import subprocess

    # Saved from another process, so that the class is not registered here.
    (tmp_path / "userlayers.py").write_text(REGISTERED_LAYER)
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import keras, userlayers;"
        "m = keras.Sequential([keras.Input((3,)), userlayers.Scale(3.0, name='scale')]);"
        f"m.save({str(tmp_path / 'custom.keras')!r})"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    msg = _load_error(tmp_path / "custom.keras")
    assert "custom class or function" in msg and "--custom-objects" in msg, msg
    model = load_model(
        tmp_path / "custom.keras", custom_objects_file=tmp_path / "userlayers.py"
    ).model
    np.testing.assert_array_equal(_call(model, np.ones((1, 3), "float32")), np.full((1, 3), 3.0))


def test_a_pickle_is_not_a_model_file(tmp_path):
    import pickle

    p = tmp_path / "model.pkl"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert _check_error(p) == UNSUPPORTED.format(ext=".pkl")
    assert _load_error(p) == UNSUPPORTED.format(ext=".pkl")
