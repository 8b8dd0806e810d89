"""The check engine on tiny real models: attribution, diagnosis, side effects,
and its numbers against an independent numpy computation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bngap.pipeline import CheckOptions, check
from bngap.results import Cause, Kind, Severity


def _vars(model):
    return [np.array(v.numpy(), copy=True) for v in model.variables]


def _identical(a, b):
    return len(a) == len(b) and all(
        x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def reports(zoo):
    """One check per zoo model, shared by the tests below."""
    cache = {}

    def get(name, **opts):
        key = (name, tuple(sorted(opts.items())))
        if key not in cache:
            model, x, y = zoo.get(name)
            cache[key] = check(model, x, y, options=CheckOptions(**opts))
        return cache[key]

    return get


# ----------------------------------------------------------- attribution
def test_under_trained_bn_gap_is_attributed_to_bn(reports):
    r = reports("under_trained")
    assert r.output_gap.relative_l2 > 0.2
    assert r.groups["batchnorm"] == pytest.approx(r.output_gap.relative_l2)
    assert r.groups["dropout"] == 0.0
    bn = [x for x in r.layers if x.kind is Kind.BATCHNORM]
    assert {x.path for x in bn} == {"bn1", "bn2"}
    assert all(x.fit_mode == "training" and x.own_contribution > 0.3 for x in bn)
    assert r.findings[0].cause is Cause.STATS_NOT_CONVERGED
    assert r.findings[0].layer == "bn1"
    # the fit-vs-evaluate symptom, reproduced: training-mode loss is lower
    assert r.metrics.train["loss"] < r.metrics.eval["loss"]


def test_under_trained_update_count_is_estimated(reports):
    """3 epochs of 2 batches: 6 updates at momentum 0.99."""
    bn1 = reports("under_trained").batchnorm_layer("bn1")
    assert bn1.init_fraction == pytest.approx(0.99**6, abs=0.01)
    assert bn1.estimated_updates == pytest.approx(6, abs=1)
    assert not bn1.never_updated


def test_dropout_only_gap_is_attributed_to_dropout(reports):
    r = reports("dropout_only")
    assert r.groups["batchnorm"] == 0.0
    assert r.groups["dropout"] == pytest.approx(r.output_gap.relative_l2)
    drop = r.layer("drop")
    # Dropout(0.5) scales kept units by 2: ||y_train - x|| / ||x|| = sqrt(p / (1 - p)) = 1
    assert drop.own_contribution == pytest.approx(1.0, abs=0.1)
    assert drop.output_effect == pytest.approx(r.output_gap.relative_l2)
    assert [f.cause for f in r.findings] == [Cause.DROPOUT_ONLY]
    assert r.findings[0].severity is Severity.INFO


def test_dropout_gap_is_named_beside_frozen_bn_with_bad_statistics(keras):
    """Frozen BN layers whose statistics do not fit the data are a problem in
    both modes, but add nothing to the gap: the gap is still dropout's."""
    L = keras.layers
    bn = L.BatchNormalization(name="bn")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="d"),
            bn,
            L.Dropout(0.5, name="drop"),
            L.Dense(2, name="out"),
        ]
    )
    bn.trainable = False
    x = np.random.default_rng(0).normal(5, 3, (64, 6)).astype("float32")
    r = check(model, x, options=CheckOptions(effects=0))
    assert r.groups["batchnorm"] == 0.0 and r.groups["dropout"] > 0.1
    causes = [f.cause for f in r.findings]
    assert Cause.DROPOUT_ONLY in causes
    assert any(c in (Cause.STATS_NEVER_UPDATED, Cause.STATS_NOT_CONVERGED) for c in causes), causes


def test_frozen_bn_shows_no_gap(reports):
    r = reports("frozen")
    assert r.output_gap.relative_l2 == 0.0
    for x in r.layers:
        if x.kind is Kind.BATCHNORM:
            assert x.fit_mode == "inference"
            assert "frozen" in x.fit_mode_reason
            assert x.own_contribution == 0.0
    # its statistics are still audited, and still wrong for the data
    assert all(b.severity is not Severity.OK for b in r.batchnorm)
    assert any("frozen" in n for n in r.notes)


def test_nested_model_is_traversed_with_paths(reports):
    r = reports("nested")
    assert r.layer("base/conv_bn").kind is Kind.BATCHNORM
    assert r.batchnorm_layer("base/conv_bn") is not None
    assert r.layer("base/conv_bn").depth == 1
    assert r.groups["batchnorm"] > 0 and r.groups["dropout"] > 0


def test_subclassed_model_is_traversed(reports):
    r = reports("subclassed")
    bn = r.layer("bn")
    assert bn is not None and bn.divergence is not None and bn.divergence > 0.1
    assert r.layer("d2").divergence == pytest.approx(r.output_gap.relative_l2, rel=1e-4)


