"""Importing TensorFlow/Keras once, quietly, and describing the environment."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

_keras: Any = None


@contextlib.contextmanager
def _stderr_silenced():
    """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up chatter
    is written there before any Python logging setting can reach it."""
    if os.environ.get("BNGAP_TF_VERBOSE"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some notebooks)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Returns the `keras` module, importing TensorFlow first if needed.

    Side effects: sets `TF_CPP_MIN_LOG_LEVEL` (unless already set), initialises
    TensorFlow's devices with stderr silenced, and quiets Python warnings that
    Keras emits while deserialising legacy models.
    """
    global _keras
    if _keras is not None:
        return _keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _stderr_silenced():
        import tensorflow as tf
        import keras

        tf.get_logger().setLevel("ERROR")
        # Device discovery prints CUDA probing errors on machines without a GPU.
        tf.config.list_physical_devices()
        tf.constant(0.0) + 1.0
    if keras.backend.backend() != "tensorflow":
        from .errors import BngapError

        raise BngapError(
            "bngap needs the TensorFlow backend of Keras. "
            f"Received: KERAS_BACKEND={keras.backend.backend()}"
        )
    _keras = keras
    return keras


def environment() -> dict[str, str]:
    """Versions of what matters for a bug report. Imports TensorFlow."""
    import numpy as np

    keras = import_keras()
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
