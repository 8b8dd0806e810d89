"""The probe's passes: predict()'s traced function (where predict() runs
at all: a model with code of the user's) is made once per model and kept aside, the model's own `predict_function` is left as it was, and
the leak comparison it answers is the same on every check; the per-layer
reductions are the plain ops; and the state a pass writes (a BN layer inside
a mode-leaking block, a trainable kernel a training call sets) is put back,
on the eager and on the compiled passes."""

from __future__ import annotations

import numpy as np
import pytest

from bngap import compiled
from bngap.inferencepaths import _PREDICT_CACHE
from bngap.pipeline import CheckOptions, check

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False)


def _passes(monkeypatch, compile_passes: bool) -> None:
    """The compiled passes from the first batch, or the eager passes only."""
    if compile_passes:
        monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    else:
        monkeypatch.setattr(compiled, "available", lambda m: False)


def _predict_check(report):
    return next(c for c in report.leaks if c.path == "predict(x)")


def _with_user_layer(keras):
    """A Sequential model with one layer of the user's own class: predict()
    is not known to be model(x, training=False), so it is run."""
    L = keras.layers

    class Shift(L.Layer):
        def call(self, x):
            return x + 0.5

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(6), Shift(), L.BatchNormalization(), L.Dropout(0.3)]
    )
    x = np.random.default_rng(4).normal(2.0, 3.0, (24, 5)).astype("float32")
    return model, x


def test_predict_traced_once_and_kept_off_the_model(keras):
    model, x = _with_user_layer(keras)
    model.predict_function = None
    first = check(model, x, options=CheckOptions(probe_preprocessing=False))
    assert model.predict_function is None  # the user's model is left as it was
    made = model.__dict__[_PREDICT_CACHE][1]
    second = check(model, x, options=CheckOptions(probe_preprocessing=False))
    assert model.predict_function is None
    assert model.__dict__[_PREDICT_CACHE][1] is made  # no second trace
    assert first.to_dict()["leaks"] == second.to_dict()["leaks"]
    assert first.output_gap == second.output_gap
    assert _predict_check(second).relative_l2 is not None


def test_predict_function_of_the_user_is_used_and_kept(keras):
    model, x = _with_user_layer(keras)
    model.predict(x[:4], verbose=0)
    own = model.predict_function
    check(model, x, options=CheckOptions(probe_preprocessing=False))
    assert model.predict_function is own
    assert _PREDICT_CACHE not in model.__dict__  # the user's own was used, none made


def test_a_leaky_predict_step_is_found_on_every_check(keras):
    L = keras.layers

    class LeakyPredict(keras.Sequential):
        # a custom inference step that runs the model in training mode
        def predict_step(self, data):
            x = data[0] if isinstance(data, tuple) else data
            return self(x, training=True)

    keras.utils.set_random_seed(3)
    model = LeakyPredict([keras.Input((5,)), L.Dense(6), L.BatchNormalization(), L.Dense(2)])
    x = np.random.default_rng(3).normal(4.0, 3.0, (16, 5)).astype("float32")
    before = [np.array(v) for v in model.variables]
    for _ in range(2):  # the second check reuses the kept function: it must still see the leak
        leak = _predict_check(check(model, x, options=CheckOptions(probe_preprocessing=False)))
        assert leak.relative_l2 is not None and leak.relative_l2 > 0.1
        assert leak.is_leak
    assert all(np.array_equal(b, np.array(v)) for b, v in zip(before, model.variables))


def test_a_new_compile_setting_traces_again(keras):
    model, x = _with_user_layer(keras)
    model.compile(loss="mse")
    check(model, x, options=CheckOptions(probe_preprocessing=False))
    made = model.__dict__[_PREDICT_CACHE][1]
    model.compile(loss="mse", run_eagerly=True)  # Keras would make a new predict function: so do we
    check(model, x, options=CheckOptions(probe_preprocessing=False))
    assert model.__dict__[_PREDICT_CACHE][1] is not made


