"""Image folders in `bngap.images`: above DECODE_WHOLE_BELOW the images are
decoded batch by batch (the same pixels as decoding them all at once), and a
file that does not decode is still a one-line error before any pass."""

from __future__ import annotations

import numpy as np
import pytest

import bngap.images as images
from bngap.data import load_data
from bngap.errors import DataError
from bngap.loading import InputSpec
from bngap.streaming import RowArray

SPEC = [InputSpec("img", (None, 6, 6, 3), "float32")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, keras):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for name in ["a", "b"]:
        (root / name).mkdir()
        for i in range(5):
            px = rng.uniform(0, 255, (9, 7, 3)).astype("uint8")
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(px).numpy())
    return root


def test_large_folders_decode_batch_by_batch_to_the_same_pixels(folder, monkeypatch):
    whole = load_data(folder, SPEC, preprocess="tf")
    assert isinstance(whole.x[0], np.ndarray)
    monkeypatch.setattr(images, "DECODE_WHOLE_BELOW", 0)
    lazy = load_data(folder, SPEC, preprocess="tf")
    assert isinstance(lazy.x[0], RowArray) and any(
        "decoded batch by batch" in n for n in lazy.notes
    )
    np.testing.assert_array_equal(np.concatenate([b[0][0] for b in lazy.batches(3)]), whole.x[0])
    np.testing.assert_array_equal(np.asarray(lazy.y), whole.y)


def test_a_bad_image_is_found_before_any_pass(folder, monkeypatch, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    (root / "b" / "9.png").write_bytes(b"not a png")
    monkeypatch.setattr(images, "DECODE_WHOLE_BELOW", 0)
    with pytest.raises(DataError, match=r"cannot decode image .*9\.png"):
        load_data(root, SPEC)
