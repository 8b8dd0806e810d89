"""The inference paths: where the answers follow from what the layers got
(a model of Keras' own classes, no layer in training mode), no pass of
their own runs and predict() is not called; where they do not (a layer
given training=True at construction, code of the user's), the passes run
and predict() is compared. Either way the report is the one the passes
give. (More inference-path tests are in test_probe.py, with the passes.)"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bngap import inferencepaths
from bngap.inferencepaths import PREDICT_BY_CONSTRUCTION, PathPasses
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


def _user_gate_model(keras):
    """An LSTM layer of Keras whose cell runs a gate (recurrent) activation
    of the user's: code of the user's in every step, as an activation."""
    L = keras.layers

    def hard_gate(x):
        return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)

    keras.utils.set_random_seed(2)
    inp = keras.Input((5, 3), name="x")
    h = L.LSTM(4, recurrent_activation=hard_gate, name="lstm")(inp)
    return keras.Model(inp, L.Dense(2, name="o")(L.BatchNormalization(name="bn")(h)), name="gate")


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


def _noise_model(keras):
    """Noise and dropout (seed generators), compiled with
    steps_per_execution=2 and jit_compile=True."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3), name="x")
    h = L.BatchNormalization(name="bn")(
        L.Conv2D(4, 3, name="conv")(L.GaussianNoise(0.5, name="noise")(inp))
    )
    h = L.Dropout(0.5, name="drop")(L.GlobalAveragePooling2D(name="pool")(h))
    model = keras.Model(inp, L.Dense(3, name="out")(h), name="noise")
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


def _report(model, x) -> dict:
    d = check(model, x, options=OPTIONS).to_dict()
    d.pop("seconds", None)
    return d


def _passes(monkeypatch) -> list[str]:
    """The inference-path passes run, by name."""
    ran: list[str] = []
    for name in ("observe_pass", "forced_eval_pass", "modes_pass", "_predict_kept_aside"):
        original = getattr(PathPasses, name)

        def spy(self, *a, __original=original, __name=name, **kw):
            ran.append(__name)
            return __original(self, *a, **kw)

        monkeypatch.setattr(PathPasses, name, spy)
    return ran


def _with_passes(monkeypatch) -> None:
    """The answers all measured: no no-flag modes read off the first batch."""
    monkeypatch.setattr(PathPasses, "watch_no_flag", lambda self: None)


def _leaks(report: dict) -> dict:
    return {c["path"]: c for c in report["leaks"]}


def _user_layer_model(keras):
    """A Sequential model with one layer of the user's class."""
    L = keras.layers

    class Shift(L.Layer):
        def call(self, x):
            return x + 0.5

    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [keras.Input((6,)), L.Dense(5), Shift(), L.BatchNormalization(), L.Dense(2)]
    )