def test_pair_sums_are_the_plain_ops_bit_for_bit(keras):
    from bngap import backend

    ops = keras.ops
    rng = np.random.default_rng(7)
    t = ops.convert_to_tensor(rng.normal(1.0, 3.0, (4, 9, 9, 5)).astype("float32"))
    r = ops.convert_to_tensor(rng.normal(0.0, 2.0, (4, 9, 9, 5)).astype("float32"))
    got = np.array([backend.to_numpy(s) for s in backend.pair_sums(t, r)])
    plain = backend.to_numpy(ops.stack([ops.sum(ops.square(t - r)), ops.sum(ops.square(r))]))
    assert np.array_equal(got, plain)
    t64, r64 = backend.to_numpy(t).astype(np.float64), backend.to_numpy(r).astype(np.float64)
    np.testing.assert_allclose(got, [np.sum((t64 - r64) ** 2), np.sum(r64**2)], rtol=1e-5)


def test_fetch_all_gives_each_tensor_as_it_is(keras):
    """A pass's quantities fetched in a few transfers (scalars stacked,
    tensors joined along their last axis by dtype and leading shape) come
    back one array each, bit for bit, in order."""
    from bngap import backend
    from bngap.reductions import fetch

    rng = np.random.default_rng(3)
    shapes = [(), (5,), (), (3, 1, 4), (3, 4), (7,), (3, 1, 2), (2, 6), ()]
    arrays = [rng.normal(0, 1, s).astype("float32") for s in shapes]
    arrays.append(np.arange(4, dtype="int32"))  # a dtype of its own
    tensors = [keras.ops.convert_to_tensor(a) for a in arrays]
    got = backend.fetch_all(tensors)
    assert [g.shape for g in got] == [a.shape for a in arrays]
    for g, a in zip(got, arrays):
        assert g.dtype == a.dtype and np.array_equal(g, a)
    pair = fetch([(tensors[0], tensors[2]), tensors[1]])
    assert np.array_equal(np.asarray(pair[0]), arrays[0:3:2]) and np.array_equal(pair[1], arrays[1])


