"""What a model expects of its inputs: shapes and dtypes (`InputSpec`), and the named input
preprocessings that data reading, the preprocessing probe and the advice share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input (batch dimension included)."""

    name: str
    shape: tuple  # e.g. (None, 224, 224, 3); None = any size
    dtype: str


# The probe's transforms (`preprocessing.candidate_transforms`) that
# `--preprocess` can apply to an image folder, and its name for each.
PREPROCESS_FLAG = {
    "x / 255": "scale=1/255",
    "x / 127.5 - 1": "tf",
    "caffe: BGR, minus ImageNet mean": "caffe",
    "torch: x / 255, ImageNet mean/std": "torch",
}
