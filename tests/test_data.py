"""Data reading and validation through `bngap.data`, against hand-made
`InputSpec`s: keys, shapes, dtypes and values are checked before any forward
pass, pickles are refused without being unpickled, and .npy files stay
memory-mapped until batches are taken. Plain numpy: no TensorFlow here."""

from __future__ import annotations

import os
import pathlib
import pickle
import sys

import numpy as np
import pytest

from bngap.data import Dataset, from_arrays, load_data, read_arrays, validate
from bngap.errors import DataError
from bngap.specs import InputSpec

IMG = [InputSpec("image", (None, 4, 4, 3), "float32")]
GRAY = [InputSpec("gray", (None, 4, 4, 1), "float32")]
TOKENS = [InputSpec("tokens", (None, 5), "int32")]
TWO = [InputSpec("pixels", (None, 4, 4, 3), "float32"), InputSpec("meta", (None, 2), "float32")]
SAVE_EXAMPLE = "Save plain numeric arrays, e.g. np.savez('data.npz', x=x.astype('float32'), y=y)"


def _npz(folder, name="data.npz", **arrays):
    p = folder / name
    np.savez(p, **arrays)
    return p


def _err(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _images(n=10, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 4, 4, 3)).astype("float32")


def test_reading_data_does_not_import_tensorflow(tmp_path):
    import subprocess

    p = _npz(tmp_path, x=_images(2))
    code = (
        "import sys; from bngap.data import load_data; from bngap.specs import InputSpec; "
        f"load_data({str(p)!r}, [InputSpec('image', (None, 4, 4, 3), 'float32')]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- npz keys
def test_npz_with_x_and_y(tmp_path):
    x, y = _images(), np.arange(10)
    ds = load_data(_npz(tmp_path, x=x, y=y), IMG)
    assert isinstance(ds, Dataset) and len(ds) == 10 and ds.names == ["image"]
    np.testing.assert_array_equal(ds.x[0], x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.shapes == [(10, 4, 4, 3)] and ds.notes == []


def test_npz_without_y_has_no_labels(tmp_path):
    ds = load_data(_npz(tmp_path, x=_images()), IMG)
    assert ds.y is None


def test_missing_x_lists_the_keys_and_the_option(tmp_path):
    p = _npz(tmp_path, images=_images(), labels=np.arange(10))
    assert _err(load_data, p, IMG) == (
        f"{p} has no key 'x' for the inputs. Found keys: images, labels; choose one with --x-key"
    )


def test_x_key_and_y_key(tmp_path):
    x = _images()
    p = _npz(tmp_path, images=x, labels=np.arange(10), y=np.zeros(10))
    ds = load_data(p, IMG, x_key="images", y_key="labels")
    np.testing.assert_array_equal(ds.x[0], x)
    assert ds.y.tolist() == list(range(10))  # --y-key wins over the default 'y'
    assert _err(load_data, p, IMG, x_key="pics") == (
        f"{p} has no key 'pics' for the inputs. Found keys: images, labels, y; choose one with --x-key"
    )
    assert _err(load_data, p, IMG, x_key="images", y_key="targets") == (
        f"{p} has no key 'targets' for the labels. Found keys: images, labels, y"
    )


def test_read_arrays_returns_raw_arrays_and_names(tmp_path):
    x = np.arange(2 * 48, dtype="uint8").reshape(2, 4, 4, 3)
    xs, y, names, notes = read_arrays(_npz(tmp_path, x=x), specs=IMG)
    assert xs[0].dtype == np.uint8 and y is None and names == ["image"] and notes == []


# ------------------------------------------------------------------ pickles
class _Touch:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _object_array(marker):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _Touch(marker), "text"
    return arr


def test_the_pickle_payload_works(tmp_path):
    """The refusals below mean something: unpickling does create the marker."""
    marker = tmp_path / "unpickled"
    p = tmp_path / "obj.npy"
    np.save(p, _object_array(marker), allow_pickle=True)
    assert not marker.exists()
    np.load(p, allow_pickle=True)
    assert marker.exists()


def test_pickled_object_array_in_npz_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    p = tmp_path / "obj.npz"
    np.savez(p, x=_object_array(marker))
    assert _err(load_data, p, IMG) == (
        f"{p} under key 'x' holds a pickled Python object array; bngap never unpickles data "
        f"(unpickling can run arbitrary code). {SAVE_EXAMPLE}"
    )
    q = tmp_path / "obj_labels.npz"
    np.savez(q, x=_images(2), y=_object_array(marker))
    assert _err(load_data, q, IMG).startswith(
        f"{q} under key 'y' holds a pickled Python object array"
    )
    assert not marker.exists()


def test_pickled_npy_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    p = tmp_path / "obj.npy"
    np.save(p, _object_array(marker), allow_pickle=True)
    assert _err(load_data, p, IMG) == (
        f"{p} holds a pickled Python object array; bngap never unpickles data "
        f"(unpickling can run arbitrary code). {SAVE_EXAMPLE}"
    )
    assert not marker.exists()


@pytest.mark.parametrize("ext", [".npz", ".npy"])
def test_plain_pickle_file_is_refused_unread(tmp_path, ext):
    marker = tmp_path / "unpickled"
    p = tmp_path / f"data{ext}"
    p.write_bytes(pickle.dumps({"x": _Touch(marker)}))
    msg = _err(load_data, p, IMG)
    assert msg.startswith(
        f"{p} holds a pickled"
        if ext == ".npy"
        else f"{p} is not an .npz archive of arrays but a pickle"
    )
    assert not marker.exists()


def test_unused_pickled_member_is_never_touched(tmp_path):
    """Only the arrays asked for are read: a pickled extra key is left alone."""
    marker = tmp_path / "unpickled"
    p = tmp_path / "extra.npz"
    np.savez(p, x=_images(3), y=np.arange(3), meta=_object_array(marker))
    assert len(load_data(p, IMG)) == 3
    assert not marker.exists()


@pytest.mark.parametrize(
    "what,arr",
    [
        ("object", np.array([[1.0, "a", None, 2, 3]] * 2, dtype=object)),
        ("strings", np.array([["a"] * 5] * 2)),
        ("complex", np.zeros((2, 5), "complex64")),
    ],
)
def test_non_numeric_arrays_are_refused(what, arr):
    """In memory (the Python API), nothing is pickled: refused as not numeric."""
    assert _err(from_arrays, arr, specs=TOKENS).startswith(
        f"the input array must be numeric. Received: dtype={arr.dtype}"
    )


def test_non_numeric_labels(tmp_path):
    p = _npz(tmp_path, x=_images(2), y=np.array(["cat", "dog"]))
    assert _err(load_data, p, IMG) == "labels must be numeric. Received: dtype=<U3"


# ------------------------------------------------------------------ shapes
def test_sample_counts_of_x_and_y(tmp_path):
    p = _npz(tmp_path, x=_images(6), y=np.zeros(5))
    assert _err(load_data, p, IMG) == "inputs have 6 samples but the labels have 5; they must match"
    q = _npz(tmp_path, "scalar_y.npz", x=_images(6), y=np.float32(1))
    assert (
        _err(load_data, q, IMG)
        == "inputs have 6 samples but the labels have none (a scalar); they must match"
    )


def test_wrong_rank_with_channel_hint(tmp_path):
    p = _npz(tmp_path, x=np.zeros((5, 4, 4), "float32"))
    assert _err(load_data, p, GRAY) == (
        "the input array has rank 3 but the model expects rank 4: expected shape (None, 4, 4, 1), "
        "received (5, 4, 4) (add a channel axis: x[..., None])"
    )
    # x[..., None] is the fix the hint suggests
    assert load_data(
        _npz(tmp_path, "fixed.npz", x=np.zeros((5, 4, 4, 1), "float32")), GRAY
    ).shapes == [(5, 4, 4, 1)]


def test_wrong_rank_without_hint(tmp_path):
    p = _npz(tmp_path, x=np.zeros((5, 48), "float32"))
    assert _err(load_data, p, IMG) == (
        "the input array has rank 2 but the model expects rank 4: expected shape (None, 4, 4, 3), "
        "received (5, 48)"
    )
    assert _err(from_arrays, np.zeros(5, "float32"), specs=TOKENS) == (
        "the input array has rank 1 but the model expects rank 2: expected shape (None, 5), received (5,)"
    )


def test_wrong_shape_shows_both_shapes(tmp_path):
    p = _npz(tmp_path, x=np.zeros((5, 4, 4, 1), "float32"))
    assert _err(load_data, p, IMG) == (
        "the input array does not fit the model: expected shape (None, 4, 4, 3), received "
        "(5, 4, 4, 1) (axis 3: 1 != 3)"
    )


def test_free_dimensions_accept_any_size():
    spec = [InputSpec("seq", (None, None, 3), "float32")]
    assert from_arrays(np.zeros((2, 17, 3), "float32"), specs=spec).shapes == [(2, 17, 3)]


def test_scalar_input():
    assert _err(from_arrays, np.float32(1.0), specs=IMG) == (
        "the input array must be an array of samples. Received: a scalar"
    )


# ------------------------------------------------------------------ dtypes
def test_fractional_floats_for_an_int_model(tmp_path):
    p = _npz(tmp_path, x=np.full((2, 5), 1.5))
    assert _err(load_data, p, TOKENS) == (
        "the input array holds fractional values but the model expects integers (int32). "
        "Received: dtype=float64"
    )


def test_whole_number_floats_are_cast_for_an_int_model(tmp_path):
    x = np.array([[1.0, 2, 3, 4, 5], [0, 0, 7, 8, 9]])
    ds = load_data(_npz(tmp_path, x=x), TOKENS)
    assert ds.x[0].dtype == np.int32
    np.testing.assert_array_equal(ds.x[0], x.astype("int32"))
    assert ds.notes == ["the input array: whole-number floats cast to int32"]


def test_int_images_are_cast_to_float32_with_a_note(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3)).astype("uint8")
    ds = load_data(_npz(tmp_path, x=x), IMG)
    assert ds.x[0].dtype == np.float32
    np.testing.assert_array_equal(ds.x[0], x.astype("float32"))
    assert ds.notes == ["the input array: integer values (uint8) cast to float32"]


def test_float64_is_cast_to_the_models_float_without_a_note():
    ds = from_arrays(np.ones((2, 4, 4, 3)), specs=IMG)
    assert ds.x[0].dtype == np.float32 and ds.notes == []


def test_bool_inputs_are_cast_with_a_note():
    ds = from_arrays(np.ones((2, 4, 4, 3), bool), specs=IMG)
    assert ds.x[0].dtype == np.float32 and ds.notes == [
        "the input array: boolean values cast to float32"
    ]


# ------------------------------------------------------------------ values
def test_nan_and_inf_are_counted(tmp_path):
    x = _images(8)
    x[0, 0, 0, 0] = x[0, 1, 1, 1] = x[5, 0, 0, 2] = np.nan
    x[5, 3, 3, 0] = np.inf
    x[7, 0, 0, 0] = -np.inf
    assert _err(load_data, _npz(tmp_path, x=x), IMG) == (
        "the input array contains 3 NaN and 2 infinite values (in 3 of 8 samples); bngap needs "
        "finite inputs"
    )


def test_nan_counted_across_chunks():
    """The finite check reads in chunks (memory-mapped data): counts add up across them."""
    from bngap.validation import check_finite as _check_finite

    x = np.zeros((10, 3), "float32")
    x[[0, 4, 9], 1] = np.nan
    with pytest.raises(
        DataError, match=r"contains 3 NaN and 0 infinite values \(in 3 of 10 samples\)"
    ):
        _check_finite(x, "x", chunk=4)


def test_nan_labels(tmp_path):
    p = _npz(tmp_path, x=_images(3), y=np.array([0.0, np.nan, 1.0]))
    assert _err(load_data, p, IMG) == (
        "the labels contains 1 NaN and 0 infinite values (in 1 of 3 samples); bngap needs finite inputs"
    )


def test_nan_for_an_int_model_is_refused(tmp_path):
    x = np.zeros((2, 5))
    x[1, 2] = np.nan
    assert _err(load_data, _npz(tmp_path, x=x), TOKENS) == (  # said as NaN, not as a fraction
        "the input array contains 1 NaN and 0 infinite values (in 1 of 2 samples); bngap needs finite inputs"
    )


def test_zero_samples(tmp_path):
    assert _err(load_data, _npz(tmp_path, x=np.zeros((0, 4, 4, 3), "float32")), IMG) == (
        "the input array has 0 samples"
    )


# ------------------------------------------------------------------- limit
def test_limit(tmp_path):
    x = _images(10)
    p = _npz(tmp_path, x=x, y=np.arange(10))
    ds = load_data(p, IMG, limit=4)
    assert len(ds) == 4 and ds.y.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds.x[0], x[:4])
    assert ds.notes == ["used the first 4 of 10 samples (--limit)"]
    assert load_data(p, IMG, limit=50).notes == []  # more than there is: all, silently


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one(tmp_path, limit):
    p = _npz(tmp_path, x=_images(3))
    assert _err(load_data, p, IMG, limit=limit) == f"--limit must be at least 1. Received: {limit}"


