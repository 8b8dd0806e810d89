"""`GapMonitor` inside a JAX `fit()` under `keras.distribution.DataParallel`
over two host devices: the gap is logged, equals what the monitor measures
with no distribution, and training is bit-identical with and without it.

XLA fixes its device count when JAX starts, so each configuration runs in a
process of its own (`backend_child.gap_monitor_devices`); the two start
together. The TensorFlow counterpart, `MirroredStrategy`, is in
`test_devices.py`."""

from __future__ import annotations

import pytest
from backend_child import spawn


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
