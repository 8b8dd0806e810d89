"""Per-backend test tasks, each run in a fresh process with KERAS_BACKEND set
(the backend is fixed at `import keras`), printing one JSON object; and
`spawn()`, which the tests use to start them.

    KERAS_BACKEND=jax python tests/backend_child.py gap_monitor
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKENDS = ("tensorflow", "jax", "torch")
# the start of a script run with `python -c` on two logical CPU devices (TensorFlow:
# they must be configured before it initialises, so in a fresh process)
TWO_CPUS = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import bngap
from bngap.backend import import_keras
keras = import_keras()
L = keras.layers
"""
ROOT = Path(__file__).parent.parent


def run_task(backend: str, task: str, timeout: int = 300) -> dict:
    """One task's JSON on one backend, checked to have run there; the test
    is skipped where that backend is not installed."""
    import pytest

    got = spawn({backend: (backend, task)}, timeout=timeout)
    if backend not in got:
        pytest.skip(f"{backend} is not installed")
    r = got[backend]
    assert "error" not in r, r.get("error")
    assert r["backend"] == backend
    return r


def spawn(jobs: dict, timeout: int = 400) -> dict:
    """Starts every job {label: (backend, task, *args)} at once, each in a
    process of its own, and returns {label: its JSON, or {'error': stderr}}.
    Jobs on the backend of the Keras this process already imported run here
    (no start-up to pay); jobs whose backend is not installed are left out."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    here = sys.modules["keras"].backend.backend() if "keras" in sys.modules else None
    procs, inline = {}, {}
    for label, (backend, *argv) in jobs.items():
        if importlib.util.find_spec(backend) is None:
            continue
        if backend == here:
            inline[label] = argv
            continue
        procs[label] = subprocess.Popen(
            [sys.executable, __file__, *map(str, argv)],
            env=dict(env, KERAS_BACKEND=backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out = {label: TASKS[task](*map(str, args)) for label, (task, *args) in inline.items()}
    for label, p in procs.items():
        stdout, stderr = p.communicate(timeout=timeout)
        lines = stdout.strip().splitlines()
        out[label] = (
            json.loads(lines[-1]) if p.returncode == 0 and lines else {"error": stderr[-3000:]}
        )
    return out


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
        part = x[s : s + batch_size]
        ev = np.asarray(model.predict(part, verbose=0), np.float64)
        tr = np.asarray(keras.ops.convert_to_numpy(model(part, training=True)), np.float64)
        for v, val in zip(model.non_trainable_variables, saved):
            v.assign(val)
        sq_d += float(((tr - ev) ** 2).sum())
        sq_r += float((ev**2).sum())
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
    out["changed"] = [
        v.path
        for a, v in zip(plain.variables, watched.variables)
        if np.asarray(a.numpy()).tobytes() != np.asarray(v.numpy()).tobytes()
    ]
    out["variables"] = len(watched.variables)
    out["logged"] = hist.history.get("bngap_gap")
    out["history"] = [v for _, v in monitor.history]
    out["batch_history"] = len(monitor.batch_history)
    out["warned"] = (
        "bngap: epoch 1: training-mode and inference-mode outputs differ" in buf.getvalue()
    )

    # the value, against an independent computation on the final weights
    monitor = bngap.GapMonitor(x[:40], batch_size=16, verbose=False)
    model, _ = _fit(keras, lambda k: _sequential(k, dropout=False), [monitor], epochs=2)
    out["last"] = monitor.history[-1][1]
    out["expected_last"] = _relative_l2_numpy(keras, model, x[:40], 16)

    # fit() calls a model whose call() lacks `training` as self(x): no gap in fit()
    monitor = bngap.GapMonitor(x[:40], batch_size=16, verbose=False)
    _fit(keras, _no_training_arg, [monitor], epochs=1)
    out["no_training_arg"] = monitor.history[-1][1]

    # re-estimating the statistics at the end: the BN input's own mean and variance
    # (bngap's probe runs on every backend once the backend adapter is there)
    if keras.backend.backend() == "tensorflow" or importlib.util.find_spec("bngap.backend"):
        monitor = bngap.GapMonitor(x, batch_size=64, recalibrate_at_end=True, verbose=False)
        model, _ = _fit(keras, lambda k: _sequential(k, dropout=False), [monitor], epochs=2)
        inp = keras.ops.convert_to_numpy(model.layers[0](x)).astype(np.float64)
        bn = model.layers[1]
        out["recalibrated"] = {
            "mean_error": float(
                np.abs(keras.ops.convert_to_numpy(bn.moving_mean.value) - inp.mean(0)).max()
            ),
            "variance_error": float(
                np.abs(keras.ops.convert_to_numpy(bn.moving_variance.value) - inp.var(0)).max()
            ),
            "before": monitor.history[-1][1],
            "after": monitor.measure(),
        }
    return out


def side_outputs(model_path: str, data_path: str, out_path: str, perturb: str = "") -> dict:
    """`sideoutput.save_outputs` of a saved model on this backend; with
    `perturb=LAYER`, that BN layer's moving variance is first made 1% larger
    (a stand-in for a backend computing one layer differently)."""
    import keras

    from bngap.data import from_arrays
    from bngap.layertree import build_tree
    from bngap.loading import input_specs
    from bngap.sideoutput import save_outputs

    model = keras.saving.load_model(model_path, compile=False)
    if perturb:
        bn = model
        for name in perturb.split("/"):
            bn = bn.get_layer(name)
        bn.moving_variance.assign(keras.ops.convert_to_numpy(bn.moving_variance.value) * 1.01)
    with np.load(data_path) as f:
        data = from_arrays(f["x"], None, input_specs(model))
    before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.variables]
    save_outputs(out_path, model, build_tree(model, keras), data, keras, batch_size=32)
    after = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.variables]
    return {
        "backend": keras.backend.backend(),
        "unchanged": all(a.tobytes() == b.tobytes() for a, b in zip(before, after)),
    }


def gap_monitor_devices(count: str) -> dict:
    """`GapMonitor` in a JAX `fit()` under `keras.distribution.DataParallel`
    over `count` host devices (`count=1`: no distribution at all): what it
    logs, training with and without it, the variables' placement, and the
    gap the same monitor measures on the final variables with no
    distribution set."""
    n = int(count)
    if "jax" not in sys.modules:  # XLA reads it when JAX first starts its CPU client
        flag = f"--xla_force_host_platform_device_count={n}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax
    import keras

    import bngap

    if n > 1 and jax.device_count() < n:
        return {"skip": f"JAX started in this process with {jax.device_count()} device(s)"}
    x, _ = _data()  # watched: 39 samples, an odd last batch (7)
    dist = None
    if n > 1:
        dist = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
    keras.distribution.set_distribution(dist)
    with_dropout = lambda k: _sequential(k, dropout=True)  # noqa: E731
    plain, _ = _fit(keras, with_dropout, [])
    monitor = bngap.GapMonitor(x[:39], batch_size=16, every_n_batches=2, verbose=False)
    watched, hist = _fit(keras, with_dropout, [monitor])
    placed = lambda m: [str(v.value.sharding) for v in m.variables]  # noqa: E731
    out: dict = {
        "devices": len(watched.variables[0].value.sharding.device_set),
        "changed": [
            v.path
            for a, v in zip(plain.variables, watched.variables)
            if np.asarray(a.numpy()).tobytes() != np.asarray(v.numpy()).tobytes()
        ],
        "moved": [
            v.path for v, a, b in zip(watched.variables, placed(plain), placed(watched)) if a != b
        ],
        "variables": len(watched.variables),
        "logged": hist.history.get("bngap_gap"),
        "history": [v for _, v in monitor.history],
        "batch_history": [v for _, _, v in monitor.batch_history],
    }
    # the same variables (seed states too) in a model built with no distribution
    keras.distribution.set_distribution(None)
    alone = with_dropout(keras)
    for a, v in zip(alone.variables, watched.variables):
        a.assign(np.asarray(v.numpy()))
    again = bngap.GapMonitor(x[:39], batch_size=16, verbose=False)
    again.set_model(alone)
    out["undistributed"] = again.measure()
    out["distributed"] = monitor.history[-1][1]
    return out


def upstream_reuse() -> dict:
    """A residual CNN with BN and a dropout head, checked on 2 batches with
    every output effect, with the masked passes reusing the inference pass
    and without: the reports (seconds aside) and how many calls were reused."""
    import keras

    from bngap import upstream
    from bngap.pipeline import CheckOptions, check
    from bngap.probe import Probe

    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same")(inp)
    for _ in range(3):
        y = L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(x))
        x = L.Add()([L.ReLU()(y), x])
    x = L.Dropout(0.3)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(x))
    data = np.random.default_rng(5).normal(1, 2, (32, 8, 8, 3)).astype("float32")
    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    counts = {"reused": 0, "rerun": 0}
    original = Probe.masked_pass

    def counting(self, *args, **kwargs):
        before, rerun = self.reused, self.rerun
        out = original(self, *args, **kwargs)
        counts["reused"] += self.reused - before
        counts["rerun"] += self.rerun - rerun
        return out

    cut_for = upstream.Upstream.cut_for
    reports = []
    try:  # put back: on the test process's own backend this runs in the test process
        Probe.masked_pass = counting  # type: ignore[method-assign]
        for reuse in (True, False):
            if not reuse:
                upstream.Upstream.cut_for = lambda self, first: (upstream.INPUT, None)  # type: ignore[method-assign]
            d = check(model, data, options=options).to_dict()
            d.pop("seconds", None)
            reports.append(d)
    finally:
        Probe.masked_pass = original  # type: ignore[method-assign]
        upstream.Upstream.cut_for = cut_for  # type: ignore[method-assign]
    return {"backend": keras.backend.backend(), "same": reports[0] == reports[1], **counts}


def inference_paths() -> dict:
    """The inference paths of a model of Keras' own classes (no pass: the
    modes read off the first batch) and of one whose base is called with
    training=True at construction (the passes run): the leak checks, the
    passes run, and whether each report equals the one the passes give."""
    import keras

    from bngap.inferencepaths import PathPasses
    from bngap.pipeline import CheckOptions, check

    L = keras.layers
    x = np.random.default_rng(1).normal(1, 2, (24, 6)).astype("float32")

    def build(training):
        keras.utils.set_random_seed(3)
        b_in = keras.Input((6,), name="b_in")
        h = L.BatchNormalization(name="inner")(L.Dense(5, name="bd")(b_in))
        base = keras.Model(b_in, h, name="base")
        inp = keras.Input((6,), name="x")
        h = L.Dropout(0.3, name="drop")(base(inp, training=training))
        return keras.Model(inp, L.Dense(2, name="o")(h), name="outer")

    def report(training):
        d = check(build(training), x, options=CheckOptions(batch_size=12)).to_dict()
        d.pop("seconds", None)
        return d

    ran: list[str] = []
    originals = {n: getattr(PathPasses, n) for n in ("modes_pass", "observe_pass", "predict")}

    def spy(name):
        def run(self, *a, **kw):
            ran.append(name)
            return originals[name](self, *a, **kw)

        return run

    out: dict = {"backend": keras.backend.backend()}
    watch = PathPasses.watch_no_flag
    try:  # put back: on the test process's own backend this runs in the test process
        for name in originals:
            setattr(PathPasses, name, spy(name))
        for label, training in (("plain", False), ("given_training", True)):
            ran.clear()
            got = report(training)
            out[label] = {"leaks": got["leaks"], "ran": list(ran)}
            PathPasses.watch_no_flag = lambda self: None  # type: ignore[method-assign]
            out[label]["same_with_passes"] = report(training) == got
            PathPasses.watch_no_flag = watch  # type: ignore[method-assign]
    finally:
        for name, fn in originals.items():
            setattr(PathPasses, name, fn)
        PathPasses.watch_no_flag = watch  # type: ignore[method-assign]
    return out


def rearranging_model(keras):
    """Running concatenations of BN-fed convolutions (as in DenseNet), one
    tensor concatenated with itself, one with the model's input, padding,
    permuting, flattening and reshaping, and the data (40 samples)."""
    L = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 6, 3), name="x")
    h = L.Conv2D(4, 3, padding="same", name="c0")(inp)
    for i in range(2):
        y = L.ReLU(name=f"r{i}")(L.BatchNormalization(name=f"bn{i}")(h))
        h = L.Concatenate(name=f"cat{i}")([h, L.Conv2D(3, 3, padding="same", name=f"c{i + 1}")(y)])
    both = L.Concatenate(axis=1, name="twice")([h, h])
    raw = L.Concatenate(name="with_input")([inp, h])
    f = L.Flatten(name="flat")(
        L.Permute((3, 1, 2), name="perm")(L.ZeroPadding2D(1, name="pad")(both))
    )
    r = L.Flatten(name="flat3")(L.Reshape((-1, 2), name="reshape")(L.Flatten(name="flat2")(raw)))
    out = L.Dropout(0.3, name="drop")(L.Concatenate(name="head_cat")([f, r]))
    model = keras.Model(inp, L.Dense(2, name="out")(out), name="dense_like")
    x = np.random.default_rng(1).normal(1, 2, (40, 6, 6, 3)).astype("float32")
    return model, x


def rearranging() -> dict:
    """Each layer's divergence with the pairs of rearranging layers summed
    and with them compared (`test_rearranging.py`)."""
    import keras

    from bngap import closedform
    from bngap.pipeline import CheckOptions, check

    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=0)
    out: dict = {"backend": keras.backend.backend()}
    original = closedform.rearranging
    try:  # put back: on the test process's own backend this runs in the test process
        for label in ("summed", "compared"):
            model, x = rearranging_model(keras)
            out[label] = {
                lay.path: lay.divergence for lay in check(model, x, options=options).layers
            }
            closedform.rearranging = lambda node, keras: False  # type: ignore[assignment]
    finally:
        closedform.rearranging = original
    return out


def degenerate_bn_model(keras):
    """BN layers of every shape the closed form handles, fed degenerate
    channels: conv channel 0 constant, 1 a huge mean with a tiny spread,
    2 all zeros; BN without scale and center, BN along axis 1, BN of a
    Dense output, and a frozen BN (trainable=False: inference mode even in
    fit()). Moving statistics are set away from the data's."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 3))
    conv = L.Conv2D(6, 3, padding="same", name="conv")
    h = L.ReLU()(L.BatchNormalization(name="bn1")(conv(inp)))
    h = L.BatchNormalization(scale=False, center=False, name="bn2")(L.Conv2D(5, 1)(h))
    h = L.BatchNormalization(axis=1, name="bn3")(L.Reshape((36, 5))(h))
    h = L.BatchNormalization(name="bn4")(L.Dense(8)(L.Flatten()(h)))
    frozen = L.BatchNormalization(name="frozen")
    frozen.trainable = False
    model = keras.Model(inp, L.Dense(3)(frozen(h)))
    k, b = (np.array(w) for w in conv.get_weights())
    k[..., 0], b[0] = 0.0, 5.0
    k[..., 1], b[1] = k[..., 1] * 1e-4, 1000.0
    k[..., 2], b[2] = 0.0, 0.0
    conv.set_weights([k, b])
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 2, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3, n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2, n).astype("float32"))
                layer.beta.assign(rng.normal(0, 1, n).astype("float32"))
    x = np.random.default_rng(6).normal(0.5, 1.5, (40, 6, 6, 3)).astype("float32")
    return model, x


