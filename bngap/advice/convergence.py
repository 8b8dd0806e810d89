"""`stats_never_updated` and `stats_not_converged`: moving statistics still at their start."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..records import BatchNormRecord, Finding, LayerRecord
from ..vocabulary import Cause, FitMode, Severity
from .common import (
    FIX_HINT,
    NOTABLE_GAP,
    bn_count,
    describe_bn,
    fmt,
    initial_stats,
    renorm_gaps,
    verb,
    worst,
)

NOT_CONVERGED_SHARE = 0.1  # initial values still this large a share of the statistics
DRIFTED_SHARE = 0.5  # ... or, next to such layers, mostly initial values


def _updates_to_forget(momentum: float, left: float = 0.01) -> int:
    """Updates after which only `left` of the initial statistics remains."""
    return int(math.ceil(math.log(left) / math.log(momentum))) if 0.0 < momentum < 1.0 else 1


def _convergence_remedy(momentum: float) -> str:
    now = _updates_to_forget(momentum)
    if momentum > 0.9:
        lower = (
            f"lower the BatchNormalization momentum (at {momentum:g} the statistics need "
            f"about {now} updates to leave their start behind; at 0.9, about "
            f"{_updates_to_forget(0.9)})"
        )
    else:
        lower = f"keep training (at momentum {momentum:g} they need about {now} updates)"
    return f"Train for more steps, {lower}, or re-estimate the statistics on your data: {FIX_HINT}."


def _never_updated_in_fit(
    never: Sequence[BatchNormRecord], layers: Sequence[LayerRecord], fit_call
) -> tuple[str, str] | None:
    """(message tail, remedy) when fit() itself runs these BN layers in
    inference mode because of how it calls the model (so it never updated
    them): both modes are wrong, and the model's call() signature is the fix."""
    if fit_call is None:
        return None
    by_path = {r.path: r for r in layers}
    held = [
        r
        for r in never
        if (rec := by_path.get(r.path)) is not None
        and r.trainable
        and rec.fit_mode is FitMode.INFERENCE
        and rec.fit_training is None
    ]
    if not held or len(held) < len(never):
        return None
    cls = fit_call.model_class
    if not fit_call.passes_training:
        why = (
            f"fit() calls {cls}(x) without `training`, because {cls}.call() has no `training` "
            "argument, so these layers (and Dropout) run in inference mode in fit() too and "
            "their statistics are never updated. Both modes are wrong alike: fit() and "
            "evaluate() agree, and both normalise with the initial statistics instead of your "
            "data's"
        )
        fix = (
            f"Give {cls}.call a training argument and pass it on: `def call(self, x, "
            "training=None):` and `self.bn(h, training=training)` for every sub-layer or "
            "sub-model that takes it; then train again, so that fit() runs in training mode "
            f"and updates the statistics. To repair this model's statistics without "
            f"retraining: {FIX_HINT}."
        )
    elif fit_call.stateless:
        why = (
            f"On JAX, fit() runs {cls} through stateless_call, which in this Keras version "
            f"does not hand training=True to layers that {cls}.call() calls without it: these "
            "layers run in inference mode in fit() and their statistics are never updated. "
            "Both modes are wrong alike"
        )
        fix = (
            f"In {cls}.call, pass training on explicitly: `self.bn(h, training=training)`; "
            f"or upgrade Keras; then train again. To repair the statistics now: {FIX_HINT}."
        )
    else:
        return None
    return why, fix