def test_limit_keeps_bad_values_out_of_view(tmp_path):
    """Only the samples used are validated: a NaN past the limit is no error."""
    x = _images(6)
    x[5, 0, 0, 0] = np.nan
    assert len(load_data(_npz(tmp_path, x=x), IMG, limit=5)) == 5


# ------------------------------------------------------------- multi-input
def test_multi_input_npz_keys_are_the_input_names(tmp_path):
    pixels, meta = _images(3), np.ones((3, 2), "float32")
    p = _npz(tmp_path, meta=meta, pixels=pixels, y=np.arange(3))
    ds = load_data(p, TWO)
    assert ds.names == ["pixels", "meta"] and ds.shapes == [(3, 4, 4, 3), (3, 2)]
    np.testing.assert_array_equal(ds.x[1], meta)
    assert ds.y.tolist() == [0, 1, 2]


def test_multi_input_missing_names_are_listed(tmp_path):
    p = _npz(tmp_path, pixels=_images(3), extra=np.zeros(3))
    assert _err(load_data, p, TWO) == (
        f"the model has 2 inputs; {p} must hold one array per input, named after them: pixels, "
        "meta. Missing: meta. Found keys: pixels, extra"
    )


def test_multi_input_sample_counts_must_agree(tmp_path):
    p = _npz(tmp_path, pixels=_images(3), meta=np.zeros((2, 2), "float32"))
    assert _err(load_data, p, TWO) == (
        "the model's inputs have different sample counts: 3 and 2 ('pixels' vs 'meta')"
    )


