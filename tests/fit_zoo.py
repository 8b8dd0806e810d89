"""Runs bngap and Keras' own fit() side by side on a zoo of small models, on
one backend, and prints what each computed as JSON.

Run as `python tests/fit_zoo.py BACKEND [MODEL ...]` (the backend is fixed
when Keras is imported, so each backend needs a process of its own;
`tests/test_backend.py` starts one per backend). For every model:

- bngap's training-mode loss and accuracy (`bngap.check`);
- fit()'s loss and accuracy for one epoch over the same batches with
  SGD(0.0) and `shuffle=False`, eagerly, with the dropout/augmentation masks
  of bngap's pass for each batch (a wrapper sets the seed states bngap uses
  before each batch's first layer call);
- the `training` value every layer received inside fit() (instance
  wrappers on `layer.call`), and which BN layers fit() updated;
- bngap's per-layer "in fit()" column;
- the inference outputs, for comparison across backends.

Weights come from a numpy generator, so every backend runs the same model.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

BATCH = 16
SAMPLES = 40  # batches of 16, 16 and 8: a partial last batch, as fit() has
SEED = 3


def _keras():
    from bngap.backend import import_keras

    return import_keras(sys.argv[1])


# --------------------------------------------------------------- the zoo
def functional(keras, L):
    """Conv, BN, ReLU, pooling, softmax: the usual CNN."""
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h), name="functional")


def sequential(keras, L):
    """Dense, BN, Dropout, logits."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="d1"),
            L.BatchNormalization(name="bn"),
            L.Dropout(0.3, name="drop"),
            L.Dense(3, name="logits"),
        ],
        name="sequential",
    )


def nested(keras, L):
    """A Sequential block with BN inside a functional model."""
    block = keras.Sequential(
        [keras.Input((6,)), L.Dense(8, name="d"), L.BatchNormalization(name="bn"), L.ReLU()],
        name="block",
    )
    inp = keras.Input((6,))
    h = block(inp)
    h = L.BatchNormalization(name="bn_out")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h), name="nested")


def frozen_base(keras, L):
    """A frozen base called with training=False, and a trainable one called
    the same way (Keras 3's fit() still trains the latter's BN)."""

    def base(name):
        return keras.Sequential(
            [keras.Input((6,)), L.Dense(8, name="d"), L.BatchNormalization(name="bn")], name=name
        )

    frozen, held = base("frozen"), base("held")
    frozen.trainable = False
    inp = keras.Input((6,))
    h = L.Concatenate()([frozen(inp, training=False), held(inp, training=False)])
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h), name="frozen_base")


def dropout(keras, L):
    """Two dropout layers, no BN."""
    inp = keras.Input((6,))
    h = L.Dropout(0.5, name="drop_in")(inp)
    h = L.Dense(8, activation="relu", name="d")(h)
    h = L.Dropout(0.25, name="drop")(h)
    return keras.Model(inp, L.Dense(3, name="logits")(h), name="dropout")


def augmentation(keras, L):
    """Random flips before a conv block with BN."""
    inp = keras.Input((6, 6, 3))
    h = L.RandomFlip("horizontal_and_vertical", name="flip")(inp)
    h = L.Conv2D(4, 3, name="conv")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h), name="augmentation")


def mixed_precision(keras, L):
    """Dense, BN, Dropout under the mixed_float16 policy, float32 logits."""
    p = "mixed_float16"
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, name="d1", dtype=p),
            L.BatchNormalization(name="bn", dtype=p),
            L.Dropout(0.3, name="drop", dtype=p),
            L.Dense(3, name="logits", dtype="float32"),
        ],
        name="mixed_precision",
    )