def _nested_training_model(keras):
    """A transfer-learning base called with training=True at construction:
    model(x) runs its BN layer in training mode, model(x, training=False) not."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    b_in = keras.Input((6,), name="b_in")
    base = keras.Model(
        b_in, L.BatchNormalization(name="inner")(L.Dense(5, name="bd")(b_in)), name="base"
    )
    inp = keras.Input((6,), name="x")
    return keras.Model(inp, L.Dense(2, name="o")(base(inp, training=True)), name="outer")


def _x(shape):
    return np.random.default_rng(0).normal(1, 2, shape).astype("float32")


@pytest.mark.parametrize("build", [_noise_model, _two_input_model], ids=["noise", "two_input"])
def test_a_plain_model_runs_no_inference_path_pass(keras, monkeypatch, build):
    """Seed generators, XLA and steps_per_execution; dict inputs, two
    outputs and a base called with training=False: every answer follows
    from the modes, read off the first batch without computing. The report
    is the one the passes give, and the weights are untouched."""
    x = _inputs("aug" if build is _noise_model else "two")
    ran = _passes(monkeypatch)
    model = build(keras)
    before = [np.array(v) for v in model.variables]
    got = _report(model, x)
    assert ran == ["modes_pass"]
    assert all(np.array_equal(np.array(v), b) for v, b in zip(model.variables, before))
    leaks = _leaks(got)
    assert leaks["model(x)"]["relative_l2"] == 0.0 and not leaks["model(x)"]["layers_in_training"]
    assert leaks["predict(x)"]["skipped"] == PREDICT_BY_CONSTRUCTION
    _with_passes(monkeypatch)
    ran.clear()
    assert _report(build(keras), x) == got
    assert ran == ["observe_pass"]  # predict() is model(x, training=False) itself either way


def test_the_modes_pass_computes_no_layer(keras, monkeypatch):
    """A layer with no layers below it hands back its inference output in
    the modes pass: Conv2D.call runs in the passes, never in that one."""
    conv = keras.layers.Conv2D
    original, counts, inside = conv.call, {"in": 0, "out": 0}, []

    @functools.wraps(original)
    def counted(self, *a, **kw):
        counts["in" if inside else "out"] += 1
        return original(self, *a, **kw)

    modes = PathPasses.modes_pass

    def marked(self, xs):
        inside.append(True)
        try:
            return modes(self, xs)
        finally:
            inside.pop()

    monkeypatch.setattr(conv, "call", counted)
    monkeypatch.setattr(PathPasses, "modes_pass", marked)
    check(_noise_model(keras), _inputs("aug"), options=OPTIONS)
    assert counts["out"] > 0 and counts["in"] == 0


@pytest.mark.parametrize(
    "build, layer",
    [
        (_leaky_model, "leaky"),
        (_nested_training_model, "base/inner"),
        (_augmenting_model, "flip"),
    ],
    ids=["bn_given_training", "base_given_training", "flip_defaults_to_training"],
)
def test_a_layer_given_training_at_construction_gets_the_passes(keras, monkeypatch, build, layer):
    """model(x) runs a layer in training mode that model(x, training=False)
    does not (Keras' random image layers default to training=True): the
    modes say so, the no-flag call and its reference run, and the leak is
    reported as the passes alone report it."""
    shape = (40, 6) if build is _nested_training_model else (40, 6, 6, 3)
    model = build(keras)
    model = model[0] if isinstance(model, tuple) else model
    ran = _passes(monkeypatch)
    got = _report(model, _x(shape))
    assert ran == ["modes_pass", "observe_pass", "observe_pass"]
    noflag = _leaks(got)["model(x)"]
    assert noflag["layers_in_training"] == [layer] and noflag["relative_l2"] > 0.05
    _with_passes(monkeypatch)
    again = build(keras)
    assert _report(again[0] if isinstance(again, tuple) else again, _x(shape)) == got


@pytest.mark.parametrize(
    "build, shape",
    [
        (_mc_dropout_model, (40, 6)),
        (_user_cell_model, (40, 5, 3)),
        (_user_activation_model, (40, 6)),
        (_user_gate_model, (40, 5, 3)),
        (_user_layer_model, (40, 6)),
    ],
    ids=["predict_step", "rnn_cell", "activation", "gate_activation", "layer"],
)
def test_code_of_the_user_gets_predict_run(keras, monkeypatch, build, shape):
    """The model's own class, an RNN layer's cell, an activation function
    (also a cell's gate activation) or a layer of the user's: predict() may
    compute something else, so it is run and compared (Monte Carlo
    dropout's predict_step is caught)."""
    ran = _passes(monkeypatch)
    got = _leaks(_report(build(keras), _x(shape)))
    assert "_predict_kept_aside" in ran and "modes_pass" not in ran
    predict = got["predict(x)"]
    assert not predict["skipped"] and predict["relative_l2"] is not None
    assert (predict["relative_l2"] > 0.01) is (build is _mc_dropout_model)


def _resizing_model(keras):
    """Resizing is not mode-dependent, but its signature's training=True,
    taken when no flag is given, stays in Keras' call context: the BN after
    it runs in training mode in model(x) (Keras 3.15.1)."""
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="x")
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, 3, name="c")(L.Resizing(6, 6, name="rs")(inp)))
    return keras.Model(inp, L.Dense(2, name="o")(L.GlobalAveragePooling2D(name="p")(h)), name="m")


def _shared_bn_model(keras):
    """One BN layer called twice, given training=True in one call only."""
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="x")
    bn = L.BatchNormalization(name="bn")
    a = bn(L.Conv2D(3, 3, name="c1")(inp), training=True)
    b = bn(L.Conv2D(3, 3, name="c2")(inp))
    h = L.GlobalAveragePooling2D(name="p")(L.Concatenate(name="cat")([a, b]))
    return keras.Model(inp, L.Dense(2, name="o")(h), name="m")


def _rand_augment_model(keras):
    """RandAugment calls its own layers only in training mode (the default
    when no flag is given): in the modes pass they compute, having no
    inference output to hand back."""
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="x")
    h = L.RandAugment(value_range=(0, 1), name="ra")(inp)
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, 3, name="c")(h))
    return keras.Model(inp, L.Dense(2, name="o")(L.GlobalAveragePooling2D(name="p")(h)), name="m")


