"""Model loading: Keras 3 and Keras 2 files, safe mode, custom objects, and a
specific one-line error for everything else."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bngap.errors import ModelLoadError
from bngap.loading import check_model_path, load_model

DATA = Path(__file__).parent / "data"


def _runs(model):
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    return np.asarray(model(np.zeros(shape, "float32"), training=False))


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory, keras):
    L = keras.layers
    folder = tmp_path_factory.mktemp("k3")
    m = keras.Sequential([keras.Input((6,)), L.Dense(4), L.BatchNormalization(), L.Dense(2)], name="k3")
    m(np.ones((2, 6), "float32"))
    m.save(folder / "model.keras")
    m.save(folder / "model.h5")
    return folder


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_keras3_files_load_and_run(keras3_files, name):
    loaded = load_model(keras3_files / name)
    assert _runs(loaded.model).shape == (2, 2)
    assert loaded.inputs[0].shape == (None, 6)


@pytest.mark.parametrize("name,out,note", [
    ("k2_sequential_bn.h5", (2, 3), None),
    ("k2_functional_bn.h5", (2, 2), None),
    ("k2_lstm.h5", (2, 2), "dropped Keras 2 argument 'time_major'"),
    ("k2_no_input_layer.h5", (2, 1), "declared the Sequential's input (None, 5) explicitly"),
])
def test_keras2_files_load_and_run(name, out, note):
    loaded = load_model(DATA / name)
    assert _runs(loaded.model).shape == out
    if note:
        assert any(note in n for n in loaded.notes), loaded.notes
    else:
        assert loaded.notes == []


def test_keras2_file_statistics_survive(keras):
    """The trained BN statistics of the Keras 2 file are what Keras 3 uses."""
    import h5py

    bn = load_model(DATA / "k2_sequential_bn.h5").model.get_layer("bn")
    with h5py.File(DATA / "k2_sequential_bn.h5") as fh:
        group = fh["model_weights"]["bn"]["bn"]
        stored = np.asarray(group["moving_mean:0"])
    np.testing.assert_array_equal(bn.moving_mean.numpy(), stored)
    assert not np.all(stored == 0)  # one epoch moved them


def test_keras2_keras_format_gets_a_conversion_recipe():
    with pytest.raises(ModelLoadError) as e:
        load_model(DATA / "k2_sequential.keras")
    assert "written by Keras 2.21.0" in str(e.value) and "save('model.h5')" in str(e.value)


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory, keras):
    """Lambda models whose function, if ever run, writes a marker file."""
    folder = tmp_path_factory.mktemp("lambda")
    marker = folder / "executed"
    marker_path = str(marker)
    L = keras.layers
    inp = keras.Input((3,))
    out = L.Lambda(lambda t: (open(marker_path, "w").close(), t * 2)[1], name="double")(inp)
    m = keras.Model(inp, out)
    marker.unlink()  # building the model ran it once
    m.save(folder / "lambda.keras")
    m.save(folder / "lambda.h5")
    assert not marker.exists()
    return folder, marker


@pytest.mark.parametrize("name", ["lambda.keras", "lambda.h5"])
def test_lambda_refused_without_unsafe_and_never_run(lambda_files, name):
    folder, marker = lambda_files
    with pytest.raises(ModelLoadError) as e:
        load_model(folder / name)
    assert "--unsafe" in str(e.value) and "Lambda" in str(e.value)
    assert not marker.exists()
    model = load_model(folder / name, unsafe=True).model
    model(np.ones((1, 3), "float32"))
    assert marker.exists()  # with --unsafe the user's code does run
    marker.unlink()


def test_keras2_lambda_refused():
    with pytest.raises(ModelLoadError, match="--unsafe"):
        load_model(DATA / "k2_lambda.h5")
    assert load_model(DATA / "k2_lambda.h5", unsafe=True).model is not None


CUSTOM = '''
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
'''


def test_custom_layer_needs_its_file(tmp_path, keras):
    import subprocess
    import sys

    # Save the model from another process, so the class is not registered here.
    (tmp_path / "userlayers.py").write_text(CUSTOM)
    script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import keras, userlayers;"
              "m = keras.Sequential([keras.Input((3,)), userlayers.Scale(3.0, name='scale')]);"
              f"m.save({str(tmp_path / 'custom.keras')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "custom.keras")
    assert "custom class or function" in str(e.value) and "--custom-objects" in str(e.value)
    model = load_model(tmp_path / "custom.keras", custom_objects_file=tmp_path / "userlayers.py").model
    assert float(model(np.ones((1, 3), "float32"))[0, 0]) == 3.0


def test_custom_objects_dict_is_used(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import keras\nclass Thing(keras.layers.Layer):\n    pass\n"
                      "custom_objects = {'SomethingElse': Thing}\n")
    from bngap.loading import load_custom_objects

    objs = load_custom_objects(plugin)
    assert list(objs) == ["SomethingElse"]


# ------------------------------------------------------- bad model files
def _msg(path):
    with pytest.raises(ModelLoadError) as e:
        check_model_path(path)
    return str(e.value)


def test_missing_file(tmp_path):
    assert _msg(tmp_path / "nope.keras") == f"model file not found: {tmp_path / 'nope.keras'}"


def test_directory_and_savedmodel(tmp_path):
    assert _msg(tmp_path) == f"{tmp_path} is a directory; expected a .keras or .h5 model file"
    sm = tmp_path / "saved"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    msg = _msg(sm)
    assert msg.startswith(f"{sm} is a TensorFlow SavedModel directory")
    assert "model.save('model.keras')" in msg


def test_real_savedmodel_is_explained(tmp_path, keras):
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return x * 2

    tf.saved_model.save(Module(), str(tmp_path / "sm"))
    assert "SavedModel directory" in _msg(tmp_path / "sm")


@pytest.mark.parametrize("ext", [".pt", ".onnx", ".pb", ".pkl", ""])
def test_unsupported_extensions(tmp_path, ext):
    p = tmp_path / f"model{ext}"
    p.write_bytes(b"x" * 10)
    msg = _msg(p)
    assert msg.startswith("unsupported model format") and ".keras" in msg and ".h5" in msg


def test_weights_only_file(tmp_path):
    p = tmp_path / "model.weights.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 100)
    assert "holds weights only" in _msg(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.keras"
    p.touch()
    assert _msg(p) == f"model file {p} is empty (0 bytes)"


def test_corrupt_and_truncated_keras(tmp_path, keras3_files):
    p = tmp_path / "random.keras"
    p.write_bytes(os.urandom(4096))
    assert "not a valid .keras file: not a zip archive" in _msg(p)
    whole = (keras3_files / "model.keras").read_bytes()
    t = tmp_path / "truncated.keras"
    t.write_bytes(whole[: len(whole) // 2])
    assert "not a valid .keras file" in _msg(t)
    z = tmp_path / "other.keras"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert _msg(z) == f"{z} is a zip archive but not a Keras model (it has no config.json)"


def test_corrupt_zip_member(tmp_path, keras3_files):
    """A .keras whose weights member is damaged inside an intact archive."""
    src = keras3_files / "model.keras"
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    raw = bytearray(bad.read_bytes())
    pos = raw.find(b"\x89HDF")
    for i in range(pos + 200, pos + 260):
        raw[i] ^= 0xFF
    bad.write_bytes(bytes(raw))
    assert "fails its checksum" in _msg(bad)


def test_truncated_and_fake_h5(tmp_path, keras3_files):
    whole = (keras3_files / "model.h5").read_bytes()
    t = tmp_path / "truncated.h5"
    t.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ModelLoadError) as e:
        load_model(t)
    assert "cannot be read as HDF5" in str(e.value) or "cannot load" in str(e.value)
    f = tmp_path / "fake.h5"
    f.write_text("not hdf5 at all")
    assert "not a valid HDF5 file" in _msg(f)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, keras3_files):
    p = tmp_path / "locked.keras"
    shutil.copy(keras3_files / "model.keras", p)
    p.chmod(0)
    assert _msg(p) == f"cannot read model file {p}: permission denied"
