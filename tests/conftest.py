"""Shared fixtures: the model zoo is built once per test session.

TensorFlow is imported lazily, so test modules that need only numpy (stats,
audit, rendering) run without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

DATA_DIR = Path(__file__).parent / "data"


class Zoo:
    """Builds each zoo model on first use and keeps it for the session."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._cache: dict = {}

    def get(self, name: str):
        """(model, x, y) for a builder in tests/zoo.py."""
        if name not in self._cache:
            import zoo

            self._cache[name] = getattr(zoo, name)()
        return self._cache[name]

    def files(self, name: str) -> tuple[Path, Path]:
        """The zoo model saved as .keras and its data as .npz (x, and y if any)."""
        key = ("files", name)
        if key not in self._cache:
            model, x, y = self.get(name)
            folder = self.tmp / name
            folder.mkdir(parents=True, exist_ok=True)
            mpath, dpath = folder / "model.keras", folder / "data.npz"
            model.save(mpath)
            if y is None:
                np.savez(dpath, x=x)
            else:
                np.savez(dpath, x=x, y=y)
            self._cache[key] = (mpath, dpath)
        return self._cache[key]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def keras():
    from bngap.backend import import_keras

    return import_keras()
