"""Data loading: keys, shapes, dtypes and values checked against the
model's inputs before any forward pass; never unpickled. No TensorFlow."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bngap.data import from_arrays, load_data
from bngap.errors import DataError
from bngap.loading import InputSpec

IMG = [InputSpec("image", (None, 4, 4, 3), "float32")]
TWO = [InputSpec("pixels", (None, 4, 4, 3), "float32"), InputSpec("meta", (None, 2), "float32")]
INT = [InputSpec("tokens", (None, 5), "int32")]


def _npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _err(*args, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_data(*args, **kw)
    return str(e.value)


def test_npz_with_inputs_and_labels(tmp_path):
    x = np.random.rand(10, 4, 4, 3).astype("float32")
    ds = load_data(_npz(tmp_path, x=x, y=np.arange(10)), IMG)
    assert len(ds) == 10 and ds.y.tolist() == list(range(10))
    np.testing.assert_array_equal(ds.x[0], x)


def test_keys_chosen_by_flag(tmp_path):
    p = _npz(tmp_path, images=np.zeros((3, 4, 4, 3)), labels=np.arange(3))
    ds = load_data(p, IMG, x_key="images", y_key="labels")
    assert ds.y.tolist() == [0, 1, 2]
    assert _err(p, IMG, x_key="nope") == (f"{p} has no key 'nope' for the inputs. Found keys: images, "
                                         "labels; choose one with --x-key")
    assert _err(p, IMG, x_key="images", y_key="nope") == f"{p} has no key 'nope' for the labels. Found keys: images, labels"


def test_missing_x_key_lists_keys(tmp_path):
    p = _npz(tmp_path, a=np.zeros((3, 4, 4, 3)), b=np.zeros(3))
    assert _err(p, IMG) == f"{p} has no key 'x' for the inputs. Found keys: a, b; choose one with --x-key"


def test_single_key_is_taken(tmp_path):
    ds = load_data(_npz(tmp_path, images=np.zeros((3, 4, 4, 3), "float32")), IMG)
    assert "inputs read from the only key 'images'" in ds.notes


def test_pickled_arrays_are_refused(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = {"a": 1}, [1, 2]
    p = tmp_path / "obj.npz"
    np.savez(p, x=obj)
    msg = _err(p, IMG)
    assert msg.startswith(f"{p} under key 'x' holds a pickled Python object array; bngap never unpickles")
    q = tmp_path / "obj.npy"
    np.save(q, obj, allow_pickle=True)
    assert _err(q, IMG).startswith(f"{q} holds a pickled Python object array")


def test_pickle_file_with_npz_name_is_refused(tmp_path):
    p = tmp_path / "evil.npz"
    p.write_bytes(pickle.dumps({"x": 1}))
    assert _err(p, IMG) == (f"{p} is not an .npz archive of arrays but a pickle; bngap never "
                            "unpickles data (unpickling can run arbitrary code)")


def test_wrong_rank_with_hint(tmp_path):
    p = _npz(tmp_path, x=np.zeros((5, 4, 4), "float32"))
    spec = [InputSpec("gray", (None, 4, 4, 1), "float32")]
    assert _err(p, spec) == ("the input array has rank 3 but the model expects rank 4: expected shape "
                             "(None, 4, 4, 1), received (5, 4, 4) (add a channel axis: x[..., None])")


def test_wrong_shape(tmp_path):
    p = _npz(tmp_path, x=np.zeros((5, 4, 5, 3), "float32"))
    assert _err(p, IMG) == ("the input array does not fit the model: expected shape (None, 4, 4, 3), "
                            "received (5, 4, 5, 3) (axis 2: 5 != 4)")


def test_nan_and_inf_are_counted(tmp_path):
    x = np.zeros((6, 4, 4, 3), "float32")
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 0, 0] = np.nan
    x[3, 0, 0, 0] = np.inf
    assert _err(_npz(tmp_path, x=x), IMG) == ("the input array contains 2 NaN and 1 infinite values (in 2 of "
                                              "6 samples); bngap needs finite inputs")


def test_zero_samples(tmp_path):
    assert _err(_npz(tmp_path, x=np.zeros((0, 4, 4, 3))), IMG) == "the input array has 0 samples"


def test_mismatched_labels(tmp_path):
    p = _npz(tmp_path, x=np.zeros((6, 4, 4, 3)), y=np.zeros(5))
    assert _err(p, IMG) == "inputs have 6 samples but the labels have 5; they must match"


def test_integer_images_become_float(tmp_path):
    ds = load_data(_npz(tmp_path, x=np.full((2, 4, 4, 3), 7, "uint8")), IMG)
    assert ds.x[0].dtype == np.float32 and ds.x[0].max() == 7.0
    assert "the input array: integer values (uint8) cast to float32" in ds.notes


def test_int_input_models_take_whole_numbers(tmp_path):
    ds = load_data(_npz(tmp_path, x=np.array([[1.0, 2, 3, 4, 5]] * 2)), INT)
    assert ds.x[0].dtype == np.int32
    msg = _err(_npz(tmp_path, "f.npz", x=np.full((2, 5), 0.5)), INT)
    assert msg == "the input array holds fractional values but the model expects integers (int32). Received: dtype=float64"


def test_strings_are_refused(tmp_path):
    assert _err(_npz(tmp_path, x=np.array([["a"] * 5] * 2)), INT).endswith("must be numeric. Received: dtype=<U1")


def test_limit(tmp_path):
    p = _npz(tmp_path, x=np.random.rand(10, 4, 4, 3), y=np.arange(10))
    ds = load_data(p, IMG, limit=4)
    assert len(ds) == 4 and ds.y.tolist() == [0, 1, 2, 3]
    assert "used the first 4 of 10 samples (--limit)" in ds.notes
    assert _err(p, IMG, limit=0) == "--limit must be at least 1. Received: 0"


def test_multi_input_by_name(tmp_path):
    p = _npz(tmp_path, pixels=np.zeros((3, 4, 4, 3)), meta=np.zeros((3, 2)), y=np.arange(3))
    ds = load_data(p, TWO)
    assert [a.shape for a in ds.x] == [(3, 4, 4, 3), (3, 2)] and ds.names == ["pixels", "meta"]
    q = _npz(tmp_path, "q.npz", x=np.zeros((3, 4, 4, 3)))
    assert _err(q, TWO) == (f"the model has 2 inputs; {q} must hold one array per input, named after "
                            "them: pixels, meta. Missing: pixels, meta. Found keys: x")
    r = _npz(tmp_path, "r.npz", pixels=np.zeros((3, 4, 4, 3)), meta=np.zeros((2, 2)))
    assert _err(r, TWO) == "the model's inputs have different sample counts: 3 and 2 ('pixels' vs 'meta')"


def test_npy_is_memory_mapped_and_batched(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.arange(10 * 48, dtype="float32").reshape(10, 4, 4, 3))
    ds = load_data(p, IMG)
    assert isinstance(ds.x[0], np.memmap)
    sizes = [len(xs[0]) for xs, _ in ds.batches(4)]
    assert sizes == [4, 4, 2]
    first = next(ds.batches(4))[0][0]
    assert not isinstance(first, np.memmap) and first.flags["C_CONTIGUOUS"]


def test_unsupported_and_broken_files(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("1,2,3")
    assert _err(p, IMG).startswith("unsupported data format '.csv'")
    q = tmp_path / "broken.npz"
    q.write_bytes(b"PK\x03\x04" + b"\x00" * 30)
    assert _err(q, IMG).startswith(f"cannot read {q} as .npz")
    e = tmp_path / "empty.npz"
    e.touch()
    assert _err(e, IMG) == f"data file {e} is empty (0 bytes)"
    assert _err(tmp_path / "none.npz", IMG) == f"data file not found: {tmp_path / 'none.npz'}"
    t = tmp_path / "trunc.npy"
    np.save(t, np.zeros((100, 4, 4, 3), "float32"))
    t.write_bytes(t.read_bytes()[:500])
    assert _err(t, IMG).startswith(f"cannot read {t} as .npy")


def test_from_arrays_dict_and_list():
    ds = from_arrays({"pixels": np.zeros((2, 4, 4, 3)), "meta": np.zeros((2, 2))}, specs=TWO)
    assert ds.names == ["pixels", "meta"]
    with pytest.raises(DataError, match="inputs missing for: meta"):
        from_arrays({"pixels": np.zeros((2, 4, 4, 3))}, specs=TWO)
    ds = from_arrays([np.zeros((2, 4, 4, 3)), np.zeros((2, 2))], specs=TWO)
    assert len(ds) == 2
