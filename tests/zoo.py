"""A zoo of tiny real Keras models, each showing one situation bngap must
recognise. Each builder trains (or deliberately does not train) its model in
a second or two and returns (model, x, y)."""

from __future__ import annotations

import numpy as np

from bngap.backend import import_keras

keras = import_keras()
L = keras.layers


def _seed(s: int) -> np.random.Generator:
    keras.utils.set_random_seed(s)
    return np.random.default_rng(s)


def images(rng, n=64, size=8, mean=2.0, std=3.0):
    """Images whose class is the channel with the largest mean."""
    x = rng.normal(mean, std, (n, size, size, 3)).astype("float32")
    y = rng.integers(0, 3, n)
    x[np.arange(n), :, :, y] += 2.0 * std
    return x, y


def conv_bn(name="conv_bn", momentum=0.99) -> keras.Model:
    """Conv-BN-ReLU x2, global pooling, dropout, softmax."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, name="conv1"),
            L.BatchNormalization(momentum=momentum, name="bn1"),
            L.ReLU(),
            L.Conv2D(8, 3, name="conv2"),
            L.BatchNormalization(momentum=momentum, name="bn2"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax", name="head"),
        ],
        name=name,
    )


def under_trained():
    """BN trained for 6 updates at momentum 0.99: the seed reports' case."""
    rng = _seed(1)
    x, y = images(rng)
    m = conv_bn("under_trained")
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return m, x, y


def never_updated():
    """A BN model whose moving statistics were never updated (trained with a
    custom loop that never called the model with training=True)."""
    rng = _seed(2)
    x, y = images(rng)
    m = conv_bn("never_updated")
    m(x[:2], training=False)
    return m, x, y


def dropout_only():
    """Dense layers and Dropout, no BN: the gap is dropout's, and expected."""
    rng = _seed(3)
    x = rng.normal(0, 1, (128, 10)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    m = keras.Sequential(
        [
            keras.Input((10,)),
            L.Dense(32, activation="relu", name="d1"),
            L.Dropout(0.5, name="drop"),
            L.Dense(2, activation="softmax", name="out"),
        ],
        name="dropout_only",
    )
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return m, x, y


def frozen():
    """The under-trained model with its BN layers frozen (trainable=False)."""
    m, x, y = under_trained()
    for layer in m.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.trainable = False
    return m, x, y


def nested():
    """A functional base with BN inside a Sequential (the transfer-learning shape)."""
    rng = _seed(4)
    x, y = images(rng)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, name="conv")(inp)
    h = L.BatchNormalization(name="conv_bn")(h)
    h = L.ReLU()(h)
    h = L.GlobalAveragePooling2D()(h)
    base = keras.Model(inp, h, name="base")
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            base,
            L.Dropout(0.2, name="drop"),
            L.Dense(3, activation="softmax", name="head"),
        ],
        name="nested",
    )
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return m, x, y


@keras.saving.register_keras_serializable(package="bngap_tests")
class SubclassedNet(keras.Model):
    """Dense-BN-ReLU-Dense written as a subclassed model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = L.Dense(16, name="d1")
        self.bn = L.BatchNormalization(name="bn")
        self.d2 = L.Dense(2, name="d2")

    def call(self, x, training=None):
        return self.d2(keras.ops.relu(self.bn(self.d1(x))))


def subclassed():
    rng = _seed(5)
    x = rng.normal(3.0, 2.0, (64, 6)).astype("float32")
    y = (x[:, 0] > 3).astype("int64")
    m = SubclassedNet(name="subclassed")
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return m, x, y


def healthy():
    """Dense-BN trained to convergence (momentum 0.9, 320 updates), checked on
    fresh data from the same distribution: nothing should be flagged."""
    rng = _seed(6)
    w = rng.normal(0, 1, (12, 3))

    def draw(n):
        x = rng.normal(1.0, 2.0, (n, 12)).astype("float32")
        return x, np.argmax(x @ w, axis=1)

    x, y = draw(1024)
    m = keras.Sequential(
        [
            keras.Input((12,)),
            L.Dense(24, name="d1"),
            L.BatchNormalization(momentum=0.9, name="bn1"),
            L.ReLU(),
            L.Dense(16, name="d2"),
            L.BatchNormalization(momentum=0.9, name="bn2"),
            L.ReLU(),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="healthy",
    )
    m.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=10, batch_size=32, verbose=0)
    # A last epoch at a tiny learning rate lets the moving statistics catch up
    # with the final weights, as at the end of a real training schedule.
    m.optimizer.learning_rate.assign(1e-6)
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    xt, yt = draw(256)
    return m, xt, yt


def augmentation():
    """Random flips and a conv head, no BN: augmentation is the only cause."""
    rng = _seed(7)
    x, y = images(rng, mean=0.0, std=1.0)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.RandomFlip("horizontal_and_vertical", name="flip"),
            L.Conv2D(4, 3, name="conv"),
            L.GlobalAveragePooling2D(),
            L.Dense(3, name="out"),
        ],
        name="augmented",
    )
    return m, x, y


def scaled_images(rng, n):
    """0..255 integer-valued images; class = brightest channel."""
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 160, (n, 8, 8, 3))
    x[np.arange(n), :, :, y] += 90
    return np.round(x).astype("float32"), y


def preprocessing_mismatch():
    """Trained (to convergence) on x / 255, checked on raw 0..255 pixels."""
    rng = _seed(8)
    x, y = scaled_images(rng, 512)
    m = conv_bn("preprocessing", momentum=0.9)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x / 255.0, y, epochs=6, batch_size=32, verbose=0)
    m.optimizer.learning_rate.assign(1e-7)
    m.fit(x / 255.0, y, epochs=2, batch_size=32, verbose=0)
    xt, yt = scaled_images(rng, 64)
    return m, xt, yt


def domain_shift():
    """Trained to convergence on white-noise images, checked on smooth images
    with the same pixel mean and variance: the conv features, and so the BN
    inputs, have different statistics."""
    rng = _seed(9)

    def white(n):
        return rng.normal(0, 1, (n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)

    x, y = white(512)
    m = conv_bn("domain_shift", momentum=0.9)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=4, batch_size=32, verbose=0)
    m.optimizer.learning_rate.assign(1e-7)
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
    base = rng.normal(0, 1, (64, 1, 1, 3)).astype("float32")
    smooth = np.broadcast_to(base, (64, 8, 8, 3)) + 0.05 * rng.normal(0, 1, (64, 8, 8, 3))
    smooth = (smooth / smooth.std()).astype("float32")
    return m, smooth, rng.integers(0, 3, 64)


@keras.saving.register_keras_serializable(package="bngap_tests")
class AlwaysTrainingBlock(L.Layer):
    """A custom block that calls its BN sub-layer with training=True always:
    a mode leak into inference."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(8, name="dense")
        self.bn = L.BatchNormalization(name="bn")

    def call(self, x, training=None):
        return self.bn(self.dense(x), training=True)


def mode_leak():
    rng = _seed(10)
    x = rng.normal(1.0, 2.0, (64, 6)).astype("float32")
    m = keras.Sequential(
        [keras.Input((6,)), AlwaysTrainingBlock(name="block"), L.Dense(2, name="out")], name="leaky"
    )
    return m, x, None
