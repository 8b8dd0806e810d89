"""From numbers to plain words: the likely causes of the gap, with evidence
and a remedy, most likely first. Plain Python."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from .records import (
    BackendRun,
    BatchNormRecord,
    Finding,
    LayerRecord,
    LeakCheck,
    OutputGap,
    PreprocessingProbe,
)
from .results import format_number
from .specs import PREPROCESS_FLAG
from .vocabulary import Cause, FitMode, Group, InferencePath, Kind, Severity

NOTABLE_GAP = 0.05        # an output or group gap worth explaining (relative L2)
NOT_CONVERGED_SHARE = 0.1  # initial values still this large a share of the statistics
DRIFTED_SHARE = 0.5        # ... or, next to such layers, mostly initial values
SMALL_BATCH = 8
BATCH_NOISE_EXCESS = 0.3   # own contribution beyond what the statistics explain

# Among findings of equal severity, the more specific cause comes first.
_PRIORITY = [Cause.MODE_LEAK, Cause.BACKEND_DIVERGENCE, Cause.STATS_NEVER_UPDATED, Cause.PREPROCESSING_MISMATCH,
             Cause.STATS_NOT_CONVERGED, Cause.DOMAIN_SHIFT, Cause.SMALL_BATCH,
             Cause.AUGMENTATION, Cause.DROPOUT_ONLY]

FIX_HINT = "bngap fix MODEL DATA -o fixed.keras"


def _fmt(v: float | None, digits: int = 3) -> str:
    return format_number(v, digits)


def _names(items: Sequence[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _worst(sev: Sequence[Severity]) -> Severity:
    return max(sev, key=lambda s: s.rank) if sev else Severity.OK


def _leak_findings(leaks: Sequence[LeakCheck], layers_by_path: dict) -> list[Finding]:
    out = []
    inference_leak = set()
    for chk in leaks:
        if chk.path is InferencePath.FORCED and chk.is_leak:
            inference_leak = set(chk.layers_in_training)
    for chk in leaks:
        if not chk.is_leak:
            continue
        layers = list(chk.layers_in_training)
        if chk.path is InferencePath.NO_FLAG and layers and set(layers) <= inference_leak:
            continue  # the same layers, already reported for inference itself
        rel = _fmt(chk.relative_l2)
        if chk.path is InferencePath.FORCED:
            out.append(Finding(
                Cause.MODE_LEAK, Severity.FAIL, layers[0] if layers else None,
                f"{len(layers)} layer(s) run in training mode during inference: {_names(layers)}. "
                f"evaluate() and predict() use batch statistics (or dropout) there, so their results "
                f"depend on the batch; the output differs from true inference by {rel} (relative L2).",
                "Find the layer that passes training=True to its sub-layers (a custom layer calling "
                "sub-layers with training=True, or a preprocessing layer that defaults to "
                "training=True) and pass the training argument through instead; upgrading Keras fixes "
                "a known Resizing/CenterCrop leak.",
                {"relative_l2": chk.relative_l2, "layers": layers, "samples": chk.samples},
            ))
        elif chk.path is InferencePath.PREDICT:
            out.append(Finding(
                Cause.MODE_LEAK, Severity.FAIL, None,
                f"predict() differs from model(x, training=False) by {rel} (relative L2): the "
                "compiled inference function does not compute what the eager call does.",
                "Look for layers with Python-side state or randomness in call(); compare "
                "model.predict(x) with model(x, training=False) on a few samples.",
                {"relative_l2": chk.relative_l2, "samples": chk.samples},
            ))
        else:
            # Random augmentation layers default to training=True by design;
            # it only matters to users who call model(x) for inference.
            by_design = bool(layers) and all(
                layers_by_path.get(p) is not None and layers_by_path[p].kind is Kind.AUGMENTATION
                for p in layers)
            out.append(Finding(
                Cause.MODE_LEAK, Severity.INFO if by_design else Severity.WARN, layers[0] if layers else None,
                f"Calling the model as model(x) without a training argument runs "
                f"{_names(layers) or 'some layers'} in training mode (output differs by {rel} from "
                "model(x, training=False)). Some layers default to training=True and the value is "
                "inherited by the layers they call.",
                "Call model(x, training=False) or model.predict(x) for inference.",
                {"relative_l2": chk.relative_l2, "layers": layers, "samples": chk.samples},
            ))
    return out


def _bn_layers(n: int) -> str:
    return f"{n} BatchNormalization layer{'' if n == 1 else 's'}"


def _verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


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
        lower = (f"lower the BatchNormalization momentum (at {momentum:g} the statistics need "
                 f"about {now} updates to leave their start behind; at 0.9, about "
                 f"{_updates_to_forget(0.9)})")
    else:
        lower = f"keep training (at momentum {momentum:g} they need about {now} updates)"
    return (f"Train for more steps, {lower}, or re-estimate the statistics on your data: "
            f"{FIX_HINT}.")


def _describe_bn(r: BatchNormRecord) -> str:
    return (f"{r.path}: median |z| {_fmt(r.median_abs_z, 2)}, median |log2 variance ratio| "
            f"{_fmt(r.median_abs_log2_var_ratio, 2)}, expected local gap {_fmt(r.expected_local_gap, 2)}")


def _never_updated_in_fit(never: Sequence[BatchNormRecord], layers: Sequence[LayerRecord],
                          fit_call) -> tuple[str, str] | None:
    """(message tail, remedy) when fit() itself runs these BN layers in
    inference mode because of how it calls the model (so it never updated
    them): both modes are wrong, and the model's call() signature is the fix."""
    if fit_call is None:
        return None
    by_path = {r.path: r for r in layers}
    held = [r for r in never if (rec := by_path.get(r.path)) is not None and r.trainable
            and rec.fit_mode is FitMode.INFERENCE and rec.fit_training is None]
    if not held or len(held) < len(never):
        return None
    cls = fit_call.model_class
    if not fit_call.passes_training:
        why = (f"fit() calls {cls}(x) without `training`, because {cls}.call() has no `training` "
               "argument, so these layers (and Dropout) run in inference mode in fit() too and "
               "their statistics are never updated. Both modes are wrong alike: fit() and "
               "evaluate() agree, and both normalise with the initial statistics instead of your "
               "data's")
        fix = (f"Give {cls}.call a training argument and pass it on: `def call(self, x, "
               "training=None):` and `self.bn(h, training=training)` for every sub-layer or "
               "sub-model that takes it; then train again, so that fit() runs in training mode "
               f"and updates the statistics. To repair this model's statistics without "
               f"retraining: {FIX_HINT}.")
    elif fit_call.stateless:
        why = (f"On JAX, fit() runs {cls} through stateless_call, which in this Keras version "
               f"does not hand training=True to layers that {cls}.call() calls without it: these "
               "layers run in inference mode in fit() and their statistics are never updated. "
               "Both modes are wrong alike")
        fix = (f"In {cls}.call, pass training on explicitly: `self.bn(h, training=training)`; "
               f"or upgrade Keras; then train again. To repair the statistics now: {FIX_HINT}.")
    else:
        return None
    return why, fix


