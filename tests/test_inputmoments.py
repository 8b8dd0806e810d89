"""BN input moments joined at channel concatenations (`inputmoments.py`):
a DenseNet-style model's BN audit equals numpy's and the report equals the
one computed without joining; a concatenation along another axis, or one
that feeds no BN whose parts were seen, is left alone."""

from __future__ import annotations

import numpy as np
import pytest
from reportdiffs import report_diffs

from bngap import inputmoments
from bngap.pipeline import CheckOptions, check

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False)


def _dense_model(keras, axis: int):
    """Two DenseNet blocks: each BN sees the previous BN's input with new channels."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    shape = (6, 6, 3) if axis == -1 else (3, 6, 6)
    inp = keras.Input(shape, name="x")
    fmt = None if axis == -1 else "channels_first"
    x = L.Conv2D(4, 3, padding="same", data_format=fmt, name="stem")(inp)
    for i in range(3):
        h = L.BatchNormalization(axis=axis, name=f"bn{i}")(x)
        h = L.ReLU(name=f"relu{i}")(h)
        h = L.Conv2D(2, 1, data_format=fmt, name=f"conv{i}")(h)
        x = L.Concatenate(axis=axis, name=f"cat{i}")([x, h])
    x = L.BatchNormalization(axis=axis, name="bn_last")(x)
    out = L.Dense(2, name="head")(L.Flatten(name="flat")(x))
    return keras.Model(inp, out, name="dense_blocks")


@pytest.mark.parametrize("axis", [-1, 1])
def test_joined_moments_equal_numpy_and_the_unjoined_report(keras, monkeypatch, axis):
    x = np.random.default_rng(4).normal(1.0, 3.0, (40, 6, 6, 3)).astype("float32")
    if axis == 1:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    joined = {"n": 0}
    original = inputmoments.InputMoments._keep

    def counting(self, t, ax, moments):
        joined["n"] += 1
        return original(self, t, ax, moments)

    monkeypatch.setattr(inputmoments.InputMoments, "_keep", counting)
    model = _dense_model(keras, axis)
    got = check(model, x, options=OPTIONS).to_dict()
    assert joined["n"] > 0
    for name in ("bn1", "bn2", "bn_last"):  # inputs that are concatenations
        layer = model.get_layer(name)
        inp = np.asarray(keras.Model(model.inputs, layer.input)(x, training=False), np.float64)
        axes = tuple(a for a in range(4) if a != axis % 4)
        z = (inp.mean(axis=axes) - layer.moving_mean.numpy()) / np.sqrt(
            layer.moving_variance.numpy() + layer.epsilon
        )
        rec = next(r for r in got["batchnorm"] if r["path"] == name)
        assert rec["max_abs_z"] == pytest.approx(np.max(np.abs(z)), rel=1e-4)
    monkeypatch.setattr(inputmoments.InputMoments, "concatenated", lambda *a, **k: None)
    want = check(_dense_model(keras, axis), x, options=OPTIONS).to_dict()
    got.pop("seconds", None)
    want.pop("seconds", None)
    assert report_diffs(got, want, rtol=1e-6) == []


def test_a_concatenation_of_unseen_tensors_or_along_another_axis_is_left_alone(keras):
    ops = keras.ops
    moments = inputmoments.InputMoments(ops)
    a = ops.convert_to_tensor(np.ones((2, 3, 4), "float32"))
    b = ops.convert_to_tensor(np.zeros((2, 3, 4), "float32"))
    joined = ops.concatenate([a, b], axis=-1)
    moments.concatenated(-1, [a, b], joined)  # nothing known yet: nothing computed
    assert moments._lookup(joined, -1) is None
    per, mean, _ = moments.of(a, -1)
    assert per == 3.0 and moments._lookup(a, -1) is not None
    along = ops.concatenate([a, b], axis=1)
    moments.concatenated(1, [a, b], along)  # not the channel axis the moments are for
    assert moments._lookup(along, 1) is None and moments._lookup(along, -1) is None
    moments.concatenated(-1, [a, b], joined)
    per2, mean2, m2 = moments.of(joined, -1)
    assert per2 == 3.0
    np.testing.assert_array_equal(np.asarray(mean2).reshape(2, 8), [[1] * 4 + [0] * 4] * 2)
    np.testing.assert_array_equal(np.asarray(m2), np.zeros((2, 8)))
