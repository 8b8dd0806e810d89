"""The lockstep pass (`bngap/lockstep.py`): one call of the model computing
each layer's inference output beside its training call. Its report is the
one the two passes give one after the other, the weights stay bit for bit,
inference outputs are let go after their last use as Keras' graph counts it
(`twinflow.py`), and anything it cannot follow runs the classic way."""

from __future__ import annotations

import numpy as np
import pytest
from backend_child import (
    BACKENDS,
    lockstep,
    lockstep_counter,
    lockstep_model,
    lockstep_recurrent,
    run_task,
)
from reportdiffs import report_diffs

from bngap import lockstep as lock
from bngap import upstream
from bngap.pipeline import CheckOptions, check

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False)


def _diffs(a, b) -> list:
    """Where two reports differ (numbers at relative 1e-5)."""
    return report_diffs(a, b, rtol=1e-5)


def _counting(monkeypatch) -> dict:
    ran = {"passes": 0, "abandoned": 0}
    counted = lockstep_counter(lock.LockstepPass.lockstep_pass, ran)
    monkeypatch.setattr(lock.LockstepPass, "lockstep_pass", counted)
    return ran


def test_lockstep_report_equals_the_passes_one_after_the_other(keras):
    got = lockstep()
    assert got["passes"] == 3 and got["abandoned"] == 0  # 40 samples, batches of 16
    assert got["lockstep"]["layers"] and _diffs(got["lockstep"], got["classic"]) == []
    effects = [r["output_effect"] for r in got["lockstep"]["layers"] if r.get("output_effect")]
    assert effects  # the masked passes ran, on what the lockstep pass kept for them


def test_lockstep_with_labels_leaves_the_weights_bit_identical(keras, monkeypatch):
    ran = _counting(monkeypatch)
    model, x = lockstep_model(keras)
    before = [np.array(v.numpy()) for v in model.variables]
    y = np.random.default_rng(0).integers(0, 3, 40)
    report = check(model, x, [y, np.zeros((40, 2), "float32")], options=OPTIONS)
    assert ran == {"passes": 3, "abandoned": 0}
    assert report.metrics is not None
    after = [np.array(v.numpy()) for v in model.variables]
    assert all(np.array_equal(u, v) for u, v in zip(before, after))


def _chain(keras, depth: int = 12):
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,))
    h = inp
    for i in range(depth):
        h = L.BatchNormalization(name=f"bn{i}")(L.Dense(16, name=f"d{i}")(h))
    return keras.Model(inp, L.Dense(2, name="out")(h))


def test_twins_are_let_go_after_their_last_use(keras, monkeypatch):
    """A chain of 25 layers: at most the input, the twin in use and the one
    made are held at once, not one per layer."""
    model = _chain(keras)
    held: list[int] = []
    original = lock.LockstepPass._used

    def watched(self, args, kwargs):
        held.append(len(self._twins))
        return original(self, args, kwargs)

    monkeypatch.setattr(lock.LockstepPass, "_used", watched)
    x = np.random.default_rng(1).normal(0, 1, (32, 16)).astype("float32")
    check(model, x, options=OPTIONS)
    assert len(held) == 2 * 25  # two batches, every call seen
    assert max(held) <= 3


def test_a_tensor_without_twin_runs_the_batch_the_classic_way(keras, monkeypatch):
    """A layer computing in float16 is handed a cast of its input, which no
    layer made: the lockstep pass is abandoned there, after the layers
    before it have run, having added nothing; the batch runs the classic way,
    and the next batch does not try again."""
    L = keras.layers

    def build():
        keras.utils.set_random_seed(2)
        inp = keras.Input((6,), name="x")
        h = L.BatchNormalization(name="bn")(L.Dense(8, name="d0")(inp))
        h = L.Dense(4, dtype="mixed_float16", name="half")(L.Dropout(0.3, name="drop")(h))
        out = L.Dense(2, name="out")(L.BatchNormalization(name="bn2")(h))
        return keras.Model(inp, out, name="half_model")

    x = np.random.default_rng(3).normal(1, 2, (24, 6)).astype("float32")
    ran = _counting(monkeypatch)
    got = check(build(), x, options=OPTIONS).to_dict()
    assert ran == {"passes": 1, "abandoned": 1}  # two batches
    monkeypatch.setattr(lock, "twin_uses", lambda *a: None)
    want = check(build(), x, options=OPTIONS).to_dict()
    got.pop("seconds", None)
    want.pop("seconds", None)
    assert got["layers"] and _diffs(got, want) == []


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "tensorflow"])
def test_lockstep_on_the_other_backends(backend):
    got = run_task(backend, "lockstep")
    assert got["backend"] == backend
    assert got["passes"] == 3 and got["abandoned"] == 0
    assert _diffs(got["lockstep"], got["classic"]) == []


