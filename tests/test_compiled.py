"""The compiled passes (TensorFlow): a check whose inference and training
passes ran as one graph reports what the eager passes report, leaves the
model bit-identical, traces once per model, and falls back to the eager
passes where a model cannot be traced or a sum comes out non-finite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bngap import compiled
from bngap.pipeline import CheckOptions, check

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False)


@pytest.fixture(autouse=True)
def compile_from_the_first_batch(monkeypatch):
    """Zoo data are a few batches: compile them all the same."""
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)


def _numbers(report) -> dict:
    """Every number and word of a report but its timing."""
    d = report.to_dict()
    d.pop("seconds", None)
    d.get("settings", {}).pop("seconds", None)
    return d


def _close(a, b, path="report"):
    """Equal words, numbers within float32 rounding of graph vs eager kernels."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert a == pytest.approx(b, rel=2e-5, abs=1e-6), path
    else:
        assert a == b, path


def _eager_then_compiled(model, x, y, monkeypatch):
    monkeypatch.setattr(compiled, "available", lambda m: False)
    eager = check(model, x, y, options=OPTIONS)
    monkeypatch.undo()
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    graph = check(model, x, y, options=OPTIONS)
    return eager, graph


@pytest.mark.parametrize(
    "name", ["under_trained", "dropout_only", "nested", "subclassed", "mode_leak", "augmentation"]
)
def test_compiled_report_equals_the_eager_one(keras, zoo, monkeypatch, name):
    model, x, y = zoo.get(name)
    eager, graph = _eager_then_compiled(model, x, y, monkeypatch)
    assert _graphs(model, keras)
    _close(_numbers(eager), _numbers(graph))


def test_compiled_check_leaves_every_variable_bit_identical(keras, zoo):
    model, x, y = zoo.get("under_trained")
    before = [np.array(v.numpy(), copy=True) for v in model.variables]
    check(model, x, y, options=OPTIONS)
    check(model, x, y, options=OPTIONS)
    for v, b in zip(model.variables, before):
        assert np.array_equal(v.numpy(), b), v.path


def test_second_check_reuses_the_graph(keras, zoo):
    model, x, _ = zoo.get("preprocessing_mismatch")
    first = check(model, x, options=OPTIONS)
    passes = compiled.CompiledPasses(model, _nodes(model, keras))
    (entry,) = passes.entries()
    traced = entry.function.experimental_get_tracing_count()
    second = check(model, x, options=OPTIONS)
    assert entry.function.experimental_get_tracing_count() == traced == 1
    assert passes.entries() == [entry]
    _close(_numbers(first), _numbers(second))


def test_a_model_that_runs_eagerly_is_measured_eagerly(keras):
    """run_eagerly=True: fit() runs its steps eagerly, and so does the check."""
    L = keras.layers
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), L.BatchNormalization(), L.Dense(2)])
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.random.default_rng(1).normal(1, 2, (16, 5)).astype("float32")
    check(model, x, options=OPTIONS)
    assert compiled.for_check(model, _nodes(model, keras), 10) is None
    model.compile("sgd", "mse")
    check(model, x, options=OPTIONS)
    assert _graphs(model, keras)


def test_few_batches_run_eagerly_many_compile_and_the_graph_is_reused(keras, monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 4)
    L = keras.layers
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), L.BatchNormalization(), L.Dense(2)])
    x = np.random.default_rng(2).normal(1, 2, (64, 5)).astype("float32")
    check(model, x[:48], options=OPTIONS)  # 3 batches
    assert not _graphs(model, keras)
    check(model, x, options=OPTIONS)  # 4 batches
    (graph,) = _graphs(model, keras)
    check(model, x[:16], options=OPTIONS)  # 1 batch, through the graph made before
    assert _graphs(model, keras) == [graph]
    assert graph.experimental_get_tracing_count() == 1


def test_another_input_shape_gets_a_graph_of_its_own(keras):
    """A model with free spatial sizes, checked at two sizes: two graphs,
    each giving what the eager passes give."""
    L = keras.layers
    keras.utils.set_random_seed(6)
    inp = keras.Input((None, None, 3))
    h = L.BatchNormalization()(L.Conv2D(4, 3)(inp))
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(6)
    for size in (8, 12):
        x = rng.normal(2, 3, (32, size, size, 3)).astype("float32")
        graph = check(model, x, options=OPTIONS)
        compiled.available, available = (lambda m: False), compiled.available
        try:
            eager = check(model, x, options=OPTIONS)
        finally:
            compiled.available = available
        _close(_numbers(eager), _numbers(graph))
    assert len(_graphs(model, keras)) == 2