def test_multi_input_shape_error_names_the_input(tmp_path):
    p = _npz(tmp_path, pixels=_images(3), meta=np.zeros((3, 3), "float32"))
    assert _err(load_data, p, TWO) == (
        "input 'meta' does not fit the model: expected shape (None, 2), received (3, 3) (axis 1: 3 != 2)"
    )


def test_multi_input_from_arrays_dict_and_list():
    pixels, meta = _images(2), np.zeros((2, 2), "float32")
    ds = from_arrays({"meta": meta, "pixels": pixels}, specs=TWO)
    assert ds.names == ["pixels", "meta"] and ds.shapes == [(2, 4, 4, 3), (2, 2)]
    assert _err(from_arrays, {"pixels": pixels, "other": meta}, specs=TWO) == (
        "inputs missing for: meta. Received keys: pixels, other"
    )
    assert from_arrays([pixels, meta], specs=TWO).names == ["pixels", "meta"]


def test_npy_holds_one_input_only(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, _images(2))
    assert _err(load_data, p, TWO) == (
        "the model has 2 inputs (pixels, meta); an .npy file holds one array. Use an .npz with one "
        "array per input name"
    )


@pytest.mark.parametrize("how", ["x_key", "single array", "list of one", "list of three"])
def test_multi_input_count_must_match(tmp_path, how):
    pixels, meta = _images(3), np.zeros((3, 2), "float32")
    if how == "x_key":
        call = lambda: load_data(_npz(tmp_path, x=pixels), TWO, x_key="x")  # noqa: E731
    elif how == "single array":
        call = lambda: from_arrays(pixels, specs=TWO)  # noqa: E731
    elif how == "list of one":
        call = lambda: from_arrays([pixels], specs=TWO)  # noqa: E731
    else:
        call = lambda: from_arrays([pixels, meta, meta], specs=TWO)  # noqa: E731
    assert "2 inputs" in _err(call)


