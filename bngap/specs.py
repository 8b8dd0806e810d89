"""What a model expects of its inputs: the record that data reading and model loading share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input (batch dimension included)."""

    name: str
    shape: tuple  # e.g. (None, 224, 224, 3); None = any size
    dtype: str
