"""Timers wrapped around bngap's functions, for the benchmarks' breakdowns."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable


def timers() -> tuple[dict, Callable[[object, str, str], None]]:
    """(spent, timed): `timed(owner, attr, label)` wraps `owner.attr` so that
    each call adds its seconds and 1 to `spent[label]` ([seconds, calls])."""
    spent: dict = defaultdict(lambda: [0.0, 0])

    def timed(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label][0] += time.perf_counter() - t
                spent[label][1] += 1

        setattr(owner, attr, wrapper)

    return spent, timed
