"""Reproduces the classic report: ResNet50, 12 images in 3 classes, 10 epochs
of one batch each; 100% accuracy in fit(), 33% with evaluate() on the very
same images.

    python examples/resnet_few_epochs.py [OUT_DIR]        # default examples/out/resnet
    bngap check OUT_DIR/model.keras OUT_DIR/data.npz

ResNet50 is built with weights=None (no download): its 53 BatchNormalization
layers start from moving mean 0 and variance 1 and, at the default momentum
of 0.99, move 1% of the way towards the data per training step. After 10
steps 0.99**10 = 90% of the initial values remain. In training mode every
batch is normalised by its own statistics, so fit() reports 100%; in
inference mode the stale moving statistics are used, every image lands in
the same class, and evaluate() reports 1/3.

Measured (TF 2.21 / Keras 3.15.1, 2 CPU cores, 30-40 s a run), 64x64 images,
10 epochs, Adam 1e-4: with seeds 0-4 fit() reports accuracy 1.00 from the
third epoch on, a training-mode pass after training also gives 1.00, and
evaluate() gives 0.33 (loss 1.1 to 5.9); `bngap check` names
stats_not_converged first. With Adam 5e-4 the effect shows as well (evaluate
loss 3 to 40), but training is bumpier: one epoch dipped to 0.92, and with
seed 4 the weights after the last step scored 0.83 in training mode although
fit() had reported 1.00 for that epoch (fit's number precedes the update); at
2e-4 one seed scored 0.08 in evaluate() instead of 0.33.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

IMAGES = 12
CLASSES = 3


def make_images(size: int, seed: int):
    """12 images, 3 classes: a different colour cast per class on 0..255 noise.

    Learnable in a couple of steps (the class is the brightest channel), so
    the training-mode accuracy reaches 100% well within 10 epochs.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(IMAGES) % CLASSES
    x = rng.uniform(0, 200, (IMAGES, size, size, 3))
    x[np.arange(IMAGES), :, :, y] += 55
    return x.astype("float32"), y.astype("int64")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "out", nargs="?", default="examples/out/resnet", help="output folder (default: %(default)s)"
    )
    p.add_argument("--size", type=int, default=64, help="image size (default: %(default)s)")
    p.add_argument(
        "--epochs", type=int, default=10, help="epochs of one batch each (default: %(default)s)"
    )
    p.add_argument(
        "--lr", type=float, default=1e-4, help="Adam learning rate (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = p.parse_args()
    out = Path(args.out)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(args.seed)
    x, y = make_images(args.size, args.seed)
    model = keras.applications.ResNet50(
        weights=None,
        input_shape=(args.size, args.size, 3),
        classes=CLASSES,
        classifier_activation="softmax",
    )
    model.compile(
        keras.optimizers.Adam(args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    # One batch per epoch, as in the report: `epochs` updates of the BN statistics.
    history = model.fit(x, y, epochs=args.epochs, batch_size=IMAGES, verbose=2)
    train_acc, train_loss = history.history["accuracy"][-1], history.history["loss"][-1]
    eval_loss, eval_acc = model.evaluate(x, y, batch_size=IMAGES, verbose=0)
    print(
        f"\nfit(), last epoch (training mode):        accuracy {train_acc:.2f}, loss {train_loss:.4f}"
    )
    print(
        f"evaluate() on the same images (inference): accuracy {eval_acc:.2f}, loss {eval_loss:.4f}"
    )
    if not (train_acc >= 0.99 and eval_acc <= 0.5):
        print(
            "warning: the gap did not show with these settings; try more epochs or another --seed"
        )

    out.mkdir(parents=True, exist_ok=True)
    # A fresh (unbuilt) optimizer: the file keeps the compiled loss and metrics
    # but not Adam's two slots per weight (about 95 MB instead of 280 MB).
    model.compile(
        keras.optimizers.Adam(args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.save(out / "model.keras")
    np.savez(out / "data.npz", x=x, y=y)
    m, d = out / "model.keras", out / "data.npz"
    print(
        f"\nsaved {m} and {d}; now run:\n"
        f"  bngap check {m} {d}\n"
        f"  bngap check {m} {d} --format markdown --output {out / 'report.md'}\n"
        f"  bngap fix {m} {d} -o {out / 'fixed.keras'}     # re-estimates the BN statistics"
    )


if __name__ == "__main__":
    main()
