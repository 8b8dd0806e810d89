"""The masked passes' reuse of the inference pass (bngap/upstream.py,
bngap/maskedpasses.py): every number of a report is the one the masked
passes give computing everything, on the zoo, on other model shapes and on
every backend; the frontier held is what crosses the cut; a stand-in that
reaches a computed layer makes the pass run again whole. Where the data flow
leaves the layers (an op on a model's or a nested model's outputs, a merge
inside a wrapper), nothing is reused; a model input handed on by a layer
and the input of a nested model are reused, never replaced by a stand-in."""

from __future__ import annotations

import numpy as np
import pytest
from backend_child import BACKENDS, run_task

from bngap import compiled
from bngap.pipeline import CheckOptions, check


@pytest.fixture(params=["lockstep", "classic"])
def structure(request, monkeypatch) -> str:
    """A batch's passes in lockstep, as on a model of Keras' own classes, or
    one after the other, as on a model with code of the user's."""
    if request.param == "classic":
        from bngap import lockstep

        monkeypatch.setattr(lockstep, "twin_uses", lambda *a: None)
    return request.param


def _same_report(monkeypatch, model, x, y=None, compile_passes=False, **options):
    """Checks with the reuse and without it: the same report. Returns
    (layer calls reused, masked passes run again whole) of the first."""
    from bngap.probe import Probe
    from bngap.upstream import INPUT, Upstream

    if compile_passes:
        monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    else:
        monkeypatch.setattr(compiled, "available", lambda m: False)
    counts = [0, 0]
    leave = Probe.__exit__

    def spy(self, *exc):
        counts[0] += self.reused
        counts[1] += self.rerun
        return leave(self, *exc)

    monkeypatch.setattr(Probe, "__exit__", spy)
    opts = CheckOptions(
        **{"batch_size": 16, "probe_preprocessing": False, "effects": None, **options}
    )
    reused = check(model, x, y, options=opts).to_dict()
    monkeypatch.setattr(Upstream, "cut_for", lambda self, first: (INPUT, None))
    computed = check(model, x, y, options=opts).to_dict()
    reused.pop("seconds", None)
    computed.pop("seconds", None)
    assert reused == computed
    return tuple(counts)


def _x(*shape, n=32):
    return np.random.default_rng(len(shape)).normal(1, 2, (n, *shape)).astype("float32")


def _two_bn(keras, h, name=""):
    L = keras.layers
    h = L.BatchNormalization(name=f"bn1{name}")(L.Dense(6, name=f"d1{name}")(h))
    return L.BatchNormalization(name=f"bn2{name}")(L.Dense(6, name=f"d2{name}")(h))


def _per_pass(monkeypatch) -> list:
    """Each masked pass's layer calls taken from the inference pass; -1 for
    a pass that ran again whole."""
    from bngap.probe import Probe

    seen: list = []
    original = Probe.masked_pass

    def spy(self, *args, **kwargs):
        before, rerun = self.reused, self.rerun
        out = original(self, *args, **kwargs)
        seen.append(-1 if self.rerun > rerun else self.reused - before)
        return out

    monkeypatch.setattr(Probe, "masked_pass", spy)
    return seen


def _report(model, x, y=None) -> dict:
    opts = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    d = check(model, x, y, options=opts).to_dict()
    d.pop("seconds", None)
    return d


def _residual(keras):
    """Conv-BN blocks with skip connections and a dropout head: a cut's
    frontier holds a block's input and its shortcut."""
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    for i in range(3):
        y = L.Conv2D(6, 3, padding="same", name=f"c{i}")(x)
        y = L.BatchNormalization(name=f"bn{i}")(y)
        x = L.Add(name=f"add{i}")([L.ReLU(name=f"relu{i}")(y), x])
    x = L.Dropout(0.3, name="drop")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x))