def test_bn_input_moments_are_the_plain_ops_bit_for_bit(keras):
    from bngap import backend
    from bngap.reductions import channel_moments as _channel_moments

    ops = keras.ops
    x = ops.convert_to_tensor(
        np.random.default_rng(8).normal(5.0, 2.0, (3, 6, 6, 4)).astype("float32")
    )
    _, mean, m2 = _channel_moments(ops, x, -1)
    x3 = ops.reshape(x, (3, -1, 4))
    mu = ops.mean(x3, axis=1)
    plain = backend.to_numpy(ops.sum(ops.square(x3 - mu[:, None, :]), axis=1))
    assert np.array_equal(m2, plain)
    x64 = backend.to_numpy(x).astype(np.float64).reshape(3, -1, 4)
    np.testing.assert_allclose(mean, x64.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(
        m2, ((x64 - x64.mean(axis=1, keepdims=True)) ** 2).sum(axis=1), rtol=1e-4
    )


@pytest.mark.parametrize("compile_passes", [False, True])
def test_own_contribution_inside_a_mode_leak_matches_numpy(keras, monkeypatch, compile_passes):
    """A block that calls its BN with training=True always: the BN's own
    contribution compares its two modes on one input with the statistics the
    model has (bngap's inference-mode call of the block must not move them)."""
    import zoo

    model, x, _ = zoo.mode_leak()
    _passes(monkeypatch, compile_passes)
    got = check(model, x, options=OPTIONS).layer("block/bn").own_contribution
    block = model.get_layer("block")
    eps = block.bn.epsilon
    mean = block.bn.moving_mean.numpy().astype(np.float64)
    var = block.bn.moving_variance.numpy().astype(np.float64)
    sq_d = sq_r = 0.0
    for i in range(0, len(x), 16):
        h = np.asarray(block.dense(x[i : i + 16]), dtype=np.float64)
        inference = (h - mean) / np.sqrt(var + eps)
        training = (h - h.mean(0)) / np.sqrt(h.var(0) + eps)
        sq_d += float(((training - inference) ** 2).sum())
        sq_r += float((inference**2).sum())
    assert got == pytest.approx(np.sqrt(sq_d / sq_r), rel=1e-5)


@pytest.mark.parametrize("compile_passes", [False, True])
def test_a_trainable_variable_written_in_training_mode_is_put_back_each_pass(
    keras, monkeypatch, compile_passes
):
    """SpectralNormalization writes its kernel in a training-mode call: a
    batch measured twice must give what it gives once (found by review: the
    second batch ran with the kernel the first one wrote)."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((6,)), L.SpectralNormalization(L.Dense(6)), L.BatchNormalization(), L.Dense(2)]
    )
    _passes(monkeypatch, compile_passes)
    x = np.random.default_rng(3).normal(1, 2, (16, 6)).astype("float32")
    once = check(model, x, options=OPTIONS).output_gap.relative_l2
    twice = check(model, np.concatenate([x, x]), options=OPTIONS).output_gap.relative_l2
    assert twice == pytest.approx(once, rel=1e-6)


@pytest.mark.parametrize("compile_passes", [False, True])
def test_the_states_of_a_stateful_rnn_are_put_back_each_pass(keras, monkeypatch, compile_passes):
    """A stateful LSTM writes its states (variables Keras keeps out of
    `model.variables`) in every call: each pass starts from the states the
    model had, so a model with no mode-dependent layer has no gap, and the
    check leaves them as they were (found by review: the training pass
    started where the inference pass left off, a gap of 0.13)."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((5, 3), batch_size=4)
    lstm = L.LSTM(4, stateful=True, name="lstm")
    model = keras.Model(inp, L.Dense(2)(lstm(inp)))
    x = np.random.default_rng(0).normal(1, 2, (8, 5, 3)).astype("float32")
    model(x[:4])  # states the model carries from an earlier call
    before = [np.array(v) for v in lstm.states]
    _passes(monkeypatch, compile_passes)
    got = check(model, x, options=CheckOptions(batch_size=4, probe_preprocessing=False))
    assert got.output_gap.relative_l2 == 0.0
    assert all(np.array_equal(np.array(v), b) for v, b in zip(lstm.states, before))


def _comparable(report) -> dict:
    d = report.to_dict()
    d.pop("seconds", None)
    return d


def _observe_calls(monkeypatch) -> list:
    from bngap.probe import Probe

    calls: list = []
    original = Probe.observe_pass

    def spy(self, xs, **kwargs):
        calls.append(kwargs.get("training", "no flag"))
        return original(self, xs, **kwargs)

    monkeypatch.setattr(Probe, "observe_pass", spy)
    return calls


def test_the_no_flag_call_is_the_reference_only_where_it_is_the_same_call(keras, monkeypatch):
    """model(x) gives every Keras layer of a functional model what
    model(x, training=False) gives it: no pass is needed at all (the modes
    are read off a call that computes nothing). A custom layer whose None
    means training, and a subclassed model whose own call() reads
    `training`, get the no-flag call and the reference computed, and their
    no-flag gap."""
    from bngap import inferencepaths

    L = keras.layers

    class TrainingUnlessTold(L.Layer):  # None means training here, as in some user code
        def call(self, x, training=None):
            return x + 1.0 if training is None or training else x

    class OwnLogic(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = L.Dense(3, name="dense")
            self.bn = L.BatchNormalization(name="bn")

        def call(self, x, training=None):
            y = self.bn(self.dense(x), training=training)
            return y + 1.0 if training is None else y

    x = np.random.default_rng(3).normal(1, 2, (16, 5)).astype("float32")
    plain = keras.Sequential([keras.Input((5,)), L.Dense(3), L.BatchNormalization(), L.Dense(2)])
    custom = keras.Sequential(
        [keras.Input((5,)), L.Dense(3), TrainingUnlessTold(), L.BatchNormalization(), L.Dense(2)]
    )
    own = OwnLogic()
    own(x[:2])
    options = CheckOptions(batch_size=16, probe_preprocessing=False)
    for model, shared in ((plain, True), (custom, False), (own, False)):
        calls = _observe_calls(monkeypatch)
        got = check(model, x, options=options)
        assert calls == ([] if shared else ["no flag", False])
        noflag = next(c for c in got.leaks if c.path == "model(x)")
        assert (noflag.relative_l2 > 0.01) is not shared
        monkeypatch.setattr(inferencepaths, "_same_modes", lambda *a: False)
        again = check(model, x, options=options)
        assert _comparable(got) == _comparable(again)
        monkeypatch.undo()