def test_healthy_model_passes_without_warnings(reports):
    r = reports("healthy")
    assert all(f.severity in (Severity.INFO, Severity.OK) for f in r.findings)
    assert all(b.severity is Severity.OK for b in r.batchnorm)
    assert r.ok


def test_never_updated(reports):
    r = reports("never_updated")
    assert r.findings[0].cause is Cause.STATS_NEVER_UPDATED
    assert all(b.never_updated for b in r.batchnorm)


def test_preprocessing_mismatch_names_the_transform(reports):
    r = reports("preprocessing_mismatch")
    assert r.findings[0].cause is Cause.PREPROCESSING_MISMATCH
    assert r.preprocessing.best == "x / 255"
    assert dict(r.preprocessing.candidates)["x / 255"] < 0.25


def test_domain_shift(reports):
    r = reports("domain_shift")
    causes = [f.cause for f in r.findings]
    assert causes[0] is Cause.DOMAIN_SHIFT
    assert Cause.STATS_NOT_CONVERGED not in causes


def test_augmentation(reports):
    r = reports("augmentation")
    assert r.groups["augmentation"] > 0
    assert r.layer("flip").kind is Kind.AUGMENTATION
    assert Cause.AUGMENTATION in [f.cause for f in r.findings]


def test_small_batch(reports):
    r = reports("healthy", batch_size=2)
    assert Cause.SMALL_BATCH in [f.cause for f in r.findings]


def test_mode_leak_names_the_layer(reports):
    r = reports("mode_leak")
    top = r.findings[0]
    assert top.cause is Cause.MODE_LEAK and top.severity is Severity.FAIL
    assert top.layer == "block/bn"
    leak = next(c for c in r.leaks if c.path == "model(x, training=False)")
    assert leak.layers_in_training == ("block/bn",) and leak.relative_l2 > 0.01


# ---------------------------------------------------------- side effects
@pytest.mark.parametrize(
    "name", ["under_trained", "dropout_only", "augmentation", "mode_leak", "nested"]
)
def test_check_leaves_every_variable_bit_identical(zoo, name):
    model, x, y = zoo.get(name)
    before = _vars(model)
    check(model, x, y, options=CheckOptions(batch_size=16, effects=None))
    assert _identical(before, _vars(model))
    assert all("call" not in layer.__dict__ for layer in model._flatten_layers())