@pytest.mark.parametrize(
    "name", ["residual", "under_trained", "nested", "mode_leak", "dropout_only", "augmentation"]
)
def test_masked_passes_reuse_the_inference_pass_with_the_same_numbers(
    keras, zoo, monkeypatch, name, structure
):
    """Upstream of the first layer in training mode, a masked pass takes the
    inference pass's outputs instead of computing them again, on the first
    batch and the later ones (3 batches), with the same report."""
    if name == "residual":
        model, x, y = _residual(keras), _x(8, 8, 3, n=48), None
    else:
        model, x, y = zoo.get(name)
    masked = _per_pass(monkeypatch)
    _same_report(monkeypatch, model, x, y)
    took = masked[: len(masked) // 2]
    assert all(t >= 0 for t in took)  # none ran again whole
    if name in ("residual", "under_trained", "nested"):  # a layer before the first BN
        assert took and max(took) > 0
        per_batch = len(took) // 3
        assert max(took[per_batch:]) > 0  # later batches: the cuts asked for before
    if name == "mode_leak":  # a layer ran in training mode in the inference pass
        assert max(took) == 0


def test_a_stand_in_reaching_a_computed_layer_runs_the_pass_whole(keras, monkeypatch, structure):
    """With the frontier lost, the first computed layer gets a stand-in: the
    attempt ends and the masked pass runs again whole, same numbers."""
    from bngap.lockstep import LockstepPass
    from bngap.upstream import Upstream

    model, x = _residual(keras), _x(8, 8, 3, n=16)
    monkeypatch.setattr(compiled, "available", lambda m: False)
    expected = _report(model, x)
    real = LockstepPass._frontier_now
    monkeypatch.setattr(LockstepPass, "_frontier_now", lambda self: {} if real(self) else None)
    stands: list = []
    made = Upstream.stand_in

    def spy(self, cut, key):
        out = made(self, cut, key)
        stands.append(len(cut.stand_ins))
        return out

    monkeypatch.setattr(Upstream, "stand_in", spy)
    passes = _per_pass(monkeypatch)
    assert _report(model, x) == expected
    assert stands and max(stands) > 0
    assert -1 in passes


def test_the_frontier_is_what_crosses_the_cut(keras, monkeypatch, structure):
    """Held for a BN's cut: its conv's output (the BN's input) and the block's
    input (the shortcut around it); for the dropout's, the pooled features:
    nothing else of the inference pass. Kept on the first batch: the
    dropout's (the second group's first layer) and the BN layers with the
    largest own contributions."""
    from bngap.probe import Probe

    model, x = _residual(keras), _x(8, 8, 3, n=16)
    monkeypatch.setattr(compiled, "available", lambda m: False)
    frontiers: dict = {}
    original = Probe.masked_pass

    def spy(self, xs, b, active):
        names = {n.index: n.path for n in self.nodes}
        for key, fr in self.upstream._frontiers.items():
            frontiers[names[key[0]]] = sorted(tuple(t.shape) for t in fr.values())
        return original(self, xs, b, active)

    monkeypatch.setattr(Probe, "masked_pass", spy)
    _report(model, x)
    assert frontiers.pop("drop") == [(16, 6)]
    assert frontiers and all(f == [(16, 8, 8, 6), (16, 8, 8, 6)] for f in frontiers.values())


@pytest.mark.parametrize("where", ["model", "nested model", "Bidirectional"])
def test_an_output_made_outside_a_layer_is_not_followed(keras, monkeypatch, where):
    """A tensor made before the cut and read by an op that makes an output
    (the model's `a + b`, a nested model's, Bidirectional's sum merge): no
    layer call sees it, so it would be a one-sample stand-in broadcast into
    the output. Such an inference pass is not reused."""
    L = keras.layers
    if where == "Bidirectional":
        inp = keras.Input((5, 6))
        lstm = L.LSTM(4, dropout=0.4, return_sequences=True)
        h = L.Bidirectional(lstm, merge_mode="sum", name="bidi")(inp)
        h = L.Flatten()(L.BatchNormalization(name="bn")(h))
        model, x = keras.Model(inp, L.Dense(2, name="out")(h)), _x(5, 6)
    else:
        inp = keras.Input((6,))
        out = L.Dense(6, name="early")(inp) + _two_bn(keras, inp)
        if where == "nested model":
            base = keras.Model(inp, out, name="base")
            inp = keras.Input((6,))
            h = L.Dropout(0.3, name="drop")(_two_bn(keras, base(inp), "top"))
            out = L.Dense(2, name="out")(h)
        model, x = keras.Model(inp, out), _x(6)
    assert _same_report(monkeypatch, model, x) == (0, 0)


def test_a_model_input_handed_on_by_a_layer_is_the_input(keras, monkeypatch):
    """Identity (and Dropout, Activation('linear') in inference mode) return
    the tensor they get: skipped, they hand on the model's input itself, as a
    model output and as a skip connection, not a stand-in."""
    L = keras.layers
    inp = keras.Input((6,))
    same = L.Identity(name="same")(inp)
    linear = L.Activation("linear", name="linear")(inp)
    h = L.Concatenate(name="cat")([linear, _two_bn(keras, same)])
    model = keras.Model(inp, [same, L.Dense(2, name="out")(h)])
    reused, rerun = _same_report(monkeypatch, model, _x(6))
    assert reused > 0 and rerun == 0


def test_a_nested_base_after_a_preprocessing_layer_gets_its_input(keras, monkeypatch):
    """Transfer learning: Rescaling, then a base model whose BN layers are
    cut at. The base spans the cut and is computed: its input, made before
    the cut, is held with the frontier, so the pass does not run again."""
    L = keras.layers
    bi = keras.Input((6, 6, 3))
    z = L.BatchNormalization(name="bbn1")(L.Conv2D(4, 3, padding="same", name="bc1")(bi))
    z = L.BatchNormalization(name="bbn2")(L.Conv2D(4, 3, name="bc2")(L.ReLU()(z)))
    base = keras.Model(bi, z, name="base")
    inp = keras.Input((6, 6, 3))
    z = L.GlobalAveragePooling2D()(base(L.Rescaling(0.5, name="scale")(inp)))
    model = keras.Model(inp, L.Dense(3, name="head")(L.Dropout(0.4, name="drop")(z)))
    reused, rerun = _same_report(monkeypatch, model, _x(6, 6, 3))
    assert reused > 0 and rerun == 0


def _shared(keras):
    """One Dense and one BN layer each called twice, around a dropout."""
    L = keras.layers
    inp = keras.Input((6,))
    dense, bn = L.Dense(6, name="shared"), L.BatchNormalization(name="bn_shared")
    h = bn(dense(L.Dropout(0.3, name="drop")(bn(dense(inp)))))
    return keras.Model(inp, L.Dense(2, name="out")(h)), _x(6), None


def _dict_early_head(keras):
    """Dict inputs and outputs; a head made before the first BN layer."""
    L = keras.layers
    a, b = keras.Input((5,), name="a"), keras.Input((4,), name="b")
    ha = L.Dense(4, name="da")(a)
    hb = L.BatchNormalization(name="bnb")(L.Dense(4, name="db")(b))
    c = L.Dropout(0.5, name="drop")(L.BatchNormalization(name="bnc")(L.Concatenate()([ha, hb])))
    outputs = {"early": L.Dense(2, name="early")(ha), "late": L.Dense(3, name="late")(c)}
    x = {"a": _x(5), "b": _x(4) + 2.0}
    return keras.Model({"a": a, "b": b}, outputs), x, None


def _groups(keras):
    """Every cause group: flip, BN, noise, spatial dropout, dropout."""
    L = keras.layers
    inp = keras.Input((6, 6, 3))
    z = L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, name="c1")(L.RandomFlip(name="flip")(inp)))
    z = L.BatchNormalization(name="bn2")(L.Conv2D(4, 3, name="c2")(L.GaussianNoise(0.3)(z)))
    z = L.Dropout(0.3, name="drop")(L.Flatten()(L.SpatialDropout2D(0.3, name="sdrop")(z)))
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="out")(z))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _x(6, 6, 3, n=23), np.arange(23) % 3


