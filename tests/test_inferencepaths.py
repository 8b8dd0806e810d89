"""The inference paths: predict() started on a thread of its own beside
the first inference pass (`PathPasses.predict_ahead`) gives the same report
as predict() run last, leaves the model bit-identical, and is run last
where it is not safe or failed. (The other inference-path tests are in
test_probe.py, with the passes.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bngap import inferencepaths
from bngap.pipeline import CheckOptions, check

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False)


def _leaky_model(keras):
    """A Functional model of Keras layers whose second BN is called with
    training=True at construction: predict() itself runs it in training mode
    and writes its moving statistics, beside bngap's inference pass."""
    L = keras.layers
    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 3), name="x")  # named: two builds give the same report
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="c1")(inp)))
    h = L.BatchNormalization(name="leaky")(L.Conv2D(4, 1, name="c2")(h), training=True)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="pool")(h))
    model = keras.Model(inp, out, name="leaky_model")
    x = np.random.default_rng(7).normal(1, 2, (40, 6, 6, 3)).astype("float32")
    return model, x


def _threads(monkeypatch) -> list[int]:
    """The threads predict() ran on."""
    seen: list[int] = []
    original = inferencepaths.PathPasses._predict_kept_aside

    def recorded(self, xs):
        seen.append(threading.get_ident())
        return original(self, xs)

    monkeypatch.setattr(inferencepaths.PathPasses, "_predict_kept_aside", recorded)
    return seen


def _report(model, x):
    d = check(model, x, options=OPTIONS).to_dict()
    d.pop("seconds", None)
    return d


def test_predict_ahead_gives_the_same_report_and_leaves_the_weights(keras, monkeypatch):
    model, x = _leaky_model(keras)
    before = [np.array(v) for v in model.variables]
    seen = _threads(monkeypatch)
    ahead = _report(model, x)
    assert seen and seen[0] != threading.get_ident()  # it ran beside the passes
    assert all(np.array_equal(np.array(v), b) for v, b in zip(model.variables, before))
    seen.clear()
    again = _report(model, x)  # predict() made already: run last, not beside
    assert seen == [threading.get_ident()] and again == ahead
    monkeypatch.setattr(inferencepaths, "_ahead_safe", lambda *a: False)
    fresh, _ = _leaky_model(keras)  # the same weights, nothing traced
    seen.clear()
    assert _report(fresh, x) == ahead and seen == [threading.get_ident()]
    assert all(np.array_equal(np.array(v), b) for v, b in zip(model.variables, before))


def test_not_ahead_with_a_layer_of_the_user(keras, zoo, monkeypatch):
    """A custom layer may draw random numbers or write state in inference
    mode: predict() then runs after the passes, on the main thread."""
    model, x, _ = zoo.get("mode_leak")
    seen = _threads(monkeypatch)
    check(model, x, options=OPTIONS)
    assert seen == [threading.get_ident()]


def test_a_failed_predict_ahead_runs_again_last(keras, monkeypatch):
    """An error on the thread is not reported from there: predict() runs
    again on the main thread, whose result (here: it works) is the one told."""
    model, x = _leaky_model(keras)
    original = inferencepaths.PathPasses._predict_kept_aside
    calls: list[int] = []

    def flaky(self, xs):
        calls.append(threading.get_ident())
        if len(calls) == 1:
            raise RuntimeError("failed on the thread")
        return original(self, xs)

    monkeypatch.setattr(inferencepaths.PathPasses, "_predict_kept_aside", flaky)
    r = check(model, x, options=OPTIONS)
    assert len(calls) == 2 and calls[1] == threading.get_ident() != calls[0]
    predict = next(c for c in r.leaks if c.path == "predict(x)")
    assert not predict.skipped and predict.relative_l2 == pytest.approx(0.0, abs=1e-5)


def _predict_first(monkeypatch) -> None:
    """The interleaving that shows a race deterministically: predict() on its
    thread ends before the first inference pass begins."""
    original = inferencepaths.PathPasses.predict_ahead

    def first(self, xs):
        original(self, xs)
        if self._ahead is not None and self._ahead[1] is not None:
            self._ahead[1].join()

    monkeypatch.setattr(inferencepaths.PathPasses, "predict_ahead", first)


