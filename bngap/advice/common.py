"""What the advice rules share: the gap worth explaining, the batch size
called small, the fix command, and the wording of numbers and name lists
(which the lint rules use too)."""

from __future__ import annotations

from collections.abc import Iterable

from ..results import format_number

NOTABLE_GAP = 0.05  # an output or group gap worth explaining (relative L2)
SMALL_BATCH = 8
FIX_HINT = "bngap fix MODEL DATA -o fixed.keras"


def fmt(v: float | None, digits: int = 3) -> str:
    return format_number(v, digits)


def name_list(items: Iterable[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def bn_count(n: int) -> str:
    return f"{n} BatchNormalization layer{'' if n == 1 else 's'}"


def verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many