@pytest.mark.parametrize(
    "shape, options",
    [
        ("shared", {"batch_size": 7}),  # a last batch smaller than the others
        ("dict_early_head", {}),
        ("groups", {"batch_size": 10}),
        ("groups", {"batch_size": 1, "limit": 3}),
        ("groups", {"compile_passes": True}),
    ],
)
def test_shapes_reused_with_the_same_numbers(keras, monkeypatch, shape, options, structure):
    model, x, y = {"shared": _shared, "dict_early_head": _dict_early_head, "groups": _groups}[
        shape
    ](keras)
    compile_passes = options.pop("compile_passes", False)
    reused, rerun = _same_report(monkeypatch, model, x, y, compile_passes, **options)
    assert rerun == 0
    assert (reused > 0) is not compile_passes  # compiled passes keep no inference outputs


def test_mixed_float16_with_a_float16_input(keras, monkeypatch):
    """The layers compute in float16 from the input on. (A float32 input or
    a float32 head is cast in Layer.__call__, before the call the probe sees:
    a tensor made outside a layer, so that model is not reused.)"""
    L = keras.layers
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((6,), dtype="float16")
        h = L.Dropout(0.3, name="drop")(_two_bn(keras, inp))
        model = keras.Model(inp, L.Dense(2, name="out")(h))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reused, rerun = _same_report(monkeypatch, model, _x(6).astype("float16"))
    assert reused > 0 and rerun == 0


