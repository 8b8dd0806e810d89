"""`bngap demo`: a small model with a real gap, built in seconds.

It replays the classic report: a CNN with BatchNormalization trained for a
handful of steps reaches ~100% accuracy in fit(), and scores at chance with
evaluate() on the very same images, because its moving statistics have seen
too few updates to describe the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = 48
CLASSES = 3
SIZE = 16


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright noise images (pixel values 110..230) whose class is a slight
    tint: +20 in one colour channel."""
    rng = np.random.default_rng(seed)
    y = np.arange(SAMPLES) % CLASSES
    x = 150 + rng.uniform(-40, 40, (SAMPLES, SIZE, SIZE, 3))
    x[np.arange(SAMPLES), :, :, y] += 20
    return x.astype("float32"), y.astype("int64")


def build_and_train(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A small CNN with BatchNormalization (default momentum 0.99), trained
    for 8 epochs of 2 batches: 16 updates of the moving statistics, 85% of
    their initial values left."""
    from .backend import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            L.Conv2D(16, 3, name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="relu1"),
            L.Conv2D(16, 3, name="conv2"),
            L.BatchNormalization(name="bn2"),
            L.ReLU(name="relu2"),
            L.GlobalAveragePooling2D(name="pool"),
            L.Dense(CLASSES, activation="softmax", name="head"),
        ],
        name="demo_cnn",
    )
    model.compile(
        keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=8, batch_size=24, shuffle=True, verbose=0)
    return model


def write_demo(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Trains the demo model and saves `model.keras` and `data.npz` (x, y)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_data(seed)
    model = build_and_train(x, y, seed)
    mpath, dpath = folder / "model.keras", folder / "data.npz"
    model.save(mpath)
    np.savez(dpath, x=x, y=y)
    return mpath, dpath
