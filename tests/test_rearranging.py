"""The divergence of a layer that only moves its inputs' values
(`closedform.REARRANGING`: Concatenate, Flatten, Reshape, Permute,
ZeroPadding, Identity) is the sum of its inputs' pairs, not compared again:
equal to the comparison, to numpy, in the compiled passes and on every
backend; and compared as before where an input is not a layer output."""

from __future__ import annotations

import numpy as np
import pytest
from backend_child import BACKENDS, rearranging_model, run_task

from bngap import closedform, compiled
from bngap.pipeline import CheckOptions
from bngap.pipeline import check as run_check
from bngap.probe import Probe

OPTIONS = CheckOptions(batch_size=16, probe_preprocessing=False, effects=0)


def _divergence(keras, monkeypatch, summed=True) -> tuple[dict, set]:
    """Each layer's divergence, and the layers whose pairs were summed."""
    if not summed:
        monkeypatch.setattr(closedform, "rearranging", lambda node, keras: False)
    model, x = rearranging_model(keras)
    used: set[str] = set()
    divergence, summed_pairs, current = Probe._divergence, Probe._summed_pairs, []

    def seen(self, node, *a, **kw):
        current.append(node.path)
        try:
            return divergence(self, node, *a, **kw)
        finally:
            current.pop()

    def summing(self, *a, **kw):
        got = summed_pairs(self, *a, **kw)
        if got is not None:
            used.add(current[-1])
        return got

    monkeypatch.setattr(Probe, "_divergence", seen)
    monkeypatch.setattr(Probe, "_summed_pairs", summing)
    r = run_check(model, x, options=OPTIONS)
    return {lay.path: lay.divergence for lay in r.layers}, used


SUMMED = {"cat0", "cat1", "twice", "pad", "perm", "flat", "flat2", "reshape", "flat3", "head_cat"}


def test_summed_pairs_equal_the_comparison(keras, monkeypatch):
    got, used = _divergence(keras, monkeypatch)
    assert used == SUMMED  # "with_input" takes the model's input: compared
    want, none = _divergence(keras, monkeypatch, summed=False)
    assert not none and got.keys() == want.keys()
    for path, value in want.items():
        assert got[path] == pytest.approx(value, rel=1e-5, abs=1e-7), path
    assert got["cat1"] > 0.01  # a gap to sum: the BN layers moved it


def test_summed_pairs_match_numpy(keras, monkeypatch):
    """Independently: each layer's output from a sub-model in both modes
    (the BN statistics a training-mode call moves put back after it), in
    float64, summed over the batches of 16."""
    got, _ = _divergence(keras, monkeypatch)
    model, x = rearranging_model(keras)
    kept = [np.array(v.numpy(), copy=True) for v in model.non_trainable_variables]
    for path in ("cat1", "twice", "perm", "head_cat"):
        sub = keras.Model(model.input, model.get_layer(path).output)
        d = r = 0.0
        for start in range(0, len(x), 16):
            xb = x[start : start + 16]
            t = np.asarray(sub(xb, training=True), np.float64)
            for v, k in zip(model.non_trainable_variables, kept):
                v.assign(k)
            e = np.asarray(sub(xb, training=False), np.float64)
            d, r = d + np.sum((t - e) ** 2), r + np.sum(e**2)
        assert got[path] == pytest.approx(np.sqrt(d / r), rel=1e-5), path


def test_summed_pairs_in_the_compiled_passes(keras, monkeypatch):
    eager, _ = _divergence(keras, monkeypatch)
    monkeypatch.setattr(compiled, "COMPILE_FROM_BATCHES", 1)
    traced, used = _divergence(keras, monkeypatch)
    assert used == SUMMED
    for path, value in eager.items():
        assert traced[path] == pytest.approx(value, rel=1e-5, abs=1e-7), path


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "tensorflow"])
def test_summed_pairs_on_the_other_backends(backend):
    r = run_task(backend, "rearranging")
    assert r["summed"].keys() == r["compared"].keys()
    for path, value in r["compared"].items():
        assert r["summed"][path] == pytest.approx(value, rel=1e-5, abs=1e-7), path
    assert r["summed"]["cat1"] > 0.01