def _both(keras, monkeypatch, build, x, **options) -> tuple[list, dict]:
    """Where the report of the lockstep pass differs from the classic one's
    (each from a fresh model, names alike), and how many lockstep passes ran."""
    opts = CheckOptions(batch_size=16, probe_preprocessing=False, **options)
    ran = _counting(monkeypatch)
    reports = []
    for classic in (False, True):
        if classic:
            monkeypatch.setattr(lock, "twin_uses", lambda *a: None)
        keras.backend.clear_session()
        report = check(build(), x, options=opts).to_dict()
        report.pop("seconds", None)
        reports.append(report)
        if not classic:
            counted = dict(ran)
    assert reports[0]["layers"]
    return _diffs(*reports), counted


def test_a_recurrent_layer_drawing_masks_in_inference_mode(keras, monkeypatch):
    """A GRU with dropout draws its masks from its seed generator in either
    mode: its inference call in the lockstep pass must not move the state
    the training call (and its own contribution's inference call) draw from."""
    x = lockstep_recurrent(keras)[1]
    diffs, ran = _both(keras, monkeypatch, lambda: lockstep_recurrent(keras)[0], x)
    assert ran == {"passes": 3, "abandoned": 0}
    assert diffs == []


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "tensorflow"])
def test_a_recurrent_layer_on_the_other_backends(backend):
    """On torch an unseeded GRU draws its masks from torch's global generator."""
    got = run_task(backend, "lockstep_recurrent")
    assert got["passes"] == 3 and got["abandoned"] == 0
    assert got["lockstep"]["layers"] and _diffs(got["lockstep"], got["classic"]) == []


def test_a_non_finite_batch_still_gets_its_modes_pass(keras, monkeypatch):
    """Every batch overflows: each is measured again entry by entry, and the
    first one's no-flag modes pass (the inference paths) runs as it does in
    the classic structure."""
    L = keras.layers

    def build():
        keras.utils.set_random_seed(1)
        inp = keras.Input((6,))
        h = L.Dropout(0.3)(L.BatchNormalization()(L.Dense(8)(inp)))
        big = L.Dense(8, kernel_initializer=keras.initializers.Constant(30.0))(h)
        h = L.BatchNormalization()(L.Activation("exponential")(big))
        return keras.Model(inp, L.Dense(2)(h))

    x = np.random.default_rng(0).normal(1, 2, (40, 6)).astype("float32")
    diffs, _ = _both(keras, monkeypatch, build, x)
    assert diffs == []


@pytest.mark.parametrize("floor", [None, 3000])
def test_layers_handing_back_their_input_and_frontiers_let_go(keras, monkeypatch, floor):
    """Layers handing back the very tensor they got (Identity, a linear
    Activation, Dropout with rate 0, Dropout and noise in inference mode) in
    chains and as outputs, the model input and one tensor given out twice, an
    output also used further on, a nested Functional handing its input out;
    all cause groups' passes. With a budget of a few kB (`floor`), frontiers
    are let go during the pass while twins they hold were already forgotten."""
    if floor is not None:
        monkeypatch.setattr(lock, "BUDGET_FLOOR", floor)
        monkeypatch.setattr(lock, "BUDGET_SHARE", 0.0)
        monkeypatch.setattr(upstream, "BUDGET_FLOOR", floor)
        monkeypatch.setattr(upstream, "BUDGET_SHARE", 0.0)
    L = keras.layers

    def build():
        keras.utils.set_random_seed(1)
        inp = keras.Input((6,))
        i = keras.Input((16,))
        inner = keras.Model(i, [i, L.BatchNormalization()(L.Dense(16)(i))])
        h, skips = L.Dense(16)(L.Dropout(0.3)(inp)), []
        for k in range(4):
            h = L.BatchNormalization()(L.Dense(16)(h))
            h = L.Dropout(0.2)(h) if k % 2 else L.GaussianNoise(0.3)(h)
            h = L.Activation("linear")(L.Dropout(0.0)(L.Identity()(h)))
            skips.append(h)
            if k >= 2:
                h = L.Add()([h, skips[k - 2]])
        a, b = inner(h)
        h = L.Concatenate()([a, b, skips[0]])
        return keras.Model(inp, [L.Dense(2)(h), skips[1], L.Identity()(inp), h, h])

    x = np.random.default_rng(0).normal(1, 2, (40, 6)).astype("float32")
    diffs, ran = _both(keras, monkeypatch, build, x, effects=None)
    assert ran == {"passes": 3, "abandoned": 0}
    assert diffs == []
