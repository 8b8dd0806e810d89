"""Choosing and importing the Keras backend (TensorFlow, JAX or PyTorch), and its versions."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from typing import Any

import numpy as np

from ..errors import BngapError

BACKENDS = ("tensorflow", "jax", "torch")
# what `import` needs to find for each backend, and the extra that installs it
_LIBRARIES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}

_keras: Any = None


def requested_backend(name: str | None = None) -> str:
    """The backend asked for: `name`, else `KERAS_BACKEND`, else tensorflow."""
    chosen = (name or os.environ.get("KERAS_BACKEND") or "tensorflow").strip().lower()
    if chosen not in BACKENDS:
        raise BngapError(
            f"unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}. "
            f"Received: backend={chosen}"
        )
    return chosen


def installed(name: str) -> bool:
    """Whether the libraries of backend `name` can be imported (without importing them)."""
    try:
        return all(importlib.util.find_spec(lib) is not None for lib in _LIBRARIES[name])
    except (ImportError, ValueError):  # a module hidden or half-installed
        return False


def select_backend(name: str | None = None) -> str:
    """Makes `name` (or the default) the backend Keras will use.

    Must run before Keras is imported; if Keras already runs on another
    backend in this process, raises a BngapError that says so.

    Side effects: sets `KERAS_BACKEND`.
    """
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        # nothing asked: the backend Keras already runs on (set by keras.json, say)
        chosen = requested_backend(name or current)
        if current != chosen:
            raise BngapError(
                f"Keras is already imported with the {current} backend in this process, and the "
                f"backend cannot change after `import keras`; run bngap in a new process with "
                f"KERAS_BACKEND={chosen} (or --backend {chosen}). Received: backend={chosen}"
            )
        return chosen
    chosen = requested_backend(name)
    if not installed(chosen):
        hint = "tensorflow" if chosen == "tensorflow" else f'"bngap[{chosen}]"'
        raise BngapError(
            f"the {chosen} backend is not installed; install it with: pip install {hint}"
        )
    os.environ["KERAS_BACKEND"] = chosen
    return chosen


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


def import_keras(backend: str | None = None):
    """Returns the `keras` module on the chosen backend (see `select_backend`).

    Side effects: sets `KERAS_BACKEND` and `TF_CPP_MIN_LOG_LEVEL` (unless
    already set), initialises TensorFlow's devices with stderr silenced
    (when TensorFlow is the backend), and quiets TensorFlow's logger.
    """
    global _keras
    if _keras is not None and backend is None:
        return _keras
    chosen = select_backend(backend)
    if _keras is not None:
        return _keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
        if chosen == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
            # Device discovery prints CUDA probing errors on machines without a GPU.
            tf.config.list_physical_devices()
            tf.constant(0.0) + 1.0
        import keras
    _keras = keras
    return keras


def import_tensorflow():
    """TensorFlow itself, imported quietly, whatever the Keras backend (image
    decoding and Keras 2 TF-op layers use it)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _stderr_silenced():
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
            tf.config.list_physical_devices()
    import tensorflow as tf

    return tf


def active() -> str:
    """The backend Keras runs on (imports Keras)."""
    return import_keras().backend.backend()


def library_version(name: str) -> str:
    """Version of the library behind backend `name`."""
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[name]
    return str(getattr(__import__(module), "__version__", "unknown"))


def environment() -> dict[str, str]:
    """Versions of what matters for a bug report. Imports Keras."""
    keras = import_keras()
    name = keras.backend.backend()
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "backend": name,
        "backend_version": library_version(name),
        name: library_version(name),
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    if (
        name != "tensorflow" and "tensorflow" in sys.modules
    ):  # image folders and Keras 2 files use it
        env["tensorflow"] = library_version("tensorflow")
    return env
