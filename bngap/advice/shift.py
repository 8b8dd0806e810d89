"""`preprocessing_mismatch` and `domain_shift`: moving statistics from data unlike this."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import BatchNormRecord, Finding, PreprocessingProbe
from ..specs import PREPROCESS_FLAG
from ..vocabulary import Cause, FitMode, Severity
from .common import FIX_HINT, bn_count, describe_bn, fmt, name_list, renorm_gaps, verb, worst


def preprocessing_mismatch(
    preprocessing: PreprocessingProbe | None, flagged: list[BatchNormRecord]
) -> Finding | None:
    """`preprocessing_mismatch` when an input transform makes the first BN
    layers agree with their statistics (`preprocessing.best`)."""
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


def _overridden(shifted: Sequence[BatchNormRecord], layers_by_path: dict) -> list[str]:
    """BN layers inside a sub-model the user called with training=False that
    nevertheless ran in training mode in the fit()-like pass."""
    out = []
    for r in shifted:
        rec = layers_by_path.get(r.path)
        if rec is not None and rec.fit_mode is FitMode.TRAINING and rec.caller_training is False:
            out.append(r.path)
    return out


def _shift_message(
    shifted: Sequence[BatchNormRecord],
    frozen: Sequence[BatchNormRecord],
    overridden: Sequence[str],
) -> str:
    """What is wrong with the shifted layers, and what frozen, renorm or
    overridden ones among them do in each mode."""
    msg = (
        f"{bn_count(len(shifted))} {verb(len(shifted), 'has', 'have')} moving statistics that do not "
        f"describe this data, although they are not initial values: they were estimated on "
        f"data with a different distribution (pretrained statistics, or a different "
        f"dataset). First: {describe_bn(shifted[0])}."
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
            f"rather than a gap{renorm_gaps(renorm[0])}."
        )
    if overridden:
        msg += (
            f" {bn_count(len(overridden))} ({name_list(overridden)}) sit in a sub-model called "
            "with training=False, yet run in training mode in fit(): in this Keras version the "
            "outer training=True reaches them, so training=False did not hold, and fit() "
            "normalises their batches by their own statistics while evaluate() uses the "
            "pretrained ones."
        )
    return msg


def _shift_remedy(overridden: Sequence[str]) -> str:
    """Re-estimate or fine-tune; and how to hold pretrained statistics, which
    training=False did not do where `overridden` names layers."""
    remedy = (
        "Re-estimate the statistics on data like yours "
        f"({FIX_HINT}), or fine-tune with the BatchNormalization layers in training mode "
        "long enough for their statistics to follow; check that the data comes from the "
        "distribution the model was trained on. "
    )
    if overridden:
        return remedy + (
            "To keep the pretrained statistics, set trainable=False on the base (or on "
            "its BatchNormalization layers): that is what holds a BN layer in inference "
            "mode in fit(); training=False in the call does not."
        )
    return remedy + (
        "To keep pretrained statistics while fine-tuning, freeze the BN layers "
        "(layer.trainable = False), which holds them in inference mode in fit(); "
        "calling the base with training=False does not hold inside a functional "
        "model in every Keras version (the layer table shows what each BN layer "
        "does in fit())."
    )


def domain_shift(
    flagged: list[BatchNormRecord], explained: set[str], layers_by_path: dict
) -> Finding | None:
    """`domain_shift` for the flagged layers no earlier cause `explained`:
    statistics that are not initial values, yet do not describe this data."""
    shifted = [r for r in flagged if r.path not in explained]
    if not shifted:
        return None
    frozen = [r for r in shifted if not r.trainable]
    overridden = _overridden(shifted, layers_by_path)
    return Finding(
        Cause.DOMAIN_SHIFT,
        worst([r.severity for r in shifted]),
        shifted[0].path,
        _shift_message(shifted, frozen, overridden),
        _shift_remedy(overridden),
        {
            "layers": [r.path for r in shifted],
            "frozen": [r.path for r in frozen],
            "training_false_overridden": overridden,
        },
    )