def _mc_dropout_model(keras):
    """A Functional model of the user's class (Keras' functional constructor)
    whose predict_step() calls it with training=True (Monte Carlo dropout):
    predict() writes the BN layer's moving statistics."""
    L = keras.layers

    class MonteCarlo(keras.Model):
        def predict_step(self, data):
            x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            return self(x, training=True)

    keras.utils.set_random_seed(2)
    inp = keras.Input((6,), name="x")
    h = L.BatchNormalization(name="bn")(L.Dense(5, name="d")(inp))
    return MonteCarlo(inp, L.Dense(2, name="o")(L.Dropout(0.5, name="drop")(h)), name="mc")


def _user_cell_model(keras):
    """An RNN layer of Keras (the tree does not enter it) running a cell of
    the user's that writes a variable in inference mode."""
    L = keras.layers

    class CountingCell(L.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.state_size = self.output_size = 3

        def build(self, shape):
            self.steps = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x, states):
            self.steps.assign_add(1.0)
            h = x + 0.5 * states[0] + self.steps
            return h, [h]

    keras.utils.set_random_seed(2)
    inp = keras.Input((5, 3), name="x")
    h = L.RNN(CountingCell(name="cell"), name="rnn")(inp)
    return keras.Model(inp, L.Dense(2, name="o")(L.BatchNormalization(name="bn")(h)), name="m")


def _user_activation_model(keras):
    """A Keras layer running an activation of the user's that draws random
    numbers in inference mode (from Keras' global generator, one per thread)."""
    L = keras.layers

    def noisy(x):
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.1)

    keras.utils.set_random_seed(2)
    inp = keras.Input((6,), name="x")
    h = L.BatchNormalization(name="bn")(L.Dense(5, activation=noisy, name="d")(inp))
    return keras.Model(inp, L.Dense(2, name="o")(h), name="act")


@pytest.mark.parametrize(
    "build, shape",
    [
        (_mc_dropout_model, (40, 6)),
        (_user_cell_model, (40, 5, 3)),
        (_user_activation_model, (40, 6)),
    ],
    ids=["predict_step_of_the_user", "rnn_cell_of_the_user", "activation_of_the_user"],
)
def test_not_ahead_where_user_code_runs_in_predict(keras, monkeypatch, build, shape):
    """Code of the user's that the layer tree does not list (the model's own
    class, an RNN layer's cell, an activation function) may write variables
    or draw random numbers in predict(): run beside
    the inference pass, it changed the statistics that pass read (output gap
    0.8363 against 0.8383, and the BN layer's data_std). predict() runs last."""
    x = np.random.default_rng(0).normal(1, 2, shape).astype("float32")
    _predict_first(monkeypatch)
    seen = _threads(monkeypatch)
    got = _report(build(keras), x)
    assert seen == [threading.get_ident()]
    monkeypatch.setattr(inferencepaths, "_ahead_safe", lambda *a: False)
    assert _report(build(keras), x) == got


def _augmenting_model(keras):
    """Random augmentation, noise and dropout (seed generators), compiled
    with steps_per_execution=2 and jit_compile=True."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3), name="x")
    h = L.GaussianNoise(0.5, name="noise")(L.RandomFlip(name="flip")(inp))
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(h))
    h = L.Dropout(0.5, name="drop")(L.GlobalAveragePooling2D(name="pool")(h))
    model = keras.Model(inp, L.Dense(3, name="out")(h), name="aug")
    model.compile("sgd", "mse", steps_per_execution=2, jit_compile=True)
    return model


def _two_input_model(keras):
    """Dict inputs, two outputs, and a transfer-learning base called with
    training=False."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    b_in = keras.Input((8,), name="b_in")
    base = keras.Model(
        b_in, L.BatchNormalization(name="inner")(L.Dense(5, name="bd")(b_in)), name="base"
    )
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    h = L.Concatenate(name="cat")([base(a, training=False), L.Dropout(0.3, name="drop")(b)])
    h = L.BatchNormalization(name="bn")(h)
    outs = [L.Dense(2, name="o1")(h), L.Dense(1, name="o2")(h)]
    return keras.Model({"a": a, "b": b}, outs, name="two_input")