def _custom_classes(keras, L):
    class Scaled(L.Layer):
        """A custom layer that takes `training`: BN inside, halves its output in training."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.bn = L.BatchNormalization(name="inner_bn")

        def call(self, x, training=None):
            h = self.bn(x, training=training)
            return h * 0.5 if training else h

    class WithTraining(keras.Model):
        """Subclassed; call() takes training and passes it on."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.d1 = L.Dense(8, name="d1")
            self.bn = L.BatchNormalization(name="bn")
            self.drop = L.Dropout(0.3, name="drop")
            self.out = L.Dense(3, name="logits")

        def call(self, x, training=None):
            return self.out(self.drop(self.bn(self.d1(x), training=training), training=training))

    class Implicit(WithTraining):
        """Subclassed; call() takes training but does not pass it to its layers
        (they inherit it from the call context, except through JAX's
        stateless_call in Keras 3.15.1)."""

        def call(self, x, training=None):
            return self.out(self.drop(self.bn(self.d1(x))))

    class NoTraining(WithTraining):
        """Subclassed; call() has no training argument: fit() calls it as model(x)."""

        def call(self, x):
            return self.out(self.drop(self.bn(self.d1(x))))

    return Scaled, WithTraining, Implicit, NoTraining


def custom_layer(keras, L):
    """A functional model around a custom layer that takes training."""
    scaled = _custom_classes(keras, L)[0]
    inp = keras.Input((6,))
    h = scaled(name="scaled")(L.Dense(8, name="d")(inp))
    return keras.Model(inp, L.Dense(3, name="logits")(h), name="custom_layer")


def subclassed(keras, L):
    return _custom_classes(keras, L)[1](name="subclassed")


def subclassed_implicit(keras, L):
    return _custom_classes(keras, L)[2](name="subclassed_implicit")


def subclassed_no_training(keras, L):
    return _custom_classes(keras, L)[3](name="subclassed_no_training")


ZOO = [
    functional,
    sequential,
    nested,
    frozen_base,
    dropout,
    augmentation,
    custom_layer,
    subclassed,
    subclassed_implicit,
    subclassed_no_training,
    mixed_precision,
]
MIXED = {"mixed_precision"}  # float16 inside: 1e-3 relative
# models trained with fit() first, so their BN statistics are what fit() left
TRAINED_FIRST = {"subclassed_no_training"}


# ------------------------------------------------------------- the running
def _data(model_fn):
    rng = np.random.default_rng(7)
    shape = (6, 6, 3) if model_fn in (functional, augmentation) else (6,)
    x = (rng.normal(size=(SAMPLES,) + shape) * 2.0 + 1.5).astype("float32")
    y = rng.integers(0, 3, size=SAMPLES).astype("int64")
    return x, y


def _set_weights(model, bn_statistics: bool = True) -> None:
    """The same weights on every backend: drawn from numpy, in variable order
    (BN moving statistics too, unless `bn_statistics` is False)."""
    rng = np.random.default_rng(11)
    for v in model.weights:
        shape = tuple(v.shape)
        if not bn_statistics and "moving_" in v.path:
            continue
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, size=shape).astype("float32"))
        elif "seed_generator" in v.path:
            continue
        else:
            v.assign((rng.normal(size=shape) * 0.5).astype(v.dtype))


def _layers(model, keras):
    from bngap.layertree import build_tree

    return build_tree(model, keras)


