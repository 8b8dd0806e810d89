"""`GapMonitor` inside a JAX `fit()` under `keras.distribution.DataParallel`
over two host devices: the gap is logged, equals what the monitor measures
with no distribution, and training is bit-identical with and without it.

XLA fixes its device count when JAX starts, so each configuration runs in a
process of its own (`backend_child.gap_monitor_devices`); the two start
together. The TensorFlow counterpart: the same under
`tf.distribute.MirroredStrategy` over two logical CPU devices, in a fresh
process too (logical devices are configured before TensorFlow starts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from backend_child import TWO_CPUS, spawn


@pytest.fixture(scope="module")
def runs():
    out = spawn({n: ("jax", "gap_monitor_devices", n) for n in (1, 2)})
    if not out:
        pytest.skip("jax is not installed")
    for r in out.values():
        assert "error" not in r, r.get("error")
        if "skip" in r:
            pytest.skip(r["skip"])
    return out


def test_gap_monitor_logs_the_gap_under_data_parallel(runs):
    r = runs[2]
    assert r["devices"] == 2  # the variables live on both devices
    assert r["logged"] == r["history"] and len(r["logged"]) == 3
    assert len(r["batch_history"]) == 6  # 3 epochs x 4 batches, every 2nd
    assert min(r["logged"]) > 0.1  # few BN updates, and dropout


def test_gap_monitor_leaves_distributed_training_unchanged(runs):
    r = runs[2]
    # every variable (weights, BN statistics, seed states, ...) bit for bit
    # as fit() without the monitor, and on the devices it was placed on
    assert r["variables"] >= 8 and r["changed"] == [] and r["moved"] == []


def test_gap_monitor_measures_the_same_with_and_without_distribution(runs):
    two, one = runs[2], runs[1]
    # on the same final variables: the same value with no distribution set
    assert two["distributed"] == pytest.approx(two["undistributed"], rel=1e-6)
    # against a fit() on one device: gradients summed across two devices
    # differ in their last bits, about 1e-5 after 12 steps
    assert one["devices"] == 1 and one["changed"] == []
    assert two["logged"] == pytest.approx(one["logged"], rel=1e-4)
    assert two["batch_history"] == pytest.approx(one["batch_history"], rel=1e-4)


MIRRORED = (
    TWO_CPUS
    + r"""
rng = np.random.default_rng(0)
x = rng.normal(3, 2, (64, 6)).astype("float32")
y = (x[:, 0] > 3).astype("int64")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

def build():
    return keras.Sequential([keras.Input((6,)), L.Dense(8), L.BatchNormalization(), L.ReLU(), L.Dense(2)])

def train(cbs):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        m = build()
        m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=cbs, shuffle=False)
    return m, h

plain, _ = train([])
monitor = bngap.GapMonitor(x[:32], verbose=False)
watched, hist = train([monitor])
alone = build()
alone.set_weights(watched.get_weights())
again = bngap.GapMonitor(x[:32], verbose=False)
again.set_model(alone)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "identical": all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(plain.weights, watched.weights)),
    "logged": hist.history.get("bngap_gap"),
    "last": monitor.history[-1][1],
    "without_strategy": again.measure(),
}))
"""
)


def test_gap_monitor_under_mirrored_strategy_on_two_logical_devices():
    res = subprocess.run(
        [sys.executable, "-c", MIRRORED],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["identical"]  # every weight bit for bit, with and without the monitor
    assert len(out["logged"]) == 3 and all(v > 0.01 for v in out["logged"])
    assert abs(out["last"] - out["without_strategy"]) < 1e-6 * max(1.0, out["last"])
