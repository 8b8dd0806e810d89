"""Findings ranked by the share of the fit/evaluate output gap each one
explains, severity and the more specific cause breaking ties."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..records import Finding, LayerRecord, OutputGap
from ..vocabulary import Cause, Group, Severity

# Among findings of equal severity, the more specific cause comes first.
PRIORITY = [
    Cause.MODE_LEAK,
    Cause.BACKEND_DIVERGENCE,
    Cause.STATS_NEVER_UPDATED,
    Cause.PREPROCESSING_MISMATCH,
    Cause.STATS_NOT_CONVERGED,
    Cause.DOMAIN_SHIFT,
    Cause.SMALL_BATCH,
    Cause.AUGMENTATION,
    Cause.DROPOUT_ONLY,
]

_BN_CAUSES = {
    Cause.STATS_NEVER_UPDATED,
    Cause.PREPROCESSING_MISMATCH,
    Cause.STATS_NOT_CONVERGED,
    Cause.DOMAIN_SHIFT,
    Cause.SMALL_BATCH,
}


def _share(part: float | None, total: float) -> float | None:
    if part is None or not total > 1e-6:
        return None
    return float(min(1.0, max(0.0, part / total)))


def with_shares(
    findings: Sequence[Finding], groups: dict, layers: Sequence[LayerRecord], gap: OutputGap
) -> list[Finding]:
    """Each finding with `explains`: the share of the fit/evaluate output gap
    measured with only its layers in training mode.

    A cause group's gap (only that group in training mode) is the measure for
    the cause that owns the group; a second BN cause gets the largest output
    effect among its own layers, when measured. Findings about other inference
    paths (how to call the model, predict()) explain none of this gap: null.
    """
    total = gap.relative_l2
    effects = {r.path: r.output_effect for r in layers if r.output_effect is not None}
    out, bn_owner = [], None
    for f in findings:
        share = None
        if f.cause is Cause.AUGMENTATION:
            share = _share(float(groups.get(Group.AUGMENTATION, 0.0) or 0.0), total)
        elif f.cause is Cause.DROPOUT_ONLY:
            share = _share(float(groups.get(Group.DROPOUT, 0.0) or 0.0), total)
        elif f.cause in _BN_CAUSES:
            if bn_owner is None:
                bn_owner = f
                share = _share(float(groups.get(Group.BATCHNORM, 0.0) or 0.0), total)
            else:
                own = [effects[p] for p in f.evidence.get("layers", []) if p in effects]
                share = _share(max(own), total) if own else None
        out.append(replace(f, explains=share))
    return out


def rank(findings: Sequence[Finding]) -> list[Finding]:
    """Most of the gap explained first; severity breaks ties (shares equal to
    two decimals), then the more specific cause. Side notes on calling the
    model for inference (mode_leak below fail) come after the causes."""

    def key(f: Finding):
        side = f.cause is Cause.MODE_LEAK and f.severity is not Severity.FAIL
        return (side, -round(f.explains or 0.0, 2), -f.severity.rank, PRIORITY.index(f.cause))

    return sorted(findings, key=key)


def ordered(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """Findings most likely cause first, as `diagnose` orders them (`rank`)."""
    return tuple(rank(findings))