def test_a_lambda_taking_training_keeps_its_own_none(keras, monkeypatch):
    """A Lambda whose function reads training=None as training: model(x)
    differs from model(x, training=False), so the no-flag call is not the
    reference and its gap is reported (not a predict() difference)."""
    from bngap import inferencepaths

    L = keras.layers

    def unless_told(x, training=None):
        return x + 1.0 if training is None or training else x

    model = keras.Sequential(
        [keras.Input((5,)), L.Dense(3), L.Lambda(unless_told), L.BatchNormalization()]
    )
    x = _x(5, n=16)
    options = CheckOptions(batch_size=16, probe_preprocessing=False)
    got = {c.path: c.relative_l2 for c in check(model, x, options=options).leaks}
    assert got["model(x)"] > 0.01 and got["predict(x)"] < 1e-6
    monkeypatch.setattr(inferencepaths, "_same_modes", lambda *a: False)
    again = {c.path: c.relative_l2 for c in check(model, x, options=options).leaks}
    assert got == again


def test_outputs_of_inference_only_calls_are_not_held_through_masked_passes(keras, monkeypatch):
    """A subclassed model with a branch run only in inference mode: the
    training pass never takes those outputs; they are let go with the rest
    of the store before the masked passes, not held until the batch ends."""
    from bngap.probe import Probe

    L = keras.layers

    class InferenceOnly(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1, self.bn, self.drop = L.Dense(8), L.BatchNormalization(), L.Dropout(0.3)
            self.extra, self.out = [L.Dense(8) for _ in range(3)], L.Dense(2)

        def call(self, x, training=None):
            h = self.drop(self.bn(self.d1(x)), training=training)
            for e in [] if training else self.extra:
                h = e(h)
            return self.out(h)

    model = InferenceOnly()
    model(_x(6, n=2))
    held: list = []
    masked = Probe.masked_pass

    def spy(self, xs, b, active):
        held.append(len(self._eval_store))
        return masked(self, xs, b, active)

    monkeypatch.setattr(Probe, "masked_pass", spy)
    reused, _ = _same_report(monkeypatch, model, _x(6))
    assert reused > 0 and held and max(held) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_gives_the_same_report_on_every_backend(backend):
    """JAX and PyTorch run the same probe (JAX's training pass through
    stateless_call): the reuse skips calls there too and every number of the
    report is the one computing everything gives."""
    r = run_task(backend, "upstream_reuse")
    assert r["same"] and r["reused"] > 0 and r["rerun"] == 0


def test_without_masked_passes_later_batches_hold_nothing(keras, zoo, monkeypatch):
    """No masked pass asked for a cut on the first batch (BN only, effects
    0): later batches neither read own contributions nor hold frontiers."""
    from bngap.lockstep import LockstepPass
    from bngap.upstream import Upstream

    model, x, y = zoo.get("under_trained")  # two BN layers, 4 batches of 16
    monkeypatch.setattr(compiled, "available", lambda m: False)
    calls = {"frontier_now": 0, "held": 0}
    frontier_now, passed = LockstepPass._frontier_now, Upstream.passed

    def counted_frontier(self):
        calls["frontier_now"] += 1
        return frontier_now(self)

    def counted_passed(self, key, stored):
        passed(self, key, stored)
        calls["held"] = max(calls["held"], len(self._live)) if self.wanted == set() else 0

    monkeypatch.setattr(LockstepPass, "_frontier_now", counted_frontier)
    monkeypatch.setattr(Upstream, "passed", counted_passed)
    opts = CheckOptions(batch_size=16, probe_preprocessing=False, effects=0)
    check(model, x, y, options=opts)
    assert calls == {"frontier_now": 2, "held": 0}  # bn1 and bn2, first batch only
