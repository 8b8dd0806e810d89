"""Row-by-row reading in `bngap.streaming` through `bngap.data`: a large
compressed .npz member is streamed (peak memory set by the batch, not the
file), a stored one is memory-mapped at its offset inside the zip, shards
join end to end, and iterables of batches are re-batched. Plain numpy."""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

from bngap.data import from_arrays, load_data
from bngap.errors import DataError
from bngap.loading import InputSpec
from bngap.npzmembers import READ_WHOLE_BELOW
from bngap.streaming import RowArray, memory_available

SPEC = [InputSpec("image", (None, 32, 32, 3), "float32")]
N = 2000  # 2000 x 32x32x3 float32: 24.6 MB, above READ_WHOLE_BELOW


def _images(n=N, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    x, y = _images(), np.arange(N) % 10
    np.savez_compressed(folder / "c.npz", x=x, y=y)
    np.savez(folder / "s.npz", x=x, y=y)
    return folder, x, y


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_file_is_bigger_than_what_is_read_whole(big):
    assert _images().nbytes > 1.4 * READ_WHOLE_BELOW


def test_compressed_member_streams_with_memory_set_by_the_batch(big):
    folder, x, y = big
    ds = load_data(folder / "c.npz", SPEC)
    assert isinstance(ds.x[0], RowArray) and len(ds) == N
    seen = []

    def walk():
        for xs, yb in ds.batches(32):
            seen.append((float(xs[0].sum(dtype=np.float64)), yb.copy()))

    peak = _peak(walk)
    batch = 32 * x[0].nbytes
    assert peak < 8 * batch, (peak, batch)  # a few batches' bytes, not the 24.6 MB file
    sums = [float(x[i : i + 32].sum(dtype=np.float64)) for i in range(0, N, 32)]
    np.testing.assert_allclose([s for s, _ in seen], sums, rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([b for _, b in seen]), y)


def test_loading_reads_nothing_whole_even_to_validate(big):
    folder, x, _ = big
    peak = _peak(lambda: load_data(folder / "c.npz", SPEC))
    assert peak < x.nbytes / 2  # validation reads 4 MB at a time (the finite check)


def test_limit_reads_only_the_rows_it_needs(big):
    folder, x, _ = big
    ds = load_data(folder / "c.npz", SPEC, limit=32)
    assert len(ds) == 32 and "used the first 32 of 2000 samples (--limit)" in ds.notes
    peak = _peak(lambda: list(ds.batches(32)))
    assert peak < 32 * x[0].nbytes * 4
    np.testing.assert_array_equal(ds.take(0, 32)[0], x[:32])


def test_rows_read_backwards_start_the_stream_over(big):
    folder, x, _ = big
    ds = load_data(folder / "c.npz", SPEC)
    np.testing.assert_array_equal(ds.take(1500, 1510)[0], x[1500:1510])
    np.testing.assert_array_equal(ds.take(3, 5)[0], x[3:5])  # behind the stream's position
    np.testing.assert_array_equal(ds.x[0][-1], x[-1])


def test_stored_member_is_memory_mapped_inside_the_zip(big):
    folder, x, y = big
    ds = load_data(folder / "s.npz", SPEC)
    assert isinstance(ds.x[0], np.memmap)
    np.testing.assert_array_equal(ds.take(0, N)[0], x)
    np.testing.assert_array_equal(np.asarray(ds.y), y)


def test_member_with_a_long_local_extra_field_maps_at_the_right_offset(tmp_path):
    # Zip writers may put a different extra field in the local header than in
    # the central directory: the data offset must come from the local one.
    x = _images(1500)
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    info = zipfile.ZipInfo("x.npy")
    info.compress_type = zipfile.ZIP_STORED
    info.extra = b"\xfe\xca\x05\x00hello"  # an unknown 5-byte extra block
    p = tmp_path / "extra.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(info, buf.getvalue())
    ds = load_data(p, SPEC)
    assert isinstance(ds.x[0], np.memmap)
    np.testing.assert_array_equal(ds.take(0, 1500)[0], x)


def test_streamed_object_array_is_refused_from_its_header(tmp_path):
    p = tmp_path / "obj.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|O", "fortran_order": False, "shape": (10**6,)}
        )
        f.write(b"\x80\x04N." * 10)
    with pytest.raises(DataError, match="pickled Python object array"):
        load_data(p, SPEC)


