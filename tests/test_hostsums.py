"""Sums of squares over host memory read in place (`backend.hostsums`):
the numbers against numpy in float64, on every backend; the backend's own
ops kept, bit for bit, where the tensors are traced; and what a pass's
fetch makes of sums that are on the host already."""

from __future__ import annotations

import numpy as np
import pytest
from backend_child import BACKENDS, host_sums, run_task

from bngap import backend


def _check(got: dict) -> None:
    assert got["viewed"] == [True, True, True]  # a plain tensor, a permuted one, a cast one
    assert got["declined"] == [True, True]  # int32, float16
    assert all(got["host_types"])  # the host path answered, in float64
    assert max(got["relative_errors"]) < 1e-6  # against numpy in float64
    # two blocks of one value repeated: as close as the backends' own sums come
    assert max(got["near_constant_relative_errors"]) < 1e-6
    assert got["non_finite"] == ["nan", "inf", "inf"]
    assert got["traced_relative_error"] < 1e-6


def test_host_sums_match_numpy_in_float64(keras):
    _check(host_sums())


@pytest.mark.parametrize("backend_name", [b for b in BACKENDS if b != "tensorflow"])
def test_host_sums_on_the_other_backends(backend_name):
    got = run_task(backend_name, "host_sums")
    assert got["backend"] == backend_name
    _check(got)


def test_traced_pair_sums_are_the_device_ops_bit_for_bit(keras):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the test process traces with tf.function")
    import tensorflow as tf

    rng = np.random.default_rng(7)
    t = tf.constant(rng.normal(1.0, 3.0, (4, 9, 9, 5)).astype("float32"))
    r = tf.constant(rng.normal(0.0, 2.0, (4, 9, 9, 5)).astype("float32"))
    traced = tf.function(lambda a, b: tf.stack(backend.pair_sums(a, b)))(t, r).numpy()
    plain = tf.stack([tf.reduce_sum(tf.square(t - r)), tf.reduce_sum(tf.square(r))]).numpy()
    assert np.array_equal(traced, plain)


def test_fetch_takes_host_sums_as_they_are(keras):
    from bngap.reductions import add_up, fetch

    ops = keras.ops
    host = np.float64(1.0) + np.float64(2.0**-40)  # not a float32 number
    device = ops.convert_to_tensor(np.float32(3.5))
    got = fetch([(host, device), device, host])
    assert got[0][0] == host and got[0][0].dtype == np.float64
    assert got[0][1] == np.float32(3.5) and got[2] == host
    mixed = add_up(ops, [device, host])  # on the host once one of them is
    assert isinstance(mixed, np.float64) and mixed == 3.5 + host
    assert float(backend.to_numpy(add_up(ops, [device, device]))) == 7.0


def test_threads_sum_in_scratch_blocks_of_their_own(keras):
    """Each thread squares its blocks in a scratch block of its own
    (`threading.local`; numpy lets go of the GIL while it works on one):
    four threads at once give what one thread gives, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    ops = keras.ops
    rng = np.random.default_rng(5)
    size = 3 * (1 << 16) + 11
    tensors = [
        tuple(ops.convert_to_tensor(rng.normal(k, 1.0 + k, size).astype("float32")) for _ in "tr")
        for k in range(4)
    ]
    alone = [(backend.pair_sums(t, r), backend.sum_squares(t)) for t, r in tensors]

    def repeat(k: int) -> list:
        t, r = tensors[k]
        return [(backend.pair_sums(t, r), backend.sum_squares(t)) for _ in range(25)]

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(repeat, range(4)))
    assert all(got == alone[k] for k in range(4) for got in together[k])
