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
