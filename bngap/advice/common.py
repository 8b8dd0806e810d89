"""The thresholds and wording the advice rules share (the lint rules use the wording too)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..records import BatchNormRecord
from ..results import format_number
from ..vocabulary import Severity

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


def worst(severities: Sequence[Severity]) -> Severity:
    """The most serious of `severities`; ok when there are none."""
    return max(severities, key=lambda s: s.rank) if severities else Severity.OK


def initial_stats(r: BatchNormRecord) -> str:
    """The constants a BN layer's moving statistics started from, in words."""
    if r.init_mean is None or r.init_variance is None:
        return "their initial values"
    return f"mean {r.init_mean:g}, variance {r.init_variance:g}"


def describe_bn(r: BatchNormRecord) -> str:
    """A BN layer's audit in one clause: |z|, variance ratio, expected gap."""
    return (
        f"{r.path}: median |z| {fmt(r.median_abs_z, 2)}, median |log2 variance ratio| "
        f"{fmt(r.median_abs_log2_var_ratio, 2)}, expected local gap {fmt(r.expected_local_gap, 2)}"
    )


def renorm_gaps(r: BatchNormRecord) -> str:
    """A renorm layer's expected gap for the statistics each mode uses, in
    parentheses (empty when not measured)."""
    if r.training_stats_gap is None:
        return ""
    return (
        f" ({r.path}: expected local gap {fmt(r.training_stats_gap, 2)} for the renorm "
        f"statistics training mode uses, {fmt(r.expected_local_gap, 2)} for the moving ones)"
    )