def bn_closed_form():
    """Every BN layer's own contribution in closed form and by running the
    layer in both modes, and how often the closed form was used."""
    from bngap import closedform
    from bngap.backend import import_keras
    from bngap.pipeline import CheckOptions, check

    keras = import_keras()
    model, x = degenerate_bn_model(keras)
    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    ok, total = closedform.closed_form_ok, closedform.moment_rows
    used = [0]

    def counted(*args):
        used[0] += 1
        return total(*args)

    got = {}
    try:  # put back: on the test process's own backend this runs in the test process
        closedform.moment_rows = counted
        for closed in (True, False):
            if not closed:
                closedform.closed_form_ok = lambda node, keras: False
            d = check(model, x, options=options).to_dict()
            got[str(closed)] = {
                r["path"]: r["own_contribution"]
                for r in d["layers"]
                if "bn" in r["path"] or r["path"] == "frozen"
            }
            d.pop("seconds", None)
    finally:
        closedform.closed_form_ok, closedform.moment_rows = ok, total
    return {
        "backend": keras.backend.backend(),
        "closed": got["True"],
        "both_modes": got["False"],
        "used": used[0],
    }


def lockstep_counter(original, ran: dict):
    """`LockstepPass.lockstep_pass` counting into `ran` the passes a model's
    graphs allow ("passes") and those abandoned ("abandoned")."""

    def counted(self, *a, **kw):
        allowed = self._uses is not None
        got = original(self, *a, **kw)
        if allowed:
            ran["passes"] += 1
            ran["abandoned"] += got is None
        return got

    return counted


