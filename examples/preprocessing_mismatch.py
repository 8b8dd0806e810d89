"""A model trained on x / 255, then fed raw 0..255 pixels: the classic
preprocessing mismatch. bngap names it and the transform that fixes it.

    python examples/preprocessing_mismatch.py [OUT_DIR]     # default examples/out/preprocessing
    bngap check OUT_DIR/model.keras OUT_DIR/data.npz

A small CNN with two BatchNormalization layers (momentum 0.9) is trained for
96 steps on x / 255, so its moving statistics have converged (0.9**96: no
trace of the initial values left). The data saved next to it are raw 0..255
pixels: inference on them is far off, and `bngap check` names
preprocessing_mismatch first, with the transform `x / 255` that makes the
first BN layers' statistics match again.

Measured (TF 2.21 / Keras 3.15.1, 2 CPU cores, about 10 s): evaluate() with
x / 255 gives accuracy 1.00, loss 0.04; with raw pixels accuracy 0.59, loss
73; bngap: output gap 0.87, first finding preprocessing_mismatch (fail) at
bn1, "after the transform `x / 255` they match".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def images(rng, n):
    """0..255 images whose class is their brightest colour channel."""
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 160, (n, 16, 16, 3))
    x[np.arange(n), :, :, y] += 90
    return np.round(x).astype("float32"), y


def main(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    L = keras.layers
    x, y = images(rng, 512)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(16, 3, name="conv1"),
            L.BatchNormalization(momentum=0.9, name="bn1"),
            L.ReLU(),
            L.Conv2D(16, 3, name="conv2"),
            L.BatchNormalization(momentum=0.9, name="bn2"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(3, activation="softmax", name="head"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    # Trained on x / 255 until the BN statistics have converged (96 updates at momentum 0.9).
    model.fit(x / 255.0, y, epochs=6, batch_size=32, verbose=0)
    xt, yt = images(rng, 128)
    print(
        "evaluate() with x / 255 (as trained):",
        np.round(model.evaluate(xt / 255.0, yt, verbose=0), 3),
    )
    print("evaluate() with raw 0..255 pixels:     ", np.round(model.evaluate(xt, yt, verbose=0), 3))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data.npz", x=xt, y=yt)  # raw pixels: the mistake bngap should find
    print(
        f"\nsaved {out / 'model.keras'} and {out / 'data.npz'}; now run:\n"
        f"  bngap check {out / 'model.keras'} {out / 'data.npz'}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/out/preprocessing"))