def _time_distributed_model(keras):
    """TimeDistributed(BatchNormalization()): the wrapper calls its layer's
    call() once per step, in the modes pass too."""
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="x")
    h = L.TimeDistributed(L.BatchNormalization(name="bn"), name="td")(inp)
    return keras.Model(inp, L.Dense(2, name="o")(L.Flatten(name="f")(h)), name="m")


@pytest.mark.parametrize(
    "build, in_training",
    [
        (_resizing_model, ["bn"]),
        (_shared_bn_model, ["bn"]),
        (_rand_augment_model, ["ra", "bn"]),
        (_time_distributed_model, []),
    ],
    ids=["call_context", "shared_bn", "layers_only_in_training", "time_distributed"],
)
def test_the_modes_pass_gives_the_report_of_the_passes(keras, monkeypatch, build, in_training):
    """What model(x) gives each layer, read off the modes pass (leaves hand
    back their inference outputs, Keras' own __call__ still resolves and
    passes on `training`), is what the no-flag pass records: the same
    report either way."""
    x = _x((40, 8, 8, 3))
    keras.utils.set_random_seed(2)
    got = _report(build(keras), x)
    assert _leaks(got)["model(x)"]["layers_in_training"] == in_training
    _with_passes(monkeypatch)
    keras.utils.set_random_seed(2)
    assert _report(build(keras), x) == got


def test_predict_failing_under_xla_is_skipped_with_its_error(keras):
    """predict() of a model with a layer of the user's, compiled with
    jit_compile=True, fails (XLA has no kernel for area resizing) where its
    eager calls work: the check says "skipped" with predict()'s error."""
    L = keras.layers

    class Half(L.Layer):
        def call(self, x):
            return x * 0.5

    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3), name="x")
    h = L.Flatten(name="flat")(L.Resizing(3, 3, interpolation="area", name="resize")(inp))
    h = L.BatchNormalization(name="bn")(Half(name="half")(L.Dense(4, name="dense")(h)))
    model = keras.Model(inp, L.Dense(2, name="out")(h), name="area")
    model.compile("sgd", "mse", jit_compile=True)
    predict = _leaks(_report(model, _x((40, 8, 8, 3))))["predict(x)"]
    assert predict["skipped"].startswith("InvalidArgumentError") and predict["relative_l2"] is None


def test_plain_keras_model_is_keras_own_classes_only(keras):
    """What counts as a model of Keras' own classes."""
    from bngap.layertree import build_tree

    def plain(model):
        return inferencepaths.plain_keras_model(model, build_tree(model, keras), keras)

    assert plain(_two_input_model(keras)) and plain(_augmenting_model(keras))
    assert plain(_noise_model(keras))
    users = (_mc_dropout_model, _user_cell_model, _user_activation_model, _user_gate_model)
    for build in (*users, _user_layer_model):
        assert not plain(build(keras)), build.__name__

    def text_model(standardize):
        L = keras.layers
        inp = keras.Input((1,), dtype="string")
        ids = L.TextVectorization(
            standardize=standardize, vocabulary=["a", "b"], output_sequence_length=3
        )(inp)
        return keras.Model(inp, L.Dense(2)(L.Embedding(5, 2)(ids)))

    def own_standardize(text):
        return text

    assert plain(text_model("lower")) and not plain(text_model(own_standardize))

    def dense_model(**kwargs):
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(2, **kwargs)(inp))

    # any other function of the user's a Keras layer holds counts too (a wrong
    # guess only costs a predict() run), also behind functools.partial
    import functools

    assert plain(dense_model(kernel_constraint=keras.constraints.NonNeg()))
    assert not plain(dense_model(kernel_constraint=own_standardize))
    assert not plain(dense_model(activation=functools.partial(own_standardize)))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_inference_paths_on_the_other_backends(backend):
    """On JAX and PyTorch too: no pass for a model of Keras' own classes,
    the passes and the leak for a base called with training=True at
    construction; each report the one the passes give."""
    from backend_child import run_task

    r = run_task(backend, "inference_paths")
    plain, given = r["plain"], r["given_training"]
    assert plain["ran"] == ["modes_pass"] and plain["same_with_passes"]
    leaks = {c["path"]: c for c in plain["leaks"]}
    assert leaks["model(x)"]["relative_l2"] == 0.0
    assert leaks["predict(x)"]["skipped"] == PREDICT_BY_CONSTRUCTION
    assert given["ran"] == ["modes_pass", "observe_pass", "observe_pass"]
    assert given["same_with_passes"]
    noflag = next(c for c in given["leaks"] if c["path"] == "model(x)")
    assert noflag["layers_in_training"] == ["base/inner"] and noflag["relative_l2"] > 0.05
