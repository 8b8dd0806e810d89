"""A plain BN layer's own contribution in closed form (`closedform.moment_rows`,
from the batch moments the layer computed) against running the layer in both
modes and comparing the outputs, and against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from backend_child import BACKENDS, degenerate_bn_model, run_task

from bngap import closedform, compiled
from bngap.layertree import LayerNode
from bngap.pipeline import CheckOptions, check
from bngap.vocabulary import Kind

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False, effects=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_form_equals_both_modes_on_degenerate_channels(backend):
    """Constant, all-zero and huge-mean channels, BN without scale and
    center, along axis 1, of a Dense output, and frozen: the same own
    contribution either way on every backend (PyTorch sums the spread
    itself: its variance is E[x^2] - E[x]^2)."""
    r = run_task(backend, "bn_closed_form")
    assert r["used"] == 4 * 3  # every trainable BN layer, every batch (40 samples by 16)
    assert r["closed"]["frozen"] == r["both_modes"]["frozen"] == 0.0
    for path, want in r["both_modes"].items():
        assert r["closed"][path] == pytest.approx(want, rel=1e-5), path


def _own(model, x, monkeypatch=None, closed=True) -> dict:
    if not closed:
        monkeypatch.setattr(closedform, "closed_form_ok", lambda node, keras: False)
    r = check(model, x, options=OPTIONS)
    return {lay.path: lay.own_contribution for lay in r.layers if lay.kind == Kind.BATCHNORM}


def test_closed_form_in_the_compiled_passes(keras, monkeypatch):
    """The same formula inside the traced graph (batch size unknown there)."""
    model, x = degenerate_bn_model(keras)
    eager = _own(model, x)
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    traced = _own(model, x)
    assert traced.keys() == eager.keys()
    for path, want in eager.items():
        assert traced[path] == pytest.approx(want, rel=1e-5), path


def test_closed_form_matches_numpy(keras):
    """Independently: each BN layer's input in the training pass from a
    sub-model called in training mode (the moving statistics it moves are
    upstream ones, already read), both modes in float64 numpy, summed over
    the batches of 16."""
    model, x = degenerate_bn_model(keras)
    got = _own(model, x)
    for path in ("bn1", "bn3", "bn4"):
        bn = model.get_layer(path)
        feed = keras.Model(model.input, bn.input)
        gamma, beta = (np.asarray(v.numpy(), np.float64) for v in (bn.gamma, bn.beta))
        m, v = (np.asarray(t.numpy(), np.float64) for t in (bn.moving_mean, bn.moving_variance))
        sq_d = sq_r = 0.0
        for i in range(0, len(x), 16):
            h = np.asarray(feed(x[i : i + 16], training=True), np.float64)
            h = np.moveaxis(h, bn.axis, -1)
            h = h.reshape(-1, h.shape[-1])
            t = gamma * (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon) + beta
            r = gamma * (h - m) / np.sqrt(v + bn.epsilon) + beta
            sq_d += float(((t - r) ** 2).sum())
            sq_r += float((r**2).sum())
        assert got[path] == pytest.approx(np.sqrt(sq_d / sq_r), rel=1e-4), path


def _node(layer) -> LayerNode:
    return LayerNode(layer.name, layer, 0, Kind.BATCHNORM, True, takes_training=True)


def test_closed_form_only_for_plain_float32_batchnorm(keras):
    """A subclass (its call may differ), renorm (its output is not the plain
    affine map of the batch moments), synchronized moments and a float16
    compute dtype run the layer in both modes instead."""
    L = keras.layers

    class MyBN(L.BatchNormalization):
        pass

    assert closedform.closed_form_ok(_node(L.BatchNormalization()), keras)
    for layer in (
        MyBN(),
        L.BatchNormalization(renorm=True),
        L.BatchNormalization(synchronized=True),
        L.BatchNormalization(dtype="mixed_float16"),
    ):
        assert not closedform.closed_form_ok(_node(layer), keras), layer


def test_masked_batchnorm_runs_both_modes(keras, monkeypatch):
    """A mask weights the batch moments, so the layer is run in both modes
    (and the result is the same as with the closed form turned off)."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((7,))
    h = L.BatchNormalization(name="bn")(L.Embedding(20, 4, mask_zero=True)(inp))
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(2).integers(0, 20, (32, 7)).astype("int32")
    used = []
    total = closedform.moment_rows
    monkeypatch.setattr(closedform, "moment_rows", lambda *a: used.append(1) or total(*a))
    with_closed = _own(model, x)
    assert not used and with_closed["bn"] > 0
    assert _own(model, x, monkeypatch, closed=False) == with_closed


