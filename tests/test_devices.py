"""`--devices` (`backend.devices`): batches spread over two logical CPU
devices give the one-device report, for check and fix; more devices than
are visible is one line. (`GapMonitor` under several devices:
`test_callbacks_distributed.py`.)

Logical devices must be configured before TensorFlow initialises, so each
case runs in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys

from backend_child import TWO_CPUS

SPREAD = (
    TWO_CPUS
    + r"""
import sys
from bngap.errors import BngapError
rng = np.random.default_rng(5)
x = rng.normal(2, 3, (96, 8, 8, 3)).astype("float32")
y = rng.integers(0, 3, 96)

def build():
    keras.utils.set_random_seed(5)
    m = keras.Sequential([keras.Input((8, 8, 3), name="x"), L.Conv2D(6, 3, name="conv"),
                          L.BatchNormalization(name="bn"), L.ReLU(name="relu"),
                          L.Dropout(0.3, name="drop"), L.GlobalAveragePooling2D(name="pool"),
                          L.Dense(3, name="out")], name="net")
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m

def report(devices, batch):
    d = bngap.check(build(), x, y, batch_size=batch, devices=devices,
                    probe_preprocessing=False).to_dict()
    d.pop("seconds", None)
    return d

out = {}
for batch in (48, 12):  # 2 batches: eager passes; 8 batches: compiled passes
    one, two = report(1, batch), report(2, batch)
    out[f"devices_{batch}"] = [one["settings"]["devices"], two["settings"]["devices"]]
    one["settings"].pop("devices"); two["settings"].pop("devices")
    out[f"same_{batch}"] = one == two
    out[f"gap_{batch}"] = two["output_gap"]["relative_l2"]
models = [build(), build()]
fixed = [bngap.fix(m, x, batch_size=12, devices=n) for m, n in zip(models, (1, 2))]
out["fix_same"] = fixed[0].after == fixed[1].after and fixed[0].before == fixed[1].before
out["fix_devices"] = [f.devices for f in fixed]
bns = [[l for l in m.layers if isinstance(l, L.BatchNormalization)][0] for m in models]
out["fix_stats_same"] = all(
    np.array_equal(a.numpy(), b.numpy())
    for a, b in [(bns[0].moving_mean, bns[1].moving_mean), (bns[0].moving_variance, bns[1].moving_variance)]
)
try:
    bngap.check(build(), x, devices=3)
except BngapError as e:
    out["too_many"] = str(e)
print(json.dumps(out))
"""
)


def test_two_logical_devices_give_the_single_device_report():
    """Batches spread over two logical CPU devices: every number of the
    report (statistics, gap, loss, findings) equals the one-device report,
    on the eager and on the compiled passes, and for fix; settings.devices
    says how many were used."""
    res = subprocess.run(
        [sys.executable, "-c", SPREAD],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices_48"] == [1, 2] and out["devices_12"] == [1, 2]
    assert out["same_48"] and out["same_12"]
    assert out["gap_12"] > 0.01
    assert out["fix_same"] and out["fix_stats_same"] and out["fix_devices"] == [1, 2]
    assert "only 2 CPU device(s) visible" in out["too_many"]
