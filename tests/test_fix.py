"""`bngap fix`: exact re-estimation against numpy, no other changes, safe writes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from bngap.cli import main
from bngap.errors import BngapError
from bngap.recalibration import fix
from bngap.reestimation import dependency_levels


def _fresh(zoo, keras, name):
    """An independent copy of a zoo model (fix changes models in place)."""
    model, x, y = zoo.get(name)
    mpath, _ = zoo.files(name)
    return keras.models.load_model(mpath), x, y


def _expected_stats(model, keras, x, names):
    """PreciseBN by hand: each BN's input statistics with the upstream BN
    layers already set to theirs, via a probe model in inference mode."""
    want = {}
    for name in names:
        layer = model.get_layer(name)
        inp = np.asarray(keras.Model(model.inputs, layer.input)(x, training=False), np.float64)
        axes = tuple(range(inp.ndim - 1))
        mean, var = inp.mean(axis=axes), inp.var(axis=axes)
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(var.astype("float32"))
        want[name] = (mean, var)
    return want


@pytest.mark.parametrize("batch_size", [64, 7, 5])
def test_fixed_statistics_equal_sequential_numpy_statistics(zoo, keras, batch_size):
    model, x, y = _fresh(zoo, keras, "under_trained")
    reference, _, _ = _fresh(zoo, keras, "under_trained")
    want = _expected_stats(reference, keras, x, ["bn1", "bn2"])
    fix(model, x, batch_size=batch_size)
    for name, (mean, var) in want.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["under_trained", "domain_shift", "subclassed"])
def test_fix_closes_the_gap_with_full_batch(zoo, keras, name):
    """With one batch of all the data, batch statistics are the population
    statistics: after the fix inference equals training mode."""
    model, x, y = _fresh(zoo, keras, name)
    r = fix(model, x, y, batch_size=len(x))
    assert r.before.relative_l2 > 0.1
    assert r.after.relative_l2 < 1e-3
    assert r.helped


def test_fix_changes_only_bn_moving_statistics(zoo, keras):
    model, x, y = _fresh(zoo, keras, "nested")
    before = {v.path: v.numpy().copy() for v in model.variables}
    fix(model, x)
    changed = {v.path for v in model.variables if v.numpy().tobytes() != before[v.path].tobytes()}
    assert sorted(p.split("/")[-2] + "/" + p.split("/")[-1] for p in changed) == [
        "conv_bn/moving_mean",
        "conv_bn/moving_variance",
    ]


def test_dependency_levels():
    calls = [
        (1, 0, frozenset()),
        (2, 3, frozenset({1})),
        (3, 4, frozenset({1})),
        (4, 9, frozenset({2, 3})),
        (5, 12, frozenset()),
    ]
    assert dependency_levels(calls) == {1: 0, 2: 1, 3: 1, 4: 2, 5: 0}


def test_parallel_branches_share_a_pass(keras):
    L = keras.layers
    inp = keras.Input((6,))
    a = L.BatchNormalization(name="a")(L.Dense(4)(inp))
    b = L.BatchNormalization(name="b")(L.Dense(4)(inp))
    c = L.BatchNormalization(name="c")(L.Concatenate()([a, b]))
    model = keras.Model(inp, L.Dense(1)(c))
    x = np.random.default_rng(0).normal(2, 3, (40, 6)).astype("float32")
    r = fix(model, x, batch_size=8)
    assert r.passes == 2
    assert {f.path: f.level for f in r.layers} == {"a": 0, "b": 0, "c": 1}


def test_layers_pattern_and_skip_frozen(zoo, keras):
    model, x, y = _fresh(zoo, keras, "under_trained")
    bn2_before = model.get_layer("bn2").moving_mean.numpy().copy()
    r = fix(model, x, layers="bn1")
    assert [f.path for f in r.layers] == ["bn1"]
    assert ("bn2", "not matched by --layers") in r.skipped
    np.testing.assert_array_equal(model.get_layer("bn2").moving_mean.numpy(), bn2_before)
    with pytest.raises(BngapError, match="matches no BatchNormalization layer"):
        fix(model, x, layers="nothing*")
    model.get_layer("bn1").trainable = False
    r = fix(model, x, include_frozen=False)
    assert [f.path for f in r.layers] == ["bn2"]


def test_cli_fix_writes_a_verified_copy_and_never_the_input(zoo, tmp_path, keras):
    mpath, dpath = zoo.files("under_trained")
    digest = hashlib.sha256(mpath.read_bytes()).hexdigest()
    out = tmp_path / "fixed.keras"
    runner = CliRunner()
    res = runner.invoke(main, ["fix", str(mpath), str(dpath), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "written to" in res.stdout and "verified" in res.stdout
    assert hashlib.sha256(mpath.read_bytes()).hexdigest() == digest
    fixed = keras.models.load_model(out)
    assert fixed.loss == "sparse_categorical_crossentropy"  # compile config kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    # refusals: existing output, output == input, no output at all
    res = runner.invoke(main, ["fix", str(mpath), str(dpath), "-o", str(out), "-q"])
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = runner.invoke(main, ["fix", str(mpath), str(dpath), "-o", str(mpath), "-q"])
    assert res.exit_code == 2 and "--in-place" in res.stderr
    res = runner.invoke(main, ["fix", str(mpath), str(dpath), "-q"])
    assert res.exit_code == 2 and "-o/--output" in res.stderr
    assert hashlib.sha256(mpath.read_bytes()).hexdigest() == digest


def test_cli_fix_in_place_and_json(zoo, tmp_path):
    import json
    import shutil

    mpath, dpath = zoo.files("under_trained")
    copy = tmp_path / "model.keras"
    shutil.copy(mpath, copy)
    res = CliRunner().invoke(
        main, ["fix", str(copy), str(dpath), "--in-place", "--format", "json", "-q"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["written"] == str(copy) and d["after"]["relative_l2"] < d["before"]["relative_l2"]
    assert copy.read_bytes() != mpath.read_bytes()


def test_not_written_when_it_does_not_help(zoo, keras, tmp_path):
    """A second fix of an already fixed model cannot shrink the gap: nothing
    is written without --force, and with it the file appears."""
    model, x, y = _fresh(zoo, keras, "under_trained")
    fix(model, x)
    out = tmp_path / "again.keras"
    r = fix(model, x, output=out)
    assert not r.helped and r.written is None and not out.exists()
    assert any("not written" in n for n in r.notes)
    r = fix(model, x, output=out, force=True)
    assert r.written == str(out) and out.exists()


def test_model_without_bn_is_refused(zoo, tmp_path):
    model, x, y = zoo.get("dropout_only")
    with pytest.raises(BngapError, match="no BatchNormalization layers"):
        fix(model, x, output=tmp_path / "x.keras")


# ------------------------------------------------------------------ renorm
@pytest.fixture(scope="module")
def renorm_model(keras):
    """Unclipped renorm BN trained to convergence, then its statistics replaced
    by those of other data in all five variables: both modes normalise with
    the wrong statistics, fit() and evaluate() agree, both bad."""
    import zoo as z

    L = keras.layers
    rng = z._seed(11)
    x, y = z.images(rng, n=128)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, name="conv1"),
            L.BatchNormalization(renorm=True, momentum=0.9, renorm_momentum=0.9, name="bn1"),
            L.ReLU(),
            L.Conv2D(8, 3, name="conv2"),
            L.BatchNormalization(renorm=True, momentum=0.9, renorm_momentum=0.9, name="bn2"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax", name="head"),
        ],
        name="renorm",
    )
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=40, batch_size=32, verbose=0)
    # Statistics taken on other data (darker images): one
    # training-mode pass at momentum 0 sets all five statistics to theirs.
    bns = [m.get_layer("bn1"), m.get_layer("bn2")]
    for bn in bns:
        bn.momentum = bn.renorm_momentum = 0.0
    m(x - 3.0, training=True)
    for bn in bns:
        bn.momentum = bn.renorm_momentum = 0.9
    return m, x, y


def _renorm_copy(keras, renorm_model, tmp_path):
    m, x, y = renorm_model
    path = tmp_path / "renorm.keras"
    m.save(path)
    return keras.models.load_model(path), x, y


def test_renorm_check_says_both_modes_are_wrong(renorm_model):
    from bngap.pipeline import check
    from bngap.results import Cause

    m, x, y = renorm_model
    r = check(m, x, y)
    assert r.output_gap.relative_l2 < 1e-4  # training mode uses the renorm statistics
    top = r.findings[0]
    assert top.cause is Cause.DOMAIN_SHIFT and "both modes" in top.message
    assert "fit() looks fine" not in " ".join(f.message for f in r.findings)
    assert all(b.fit_uses_batch_stats is False for b in r.batchnorm)
    # the audit of the statistics each mode uses: bn1's input does not depend on
    # any other BN layer, so both gaps can be checked against numpy directly
    b = r.batchnorm_layer("bn1")
    bn = m.get_layer("bn1")
    inp = np.asarray(m.get_layer("conv1")(x), np.float64)
    mu, var = inp.mean(axis=(0, 1, 2)), inp.var(axis=(0, 1, 2))
    gamma, eps = np.asarray(bn.gamma.numpy(), np.float64), bn.epsilon

    def expected_gap(mean, variance):
        """sqrt(sum gamma^2 (z^2 + w (sqrt(rho) - 1)^2) / sum E[y^2]) of the README."""
        z = (mu - mean) / np.sqrt(variance + eps)
        rho = (var + eps) / (variance + eps)
        w = var / (var + eps)
        beta = np.asarray(bn.beta.numpy(), np.float64)
        e_y2 = gamma**2 * (z**2 + w * rho) + 2 * gamma * beta * z + beta**2  # E[y^2]
        return np.sqrt(np.sum(gamma**2 * (z**2 + w * (np.sqrt(rho) - 1) ** 2)) / np.sum(e_y2))

    rs = np.asarray(bn.renorm_stddev.numpy(), np.float64)
    want_train = expected_gap(
        np.asarray(bn.renorm_mean.numpy(), np.float64), np.maximum(rs**2 - eps, 0)
    )
    want_eval = expected_gap(
        np.asarray(bn.moving_mean.numpy(), np.float64),
        np.asarray(bn.moving_variance.numpy(), np.float64),
    )
    assert b.expected_local_gap == pytest.approx(want_eval, rel=1e-3)
    assert b.training_stats_gap == pytest.approx(want_train, rel=1e-3)
    assert "for the renorm statistics training mode uses" in top.message
    from bngap.render import render

    assert r.layer("bn1").fit_mode_reason.startswith("renorm")
    assert "training (renorm statistics)" in render(r, "text", width=140)


def test_renorm_fix_sets_every_statistic_and_both_modes_agree(keras, renorm_model, tmp_path):
    model, x, y = _renorm_copy(keras, renorm_model, tmp_path)
    reference, _, _ = _renorm_copy(keras, renorm_model, tmp_path)
    loss_before, acc_before = model.evaluate(x, y, verbose=0)
    want = _expected_stats(reference, keras, x, ["bn1", "bn2"])
    result = fix(model, x, y, output=tmp_path / "fixed.keras")
    for name, (mean, var) in want.items():
        bn = model.get_layer(name)
        eps = bn.epsilon
        np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
        for v in ("moving_stddev", "renorm_stddev"):
            np.testing.assert_allclose(getattr(bn, v).numpy(), np.sqrt(var + eps), rtol=1e-5)
        np.testing.assert_allclose(bn.renorm_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    # both modes agree (Keras itself), and inference got better
    train = np.asarray(model(x, training=True))
    infer = np.asarray(model(x, training=False))
    assert np.max(np.abs(train - infer)) < 1e-4
    loss_after, acc_after = model.evaluate(x, y, verbose=0)
    assert loss_after < 0.6 * loss_before and acc_after > acc_before  # 0.40 -> 0.17, 92% -> 100%
    assert result.helped and result.written  # no gap to close, but the inference loss fell
    assert result.metrics_after.eval["loss"] < result.metrics_before.eval["loss"]
    assert result.after.relative_l2 < 1e-4


# ------------------------------------------------------- the optimizer state
def _optimizer_vars(path):
    from bngap.fixedcopy import saved_optimizer_state

    return saved_optimizer_state(path)


@pytest.mark.parametrize("trained", [False, True])
def test_copy_keeps_the_original_optimizer_state_and_size(keras, tmp_path, trained):
    """A model saved with a compiled but unbuilt optimizer (2 variables:
    iterations and learning rate): the copy holds those 2, not a freshly
    built optimizer's zero slots. A trained one's state is kept as it was."""
    import zoo as z

    rng = z._seed(21)
    x, y = z.images(rng, n=64)
    m = z.conv_bn("opt", momentum=0.9)
    m.compile(keras.optimizers.Adam(learning_rate=0.003), "sparse_categorical_crossentropy")
    if trained:
        m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    else:
        m(x[:2])
        for layer in m.layers:  # stale statistics for fix to correct
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
    src, out = tmp_path / "model.keras", tmp_path / "fixed.keras"
    m.save(src)
    before = _optimizer_vars(src)
    assert len(before) == (2 if not trained else len(m.optimizer.variables))
    res = CliRunner().invoke(
        main, ["fix", str(src), str(z_data(tmp_path, x, y)), "-o", str(out), "--force", "-q"]
    )
    assert res.exit_code == 0, res.output
    after = _optimizer_vars(out)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert out.stat().st_size < src.stat().st_size * 1.1  # no zero slots added
    again = keras.models.load_model(out)
    assert again.optimizer.learning_rate.numpy() == pytest.approx(0.003)


def z_data(tmp_path, x, y):
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


# ---------------------------------------------------------------- undo, json
def test_undo_restores_the_previous_statistics_bit_for_bit(zoo, keras, renorm_model, tmp_path):
    import bngap

    for model, x in (
        _fresh(zoo, keras, "under_trained")[:2],
        _renorm_copy(keras, renorm_model, tmp_path)[:2],
    ):
        before = [np.array(v.numpy(), copy=True) for v in model.variables]
        result = bngap.fix(model, x)
        changed = [v for v, b in zip(model.variables, before) if v.numpy().tobytes() != b.tobytes()]
        assert changed  # the fix did change statistics
        result.undo()
        after = [v.numpy() for v in model.variables]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(after, before))
        assert "_restore" not in result.to_dict()


def test_fix_json_comes_from_the_renderer(zoo, tmp_path):
    import json as _json

    from bngap.render.fixing import render_fix_result

    mpath, dpath = zoo.files("under_trained")
    res = CliRunner().invoke(
        main,
        ["fix", str(mpath), str(dpath), "-o", str(tmp_path / "f.keras"), "--format", "json", "-q"],
    )
    assert res.exit_code == 0, res.output
    d = _json.loads(res.stdout)
    assert d["schema_version"] == "1" and d["after"]["relative_l2"] < d["before"]["relative_l2"]
    with pytest.raises(ValueError):
        render_fix_result(None, "xml")