def test_untraceable_model_falls_back_to_the_eager_passes(keras, monkeypatch):
    L = keras.layers

    class NumpyInside(L.Layer):  # a value read in Python: fine eagerly, not in a graph
        def call(self, x):
            scale = float(np.asarray(x).std()) + 1.0
            return x / scale

        def compute_output_shape(self, shape):
            return shape

    def build():
        keras.utils.set_random_seed(3)
        inp = keras.Input((6,))
        out = L.Dense(2)(L.BatchNormalization()(NumpyInside()(L.Dense(6)(inp))))
        return keras.Model(inp, out)

    x = np.random.default_rng(3).normal(2, 3, (32, 6)).astype("float32")
    model = build()
    eager, graph = _eager_then_compiled(model, x, None, monkeypatch)
    nodes = _nodes(model, keras)
    assert [e.failed for e in compiled.CompiledPasses(model, nodes).entries()] == [True]
    _close(_numbers(eager), _numbers(graph))


def test_non_finite_sums_are_measured_again_exactly(keras, monkeypatch):
    """A layer whose output overflows in one mode: the compiled sums are
    Inf, so the batch is measured again eagerly, leaving Inf entries out."""
    L = keras.layers
    keras.utils.set_random_seed(4)
    inp = keras.Input((4,))
    h = L.BatchNormalization()(L.Dense(4)(inp))
    h = L.Lambda(lambda t: keras.ops.exp(t * 200.0))(h)  # overflows to Inf for some entries
    model = keras.Model(inp, L.Dense(2)(h))
    x = np.random.default_rng(4).normal(0, 3, (32, 4)).astype("float32")
    eager, graph = _eager_then_compiled(model, x, None, monkeypatch)
    _close(_numbers(eager), _numbers(graph))


def test_fix_after_compiled_checks_measures_the_new_statistics(keras, zoo, monkeypatch):
    """`fix` commits new statistics between its two measurements: the graph
    must read them, not statistics baked in when it was traced."""
    import bngap

    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    model, x, _ = zoo.get("under_trained")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    before = check(clone, x, options=OPTIONS).output_gap.relative_l2  # traced, old statistics
    assert _graphs(clone, keras)
    result = bngap.fix(clone, x, batch_size=16)  # in place, measured through the same graph
    assert result.before.relative_l2 == pytest.approx(before, rel=1e-5)
    monkeypatch.setattr(compiled, "available", lambda m: False)
    after = check(clone, x, options=OPTIONS).output_gap.relative_l2  # eager, new statistics
    assert result.after.relative_l2 == pytest.approx(after, rel=1e-5)
    assert after < 0.5 * before


def _graphs(model, keras) -> list:
    return [
        e.function
        for e in compiled.CompiledPasses(model, _nodes(model, keras)).entries()
        if e.function
    ]


def _nodes(model, keras):
    from bngap.layertree import build_tree

    return build_tree(model, keras)


def test_the_users_graph_optimizer_options_are_left_as_they_were(keras, zoo):
    import tensorflow as tf

    model, x, _ = zoo.get("under_trained")
    tf.config.optimizer.set_experimental_options({"constant_folding": False})
    try:
        before = tf.config.optimizer.get_experimental_options()
        check(model, x, options=OPTIONS)
        assert tf.config.optimizer.get_experimental_options() == before
    finally:
        tf.config.optimizer.set_experimental_options({"constant_folding": True})


def test_random_in_every_mode_gets_the_same_masks_compiled_and_eager(keras, monkeypatch):
    """MC dropout (a Dropout called with training=True inside a custom
    layer): the inference pass must see the state the eager pass sees, and
    the training and effect passes the batch's seeds (found by review: the
    graph's inference pass used up the batch's masks)."""
    L = keras.layers

    class MC(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.drop = L.Dropout(0.5, name="drop")

        def call(self, x):
            return self.drop(x, training=True)

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = MC(name="mc")(L.BatchNormalization()(L.Dense(8)(inp)))
    model = keras.Model(inp, L.Dense(2)(h))
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    monkeypatch.setattr(compiled, "available", lambda m: False)
    eager = check(model, x, options=options)
    monkeypatch.undo()
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    graph = check(model, x, options=options)
    assert graph.layer("mc/drop").output_effect > 0.1
    _close(_numbers(eager), _numbers(graph))


def test_a_changed_layer_setting_makes_a_new_graph(keras, monkeypatch):
    """A Dropout's rate is read while tracing: after it changes, the graph
    made before must not be used (found by review: it was)."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(6), L.Dropout(0.5, name="drop"), L.Dense(2)]
    )
    x = np.random.default_rng(0).normal(1, 2, (32, 6)).astype("float32")
    check(model, x, options=OPTIONS)
    model.get_layer("drop").rate = 0.1
    eager, graph = _eager_then_compiled(model, x, None, monkeypatch)
    _close(_numbers(eager), _numbers(graph))