def _close(a, b, rel=1e-5):
    """Two report dicts equal, floats to `rel`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-12, nan_ok=True)
    return a == b


def _shared_nested_model(keras):
    """A transfer-learning base (a nested Functional model with its BN), one
    BN layer called twice, BN on 5-D and on channels-first 4-D data (axis 1),
    negative and zero gamma, a moving variance of 0, and a float32 BN in a
    mixed_float16 model (its input cast up)."""
    L = keras.layers
    keras.utils.set_random_seed(4)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        b_in = keras.Input((4, 4, 4, 2), name="b_in")
        h = L.BatchNormalization(name="bn5d")(L.Conv3D(3, 2, name="c3")(b_in))
        base = keras.Model(b_in, L.Reshape((3, 9, 3), name="cf")(h), name="base")
        inp = keras.Input((4, 4, 4, 2), name="x")
        h = L.BatchNormalization(axis=1, name="bn_axis1", dtype="float32")(base(inp))
        shared = L.BatchNormalization(name="shared", dtype="float32")
        h = shared(L.Dense(6, name="d1")(L.Flatten(name="flat")(h)))
        h = shared(L.Dense(6, name="d2")(h))
        model = keras.Model(inp, L.Dense(2, name="out", dtype="float32")(h), name="shapes")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    shared.gamma.assign(np.array([1.5, -1.0, 0.0, 2.0, -0.5, 1.0], "float32"))
    shared.moving_variance.assign(np.array([0.0, 1.0, 2.0, 0.0, 0.5, 1.0], "float32"))
    x = np.random.default_rng(5).normal(1.0, 2.0, (33, 4, 4, 4, 2)).astype("float32")
    return model, x


@pytest.mark.parametrize("batch_size", [16, 2, 1])
def test_closed_form_gives_the_same_report_on_more_shapes(keras, monkeypatch, batch_size):
    """The whole report, with every layer's output effect measured (the
    masked passes choose their cuts from the own totals), the same with the
    closed form and without, on `_shared_nested_model`: batches of 16 (the
    last of 1 sample), of 2 and of 1 (every batch variance 0, on the
    compiled passes from 8 batches)."""
    model, x = _shared_nested_model(keras)
    x = x if batch_size > 1 else x[:9]
    options = CheckOptions(batch_size=batch_size, probe_preprocessing=False, effects=None)
    used = []
    total = closedform.moment_rows
    monkeypatch.setattr(closedform, "moment_rows", lambda *a: used.append(1) or total(*a))
    closed = check(model, x, options=options).to_dict()
    assert used  # the layers of float32 took the closed form (bn5d, of float16, did not)
    monkeypatch.setattr(closedform, "closed_form_ok", lambda node, keras: False)
    model, _ = _shared_nested_model(keras)  # not the graph traced with the closed form
    both = check(model, x, options=options).to_dict()
    closed.pop("seconds"), both.pop("seconds")
    assert _close(closed, both)


def _committed_own(keras, compile_passes: bool) -> dict:
    """Each BN layer's own sums over two batches of one probe (the compiled
    passes reuse the graph, and the pass's recorded `Due`s, for the second),
    new moving statistics committed between them as `fix` does."""
    from bngap.capture import CaptureProbe
    from bngap.layertree import build_tree

    model, x = degenerate_bn_model(keras)
    nodes = build_tree(model, keras)
    rng = np.random.default_rng(9)
    with CaptureProbe(model, nodes, keras) as probe:
        if compile_passes:
            probe.compiled = compiled.CompiledPasses(model, nodes)
        probe.eval_train([x[:16]], 0)
        probe.end_batch()
        for n in nodes:
            if n.kind is Kind.BATCHNORM:
                c = n.layer.moving_mean.shape[0]
                n.layer.moving_mean.assign(rng.normal(0, 3, c).astype("float32"))
                n.layer.moving_variance.assign(rng.uniform(0.1, 5, c).astype("float32"))
        probe.commit()
        probe.eval_train([x[16:32]], 1)
        probe.end_batch()
        stats = probe.stats
        if compile_passes:
            assert all(e.function and not e.failed for e in probe.compiled.entries())
    return {
        n.path: (stats[n.index].own.sq_diff, stats[n.index].own.sq_ref)
        for n in nodes
        if n.kind is Kind.BATCHNORM
    }


@pytest.mark.parametrize("compile_passes", [False, True])
def test_closed_form_reads_the_statistics_fix_commits(keras, monkeypatch, compile_passes):
    """The closed form's sums are made when the pass settles, from the
    parameters the passes use: statistics `fix` commits between two
    batches of one probe count from the next pass on, eagerly and in the
    compiled passes (whose recorded `Due`s hold nothing of the batch), as
    they do when the layers run in both modes."""
    used = []
    rows = closedform.moment_rows
    monkeypatch.setattr(closedform, "moment_rows", lambda *a: used.append(1) or rows(*a))
    closed = _committed_own(keras, compile_passes)
    assert used
    monkeypatch.setattr(closedform, "closed_form_ok", lambda node, keras: False)
    both = _committed_own(keras, compile_passes)
    assert closed.keys() == both.keys()
    for path, want in both.items():  # both modes: float32 sums of squares near 1e6 (JAX's, 2e-5)
        assert closed[path] == pytest.approx(want, rel=1e-4), path


def test_non_finite_closed_form_measures_the_batch_again(keras, monkeypatch):
    """A BN input so large that its variance overflows float32: the pair
    made from the moments when the pass settles is not finite, so the
    batch is measured again exactly (both modes, NaN/Inf entries left out),
    with the same report as without the closed form."""
    from bngap.probe import Probe

    L = keras.layers
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,))
    h = L.BatchNormalization(name="bn")(L.Lambda(lambda t: t * 1e20)(L.Dense(4)(inp)))
    model = keras.Model(inp, L.Dense(2)(h))
    x = np.random.default_rng(6).normal(0, 3, (32, 4)).astype("float32")
    again, pairs = [], []
    exact, own_pair = Probe._eval_train_exact, closedform.own_pair
    monkeypatch.setattr(
        Probe, "_eval_train_exact", lambda *a, **k: again.append(1) or exact(*a, **k)
    )
    monkeypatch.setattr(closedform, "own_pair", lambda *a: pairs.append(own_pair(*a)) or pairs[-1])
    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    closed = check(model, x, options=options).to_dict()
    assert again and not np.all(np.isfinite(pairs))
    monkeypatch.setattr(closedform, "closed_form_ok", lambda node, keras: False)
    both = check(model, x, options=options).to_dict()
    closed.pop("seconds"), both.pop("seconds")
    assert _close(closed, both)