# ------------------------------------------------------------- file formats
def test_npy_inputs(tmp_path):
    p = tmp_path / "x.npy"
    x = _images(5)
    np.save(p, x)
    ds = load_data(p, IMG)
    assert ds.y is None and ds.names == ["image"]
    np.testing.assert_array_equal(ds.x[0], x)
    assert load_data(p, IMG, y_key="y").notes == ["--y-key ignored: an .npy file holds inputs only"]


def test_corrupted_npz(tmp_path):
    import zipfile

    good = _npz(tmp_path, x=_images(50))
    half = tmp_path / "half.npz"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert _err(load_data, half, IMG).startswith(
        f"cannot read {half} as .npz (not a zip archive, truncated or corrupted?): "
    )
    # An intact archive whose member fails its checksum: found when the key is read.
    member = tmp_path / "member.npy"
    np.save(member, _images(4))
    bad = tmp_path / "crc.npz"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zf:
        zf.write(member, "x.npy")
    raw = bytearray(bad.read_bytes())
    raw[200:240] = bytes(b ^ 0xFF for b in raw[200:240])
    bad.write_bytes(bytes(raw))
    assert _err(load_data, bad, IMG).startswith(f"cannot read key 'x' of {bad} (corrupted?): ")


def test_truncated_npy(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, _images(50))
    p.write_bytes(p.read_bytes()[:300])
    assert _err(load_data, p, IMG).startswith(f"cannot read {p} as .npy: ")