def lockstep_model(keras):
    """Two inputs, a nested Sequential and a nested Functional, skip
    connections, concatenations, Identity, dropout, noise and two outputs,
    with the data (40 samples) and labels for the first output."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((5,), name="b")
    h = L.ReLU(name="r0")(
        L.BatchNormalization(name="bn0")(L.Conv2D(6, 3, padding="same", name="c0")(a))
    )
    seq = keras.Sequential(
        [
            keras.Input((8, 8, 6)),
            L.Conv2D(6, 3, padding="same", name="sc"),
            L.BatchNormalization(name="sbn"),
            L.Dropout(0.3, name="sdrop"),
        ],
        name="seq",
    )
    inner_in = keras.Input((8, 8, 6))
    inner_h = L.BatchNormalization(name="ibn")(L.Conv2D(6, 1, name="ic")(inner_in))
    inner = keras.Model(inner_in, L.Add(name="iadd")([inner_in, inner_h]), name="inner")
    s = L.Add(name="add")([h, seq(h)])
    t = L.Identity(name="ident")(inner(s))
    c = L.Concatenate(name="cat")([t, h, t])
    g = L.GaussianNoise(0.2, name="noise")(L.GlobalAveragePooling2D(name="gap")(c))
    v = L.BatchNormalization(name="bnb")(L.Dense(4, name="db")(b))
    j = L.Dropout(0.2, name="drop")(L.Concatenate(name="join")([g, v]))
    out1 = L.Dense(3, activation="softmax", name="cls")(j)
    out2 = L.Dense(2, name="reg")(L.BatchNormalization(name="bn2")(j))
    model = keras.Model({"a": a, "b": b}, [out1, out2], name="lockstep_model")
    rng = np.random.default_rng(4)
    x = {
        "a": rng.normal(1, 2, (40, 8, 8, 3)).astype("float32"),
        "b": rng.normal(0, 3, (40, 5)).astype("float32"),
    }
    return model, x


def lockstep_recurrent(keras):
    """A GRU with dropout and recurrent dropout, which draws its masks in
    inference mode too, after a BN layer; 40 samples."""
    L = keras.layers
    keras.utils.set_random_seed(5)
    inp = keras.Input((5, 6), name="x")
    h = L.BatchNormalization(name="bn")(inp)
    h = L.GRU(4, dropout=0.2, recurrent_dropout=0.2, name="gru")(h)
    model = keras.Model(inp, L.Dense(2, name="out")(h), name="lockstep_recurrent")
    return model, np.random.default_rng(6).normal(0, 1, (40, 5, 6)).astype("float32")


def lockstep(shape: str = "model") -> dict:
    """The report of the lockstep pass and of the passes one after the
    other (`test_lockstep.py`) on `lockstep_model` (or `lockstep_recurrent`),
    and how many lockstep passes ran and were abandoned."""
    import keras

    from bngap import lockstep as lock
    from bngap.pipeline import CheckOptions, check

    options = CheckOptions(batch_size=16, probe_preprocessing=False, effects=None)
    ran = {"passes": 0, "abandoned": 0}
    original_pass, original_uses = lock.LockstepPass.lockstep_pass, lock.twin_uses
    counted = lockstep_counter(original_pass, ran)
    out: dict = {"backend": keras.backend.backend()}
    try:  # put back: on the test process's own backend this runs in the test process
        lock.LockstepPass.lockstep_pass = counted  # type: ignore[method-assign]
        for label in ("lockstep", "classic"):
            model, x = (lockstep_recurrent if shape == "recurrent" else lockstep_model)(keras)
            report = check(model, x, options=options).to_dict()
            report.pop("seconds", None)
            out[label] = report
            lock.twin_uses = lambda *a: None  # type: ignore[assignment]
    finally:
        lock.LockstepPass.lockstep_pass = original_pass  # type: ignore[method-assign]
        lock.twin_uses = original_uses
    out.update(ran)
    return out


TASKS = {
    "lockstep": lockstep,
    "lockstep_recurrent": lambda: lockstep("recurrent"),
    "bn_closed_form": bn_closed_form,
    "upstream_reuse": upstream_reuse,
    "inference_paths": inference_paths,
    "rearranging": rearranging,
    "gap_monitor": gap_monitor,
    "gap_monitor_devices": gap_monitor_devices,
    "side_outputs": side_outputs,
}

if __name__ == "__main__":
    result = TASKS[sys.argv[1]](*sys.argv[2:])
    sys.stdout.write("\n" + json.dumps(result) + "\n")
