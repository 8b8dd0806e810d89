"""Reading a folder of images as model inputs: sub-folders are classes (as
`keras.utils.image_dataset_from_directory` reads them), images are resized to
the model's input size, and a named preprocessing is applied."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError, one_line
from .specs import InputSpec

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREPROCESS_HELP = "caffe, tf, torch, or scale=FACTOR (e.g. scale=1/255)"
DECODE_WHOLE_BELOW = 256 * 2**20  # larger folders are decoded batch by batch, on every pass


def parse_preprocess(spec: str | None):
    """A function for a named preprocessing (keras.applications' modes)."""
    if not spec:
        return None
    s = spec.strip().lower()
    if s == "caffe":  # RGB -> BGR, minus the ImageNet mean, no scaling
        return lambda x: (x - _IMAGENET_MEAN_RGB)[..., ::-1]
    if s == "tf":
        return lambda x: x / 127.5 - 1.0
    if s == "torch":
        return lambda x: (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    if s.startswith("scale="):
        expr = s.split("=", 1)[1]
        try:
            if "/" in expr:
                num, den = expr.split("/", 1)
                factor = float(num) / float(den)
            else:
                factor = float(expr)
        except (ValueError, ZeroDivisionError):
            raise DataError(
                f"--preprocess scale must be a number or a fraction. Received: {spec}"
            ) from None
        return lambda x: x * factor
    raise DataError(f"unknown --preprocess {spec!r}; expected {PREPROCESS_HELP}")


def list_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files and their class index (None when there are no class folders)."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for i, d in enumerate(subdirs):
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                    files.append(f)
                    labels.append(i)
        return files, labels, [d.name for d in subdirs]
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    return files, None, []


def _balanced(labels: list[int], limit: int) -> list[int]:
    """Indices of `limit` samples taking classes in turn, so a limited
    subset of a class-sorted folder is not all one class."""
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    order: list[int] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(order) < limit and any(queues):
        for q in queues:
            if q and len(order) < limit:
                order.append(q.pop(0))
    return sorted(order)


def _image_geometry(
    specs: Sequence[InputSpec], image_size: tuple[int, int] | None
) -> tuple[int, int, int]:
    """(height, width, channels) the images are resized to: the model's one
    image input (RGB when it leaves channels open), or `image_size`."""
    if len(specs) > 1:
        raise DataError(f"an image folder feeds one input, but the model has {len(specs)}")
    shape = tuple(specs[0].shape) if specs else (None, None, None, 3)
    if len(shape) != 4:
        raise DataError(
            f"the model's input has shape {shape}; image folders need an image input (batch, height, width, channels)"
        )
    height, width, channels = shape[1], shape[2], shape[3]
    if image_size:
        height, width = image_size
    if height is None or width is None:
        raise DataError("the model does not fix its input size; images cannot be resized for it")
    channels = channels or 3
    if channels not in (1, 3, 4):
        raise DataError(f"the model expects {channels} channels; images have 1, 3 or 4")
    return height, width, channels


def _decoder(files: Sequence[Path], size: tuple[int, int, int], fn) -> Callable:
    """`decode(a, b)`: images a..b as float32 (height, width, channels),
    resized bilinearly, then preprocessed by `fn`.

    Side effects: imports TensorFlow (it decodes images on every backend).
    """
    from .backend import import_keras

    import_keras()
    from .backend import import_tensorflow

    tf = import_tensorflow()  # decodes images on every backend
    height, width, channels = size

    def decode(a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, height, width, channels), dtype=np.float32)
        for i, f in enumerate(files[a:b]):
            try:
                img = tf.io.decode_image(
                    tf.io.read_file(str(f)), channels=channels, expand_animations=False
                )
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
                why = one_line(getattr(e, "message", e), 160)
                raise DataError(f"cannot decode image {f}: {why}") from None
            img = tf.image.resize(tf.cast(img, tf.float32), (height, width), method="bilinear")
            out[i] = img.numpy()
        return out if fn is None else fn(out).astype(np.float32)

    return decode


def _decoded(decode: Callable, shape: tuple[int, int, int, int], folder: Path, notes: list[str]):
    """All images decoded now when small; else a RowArray that decodes them
    batch by batch (with a note)."""
    n, height, width, channels = shape
    if n * height * width * channels * 4 < DECODE_WHOLE_BELOW:
        return decode(0, n)
    # validation decodes every image once (a bad file is an error before any pass)
    from .streaming import RowArray

    notes.append(
        f"{n} images decoded batch by batch "
        f"({shape[1]}x{shape[2]}x{shape[3]}, "
        f"{n * height * width * channels * 4 / 1e9:.1f} GB as float32)"
    )
    return RowArray(decode, shape, np.float32, f"the images in {folder}")


def read_image_folder(
    folder: Path,
    specs: Sequence[InputSpec],
    *,
    limit: int | None = None,
    preprocess: str | None = None,
    image_size: tuple[int, int] | None = None,
):
    """Reads images as (inputs, labels, names, notes) for `data.load_data`.

    Side effects: imports TensorFlow (to decode and resize images).
    """
    fn = parse_preprocess(preprocess)
    spec = specs[0] if specs else None
    height, width, channels = _image_geometry(specs, image_size)
    files, labels, classes = list_images(folder)
    if not files:
        raise DataError(
            f"{folder} holds no images ({', '.join(IMAGE_EXTS)}), directly or in class sub-folders"
        )
    notes: list[str] = []
    if limit is not None and limit < len(files):
        idx = _balanced(labels, limit) if labels is not None else list(range(limit))
        files = [files[i] for i in idx]
        labels = [labels[i] for i in idx] if labels is not None else None
    decode = _decoder(files, (height, width, channels), fn)
    out = _decoded(decode, (len(files), height, width, channels), folder, notes)
    if fn is not None:
        notes.append(f"images preprocessed with --preprocess {preprocess}")
    else:
        notes.append("images used as 0..255 pixels (no --preprocess given)")
    if classes:
        notes.append(
            f"{len(files)} images in {len(classes)} classes: {', '.join(classes[:10])}"
            + (" ..." if len(classes) > 10 else "")
        )
    y = np.asarray(labels, dtype=np.int64) if labels is not None else None
    return [out], y, [spec.name if spec else "image"], notes
