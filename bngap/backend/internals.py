"""What bngap reads of Keras' private side: `keras.src` names, sub-layers, call context, wording."""

from __future__ import annotations

import contextlib
import re
from typing import Any


def child_layers(layer) -> list:
    """A layer's direct sub-layers, also inside subclassed models and custom
    layers (Keras' private `_flatten_layers`; empty if it cannot be read)."""
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # a custom layer whose tracking we cannot read
        return []


def image_preprocessing_base() -> Any:
    """Keras' base class of image preprocessing layers, or () if it moved."""
    try:
        from keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer import (
            BaseImagePreprocessingLayer,
        )
    except ImportError:  # pragma: no cover - layout of a future Keras
        return ()
    return BaseImagePreprocessingLayer


def keras_message(e: Exception) -> str:
    """The error's own words, without the call details Keras wraps around it."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    msg = re.sub(r"Exception encountered when calling [\w.]+\(\)\.\s*", "", msg)
    msg = msg.split("Arguments received by", 1)[0]
    return " ".join(msg.split())


@contextlib.contextmanager
def context_training(value):
    """Temporarily sets the `training` value that layers inherit from the
    current call context (private Keras state; a no-op if it moved)."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover
        yield
        return
    ctx = global_state.get_global_attribute("current_call_ctx")
    if ctx is None:
        yield
        return
    had = hasattr(ctx, "training")
    old = getattr(ctx, "training", None)
    ctx.training = value
    try:
        yield
    finally:
        if had:
            ctx.training = old
        else:
            with contextlib.suppress(AttributeError):
                delattr(ctx, "training")


def initializer_constant(init) -> float | None:
    """The constant an initializer fills with (Zeros, Ones, Constant), else None."""
    name = type(init).__name__
    if name == "Zeros":
        return 0.0
    if name == "Ones":
        return 1.0
    if name == "Constant":
        try:
            return float(init.value)
        except (TypeError, ValueError):
            return None
    return None