@pytest.mark.parametrize("name", ["data.csv", "data.h5", "data.pt", "data"])
def test_unsupported_extension(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"1,2,3\n")
    assert _err(load_data, p, IMG) == (
        f"unsupported data format '{p.suffix or p.name}': bngap reads .npz (x and optional y), "
        ".npy (inputs only) or a folder of images"
    )


def test_missing_and_empty_files(tmp_path):
    assert (
        _err(load_data, tmp_path / "nope.npz", IMG)
        == f"data file not found: {tmp_path / 'nope.npz'}"
    )
    e = tmp_path / "empty.npz"
    e.touch()
    assert _err(load_data, e, IMG) == f"data file {e} is empty (0 bytes)"
    z = tmp_path / "none.npz"
    np.savez(z)
    assert _err(load_data, z, IMG) == f"{z} holds no arrays"


# ---------------------------------------------------------- memory mapping
@pytest.fixture()
def npy(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.arange(10 * 48, dtype="float32").reshape(10, 4, 4, 3))
    return p


def _file_backed(a) -> bool:
    # A memmap made by astype() or a copy is still an np.memmap, with filename None.
    return isinstance(a, np.memmap) and a.filename is not None


def test_npy_stays_memory_mapped_until_batches_are_taken(npy):
    ds = load_data(npy, IMG)
    assert _file_backed(ds.x[0]) and pathlib.Path(ds.x[0].filename) == npy.resolve()
    batches = list(ds.batches(4))
    assert [xs[0].shape for xs, _ in batches] == [(4, 4, 4, 3), (4, 4, 4, 3), (2, 4, 4, 3)]
    for b, (xs, y) in enumerate(batches):
        assert (
            type(xs[0]) is np.ndarray and xs[0].flags["C_CONTIGUOUS"] and xs[0].dtype == np.float32
        )
        np.testing.assert_array_equal(xs[0], np.load(npy)[4 * b : 4 * b + 4])
        assert y is None
    assert _file_backed(ds.x[0])  # taking batches does not load the whole array