def test_shape_is_validated_from_the_header_before_any_data(tmp_path):
    p = tmp_path / "wrong.npz"
    np.savez_compressed(p, x=np.zeros((N, 16, 16, 3), "float32"))
    with pytest.raises(
        DataError, match=r"expected shape \(None, 32, 32, 3\), received \(2000, 16, 16, 3\)"
    ):
        load_data(p, SPEC)


def test_truncated_stream_is_a_data_error(big, tmp_path):
    folder, _, _ = big
    raw = (folder / "c.npz").read_bytes()
    bad = tmp_path / "cut.npz"
    with zipfile.ZipFile(folder / "c.npz") as zf:
        info = zf.getinfo("x.npy")
    # keep the central directory readable: rewrite the member's middle as garbage
    mid = info.header_offset + 4096
    bad.write_bytes(raw[:mid] + bytes(4096) + raw[mid + 4096 :])
    with pytest.raises(DataError):
        ds = load_data(bad, SPEC)
        list(ds.batches(256))


def test_shards_join_in_the_order_given(big, tmp_path):
    _, x, y = big
    paths = []
    for k, (a, b) in enumerate([(0, 700), (700, 1400), (1400, N)]):
        paths.append(tmp_path / f"part-{k}.npz")
        (np.savez_compressed if k != 1 else np.savez)(paths[-1], x=x[a:b], y=y[a:b])
    ds = load_data(str(tmp_path / "part-*.npz"), SPEC)
    assert len(ds) == N
    np.testing.assert_array_equal(ds.take(650, 1450)[0], x[650:1450])  # across both boundaries
    np.testing.assert_array_equal(np.concatenate([b for _, b in ds.batches(300)]), y)
    assert len(load_data([str(p) for p in paths[:2]], SPEC, limit=710)) == 710


def test_shards_that_disagree_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=_images(4), y=np.arange(4))
    np.savez(tmp_path / "b.npz", x=_images(4))
    with pytest.raises(DataError, match="some shards have labels and some do not"):
        load_data([tmp_path / "a.npz", tmp_path / "b.npz"], SPEC)
    with pytest.raises(DataError, match="no data files match"):
        load_data(str(tmp_path / "nothing-*.npz"), SPEC)


def test_iterable_of_batches_is_rebatched(big):
    _, x, y = big
    x, y = x[:300], y[:300]
    uneven = [(x[a:b], y[a:b]) for a, b in [(0, 7), (7, 100), (100, 101), (101, 300)]]
    ds = from_arrays(uneven, specs=SPEC)
    assert len(ds) == 300
    got = list(ds.batches(32))
    assert [len(b[0][0]) for b in got] == [32] * 9 + [12]
    np.testing.assert_array_equal(np.concatenate([b[0][0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    np.testing.assert_array_equal(ds.take(250, 260)[0], x[250:260])  # far ahead: skipped
    np.testing.assert_array_equal(ds.take(5, 9)[0], x[5:9])  # behind: iterated again
    np.testing.assert_array_equal(np.asarray(ds.y[99:102]), y[99:102])
    single = from_arrays(iter([(x[i], y[i]) for i in range(40)]), specs=SPEC, limit=33)
    assert len(single) == 33 and any("one-shot iterator" in n for n in single.notes)
    np.testing.assert_array_equal(single.take(0, 33)[0], x[:33])


def test_memory_that_cannot_suffice_is_a_one_line_data_error(big):
    folder, _, _ = big
    ds = load_data(folder / "c.npz", SPEC)
    room = memory_available()
    assert room is not None and room > 0
    with pytest.raises(DataError, match=r"needs .* in memory at once, more than the") as e:
        # 10**9 images of 32x32x3 float32: 12 TB
        RowArray(lambda a, b: None, (10**9, 32, 32, 3), "float32", "a huge array").__array__()
    assert "\n" not in str(e.value)
    assert len(ds.take(0, 2)[0]) == 2
