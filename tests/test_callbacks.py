"""GapMonitor inside fit() on every Keras backend, each in a process of its
own (the backend is fixed at `import keras`): the gap is logged, equals an
independent computation, and training is bit-identical with and without it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BACKENDS = ("tensorflow", "jax", "torch")
CHILD = Path(__file__).parent / "backend_child.py"
ROOT = Path(__file__).parent.parent


def run_children(task: str, backends=BACKENDS, timeout: int = 400) -> dict:
    """Starts `backend_child.py TASK` once per installed backend, all at
    once, and returns {backend: its JSON, or the tail of its stderr}."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = {}
    for b in backends:
        if importlib.util.find_spec(b) is None:
            continue
        procs[b] = subprocess.Popen([sys.executable, str(CHILD), task], env=dict(env, KERAS_BACKEND=b),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for b, p in procs.items():
        stdout, stderr = p.communicate(timeout=timeout)
        lines = stdout.strip().splitlines()
        out[b] = json.loads(lines[-1]) if p.returncode == 0 and lines else {"error": stderr[-3000:]}
    return out


@pytest.fixture(scope="module")
def monitored():
    return run_children("gap_monitor")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gap_monitor_on_backend(monitored, backend):
    if backend not in monitored:
        pytest.skip(f"{backend} is not installed")
    r = monitored[backend]
    assert "error" not in r, r.get("error")
    assert r["backend"] == backend
    # fit() with the monitor (every 2 batches and every epoch) ends bit for
    # bit where fit() without it ends: weights, BN statistics, seed states
    assert r["variables"] >= 8 and r["changed"] == []
    assert r["batch_history"] == 6  # 3 epochs x 4 batches, every 2nd
    assert r["logged"] == pytest.approx(r["history"]) and len(r["logged"]) == 3
    assert min(r["logged"]) > 0.1 and r["warned"]  # few BN updates, and dropout
    # the value equals model(x, training=True) vs predict(x) in numpy
    assert r["last"] == pytest.approx(r["expected_last"], rel=1e-5)
    # fit() calls a model whose call() lacks `training` as self(x): no gap there
    assert r["no_training_arg"] == 0.0