def _never_updated(batchnorm: Sequence[BatchNormRecord], flagged: list[BatchNormRecord],
                   bn_gap: float, layers: Sequence[LayerRecord], fit_call=None) -> Finding | None:
    never = [r for r in batchnorm if r.never_updated]
    never_flagged = [r for r in never if r in flagged]
    if not never_flagged:
        return None
    first = never_flagged[0]
    sev = Severity.FAIL if (_worst([r.severity for r in never_flagged]) is Severity.FAIL
                            or bn_gap >= NOTABLE_GAP) else Severity.WARN
    evidence = {"layers": [r.path for r in never], "flagged": [r.path for r in never_flagged]}
    where = (f"first: {first.path}, whose input has median |mean| {_fmt(first.data_mean_abs, 2)} "
             f"and median std {_fmt(first.data_std, 2)}")
    in_fit = _never_updated_in_fit(never, layers, fit_call)
    if in_fit is not None:  # fit() itself ran them in inference mode
        why, remedy = in_fit
        message = (f"{len(never)} of {len(batchnorm)} BatchNormalization layers still hold their "
                   f"initial moving statistics ({_initial(first)}). {why} ({where}).")
        evidence.update(fit_call=fit_call.expression, model_class=fit_call.model_class)
    else:
        message = (f"{len(never)} of {len(batchnorm)} BatchNormalization layers still hold their "
                   f"initial moving statistics ({_initial(first)}): they were never updated. In "
                   f"inference mode they normalise with those instead of your data's statistics "
                   f"({where}).")
        remedy = ("If you train with a custom loop, call the model with training=True in the "
                  "training step so BatchNormalization updates its statistics; if the model was "
                  "never trained, train it. To repair this model without retraining, re-estimate "
                  f"them: {FIX_HINT}.")
    return Finding(Cause.STATS_NEVER_UPDATED, sev, first.path, message, remedy, evidence)