def test_memory_map_survives_limit_and_subset(npy):
    ds = load_data(npy, IMG, limit=7)
    assert _file_backed(ds.x[0]) and len(ds) == 7
    sub = ds.subset(3)  # a few samples for the inference-path checks: read into memory
    assert len(sub) == 3 and sub.x[0].shape == (3, 4, 4, 3) and sub.x[0].dtype == np.float32
    assert [len(xs[0]) for xs, _ in ds.batches(3)] == [3, 3, 1]


def test_batches_split_labels_alike(tmp_path):
    ds = load_data(_npz(tmp_path, x=_images(5), y=np.arange(5)), IMG)
    assert [y.tolist() for _, y in ds.batches(2)] == [[0, 1], [2, 3], [4]]
    assert [len(xs[0]) for xs, _ in ds.batches(100)] == [5]


@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_memory_map_survives_a_dtype_cast(tmp_path, dtype):
    p = tmp_path / "x.npy"
    np.save(p, np.ones((10, 4, 4, 3), dtype))
    ds = load_data(p, IMG)
    assert _file_backed(ds.x[0])
    assert next(ds.batches(4))[0][0].dtype == np.float32


# ------------------------------------------------------- validate directly
def test_validate_leaves_good_arrays_alone():
    x = _images(4)
    notes: list[str] = []
    xs, y = validate([x], np.arange(4), IMG, ["image"], notes)
    assert xs[0] is x and y.tolist() == [0, 1, 2, 3] and notes == []


def test_validate_without_specs_checks_values_only():
    notes: list[str] = []
    xs, _ = validate([np.zeros((3, 7), "int64")], None, [], ["x"], notes)
    assert xs[0].dtype == np.float32 and notes == [
        "the input array: integer values (int64) cast to float32"
    ]
    with pytest.raises(DataError, match="0 samples"):
        validate([np.zeros((0, 7), "float32")], None, [], ["x"], [])


@pytest.mark.parametrize("which", ["x", "y"])
def test_scalar_with_limit(tmp_path, which):
    arrays = {"x": np.float32(1.0)} if which == "x" else {"x": _images(3), "y": np.float32(1.0)}
    assert _err(load_data, _npz(tmp_path, **arrays), IMG, limit=2)


def test_unreadable_data_file(tmp_path):
    p = _npz(tmp_path, x=_images(2))
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("file permissions are not enforced for this user (root)")
        assert _err(load_data, p, IMG) == f"cannot read data file {p}: permission denied"
    finally:
        p.chmod(0o600)


# ---------------------------------------------- merged from test_load_data.py


def test_the_only_key_is_taken_with_a_note(tmp_path):
    x = _images(3)
    ds = load_data(_npz(tmp_path, images=x), IMG)
    np.testing.assert_array_equal(ds.x[0], x)
    assert ds.y is None and ds.notes == ["inputs read from the only key 'images'"]


def test_a_plain_pickle_named_npz_is_refused_in_one_whole_line(tmp_path):
    p = tmp_path / "evil.npz"
    p.write_bytes(pickle.dumps({"x": 1}))
    assert _err(load_data, p, IMG) == (
        f"{p} is not an .npz archive of arrays but a pickle; bngap never unpickles data "
        "(unpickling can run arbitrary code)"
    )