@pytest.mark.parametrize("compiled_passes", [False, True])
def test_raw_tf_variables_of_a_custom_layer_are_restored_bit_for_bit(
    keras, monkeypatch, compiled_passes
):
    """A custom layer holding `tf.Variable`s that Keras does not track, written
    in every call (`assign_add`, `assign`), and a weight it writes in training
    mode: the guard holds each as a TensorFlow read (`kept_value`) and puts it
    back, after the eager passes and after the compiled ones."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("raw tf.Variables are TensorFlow's")
    import tensorflow as tf

    from bngap import compiled

    L = keras.layers

    class Counting(L.Layer):
        def build(self, shape):
            self.count = tf.Variable(5.0, trainable=False)
            self.last = tf.Variable(tf.range(shape[-1], dtype="float32"), trainable=False)
            self.ema = self.add_weight(shape=(shape[-1],), initializer="zeros")

        def call(self, x, training=None):
            self.count.assign_add(1.0)
            self.last.assign(tf.reduce_mean(x, 0))
            if training:
                self.ema.assign(0.5 * self.ema + 0.5 * tf.reduce_mean(x, 0))
            return x + self.ema

    if compiled_passes:
        monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    else:
        monkeypatch.setattr(compiled, "available", lambda m: False)
    inp = keras.Input((6,))
    counting = Counting(name="counting")
    h = L.BatchNormalization()(counting(L.Dense(8)(inp)))
    m = keras.Model(inp, L.Dense(2)(h))
    x = np.random.default_rng(0).normal(1, 2, (40, 6)).astype("float32")
    raw = lambda: [np.array(v.numpy(), copy=True) for v in (counting.count, counting.last)]  # noqa: E731
    before, raw_before = _vars(m), raw()
    check(m, x, options=CheckOptions(batch_size=8, probe_preprocessing=False))
    assert _identical(before, _vars(m)) and _identical(raw_before, raw())


def test_variables_restored_when_a_forward_pass_raises(keras):
    L = keras.layers

    class FailsInTraining(L.Layer):
        def call(self, x, training=None):
            if training:
                raise RuntimeError("boom in training mode")
            return x

    m = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(4),
            L.BatchNormalization(name="bn"),
            FailsInTraining(name="fails"),
            L.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(3, 2, (16, 4)).astype("float32")
    before = _vars(m)
    from bngap.errors import ForwardPassError

    with pytest.raises(ForwardPassError, match="layer 'fails'.*boom in training mode"):
        check(m, x)
    assert _identical(before, _vars(m))
    assert all("call" not in layer.__dict__ for layer in m._flatten_layers())


def test_seed_makes_dropout_deterministic(zoo):
    model, x, y = zoo.get("dropout_only")
    a = check(model, x, options=CheckOptions(seed=1))
    b = check(model, x, options=CheckOptions(seed=1))
    c = check(model, x, options=CheckOptions(seed=2))
    assert a.output_gap.relative_l2 == b.output_gap.relative_l2
    assert a.output_gap.relative_l2 != c.output_gap.relative_l2


# ------------------------------------------------- numbers against numpy
def _rel(t, e):
    t, e = np.asarray(t, np.float64), np.asarray(e, np.float64)
    return float(np.linalg.norm(t - e) / np.linalg.norm(e))


def test_output_gap_and_layer_divergence_match_numpy(zoo, keras):
    """Per-layer outputs from a multi-output probe model of the same flat
    graph, in both modes, batch by batch; variables restored in between."""
    model, x, y = zoo.get("under_trained")
    names = ["conv1", "bn1", "conv2", "bn2", "head"]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    saved = [v.numpy().copy() for v in model.variables]
    sums = {n: [0.0, 0.0] for n in names}
    out_t, out_e = [], []
    for s in range(0, len(x), 16):
        xb = x[s : s + 16]
        ev = probe(xb, training=False)
        tr = probe(xb, training=True)
        for v, val in zip(model.variables, saved):
            v.assign(val)
        for n, t, e in zip(names, tr, ev):
            t, e = np.asarray(t, np.float64), np.asarray(e, np.float64)
            sums[n][0] += np.sum((t - e) ** 2)
            sums[n][1] += np.sum(e**2)
        out_t.append(np.asarray(tr[-1]))
        out_e.append(np.asarray(ev[-1]))
    r = check(model, x, options=CheckOptions(batch_size=16))
    for n in names:
        assert r.layer(n).divergence == pytest.approx(np.sqrt(sums[n][0] / sums[n][1]), rel=1e-4), n
    t, e = np.concatenate(out_t), np.concatenate(out_e)
    assert r.output_gap.relative_l2 == pytest.approx(_rel(t, e), rel=1e-5)
    assert r.output_gap.max_abs == pytest.approx(np.max(np.abs(t - e)), rel=1e-5)
    agree = np.mean(np.argmax(t, 1) == np.argmax(e, 1))
    assert r.output_gap.top1_agreement == pytest.approx(agree)


def test_bn_audit_matches_numpy_and_batch_split(zoo, keras):
    model, x, y = zoo.get("under_trained")
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        inp = np.asarray(keras.Model(model.inputs, layer.input)(x, training=False), np.float64)
        mu, var = inp.mean(axis=(0, 1, 2)), inp.var(axis=(0, 1, 2))
        mm, mv = (
            layer.moving_mean.numpy().astype(np.float64),
            layer.moving_variance.numpy().astype(np.float64),
        )
        eps = layer.epsilon
        z = (mu - mm) / np.sqrt(mv + eps)
        l2r = np.log2((var + eps) / (mv + eps))
        g = layer.gamma.numpy().astype(np.float64)
        b = layer.beta.numpy().astype(np.float64)
        w = var / (var + eps)
        rho = (var + eps) / (mv + eps)
        num = g**2 * (z**2 + w * (np.sqrt(rho) - 1) ** 2)
        den = g**2 * (w * rho + z**2) + 2 * g * b * z + b**2
        for bs in (64, 7, 5):  # uneven splits give the same population statistics
            rec = check(
                model, x, options=CheckOptions(batch_size=bs, effects=0, probe_preprocessing=False)
            ).batchnorm_layer(name)
            assert rec.median_abs_z == pytest.approx(np.median(np.abs(z)), rel=1e-4)
            assert rec.max_abs_z == pytest.approx(np.max(np.abs(z)), rel=1e-4)
            assert rec.median_abs_log2_var_ratio == pytest.approx(
                np.median(np.abs(l2r)), rel=1e-4, abs=1e-6
            )
            assert rec.expected_local_gap == pytest.approx(np.sqrt(num.sum() / den.sum()), rel=1e-4)
            assert rec.samples == len(x)


def test_own_contribution_equals_expected_gap_with_one_batch(zoo):
    """With the whole data as one batch, BN's batch statistics are the data's
    statistics, so the measured own contribution is the audit's expected
    local gap (two independent routes to one number)."""
    model, x, y = zoo.get("subclassed")
    r = check(model, x, options=CheckOptions(batch_size=len(x), effects=0))
    assert r.layer("bn").own_contribution == pytest.approx(
        r.batchnorm_layer("bn").expected_local_gap, rel=2e-3
    )


def test_model_file_untouched_by_cli_check(zoo):
    from click.testing import CliRunner

    from bngap.cli import main

    mpath, dpath = zoo.files("under_trained")
    digest = hashlib.sha256(mpath.read_bytes()).hexdigest()
    res = CliRunner().invoke(main, ["check", str(mpath), str(dpath), "-q"])
    assert res.exit_code == 0, res.output
    assert hashlib.sha256(mpath.read_bytes()).hexdigest() == digest


def test_inference_metrics_equal_keras_evaluate(zoo, keras):
    """The inference-mode loss and accuracy are what evaluate() prints (Keras
    takes a softmax output's cross-entropy from its logits: so must we)."""
    for name in ("under_trained", "preprocessing_mismatch"):
        model, x, y = zoo.get(name)
        loss = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)["loss"]
        r = check(model, x, y)
        assert r.metrics.eval["loss"] == pytest.approx(loss, rel=1e-5)
        assert r.metrics.source == "compiled"
        acc = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
        assert r.metrics.eval["accuracy"] == pytest.approx(acc)