def _preprocessing(preprocessing: PreprocessingProbe | None,
                   flagged: list[BatchNormRecord]) -> Finding | None:
    p = preprocessing
    if p is None or not p.best:
        return None
    best_gap = dict(p.candidates).get(p.best)
    first = flagged[0] if flagged else None
    sev = first.severity if first is not None else Severity.WARN
    return Finding(
        Cause.PREPROCESSING_MISMATCH, sev, p.layers[0] if p.layers else None,
        f"The first BatchNormalization layers ({_names(p.layers)}) see inputs unlike those "
        f"they were trained on (mean expected local gap {_fmt(p.baseline_gap, 2)}); after the "
        f"transform `{p.best}` they match (gap {_fmt(best_gap, 2)}). Your inputs range "
        f"{_fmt(p.input_min, 3)}..{_fmt(p.input_max, 3)}: the model was most likely trained "
        f"on inputs preprocessed as `{p.best}`.",
        f"Apply the preprocessing used in training before predicting (here: {p.best}"
        + (f"; for an image folder: --preprocess {PREPROCESS_FLAG[p.best]}" if p.best in PREPROCESS_FLAG else "")
        + "); for keras.applications models use the family's preprocess_input. Everything "
        "downstream of the first layers will then see the statistics it expects.",
        {"transform": p.best, "baseline_gap": p.baseline_gap, "gap_after": best_gap,
         "candidates": dict(p.candidates), "layers": [r.path for r in flagged]},
    )


def _both_modes_alike(group: Sequence[BatchNormRecord]) -> str | None:
    """Why these layers cause no fit/evaluate gap, when they do not: frozen, or
    renorm without clipping (both modes use stored statistics)."""
    if all(not r.trainable for r in group):
        return ("These layers are frozen (trainable=False), so fit() uses these statistics too: "
                "expect poor results in both modes rather than a gap. ")
    if all(r.renorm for r in group):
        return ("These layers use batch renormalization: training mode normalises with the "
                "renorm statistics (within the clipping bounds, if any) and inference mode with "
                "the moving ones, not with each batch's own, so expect both modes to be wrong "
                f"alike rather than fit() looking fine{_renorm_gaps(group[0])}. ")
    return None


def _renorm_gaps(r: BatchNormRecord) -> str:
    if r.training_stats_gap is None:
        return ""
    return (f" ({r.path}: expected local gap {_fmt(r.training_stats_gap, 2)} for the renorm "
            f"statistics training mode uses, {_fmt(r.expected_local_gap, 2)} for the moving ones)")


