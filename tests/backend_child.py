"""Runs in a fresh process with KERAS_BACKEND set (the backend is fixed at
`import keras`) and prints one JSON object: what the per-backend tests check.

    KERAS_BACKEND=jax python tests/backend_child.py gap_monitor
"""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import redirect_stdout

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (64, 6)).astype("float32")
    y = (x[:, 0] > 3).astype("int64")
    return x, y


def _sequential(keras, dropout: bool):
    L = keras.layers
    layers = [keras.Input((6,)), L.Dense(8), L.BatchNormalization(), L.ReLU()]
    if dropout:
        layers.append(L.Dropout(0.2))
    return keras.Sequential(layers + [L.Dense(2)])


def _no_training_arg(keras):
    """A subclassed model whose call() has no `training` argument: fit()
    calls it as self(x), so its BN layer runs in inference mode there."""
    L = keras.layers

    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = L.Dense(8)
            self.bn = L.BatchNormalization()
            self.d2 = L.Dense(2)

        def call(self, x):
            return self.d2(keras.ops.relu(self.bn(self.d1(x))))

    m = Plain()
    m(np.zeros((1, 6), "float32"))
    return m


def _fit(keras, build, callbacks, epochs=3):
    keras.utils.set_random_seed(0)
    m = build(keras)
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    hist = m.fit(x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks)
    return m, hist


def _relative_l2_numpy(keras, model, x, batch_size):
    """The gap computed independently: model(x, training=True) against
    predict(x), batch by batch, in float64 numpy (BN statistics restored
    after each training call)."""
    sq_d = sq_r = 0.0
    saved = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.non_trainable_variables]
    for s in range(0, len(x), batch_size):
        part = x[s:s + batch_size]
        ev = np.asarray(model.predict(part, verbose=0), np.float64)
        tr = np.asarray(keras.ops.convert_to_numpy(model(part, training=True)), np.float64)
        for v, val in zip(model.non_trainable_variables, saved):
            v.assign(val)
        sq_d += float(((tr - ev) ** 2).sum())
        sq_r += float((ev ** 2).sum())
    return (sq_d / sq_r) ** 0.5


def gap_monitor() -> dict:
    import keras

    import bngap

    x, _ = _data()
    out: dict = {"backend": keras.backend.backend()}
    with_dropout = lambda k: _sequential(k, dropout=True)  # noqa: E731
    plain, _ = _fit(keras, with_dropout, [])
    monitor = bngap.GapMonitor(x[:40], batch_size=16, every_n_batches=2, warn_above=0.1)
    buf = io.StringIO()
    with redirect_stdout(buf):
        watched, hist = _fit(keras, with_dropout, [monitor])
    out["changed"] = [v.path for a, v in zip(plain.variables, watched.variables)
                      if np.asarray(a.numpy()).tobytes() != np.asarray(v.numpy()).tobytes()]
    out["variables"] = len(watched.variables)
    out["logged"] = hist.history.get("bngap_gap")
    out["history"] = [v for _, v in monitor.history]
    out["batch_history"] = len(monitor.batch_history)
    out["warned"] = "bngap: epoch 1: training-mode and inference-mode outputs differ" in buf.getvalue()

    # the value, against an independent computation on the final weights
    monitor = bngap.GapMonitor(x[:40], batch_size=16, verbose=False)
    model, _ = _fit(keras, lambda k: _sequential(k, dropout=False), [monitor], epochs=2)
    out["last"] = monitor.history[-1][1]
    out["expected_last"] = _relative_l2_numpy(keras, model, x[:40], 16)

    # fit() calls a model whose call() lacks `training` as self(x): no gap in fit()
    monitor = bngap.GapMonitor(x[:40], batch_size=16, verbose=False)
    _fit(keras, _no_training_arg, [monitor], epochs=1)
    out["no_training_arg"] = monitor.history[-1][1]
    return out


if __name__ == "__main__":
    result = {"gap_monitor": gap_monitor}[sys.argv[1]]()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
