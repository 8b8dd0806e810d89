"""Reproduces the classic report: ResNet50, a handful of images, a few
epochs; 100% accuracy in fit(), about 33% with evaluate() on the same images.

    python examples/resnet_few_epochs.py [OUT_DIR]
    bngap check OUT_DIR/model.keras OUT_DIR/data.npz

ResNet50 is built with weights=None (no download): its BatchNormalization
layers start from moving mean 0 and variance 1 and, at the default momentum
of 0.99, move 1% of the way to the data per step. After 10 steps most of the
initial values remain, and inference-mode normalisation is far off.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZE = 64
IMAGES = 12
CLASSES = 3
EPOCHS = 10


def make_images(seed: int = 0):
    """12 images, 3 classes: a different colour cast per class, on 0..255 noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(IMAGES) % CLASSES
    x = rng.uniform(0, 200, (IMAGES, SIZE, SIZE, 3))
    x[np.arange(IMAGES), :, :, y] += 55
    return x.astype("float32"), y


def main(out: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_images()
    model = keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    model.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    # One batch per epoch, as in the report: 10 updates of the BN statistics.
    history = model.fit(x, y, epochs=EPOCHS, batch_size=IMAGES, verbose=2)
    loss, acc = model.evaluate(x, y, verbose=0)
    print(f"fit() on the last epoch: accuracy {history.history['accuracy'][-1]:.2f}, "
          f"loss {history.history['loss'][-1]:.4f}")
    print(f"evaluate() on the same images: accuracy {acc:.2f}, loss {loss:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data.npz", x=x, y=y)
    print(f"\nsaved {out / 'model.keras'} and {out / 'data.npz'}; now run:\n"
          f"  bngap check {out / 'model.keras'} {out / 'data.npz'} --batch-size {IMAGES}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/out/resnet"))