def _not_converged(flagged: list[BatchNormRecord], explained: set[str]) -> Finding | None:
    not_conv = [r for r in flagged if r.path not in explained and r.init_fraction is not None
                and r.init_fraction >= NOT_CONVERGED_SHARE]
    if not not_conv:
        return None
    # Deeper layers saw the same few updates, but under weights that kept
    # changing, so their channels agree less; mostly-initial ones belong here.
    clean = {r.path for r in not_conv}
    not_conv = [r for r in flagged if r.path not in explained and (
        r.path in clean or (r.init_share_estimate or 0.0) >= DRIFTED_SHARE)]
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
    upd_txt = f"about {n_upd} update{'s' if n_upd != 1 else ''}" if n_upd is not None else "few updates"
    momenta = sorted({r.momentum for r in not_conv})
    alike = _both_modes_alike(not_conv)
    return Finding(
        Cause.STATS_NOT_CONVERGED, _worst([r.severity for r in not_conv]), not_conv[0].path,
        f"{_bn_layers(len(not_conv))} {_verb(len(not_conv), 'has', 'have')} moving statistics that are still "
        f"{share:.0%} their initial values ({_initial(first)}{spread}): {upd_txt} at momentum "
        f"{', '.join(f'{m:g}' for m in momenta)}, too few to reach your data's statistics. "
        + (alike or "In training mode each batch is normalised by its own statistics, so fit() "
           "looks fine while evaluate() and predict() on the same data do not. ")
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


def _domain_shift(flagged: list[BatchNormRecord], explained: set[str],
                  layers_by_path: dict) -> Finding | None:
    shifted = [r for r in flagged if r.path not in explained]
    if not shifted:
        return None
    first = shifted[0]
    frozen = [r for r in shifted if not r.trainable]
    overridden = _overridden(shifted, layers_by_path)
    msg = (f"{_bn_layers(len(shifted))} {_verb(len(shifted), 'has', 'have')} moving statistics that do not "
           f"describe this data, although they are not initial values: they were estimated on "
           f"data with a different distribution (pretrained statistics, or a different "
           f"dataset). First: {_describe_bn(first)}.")
    if frozen:
        msg += (f" {len(frozen)} of them are frozen (trainable=False): in Keras 3 a frozen "
                "BatchNormalization layer uses its moving statistics in fit() as well, so it "
                "causes no train/eval gap, only poor results in both modes.")
    renorm = [r for r in shifted if r.renorm and r.trainable]
    if renorm:
        msg += (f" {len(renorm)} of them use batch renormalization: training mode normalises with "
                "the renorm statistics (within the clipping bounds, if any) and inference mode with "
                "the moving ones, not with each batch's own, so expect both modes to be wrong alike "
                f"rather than a gap{_renorm_gaps(renorm[0])}.")
    if overridden:
        msg += (f" {_bn_layers(len(overridden))} ({_names(overridden)}) sit in a sub-model called "
                "with training=False, yet run in training mode in fit(): in this Keras version the "
                "outer training=True reaches them, so training=False did not hold, and fit() "
                "normalises their batches by their own statistics while evaluate() uses the "
                "pretrained ones.")
    remedy = ("Re-estimate the statistics on data like yours "
              f"({FIX_HINT}), or fine-tune with the BatchNormalization layers in training mode "
              "long enough for their statistics to follow; check that the data comes from the "
              "distribution the model was trained on. ")
    if overridden:
        remedy += ("To keep the pretrained statistics, set trainable=False on the base (or on "
                   "its BatchNormalization layers): that is what holds a BN layer in inference "
                   "mode in fit(); training=False in the call does not.")
    else:
        remedy += ("To keep pretrained statistics while fine-tuning, freeze the BN layers "
                   "(layer.trainable = False), which holds them in inference mode in fit(); "
                   "calling the base with training=False does not hold inside a functional "
                   "model in every Keras version (the layer table shows what each BN layer "
                   "does in fit()).")
    return Finding(
        Cause.DOMAIN_SHIFT, _worst([r.severity for r in shifted]), first.path, msg, remedy,
        {"layers": [r.path for r in shifted], "frozen": [r.path for r in frozen],
         "training_false_overridden": overridden},
    )


def _small_batch(batchnorm: Sequence[BatchNormRecord], layers: Sequence[LayerRecord],
                 flagged: list[BatchNormRecord], bn_gap: float, batch_size: int,
                 samples: int) -> tuple[Finding | None, list[str]]:
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
        few = (f" Only {samples} samples were given, so they form one batch: give at least 32 to "
               "measure at the batch size fit() uses." if samples <= batch_size else "")
        return Finding(
            Cause.SMALL_BATCH, sev, r.path,
            f"In training mode BatchNormalization normalises each batch by its own statistics; "
            f"with batches of {batch_size} these are unreliable estimates"
            + (f" ({len(noisy)} layers, e.g. {r.path}: own contribution {_fmt(own, 2)} against "
               f"{_fmt(r.expected_local_gap, 2)} explained by the moving statistics)" if noisy else "")
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
            f"({_fmt(bn_gap)}) is the batch-to-batch variation of batch statistics expected at "
            f"batch size {batch_size}, not a fault."]
    return None, []


def _bn_notes(batchnorm: Sequence[BatchNormRecord], layers: Sequence[LayerRecord]) -> list[str]:
    notes = []
    frozen_all = [r for r in batchnorm if not r.trainable]
    if frozen_all:
        notes.append(
            f"{_bn_layers(len(frozen_all))} {_verb(len(frozen_all), 'is', 'are')} frozen (trainable=False). In Keras 3 "
            "a frozen BN layer runs in inference mode even in fit(), so it causes no gap between "
            "fit() and evaluate() (older Keras 2 versions behaved differently, as many reports "
            "from that time describe)."
        )
    held = [r for r in layers if r.kind is Kind.BATCHNORM and r.fit_mode is FitMode.INFERENCE
            and r.fit_training is False]
    if held:
        notes.append(f"{_bn_layers(len(held))} {_verb(len(held), 'receives', 'receive')} training=False from their "
                     f"caller and stay in inference mode in fit() (e.g. {held[0].path}).")
    return notes


def _bn_findings(batchnorm: Sequence[BatchNormRecord], groups: dict, layers: Sequence[LayerRecord],
                 batch_size: int, samples: int, preprocessing: PreprocessingProbe | None,
                 fit_call=None) -> tuple[list[Finding], list[str]]:
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


def _mode_group_findings(groups: dict, layers: Sequence[LayerRecord], gap: OutputGap,
                         inference_leaks: bool) -> tuple[list[Finding], list[str]]:
    findings, notes = [], []
    total = gap.relative_l2
    drop = float(groups.get(Group.DROPOUT, 0.0) or 0.0)
    aug = float(groups.get(Group.AUGMENTATION, 0.0) or 0.0)
    bn = float(groups.get(Group.BATCHNORM, 0.0) or 0.0)
    other = float(groups.get(Group.OTHER, 0.0) or 0.0)
    active = [r for r in layers if r.fit_mode is FitMode.TRAINING]
    if aug > 0:
        names = [r.path for r in active if r.kind is Kind.AUGMENTATION]
        findings.append(Finding(
            Cause.AUGMENTATION, Severity.INFO, names[0] if names else None,
            f"Random augmentation layers ({_names(names)}) change the inputs in training mode "
            f"only: with them alone in training mode the output differs by {_fmt(aug)}. fit() "
            "reports metrics on augmented inputs, evaluate() on the originals.",
            "Expected behaviour. To see fit() metrics on clean inputs, apply augmentation in the "
            "input pipeline (tf.data) instead of in the model, or evaluate the training data "
            "after fit().",
            {"group_gap": aug, "layers": names},
        ))
    if drop > 0:
        names = [r.path for r in active if r.kind in (Kind.DROPOUT, Kind.NOISE, Kind.RECURRENT)]
        # A BN finding does not rule this out: frozen BN layers with bad statistics
        # hurt both modes alike and add nothing to the gap (their group gap is ~0).
        only = bn < max(0.2 * drop, 1e-6) and aug == 0 and other < max(0.2 * drop, 1e-6)
        if only:
            findings.append(Finding(
                Cause.DROPOUT_ONLY, Severity.INFO, names[0] if names else None,
                f"The gap ({_fmt(total)}) comes from Dropout/noise layers ({_names(names)}), which "
                "are active only in training mode. This is expected, not a bug: the loss and "
                "accuracy fit() prints are computed with dropout on, evaluate() and predict() with "
                "it off.",
                "Nothing to fix. To compare like with like, run model.evaluate() on the training "
                "data after fit().",
                {"group_gap": drop, "layers": names},
            ))
        elif total > 0:
            notes.append(f"Dropout/noise layers alone give an output gap of {_fmt(drop)} (expected "
                         "in training mode).")
    if other >= NOTABLE_GAP and not inference_leaks:
        names = [r.path for r in active if r.kind in (Kind.CUSTOM_TRAINING_ARG, Kind.OTHER)]
        notes.append(f"Custom layers that take `training` ({_names(names)}) alone give an output "
                     f"gap of {_fmt(other)}: look at what their call() does when training=True.")
    return findings, notes


def diagnose(*, gap: OutputGap, groups: dict, layers: Sequence[LayerRecord],
             batchnorm: Sequence[BatchNormRecord], leaks: Sequence[LeakCheck],
             batch_size: int, last_batch_size: int, samples: int,
             preprocessing: PreprocessingProbe | None = None,
             fit_call=None) -> tuple[list[Finding], list[str]]:
    """Findings (most likely cause first) and context notes for a report.
    `fit_call` (a `backend.FitCall`) says how fit() calls the model."""
    findings = _leak_findings(leaks, {r.path: r for r in layers})
    bn_findings, notes = _bn_findings(batchnorm, groups, layers, batch_size, samples, preprocessing,
                                      fit_call)
    findings += bn_findings
    inference_leaks = any(c.is_leak and c.path is InferencePath.FORCED for c in leaks)
    more, more_notes = _mode_group_findings(groups, layers, gap, inference_leaks)
    findings += more
    notes += more_notes
    if batchnorm and samples < 2 * SMALL_BATCH:
        notes.append(f"Only {samples} samples: the BN statistics of the data are rough estimates "
                     "(each layer's noise level is in its record).")
    if last_batch_size < batch_size and last_batch_size < max(2, batch_size // 4) and any(
            r.fit_uses_batch_stats for r in batchnorm):
        notes.append(f"The last batch has only {last_batch_size} samples (as in fit()); its "
                     "training-mode statistics are noisy. Choose --batch-size or --limit so "
                     "that batches are full.")
    findings.sort(key=lambda f: (-f.severity.rank, _PRIORITY.index(f.cause)))
    return rank(with_shares(findings, groups, layers, gap)), notes


_BN_CAUSES = {Cause.STATS_NEVER_UPDATED, Cause.PREPROCESSING_MISMATCH, Cause.STATS_NOT_CONVERGED,
              Cause.DOMAIN_SHIFT, Cause.SMALL_BATCH}


def _share(part: float | None, total: float) -> float | None:
    if part is None or not total > 1e-6:
        return None
    return float(min(1.0, max(0.0, part / total)))


def with_shares(findings: Sequence[Finding], groups: dict, layers: Sequence[LayerRecord],
                gap: OutputGap) -> list[Finding]:
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
        return (side, -round(f.explains or 0.0, 2), -f.severity.rank, _PRIORITY.index(f.cause))

    return sorted(findings, key=key)


# ------------------------------------------------------------ across backends
def ordered(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """Findings most likely cause first, as `diagnose` orders them (`rank`)."""
    return tuple(rank(findings))


def backend_divergence(runs: Sequence[BackendRun], diverged: dict[str, list[str]], *,
                       tolerance: tuple[float, float], dtype: str,
                       keras_version: str | None) -> Finding | None:
    """A `backend_divergence` finding when a backend's inference outputs, its
    outputs with BN in training mode, or its BN gap differ from the first
    backend's beyond float tolerance; None when they all agree.

    `diverged` maps each backend to what of it diverged ('inference',
    'training', 'gap'); `runs[0]` is the reference backend.
    """
    bad = [r for r in runs if diverged.get(r.backend)]
    if not bad:
        return None
    ref = runs[0]
    parts = []
    fail = False
    for r in bad:
        what = diverged[r.backend]
        bits = []
        if "inference" in what:
            bits.append(f"inference outputs differ by max |diff| {_fmt(r.max_abs_vs_first)} "
                        f"(relative L2 {_fmt(r.relative_l2_vs_first)})")
            fail |= (r.relative_l2_vs_first or 0.0) > 1e-3
        if "training" in what:
            bits.append("with BatchNormalization in training mode, outputs differ by relative L2 "
                        f"{_fmt(r.training_relative_l2_vs_first)}")
            fail |= (r.training_relative_l2_vs_first or 0.0) > 1e-2
        if "gap" in what:
            bits.append(f"the BatchNormalization gap is {_fmt(r.batchnorm_gap)} against "
                        f"{_fmt(ref.batchnorm_gap)}")
            fail |= abs((r.batchnorm_gap or 0.0) - (ref.batchnorm_gap or 0.0)) > 0.05
        where = ""
        if r.first_divergent_layer:
            where = (f"; the first layer where they part: {r.first_divergent_layer} "
                     f"({r.first_divergent_mode} mode, relative L2 {_fmt(r.first_divergent_relative_l2)})")
        parts.append(f"on {r.backend}, " + "; ".join(bits) + where)
    worst = max(bad, key=lambda r: (r.relative_l2_vs_first or 0.0, r.training_relative_l2_vs_first or 0.0))
    versions = ", ".join(([f"keras {keras_version}"] if keras_version else [])
                         + [f"{r.backend} {r.version}" for r in runs if r.version])
    layer = worst.first_divergent_layer
    message = (f"The Keras backends disagree beyond {dtype} rounding (tolerance {tolerance[0]:g} of "
               f"the largest output in inference mode, {tolerance[1]:g} in training mode) against "
               f"{ref.backend}: " + ". ".join(parts) + ". The same file and data give different "
               "numbers depending on the backend, so part of what this report says may come from "
               "the backend, not from the model.")
    variance = next((r for r in bad if r.backend == "torch" and r.first_divergent_mode == "training"
                     and r.first_divergent_class == "BatchNormalization"), None)
    if variance is not None:
        message += (f" Likely why: Keras' PyTorch backend computes a batch's variance as "
                    f"E[x^2] - E[x]^2, which in {dtype} loses the spread when the mean is large "
                    f"against it; the other backends subtract the mean first.")
    names = ",".join(r.backend for r in [ref] + bad)
    remedy = (f"Trust the numbers of the backend the model was trained on for now. Report it to "
              f"Keras (github.com/keras-team/keras/issues) with: the output of `bngap check MODEL "
              f"DATA --backends {names} --format markdown`; the versions ({versions}); "
              + (f"a minimal reproduction with layer {layer} alone, called on the same input on "
                 f"each backend ({worst.first_divergent_mode} mode); " if layer else
                 "the model file or a minimal model that shows it; ")
              + "and the inputs (a few samples are enough)."
              + (f" Meanwhile, centre and scale the input of {variance.first_divergent_layer} (e.g. "
                 "a Normalization layer adapted to the data before it): with a mean near zero "
                 "the variance keeps its precision." if variance is not None else ""))
    evidence = {r.backend: {"diverged": list(diverged.get(r.backend, [])),
                            "max_abs_vs_first": r.max_abs_vs_first,
                            "relative_l2_vs_first": r.relative_l2_vs_first,
                            "training_relative_l2_vs_first": r.training_relative_l2_vs_first,
                            "batchnorm_gap": r.batchnorm_gap,
                            "first_divergent_layer": r.first_divergent_layer} for r in runs}
    return Finding(Cause.BACKEND_DIVERGENCE, Severity.FAIL if fail else Severity.WARN, layer,
                   message, remedy, evidence)
