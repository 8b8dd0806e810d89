"""Model shapes from the wild: mixed precision, masking, channels_first,
shared layers, several inputs and outputs, wrappers, attention, renorm,
degenerate statistics. Each must check cleanly, leave the model untouched,
and report the layers where they are."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bngap.pipeline import CheckOptions, check
from bngap.results import Kind


def _build(keras, name):
    L = keras.layers
    rng = np.random.default_rng(0)
    if name == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            m = keras.Sequential(
                [
                    keras.Input((8, 8, 3)),
                    L.Conv2D(4, 3),
                    L.BatchNormalization(name="bn"),
                    L.ReLU(),
                    L.GlobalAveragePooling2D(),
                    L.Dense(2, dtype="float32"),
                ]
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
        return m, rng.normal(2, 3, (16, 8, 8, 3)).astype("float32"), ["bn"]
    if name == "masked_embedding":
        inp = keras.Input((10,), dtype="int32")
        h = L.Embedding(20, 6, mask_zero=True)(inp)
        h = L.BatchNormalization(name="bn")(h)
        h = L.LSTM(4, dropout=0.2, name="lstm")(h)
        x = np.where(rng.random((16, 10)) < 0.3, 0, rng.integers(1, 20, (16, 10))).astype("int32")
        return keras.Model(inp, L.Dense(2)(h)), x, ["bn"]
    if name == "channels_first":
        m = keras.Sequential(
            [
                keras.Input((3, 8, 8)),
                L.Conv2D(4, 3, data_format="channels_first"),
                L.BatchNormalization(axis=1, name="bn"),
                L.GlobalAveragePooling2D(data_format="channels_first"),
                L.Dense(2),
            ]
        )
        return m, rng.normal(2, 3, (16, 3, 8, 8)).astype("float32"), ["bn"]
    if name == "shared_layer":
        inp = keras.Input((6,))
        d, bn = L.Dense(6), L.BatchNormalization(name="bn")
        h = bn(d(inp))
        h2 = bn(d(h))
        return (
            keras.Model(inp, L.Dense(2)(L.Concatenate()([h, h2]))),
            rng.normal(1, 2, (16, 6)).astype("float32"),
            ["bn"],
        )
    if name == "multi_io":
        a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
        h = L.Concatenate()([L.BatchNormalization(name="bn")(L.Dense(5)(a)), L.Dropout(0.3)(b)])
        m = keras.Model([a, b], [L.Dense(2, name="o1")(h), L.Dense(1, name="o2")(h)])
        return (
            m,
            [
                rng.normal(1, 2, (16, 6)).astype("float32"),
                rng.normal(0, 1, (16, 4)).astype("float32"),
            ],
            ["bn"],
        )
    if name == "dict_io":
        a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
        h = L.Concatenate()([L.BatchNormalization(name="bn")(a), b])
        m = keras.Model({"a": a, "b": b}, {"y": L.Dense(2)(h)})
        return (
            m,
            {
                "a": rng.normal(1, 2, (16, 6)).astype("float32"),
                "b": rng.normal(0, 1, (16, 4)).astype("float32"),
            },
            ["bn"],
        )
    if name == "time_distributed":
        m = keras.Sequential(
            [
                keras.Input((5, 6)),
                L.TimeDistributed(L.BatchNormalization(name="bn"), name="td"),
                L.GlobalAveragePooling1D(),
                L.Dense(2),
            ]
        )
        return m, rng.normal(1, 2, (16, 5, 6)).astype("float32"), ["td/bn"]
    if name == "bidirectional_gru":
        m = keras.Sequential(
            [
                keras.Input((5, 6)),
                L.Bidirectional(L.GRU(3, dropout=0.3), name="bi"),
                L.BatchNormalization(name="bn"),
                L.Dense(2),
            ]
        )
        return m, rng.normal(1, 2, (16, 5, 6)).astype("float32"), ["bn"]
    if name == "attention_dropout":
        inp = keras.Input((5, 8))
        h = L.MultiHeadAttention(2, 4, dropout=0.3, name="mha")(inp, inp)
        return (
            keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(h))),
            rng.normal(0, 1, (16, 5, 8)).astype("float32"),
            [],
        )
    if name == "renorm":
        m = keras.Sequential(
            [
                keras.Input((6,)),
                L.Dense(6),
                L.BatchNormalization(renorm=True, name="bn"),
                L.Dense(2),
            ]
        )
        return m, rng.normal(1, 2, (16, 6)).astype("float32"), ["bn"]
    if name == "degenerate_variance":
        m = keras.Sequential(
            [keras.Input((6,)), L.Dense(6), L.BatchNormalization(name="bn"), L.Dense(2)]
        )
        bn = m.get_layer("bn")
        mv = bn.moving_variance.numpy()
        mv[:3] = 1e-36
        bn.moving_variance.assign(mv)
        return m, rng.normal(1, 2, (16, 6)).astype("float32"), ["bn"]
    if name == "constant_channels_eps0":
        m = keras.Sequential(
            [keras.Input((6,)), L.BatchNormalization(epsilon=0.0, name="bn"), L.Dense(2)]
        )
        return m, np.ones((16, 6), "float32"), ["bn"]
    raise KeyError(name)


CASES = [
    "mixed_float16",
    "masked_embedding",
    "channels_first",
    "shared_layer",
    "multi_io",
    "dict_io",
    "time_distributed",
    "bidirectional_gru",
    "attention_dropout",
    "renorm",
    "degenerate_variance",
    "constant_channels_eps0",
]


@pytest.mark.parametrize("name", CASES)
def test_model_shape_checks_cleanly(keras, name):
    model, x, bn_paths = _build(keras, name)
    before = [v.numpy().tobytes() for v in model.variables]
    r = check(model, x, options=CheckOptions(batch_size=8))
    assert [v.numpy().tobytes() for v in model.variables] == before
    assert sorted(b.path for b in r.batchnorm) == sorted(bn_paths)
    for b in r.batchnorm:
        for v in (b.median_abs_z, b.max_abs_z, b.median_abs_log2_var_ratio):
            assert math.isfinite(v)
    d = r.to_dict()  # JSON-ready: no NaN anywhere
    import json

    json.dumps(d, allow_nan=False)


def test_mode_dependent_layers_are_found_inside_wrappers(keras):
    model, x, _ = _build(keras, "attention_dropout")
    r = check(model, x, options=CheckOptions(batch_size=8))
    assert r.layer("mha/dropout") is not None or any(
        x.path.startswith("mha/") and x.kind is Kind.DROPOUT for x in r.layers
    )
    assert r.findings[0].cause.value == "dropout_only"
    model, x, _ = _build(keras, "bidirectional_gru")
    r = check(model, x, options=CheckOptions(batch_size=8))
    rec = [x for x in r.layers if x.kind is Kind.RECURRENT]
    assert len(rec) == 2 and all(x.path.startswith("bi/") for x in rec)


def test_degenerate_channels_are_counted_not_alarming(keras):
    model, x, _ = _build(keras, "degenerate_variance")
    b = check(model, x, options=CheckOptions(batch_size=8)).batchnorm[0]
    assert b.degenerate_channels == 0  # 1e-36 + eps is a valid variance
    model, x, _ = _build(keras, "constant_channels_eps0")
    r = check(model, x, options=CheckOptions(batch_size=8))
    b = r.batchnorm[0]
    assert b.degenerate_channels == 6 and b.severity.value == "ok"
    assert r.output_gap.relative_l2 == math.inf  # training mode divides 0 by 0
    assert any("NaN/infinite" in n for n in r.notes)
    assert r.to_dict()["output_gap"]["relative_l2"] is None


def test_preprocessing_layer_leaking_into_bn_is_a_warning(keras):
    """RandomFlip defaults to training=True when no flag is given, and the
    value is inherited by the BN layer downstream: model(x) runs BN in
    training mode. The inference path itself (training=False) is clean."""
    L = keras.layers
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.RandomFlip(name="flip"),
            L.Conv2D(4, 3),
            L.BatchNormalization(name="bn"),
            L.GlobalAveragePooling2D(),
            L.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(2, 3, (16, 8, 8, 3)).astype("float32")
    r = check(m, x, options=CheckOptions(batch_size=8))
    noflag = next(c for c in r.leaks if c.path == "model(x)")
    assert "bn" in noflag.layers_in_training and "flip" in noflag.layers_in_training
    inference = next(c for c in r.leaks if c.path == "model(x, training=False)")
    assert not inference.is_leak
    leak = next(f for f in r.findings if f.cause.value == "mode_leak")
    assert leak.severity.value == "warn"


def test_dict_inputs_reach_their_own_layers(keras):
    """A dict model written {"b": ..., "a": ...}: Keras orders inputs by name,
    the dict by writing; each array must still reach its own input."""
    L = keras.layers
    ia, ib = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Dense(3)(L.Concatenate()([L.BatchNormalization(name="bn")(ia), ib]))
    model = keras.Model(inputs={"b": ib, "a": ia}, outputs=out)
    rng = np.random.default_rng(0)
    xa = rng.normal(0, 1, (64, 4)).astype("float32")
    xb = (100 + rng.normal(0, 1, (64, 4))).astype("float32")
    r = check(model, {"a": xa, "b": xb}, options=CheckOptions(batch_size=64))
    assert r.batchnorm[0].data_mean_abs < 1.0  # it saw 'a', not 'b'
    ev = np.asarray(model({"a": xa, "b": xb}, training=False))
    tr = np.asarray(model({"a": xa, "b": xb}, training=True))
    assert r.output_gap.relative_l2 == pytest.approx(
        np.linalg.norm(tr - ev) / np.linalg.norm(ev), rel=1e-4
    )


def test_subclassed_models_own_training_branch_is_not_blamed_on_bn(keras):
    L = keras.layers

    class Net(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.d, self.bn, self.o = L.Dense(4), L.BatchNormalization(), L.Dense(2)

        def call(self, x, training=None):
            h = self.o(self.bn(self.d(x)))
            return h * 3.0 if training else h

    net = Net()
    x = np.random.default_rng(0).normal(0, 1, (64, 5)).astype("float32")
    net(x)
    from bngap.recalibration import fix

    fix(net, x, batch_size=64)  # BN statistics exact: BN alone makes no gap
    r = check(net, x, options=CheckOptions(batch_size=64))
    assert r.output_gap.relative_l2 == pytest.approx(2.0, rel=1e-3)  # 3h vs h
    assert r.groups["batchnorm"] < 1e-3
    assert any("Net.call() itself" in n for n in r.notes)


def test_repeated_checks_agree_with_unseeded_random_layers(keras):
    L = keras.layers

    class Noise(L.Layer):  # draws from Keras' global generator
        def call(self, x, training=None):
            return x + keras.random.normal(keras.ops.shape(x), stddev=0.1) if training else x

    m = keras.Sequential([keras.Input((6,)), L.Dense(8), Noise(), L.Dense(3)])
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    from keras.src.random.seed_generator import global_seed_generator

    state = np.array(global_seed_generator().state.numpy())
    a = check(m, x).output_gap.relative_l2
    b = check(m, x).output_gap.relative_l2
    assert a == b > 0
    np.testing.assert_array_equal(global_seed_generator().state.numpy(), state)


def test_keras2_applications_style_file_checks_end_to_end(keras):
    """A Keras 2 .h5 of a MobileNet-like base nested in a Sequential (TF-op
    layers, '/' names, depthwise/separable convolutions), trained for 6 steps
    (48 samples, batch 16, 2 epochs): bngap sees inside the base under the
    repaired names, counts the 6 updates at the first layer, and leaves the file alone."""
    import hashlib
    from pathlib import Path

    path = Path(__file__).parent / "data" / "k2_applications_like.h5"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.random.default_rng(1).uniform(0, 255, (32, 12, 12, 3)).astype("float32")
    report = check(str(path), x, options=CheckOptions(batch_size=16, effects=0))
    paths = [b.path for b in report.batchnorm]
    assert paths == ["tiny_mobile/conv1_bn", "tiny_mobile/block1_dw_bn", "tiny_mobile/head_bn"]
    assert report.findings[0].cause == "stats_not_converged"
    assert report.first_flagged_batchnorm.path == "tiny_mobile/conv1_bn"
    estimates = [b.estimated_updates for b in report.batchnorm]
    # Deeper layers saw inputs that moved with the weights during the 6 steps;
    # their channels may disagree, and then bngap gives no count rather than a wrong one
    assert estimates[0] is not None and round(estimates[0]) == 6, estimates
    assert all(e is None or 4 <= e <= 8 for e in estimates), estimates
    assert report.output_gap.relative_l2 > 0.1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    "name,bn_paths",
    [
        ("k2_shared_sequential", ["tower/bn"]),
        ("k2_mixed_float16", ["bn"]),
        ("k2_keyword_tensors", ["bn"]),
    ],
)
def test_keras2_files_check_end_to_end(keras, name, bn_paths):
    from pathlib import Path

    data = Path(__file__).parent / "data"
    expected = np.load(data / f"{name}.expected.npz")
    x = [expected[k] for k in expected.files if k != "inference"]
    report = check(
        str(data / f"{name}.h5"), x if len(x) > 1 else x[0], options=CheckOptions(effects=0)
    )
    assert [b.path for b in report.batchnorm] == bn_paths
    assert math.isfinite(report.output_gap.relative_l2) and report.output_gap.relative_l2 > 0
    assert report.notes[0].startswith("repaired legacy config while loading")


def test_a_declared_fixed_batch_size_is_the_one_measured(keras):
    L = keras.layers
    model = keras.Sequential(
        [keras.Input((5,), batch_size=8), L.Dense(4), L.BatchNormalization(name="bn"), L.Dense(1)]
    )
    x = np.random.default_rng(0).normal(1, 2, (40, 5)).astype("float32")
    report = check(model, x, options=CheckOptions(effects=0))
    assert report.data.batch_size == 8 and report.data.batches == 5
    assert (
        "the model declares a fixed batch size of 8 (fit() used it); measured with batch size 8, not 32"
        in report.notes
    )


def test_a_sparse_layer_output_is_compared_dense(keras):
    """CategoryEncoding(sparse=True) hands a sparse tensor to the next layer:
    its comparison densifies it (it was a 'model failed' error); the gap is
    the plain one, one batch of 16."""
    L = keras.layers
    inp = keras.Input((4,), dtype="int32")
    h = L.CategoryEncoding(num_tokens=10, output_mode="multi_hot", sparse=True, name="enc")(inp)
    out = L.Dense(2)(L.BatchNormalization(name="bn")(L.Dense(8)(h)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(4).integers(0, 10, (16, 4)).astype("int32")
    r = check(model, x, options=CheckOptions(batch_size=16, probe_preprocessing=False))
    ev = np.asarray(model(x, training=False), np.float64)
    saved = [v.numpy() for v in model.non_trainable_variables]
    tr = np.asarray(model(x, training=True), np.float64)
    for v, s in zip(model.non_trainable_variables, saved):
        v.assign(s)
    assert r.output_gap.relative_l2 == pytest.approx(
        np.linalg.norm(tr - ev) / np.linalg.norm(ev), rel=1e-4
    )
    assert r.layer("enc").divergence == 0.0