def _half_precision(keras):
    """mixed_float16: float16 concatenations and padding, one float32
    Concatenate whose float16 input Keras casts (a new tensor: compared)."""
    L = keras.layers
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((6, 6, 3), name="x")
        h = L.Conv2D(4, 3, padding="same", name="c0")(inp)
        y = L.ReLU(name="r")(L.BatchNormalization(name="bn")(h))
        h = L.Concatenate(name="cat")([h, L.Conv2D(3, 3, padding="same", name="c1")(y)])
        h32 = L.Activation("linear", dtype="float32", name="to32")(h)
        both = L.Concatenate(name="cat32", dtype="float32")([h32, h])
        f = L.Flatten(name="flat")(L.ZeroPadding2D(1, name="pad")(both))
        return keras.Model(inp, L.Dense(2, name="o", dtype="float32")(f), name="half")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _shared_calls(keras):
    """A Conv2D, a BN, a Concatenate and a Flatten each called twice."""
    L = keras.layers
    inp = keras.Input((4, 4, 2), name="x")
    conv, bn, cat, flat = (
        L.Conv2D(2, 1, name="conv"),
        L.BatchNormalization(name="bn"),
        L.Concatenate(name="cat"),
        L.Flatten(name="flat"),
    )
    a, b = bn(conv(inp)), bn(conv(L.ReLU(name="r")(inp)))
    y = L.Concatenate(name="top")([flat(cat([a, b])), flat(cat([b, a])), L.Flatten(name="fa")(a)])
    return keras.Model(inp, L.Dense(2, name="o")(y), name="shared")


def _nested_outputs(keras):
    """Sub-models whose output is their last layer's own output tensor (one
    a Concatenate of a Dropout and a BN), an Identity, a Reshape and a
    Permute of what they give."""
    L = keras.layers
    b_in = keras.Input((6,), name="b_in")
    base = keras.Model(
        b_in, L.BatchNormalization(name="ibn")(L.Dense(5, name="id")(b_in)), name="base"
    )
    c_in = keras.Input((6,), name="c_in")
    mixed = L.Concatenate(name="icat")(
        [L.Dropout(0.5, name="idrop")(c_in), L.BatchNormalization(name="ibn2")(c_in)]
    )
    inner = keras.Model(c_in, mixed, name="inner")
    inp = keras.Input((6,), name="x")
    a = base(inp)
    y = L.Concatenate(name="cat")(
        [a, inner(L.Dense(6, name="pre")(inp)), L.Identity(name="same")(a)]
    )
    y = L.Flatten(name="flat")(L.Permute((2, 1), name="perm")(L.Reshape((-1, 1), name="rs")(y)))
    return keras.Model(inp, L.Dense(2, name="o")(y), name="nested")


@pytest.mark.parametrize(
    "build, shape",
    [(_half_precision, (40, 6, 6, 3)), (_shared_calls, (40, 4, 4, 2)), (_nested_outputs, (40, 6))],
    ids=["float16", "shared_calls", "nested_outputs"],
)
def test_summed_pairs_equal_the_comparison_on_more_shapes(keras, monkeypatch, build, shape):
    """Float16 layers (pairs summed in float32), layers called twice (each
    call's own pair), sub-models handing on their last layer's tensor: the
    sums are used and equal the comparison."""
    x = np.random.default_rng(0).normal(1, 2, shape).astype("float32")

    def divergences(summed: bool) -> tuple[dict, int]:
        used: list = []
        original = Probe._summed_pairs

        def counted(self, *a, **kw):
            got = original(self, *a, **kw)
            used.append(got is not None)
            return got

        with monkeypatch.context() as m:
            m.setattr(Probe, "_summed_pairs", counted)
            if not summed:
                m.setattr(closedform, "rearranging", lambda node, keras: False)
            keras.utils.set_random_seed(3)
            r = run_check(build(keras), x, options=OPTIONS)
        return {lay.path: lay.divergence for lay in r.layers}, sum(used)

    got, used = divergences(True)
    want, none = divergences(False)
    assert used and not none and got.keys() == want.keys()
    for path, value in want.items():
        assert got[path] == pytest.approx(value, rel=1e-5, abs=1e-7), path