def _fit_observed(model, x, y, keras) -> dict:
    """One epoch of fit() that changes no weight, recording what each layer received."""
    from bngap import backend

    nodes = _layers(model, keras)
    received: dict[str, list] = {}
    seeds = backend.seed_variables(model)
    batch = {"index": -1, "seeded": -1}  # index -1: outside a training step (e.g. fit()'s build)

    class Batches(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            batch["index"] = b

        def on_train_batch_end(self, b, logs=None):
            batch["index"] = -1

    def wrap(node):
        original = node.layer.call

        def call(*args, **kwargs):
            if batch["index"] >= 0:
                if (
                    batch["seeded"] != batch["index"]
                ):  # bngap's masks for this batch, set inside fit()
                    backend.set_seeds(seeds, SEED, batch["index"])
                    batch["seeded"] = batch["index"]
                received.setdefault(node.path, []).append(kwargs.get("training"))
            return original(*args, **kwargs)

        object.__setattr__(node.layer, "call", call)

    for node in nodes:
        wrap(node)
    bn_before = {
        n.path: backend.to_numpy(n.layer.moving_mean).copy()
        for n in nodes
        if isinstance(n.layer, keras.layers.BatchNormalization)
    }
    weights_before = [backend.to_numpy(v).copy() for v in model.trainable_weights]
    saved = [backend.to_numpy(v).copy() for v in model.variables]
    try:
        hist = model.fit(
            x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[Batches()]
        )
        bn_updated = {
            p: bool(np.any(backend.to_numpy(nd.layer.moving_mean) != bn_before[p]))
            for nd in nodes
            for p in [nd.path]
            if p in bn_before
        }
        unchanged = all(
            np.array_equal(a, backend.to_numpy(v))
            for a, v in zip(weights_before, model.trainable_weights)
        )
    finally:
        for node in nodes:
            node.layer.__dict__.pop("call", None)
        for v, s in zip(model.variables, saved):
            v.assign(s)
    return {
        "loss": float(hist.history["loss"][0]),
        "accuracy": float(hist.history["accuracy"][0]),
        "received": {
            p: [None if v is None else bool(v) for v in vals] for p, vals in received.items()
        },
        "bn_updated": bn_updated,
        "weights_unchanged": bool(unchanged),
    }


def run_one(model_fn, keras) -> dict:
    import bngap
    from bngap import backend

    keras.utils.set_random_seed(0)
    model = model_fn(keras, keras.layers)
    x, y = _data(model_fn)
    if not model.built:
        model(x[:2])
    name = model_fn.__name__
    _set_weights(model, bn_statistics=name not in TRAINED_FIRST)
    logits = "softmax" not in str(getattr(model.layers[-1], "activation", ""))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    if name in TRAINED_FIRST:  # really trained: what fit() does to BN is what we check
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=loss, metrics=["accuracy"], run_eagerly=True
    )

    before = [backend.to_numpy(v).copy() for v in model.variables]
    report = bngap.check(model, x, y, batch_size=BATCH, seed=SEED)
    untouched = all(np.array_equal(a, backend.to_numpy(v)) for a, v in zip(before, model.variables))
    fit = _fit_observed(model, x, y, keras)
    inference = backend.to_numpy(model(x, training=False))
    save_to = os.environ.get("BNGAP_ZOO_SAVE")
    if (
        save_to and name == "functional"
    ):  # a .keras file written under this backend, for the CLI tests
        model.save(os.path.join(save_to, "model.keras"))
        np.savez(os.path.join(save_to, "data.npz"), x=x, y=y)
    return {
        "bngap": dict(report.metrics.train),
        "bngap_eval": dict(report.metrics.eval),
        "gap": report.output_gap.relative_l2,
        "fit": {"loss": fit["loss"], "accuracy": fit["accuracy"]},
        "received": fit["received"],
        "bn_updated": fit["bn_updated"],
        "fit_weights_unchanged": fit["weights_unchanged"],
        "check_left_model_unchanged": untouched,
        "layers": {
            r.path: {
                "fit_training": r.fit_training,
                "fit_mode": r.fit_mode,
                "reason": r.fit_mode_reason,
                "kind": r.kind.value,
            }
            for r in report.layers
        },
        "findings": [
            {"cause": f.cause.value, "message": f.message, "remedy": f.remedy}
            for f in report.findings
        ],
        "environment": report.environment,
        "inference": inference.astype(float).tolist(),
    }


def main() -> None:
    keras = _keras()
    wanted = set(sys.argv[2:])
    out = {}
    for fn in ZOO:
        if wanted and fn.__name__ not in wanted:
            continue
        try:
            out[fn.__name__] = run_one(fn, keras)
        except Exception as e:  # reported per model, so one failure does not hide the rest
            import traceback

            out[fn.__name__] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
    sys.stdout.write("\nBNGAP-ZOO-JSON " + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