def never_updated(
    batchnorm: Sequence[BatchNormRecord],
    flagged: list[BatchNormRecord],
    bn_gap: float,
    layers: Sequence[LayerRecord],
    fit_call=None,
) -> Finding | None:
    """`stats_never_updated` when flagged BN layers still hold their initial
    moving statistics; why fit() never updated them when `fit_call` (a
    `backend.FitCall`) tells."""
    never = [r for r in batchnorm if r.never_updated]
    never_flagged = [r for r in never if r in flagged]
    if not never_flagged:
        return None
    first = never_flagged[0]
    sev = (
        Severity.FAIL
        if (worst([r.severity for r in never_flagged]) is Severity.FAIL or bn_gap >= NOTABLE_GAP)
        else Severity.WARN
    )
    evidence = {"layers": [r.path for r in never], "flagged": [r.path for r in never_flagged]}
    where = (
        f"first: {first.path}, whose input has median |mean| {fmt(first.data_mean_abs, 2)} "
        f"and median std {fmt(first.data_std, 2)}"
    )
    in_fit = _never_updated_in_fit(never, layers, fit_call)
    if in_fit is not None:  # fit() itself ran them in inference mode
        why, remedy = in_fit
        message = (
            f"{len(never)} of {len(batchnorm)} BatchNormalization layers still hold their "
            f"initial moving statistics ({initial_stats(first)}). {why} ({where})."
        )
        evidence.update(fit_call=fit_call.expression, model_class=fit_call.model_class)
    else:
        message = (
            f"{len(never)} of {len(batchnorm)} BatchNormalization layers still hold their "
            f"initial moving statistics ({initial_stats(first)}): they were never updated. In "
            f"inference mode they normalise with those instead of your data's statistics "
            f"({where})."
        )
        remedy = (
            "If you train with a custom loop, call the model with training=True in the "
            "training step so BatchNormalization updates its statistics; if the model was "
            "never trained, train it. To repair this model without retraining, re-estimate "
            f"them: {FIX_HINT}."
        )
    return Finding(Cause.STATS_NEVER_UPDATED, sev, first.path, message, remedy, evidence)


def _both_modes_alike(group: Sequence[BatchNormRecord]) -> str | None:
    """Why these layers cause no fit/evaluate gap, when they do not: frozen, or
    renorm without clipping (both modes use stored statistics)."""
    if all(not r.trainable for r in group):
        return (
            "These layers are frozen (trainable=False), so fit() uses these statistics too: "
            "expect poor results in both modes rather than a gap. "
        )
    if all(r.renorm for r in group):
        return (
            "These layers use batch renormalization: training mode normalises with the "
            "renorm statistics (within the clipping bounds, if any) and inference mode with "
            "the moving ones, not with each batch's own, so expect both modes to be wrong "
            f"alike rather than fit() looking fine{renorm_gaps(group[0])}. "
        )
    return None


def not_converged(flagged: list[BatchNormRecord], explained: set[str]) -> Finding | None:
    """`stats_not_converged` when flagged layers (not `explained` by an
    earlier cause) keep a large share of their initial statistics."""
    not_conv = [
        r
        for r in flagged
        if r.path not in explained
        and r.init_fraction is not None
        and r.init_fraction >= NOT_CONVERGED_SHARE
    ]
    if not not_conv:
        return None
    # Deeper layers saw the same few updates, but under weights that kept
    # changing, so their channels agree less; mostly-initial ones belong here.
    clean = {r.path for r in not_conv}
    not_conv = [
        r
        for r in flagged
        if r.path not in explained
        and (r.path in clean or (r.init_share_estimate or 0.0) >= DRIFTED_SHARE)
    ]
    # The first clean layer's estimate is the best: deeper layers' inputs
    # drifted while their statistics were being accumulated.
    first = next(r for r in not_conv if r.path in clean)
    share = first.init_fraction
    shares: list[float] = []
    for r in not_conv:
        s = r.init_fraction if r.init_fraction is not None else r.init_share_estimate
        assert s is not None  # the filter above keeps only layers with one or the other
        shares.append(s)
    lo, hi = min(shares), max(shares)
    spread = f"; {lo:.0%} to {hi:.0%} across them" if len(not_conv) > 1 and hi - lo >= 0.05 else ""
    upd = first.estimated_updates
    n_upd = max(round(upd), 1) if upd is not None else None
    upd_txt = (
        f"about {n_upd} update{'s' if n_upd != 1 else ''}" if n_upd is not None else "few updates"
    )
    momenta = sorted({r.momentum for r in not_conv})
    alike = _both_modes_alike(not_conv)
    return Finding(
        Cause.STATS_NOT_CONVERGED,
        worst([r.severity for r in not_conv]),
        not_conv[0].path,
        f"{bn_count(len(not_conv))} {verb(len(not_conv), 'has', 'have')} moving statistics that are still "
        f"{share:.0%} their initial values ({initial_stats(first)}{spread}): {upd_txt} at momentum "
        f"{', '.join(f'{m:g}' for m in momenta)}, too few to reach your data's statistics. "
        + (
            alike
            or "In training mode each batch is normalised by its own statistics, so fit() "
            "looks fine while evaluate() and predict() on the same data do not. "
        )
        + f"First: {describe_bn(first)}.",
        _convergence_remedy(max(momenta)),
        {"layers": [r.path for r in not_conv], "init_fraction": share, "estimated_updates": upd},
    )
