"""Kept for one merge cycle: importing Keras now lives in `bngap.backend`."""

from __future__ import annotations

from .backend import environment, import_keras

__all__ = ["environment", "import_keras"]
