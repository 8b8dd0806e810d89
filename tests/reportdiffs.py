"""Where two reports (or parts of them, as dicts and lists) differ: the
helper of the tests that compare two ways of measuring the same thing."""

from __future__ import annotations

import numpy as np


def report_diffs(a, b, rtol: float, path: str = "") -> list:
    """(path, a, b) for each place the two differ: floats beyond `rtol`
    (atol 1e-9; NaN equals NaN), lists and tuples alike, the rest exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in report_diffs(a.get(k), b.get(k), rtol, f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [(path, len(a), len(b))]
        pairs = enumerate(zip(a, b))
        return [d for i, (u, v) in pairs for d in report_diffs(u, v, rtol, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if np.isclose(a, b, rtol=rtol, atol=1e-9, equal_nan=True) else [(path, a, b)]
    return [] if a == b else [(path, a, b)]
