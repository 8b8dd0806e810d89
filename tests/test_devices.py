"""Several devices: `GapMonitor` inside `fit()` under
`tf.distribute.MirroredStrategy` over two logical CPU devices logs the gap,
measures what it measures without a strategy, and leaves training unchanged.

Logical devices must be configured before TensorFlow initialises, so each
case runs in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys

MIRRORED = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import bngap
from bngap.backend import import_keras
keras = import_keras()
L = keras.layers
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