def _inputs(name: str):
    rng = np.random.default_rng(3)
    if name == "aug":
        return rng.normal(1, 2, (40, 6, 6, 3)).astype("float32")
    return {"a": rng.normal(1, 2, (40, 8)).astype("float32"), "b": rng.normal(0, 1, (40, 4))}


@pytest.mark.parametrize("build", [_augmenting_model, _two_input_model], ids=["aug", "two_input"])
def test_predict_ended_first_gives_the_report_of_predict_last(keras, monkeypatch, build):
    """The interleaving least like predict() run last (it ends before the
    first inference pass begins) on models with seed generators, XLA and
    steps_per_execution, dict inputs, two outputs and a nested base: the
    same report, the weights untouched."""
    x = _inputs("aug" if build is _augmenting_model else "two")
    _predict_first(monkeypatch)
    seen = _threads(monkeypatch)
    model = build(keras)
    before = [np.array(v) for v in model.variables]
    got = _report(model, x)
    assert seen and seen[0] != threading.get_ident()
    assert all(np.array_equal(np.array(v), b) for v, b in zip(model.variables, before))
    monkeypatch.setattr(inferencepaths, "_ahead_safe", lambda *a: False)
    assert _report(build(keras), x) == got


def test_a_model_failing_beside_predict_reports_its_own_error(keras, monkeypatch):
    """The first inference pass fails (an index out of an Embedding's range)
    while predict() runs on its thread (and fails too): the inference pass's
    ForwardPassError is the one raised, the thread joined."""
    from bngap.errors import ForwardPassError

    L = keras.layers
    inp = keras.Input((5,), name="x", dtype="int32")
    h = L.BatchNormalization(name="bn")(L.Embedding(10, 4, name="emb")(inp))
    model = keras.Model(inp, L.Dense(2, name="out")(L.Flatten(name="flat")(h)), name="oob")
    x = np.random.default_rng(0).integers(0, 50, (40, 5)).astype("int32")
    seen = _threads(monkeypatch)
    with pytest.raises(ForwardPassError, match="'emb'.*inference pass"):
        check(model, x, options=OPTIONS)
    assert len(seen) == 1 and seen[0] != threading.get_ident()
    assert not [t for t in threading.enumerate() if t.name == "bngap-predict"]


def test_predict_failing_under_xla_is_skipped_as_when_run_last(keras, monkeypatch):
    """predict() of a model compiled with jit_compile=True fails (XLA has no
    kernel for area resizing) where its eager calls work: it failed on the
    thread and again on the main thread, and the leak check says "skipped"
    with the very message of predict() run last."""
    L = keras.layers

    def build():
        keras.utils.set_random_seed(2)
        inp = keras.Input((8, 8, 3), name="x")
        h = L.Flatten(name="flat")(L.Resizing(3, 3, interpolation="area", name="resize")(inp))
        h = L.BatchNormalization(name="bn")(L.Dense(4, name="dense")(h))
        model = keras.Model(inp, L.Dense(2, name="out")(h), name="area")
        model.compile("sgd", "mse", jit_compile=True)
        return model

    x = np.random.default_rng(0).normal(0, 1, (40, 8, 8, 3)).astype("float32")
    seen = _threads(monkeypatch)
    got = _report(build(), x)
    assert len(seen) == 2 and seen[0] != seen[1] == threading.get_ident()
    predict = next(c for c in got["leaks"] if c["path"] == "predict(x)")
    assert predict["skipped"].startswith("InvalidArgumentError") and predict["relative_l2"] is None
    monkeypatch.setattr(inferencepaths, "_ahead_safe", lambda *a: False)
    assert _report(build(), x) == got