def test_reported_fit_mode_is_what_fit_does(keras):
    """The fine-tuning pattern base(x, training=False): whatever this Keras
    version does with it, bngap's fit_mode must say what fit() really does
    (whether the BN layer's statistics move in a training step)."""
    L = keras.layers
    bi = keras.Input((4,))
    base = keras.Model(bi, L.BatchNormalization(name="bn")(L.Dense(4)(bi)), name="base")
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(1)(base(inp, training=False)))
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(2, 3, (32, 4)).astype("float32")
    reported = check(model, x).layer("base/bn").fit_mode
    bn = base.get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    model.fit(x, np.zeros((32, 1)), epochs=1, batch_size=32, verbose=0)
    moved = not np.array_equal(before, bn.moving_mean.numpy())
    assert reported == ("training" if moved else "inference")


# ------------------------------------------------ ranking and exact wording
def test_augmentation_comes_first_when_it_makes_the_whole_gap(reports):
    """Random flips make the whole fit/evaluate gap; the INFO note on calling
    model(x) without a flag (a different comparison) comes after it."""
    r = reports("augmentation")
    top = r.findings[0]
    assert top.cause is Cause.AUGMENTATION
    assert top.explains == pytest.approx(
        min(1.0, r.groups["augmentation"] / r.output_gap.relative_l2)
    )
    assert top.explains > 0.99  # the only mode-dependent layer
    later = [f for f in r.findings[1:] if f.cause is Cause.MODE_LEAK]
    assert all(f.explains is None for f in later)
    from bngap.render import render

    assert "1. INFO augmentation · flip · explains 100% of the gap" in render(r, "text")


def test_explains_is_the_group_share_for_bn_causes(reports):
    r = reports("under_trained")
    top = r.findings[0]
    assert top.cause is Cause.STATS_NOT_CONVERGED
    assert top.explains == pytest.approx(min(1.0, r.groups["batchnorm"] / r.output_gap.relative_l2))
    d = r.to_dict()["findings"][0]
    assert d["explains"] == pytest.approx(top.explains)


def test_model_without_batchnorm_gets_no_batchnorm_sentence(reports):
    from bngap.render import render

    for name in ("augmentation", "dropout_only"):
        r = reports(name)
        assert r.batchnorm == ()
        text = render(r, "text") + render(r, "markdown")
        assert "moving statistics" not in text and "BatchNormalization audit" not in text


def test_overridden_training_false_is_named(zoo, keras):
    """base(x, training=False) inside a functional model: in Keras 3.15.1 fit()'s
    training=True reaches the base's BN layers. The domain-shift finding says
    so, for those layers, and points at trainable=False."""
    base, _, _ = zoo.get("domain_shift")
    _, x, y = zoo.get("domain_shift")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, base(inp, training=False), name="transfer")
    r = check(model, x, y)
    assert (
        r.layer("domain_shift/bn1").fit_mode == "training"
    )  # what fit() does (see the test above)
    f = next(f for f in r.findings if f.cause is Cause.DOMAIN_SHIFT)
    assert "domain_shift/bn1" in f.evidence["training_false_overridden"]
    assert "training=False did not hold" in f.message and "domain_shift/bn1" in f.message
    assert "trainable=False" in f.remedy
    # the base called plainly: no such sentence
    plain = check(base, x, y)
    g = next(f for f in plain.findings if f.cause is Cause.DOMAIN_SHIFT)
    assert g.evidence["training_false_overridden"] == [] and "did not hold" not in g.message
