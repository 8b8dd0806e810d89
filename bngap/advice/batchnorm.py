"""The BatchNormalization causes, one rule each: statistics never updated,
preprocessing mismatch, not converged, domain shift, small batch; and the
notes on frozen or held BN layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..records import BatchNormRecord, Finding, LayerRecord, PreprocessingProbe
from ..specs import PREPROCESS_FLAG
from ..vocabulary import Cause, FitMode, Group, Kind, Severity
from .common import FIX_HINT, NOTABLE_GAP, SMALL_BATCH, bn_count, fmt, name_list, verb

NOT_CONVERGED_SHARE = 0.1  # initial values still this large a share of the statistics
DRIFTED_SHARE = 0.5  # ... or, next to such layers, mostly initial values
BATCH_NOISE_EXCESS = 0.3  # own contribution beyond what the statistics explain


def _worst(sev: Sequence[Severity]) -> Severity:
    return max(sev, key=lambda s: s.rank) if sev else Severity.OK


def _initial(r: BatchNormRecord) -> str:
    if r.init_mean is None or r.init_variance is None:
        return "their initial values"
    return f"mean {r.init_mean:g}, variance {r.init_variance:g}"


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


def _describe_bn(r: BatchNormRecord) -> str:
    return (
        f"{r.path}: median |z| {fmt(r.median_abs_z, 2)}, median |log2 variance ratio| "
        f"{fmt(r.median_abs_log2_var_ratio, 2)}, expected local gap {fmt(r.expected_local_gap, 2)}"
    )


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


def _never_updated(
    batchnorm: Sequence[BatchNormRecord],
    flagged: list[BatchNormRecord],
    bn_gap: float,
    layers: Sequence[LayerRecord],
    fit_call=None,
) -> Finding | None:
    never = [r for r in batchnorm if r.never_updated]
    never_flagged = [r for r in never if r in flagged]
    if not never_flagged:
        return None
    first = never_flagged[0]
    sev = (
        Severity.FAIL
        if (_worst([r.severity for r in never_flagged]) is Severity.FAIL or bn_gap >= NOTABLE_GAP)
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
            f"initial moving statistics ({_initial(first)}). {why} ({where})."
        )
        evidence.update(fit_call=fit_call.expression, model_class=fit_call.model_class)
    else:
        message = (
            f"{len(never)} of {len(batchnorm)} BatchNormalization layers still hold their "
            f"initial moving statistics ({_initial(first)}): they were never updated. In "
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


def _preprocessing(
    preprocessing: PreprocessingProbe | None, flagged: list[BatchNormRecord]
) -> Finding | None:
    p = preprocessing
    if p is None or not p.best:
        return None
    best_gap = dict(p.candidates).get(p.best)
    first = flagged[0] if flagged else None
    sev = first.severity if first is not None else Severity.WARN
    return Finding(
        Cause.PREPROCESSING_MISMATCH,
        sev,
        p.layers[0] if p.layers else None,
        f"The first BatchNormalization layers ({name_list(p.layers)}) see inputs unlike those "
        f"they were trained on (mean expected local gap {fmt(p.baseline_gap, 2)}); after the "
        f"transform `{p.best}` they match (gap {fmt(best_gap, 2)}). Your inputs range "
        f"{fmt(p.input_min, 3)}..{fmt(p.input_max, 3)}: the model was most likely trained "
        f"on inputs preprocessed as `{p.best}`.",
        f"Apply the preprocessing used in training before predicting (here: {p.best}"
        + (
            f"; for an image folder: --preprocess {PREPROCESS_FLAG[p.best]}"
            if p.best in PREPROCESS_FLAG
            else ""
        )
        + "); for keras.applications models use the family's preprocess_input. Everything "
        "downstream of the first layers will then see the statistics it expects.",
        {
            "transform": p.best,
            "baseline_gap": p.baseline_gap,
            "gap_after": best_gap,
            "candidates": dict(p.candidates),
            "layers": [r.path for r in flagged],
        },
    )


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
            f"alike rather than fit() looking fine{_renorm_gaps(group[0])}. "
        )
    return None


def _renorm_gaps(r: BatchNormRecord) -> str:
    if r.training_stats_gap is None:
        return ""
    return (
        f" ({r.path}: expected local gap {fmt(r.training_stats_gap, 2)} for the renorm "
        f"statistics training mode uses, {fmt(r.expected_local_gap, 2)} for the moving ones)"
    )


def _not_converged(flagged: list[BatchNormRecord], explained: set[str]) -> Finding | None:
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
        _worst([r.severity for r in not_conv]),
        not_conv[0].path,
        f"{bn_count(len(not_conv))} {verb(len(not_conv), 'has', 'have')} moving statistics that are still "
        f"{share:.0%} their initial values ({_initial(first)}{spread}): {upd_txt} at momentum "
        f"{', '.join(f'{m:g}' for m in momenta)}, too few to reach your data's statistics. "
        + (
            alike
            or "In training mode each batch is normalised by its own statistics, so fit() "
            "looks fine while evaluate() and predict() on the same data do not. "
        )
        + f"First: {_describe_bn(first)}.",
        _convergence_remedy(max(momenta)),
        {"layers": [r.path for r in not_conv], "init_fraction": share, "estimated_updates": upd},
    )


def _overridden(shifted: Sequence[BatchNormRecord], layers_by_path: dict) -> list[str]:
    """BN layers inside a sub-model the user called with training=False that
    nevertheless ran in training mode in the fit()-like pass."""
    out = []
    for r in shifted:
        rec = layers_by_path.get(r.path)
        if rec is not None and rec.fit_mode is FitMode.TRAINING and rec.caller_training is False:
            out.append(r.path)
    return out


def _domain_shift(
    flagged: list[BatchNormRecord], explained: set[str], layers_by_path: dict
) -> Finding | None:
    shifted = [r for r in flagged if r.path not in explained]
    if not shifted:
        return None
    first = shifted[0]
    frozen = [r for r in shifted if not r.trainable]
    overridden = _overridden(shifted, layers_by_path)
    msg = (
        f"{bn_count(len(shifted))} {verb(len(shifted), 'has', 'have')} moving statistics that do not "
        f"describe this data, although they are not initial values: they were estimated on "
        f"data with a different distribution (pretrained statistics, or a different "
        f"dataset). First: {_describe_bn(first)}."
    )
    if frozen:
        msg += (
            f" {len(frozen)} of them are frozen (trainable=False): in Keras 3 a frozen "
            "BatchNormalization layer uses its moving statistics in fit() as well, so it "
            "causes no train/eval gap, only poor results in both modes."
        )
    renorm = [r for r in shifted if r.renorm and r.trainable]
    if renorm:
        msg += (
            f" {len(renorm)} of them use batch renormalization: training mode normalises with "
            "the renorm statistics (within the clipping bounds, if any) and inference mode with "
            "the moving ones, not with each batch's own, so expect both modes to be wrong alike "
            f"rather than a gap{_renorm_gaps(renorm[0])}."
        )
    if overridden:
        msg += (
            f" {bn_count(len(overridden))} ({name_list(overridden)}) sit in a sub-model called "
            "with training=False, yet run in training mode in fit(): in this Keras version the "
            "outer training=True reaches them, so training=False did not hold, and fit() "
            "normalises their batches by their own statistics while evaluate() uses the "
            "pretrained ones."
        )
    remedy = (
        "Re-estimate the statistics on data like yours "
        f"({FIX_HINT}), or fine-tune with the BatchNormalization layers in training mode "
        "long enough for their statistics to follow; check that the data comes from the "
        "distribution the model was trained on. "
    )
    if overridden:
        remedy += (
            "To keep the pretrained statistics, set trainable=False on the base (or on "
            "its BatchNormalization layers): that is what holds a BN layer in inference "
            "mode in fit(); training=False in the call does not."
        )
    else:
        remedy += (
            "To keep pretrained statistics while fine-tuning, freeze the BN layers "
            "(layer.trainable = False), which holds them in inference mode in fit(); "
            "calling the base with training=False does not hold inside a functional "
            "model in every Keras version (the layer table shows what each BN layer "
            "does in fit())."
        )
    return Finding(
        Cause.DOMAIN_SHIFT,
        _worst([r.severity for r in shifted]),
        first.path,
        msg,
        remedy,
        {
            "layers": [r.path for r in shifted],
            "frozen": [r.path for r in frozen],
            "training_false_overridden": overridden,
        },
    )


def _small_batch(
    batchnorm: Sequence[BatchNormRecord],
    layers: Sequence[LayerRecord],
    flagged: list[BatchNormRecord],
    bn_gap: float,
    batch_size: int,
    samples: int,
) -> tuple[Finding | None, list[str]]:
    """A BN gap the statistics do not explain: the batch statistics are the problem."""
    bn_layers = {r.path: r for r in layers if r.kind is Kind.BATCHNORM}
    # Below a flagged layer, a layer's training-mode input is not its
    # inference-mode input (upstream normalises differently): its own
    # contribution cannot be set against its expected gap.
    first_flagged = min((r.order for r in flagged), default=None)
    noisy = []
    for r in batchnorm:
        rec = bn_layers.get(r.path)
        if rec is None or rec.own_contribution is None or not r.fit_uses_batch_stats:
            continue
        if first_flagged is not None and r.order >= first_flagged:
            continue
        excess = rec.own_contribution - r.expected_local_gap
        if excess > BATCH_NOISE_EXCESS and rec.own_contribution > 2 * r.expected_local_gap:
            noisy.append((r, rec.own_contribution))
    uses_batch = [r for r in batchnorm if r.fit_uses_batch_stats]
    # A few deep layers with tiny feature maps are always noisy; a batch
    # problem shows in a good share of the layers.
    widespread = len(noisy) >= max(1, len(uses_batch) // 4)
    if uses_batch and (batch_size < SMALL_BATCH or (widespread and bn_gap >= NOTABLE_GAP)):
        r, own = noisy[0] if noisy else (uses_batch[0], None)
        sev = Severity.WARN if bn_gap >= NOTABLE_GAP else Severity.INFO
        more = "32 or more" if batch_size < 32 else f"larger than {batch_size}"
        few = (
            f" Only {samples} samples were given, so they form one batch: give at least 32 to "
            "measure at the batch size fit() uses."
            if samples <= batch_size
            else ""
        )
        return Finding(
            Cause.SMALL_BATCH,
            sev,
            r.path,
            f"In training mode BatchNormalization normalises each batch by its own statistics; "
            f"with batches of {batch_size} these are unreliable estimates"
            + (
                f" ({len(noisy)} layers, e.g. {r.path}: own contribution {fmt(own, 2)} against "
                f"{fmt(r.expected_local_gap, 2)} explained by the moving statistics)"
                if noisy
                else ""
            )
            + ", so training-mode outputs differ from inference even where the moving statistics "
            "are right." + few,
            f"Use larger batches ({more}) "
            "and shuffle them (a batch of one class has "
            "unrepresentative statistics); for small-batch training consider renorm=True, or "
            "GroupNormalization / LayerNormalization.",
            {"batch_size": batch_size, "layers": [x.path for x, _ in noisy]},
        ), []
    if uses_batch and bn_gap >= NOTABLE_GAP and not flagged:
        return None, [
            f"The BatchNormalization layers' moving statistics match the data; their gap "
            f"({fmt(bn_gap)}) is the batch-to-batch variation of batch statistics expected at "
            f"batch size {batch_size}, not a fault."
        ]
    return None, []


def _bn_notes(batchnorm: Sequence[BatchNormRecord], layers: Sequence[LayerRecord]) -> list[str]:
    notes = []
    frozen_all = [r for r in batchnorm if not r.trainable]
    if frozen_all:
        notes.append(
            f"{bn_count(len(frozen_all))} {verb(len(frozen_all), 'is', 'are')} frozen (trainable=False). In Keras 3 "
            "a frozen BN layer runs in inference mode even in fit(), so it causes no gap between "
            "fit() and evaluate() (older Keras 2 versions behaved differently, as many reports "
            "from that time describe)."
        )
    held = [
        r
        for r in layers
        if r.kind is Kind.BATCHNORM and r.fit_mode is FitMode.INFERENCE and r.fit_training is False
    ]
    if held:
        notes.append(
            f"{bn_count(len(held))} {verb(len(held), 'receives', 'receive')} training=False from their "
            f"caller and stay in inference mode in fit() (e.g. {held[0].path})."
        )
    return notes


def batchnorm_findings(
    batchnorm: Sequence[BatchNormRecord],
    groups: dict,
    layers: Sequence[LayerRecord],
    batch_size: int,
    samples: int,
    preprocessing: PreprocessingProbe | None,
    fit_call=None,
) -> tuple[list[Finding], list[str]]:
    """The BatchNormalization causes, each from its own rule; a layer explained
    by an earlier cause is not counted again by a later one."""
    flagged = [r for r in batchnorm if r.severity in (Severity.WARN, Severity.FAIL)]
    bn_gap = float(groups.get(Group.BATCHNORM, 0.0) or 0.0)
    by_path = {r.path: r for r in layers}
    findings: list[Finding] = []
    explained: set[str] = set()
    never = _never_updated(batchnorm, flagged, bn_gap, layers, fit_call)
    if never is not None:
        findings.append(never)
        explained.update(r.path for r in batchnorm if r.never_updated)
    pre = _preprocessing(preprocessing, flagged)
    if pre is not None:
        findings.append(pre)
        # Downstream layers inherit the shifted input: the first flagged run is explained.
        explained.update(r.path for r in flagged)
    conv = _not_converged(flagged, explained)
    if conv is not None:
        findings.append(conv)
        explained.update(conv.evidence["layers"])
    shift = _domain_shift(flagged, explained, by_path)
    if shift is not None:
        findings.append(shift)
    small, notes = _small_batch(batchnorm, layers, flagged, bn_gap, batch_size, samples)
    if small is not None:
        findings.append(small)
    return findings, notes + _bn_notes(batchnorm, layers)
