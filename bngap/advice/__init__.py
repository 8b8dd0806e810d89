"""From numbers to plain words: the likely causes of the gap, with evidence
and a remedy, most likely first. Plain Python."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import (
    BatchNormRecord,
    Finding,
    LayerRecord,
    LeakCheck,
    OutputGap,
    PreprocessingProbe,
)
from ..vocabulary import Cause, FitMode, Group, InferencePath, Kind, Severity
from .backends import backend_divergence
from .batchnorm import batchnorm_findings
from .common import FIX_HINT, NOTABLE_GAP, SMALL_BATCH, fmt, name_list
from .ranking import PRIORITY, ordered, rank, with_shares

__all__ = [
    "FIX_HINT",
    "NOTABLE_GAP",
    "SMALL_BATCH",
    "backend_divergence",
    "diagnose",
    "ordered",
    "rank",
    "with_shares",
]


def _forced_leak(chk: LeakCheck) -> Finding:
    """model(x, training=False) itself ran layers in training mode."""
    layers = list(chk.layers_in_training)
    return Finding(
        Cause.MODE_LEAK,
        Severity.FAIL,
        layers[0] if layers else None,
        f"{len(layers)} layer(s) run in training mode during inference: {name_list(layers)}. "
        f"evaluate() and predict() use batch statistics (or dropout) there, so their results "
        f"depend on the batch; the output differs from true inference by {fmt(chk.relative_l2)} (relative L2).",
        "Find the layer that passes training=True to its sub-layers (a custom layer calling "
        "sub-layers with training=True, or a preprocessing layer that defaults to "
        "training=True) and pass the training argument through instead; upgrading Keras fixes "
        "a known Resizing/CenterCrop leak.",
        {"relative_l2": chk.relative_l2, "layers": layers, "samples": chk.samples},
    )


def _predict_leak(chk: LeakCheck) -> Finding:
    """predict() computes something else than the eager inference call."""
    return Finding(
        Cause.MODE_LEAK,
        Severity.FAIL,
        None,
        f"predict() differs from model(x, training=False) by {fmt(chk.relative_l2)} (relative L2): the "
        "compiled inference function does not compute what the eager call does.",
        "Look for layers with Python-side state or randomness in call(); compare "
        "model.predict(x) with model(x, training=False) on a few samples.",
        {"relative_l2": chk.relative_l2, "samples": chk.samples},
    )


def _no_flag_leak(chk: LeakCheck, layers_by_path: dict) -> Finding:
    """model(x) without a training argument ran layers in training mode."""
    layers = list(chk.layers_in_training)
    # Random augmentation layers default to training=True by design;
    # it only matters to users who call model(x) for inference.
    by_design = bool(layers) and all(
        layers_by_path.get(p) is not None and layers_by_path[p].kind is Kind.AUGMENTATION
        for p in layers
    )
    return Finding(
        Cause.MODE_LEAK,
        Severity.INFO if by_design else Severity.WARN,
        layers[0] if layers else None,
        f"Calling the model as model(x) without a training argument runs "
        f"{name_list(layers) or 'some layers'} in training mode (output differs by {fmt(chk.relative_l2)} from "
        "model(x, training=False)). Some layers default to training=True and the value is "
        "inherited by the layers they call.",
        "Call model(x, training=False) or model.predict(x) for inference.",
        {"relative_l2": chk.relative_l2, "layers": layers, "samples": chk.samples},
    )


def _leak_findings(leaks: Sequence[LeakCheck], layers_by_path: dict) -> list[Finding]:
    """One `mode_leak` finding per inference path that leaked, except model(x)
    leaking the very layers inference itself already leaks."""
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
        if chk.path is InferencePath.FORCED:
            out.append(_forced_leak(chk))
        elif chk.path is InferencePath.PREDICT:
            out.append(_predict_leak(chk))
        else:
            out.append(_no_flag_leak(chk, layers_by_path))
    return out


def _augmentation(active: Sequence[LayerRecord], aug: float) -> Finding:
    """`augmentation`: random augmentation layers active in training mode."""
    names = [r.path for r in active if r.kind is Kind.AUGMENTATION]
    return Finding(
        Cause.AUGMENTATION,
        Severity.INFO,
        names[0] if names else None,
        f"Random augmentation layers ({name_list(names)}) change the inputs in training mode "
        f"only: with them alone in training mode the output differs by {fmt(aug)}. fit() "
        "reports metrics on augmented inputs, evaluate() on the originals.",
        "Expected behaviour. To see fit() metrics on clean inputs, apply augmentation in the "
        "input pipeline (tf.data) instead of in the model, or evaluate the training data "
        "after fit().",
        {"group_gap": aug, "layers": names},
    )


def _dropout_only(active: Sequence[LayerRecord], drop: float, total: float) -> Finding:
    """`dropout_only`: the whole gap comes from Dropout and noise layers."""
    names = [r.path for r in active if r.kind in (Kind.DROPOUT, Kind.NOISE, Kind.RECURRENT)]
    return Finding(
        Cause.DROPOUT_ONLY,
        Severity.INFO,
        names[0] if names else None,
        f"The gap ({fmt(total)}) comes from Dropout/noise layers ({name_list(names)}), which "
        "are active only in training mode. This is expected, not a bug: the loss and "
        "accuracy fit() prints are computed with dropout on, evaluate() and predict() with "
        "it off.",
        "Nothing to fix. To compare like with like, run model.evaluate() on the training "
        "data after fit().",
        {"group_gap": drop, "layers": names},
    )


def _mode_group_findings(
    groups: dict, layers: Sequence[LayerRecord], gap: OutputGap, inference_leaks: bool
) -> tuple[list[Finding], list[str]]:
    """The causes read from the gap of each group alone: augmentation, dropout,
    and a note on custom layers that take `training`."""
    findings, notes = [], []
    total = gap.relative_l2
    drop = float(groups.get(Group.DROPOUT, 0.0) or 0.0)
    aug = float(groups.get(Group.AUGMENTATION, 0.0) or 0.0)
    bn = float(groups.get(Group.BATCHNORM, 0.0) or 0.0)
    other = float(groups.get(Group.OTHER, 0.0) or 0.0)
    active = [r for r in layers if r.fit_mode is FitMode.TRAINING]
    if aug > 0:
        findings.append(_augmentation(active, aug))
    if drop > 0:
        # A BN finding does not rule this out: frozen BN layers with bad statistics
        # hurt both modes alike and add nothing to the gap (their group gap is ~0).
        only = bn < max(0.2 * drop, 1e-6) and aug == 0 and other < max(0.2 * drop, 1e-6)
        if only:
            findings.append(_dropout_only(active, drop, total))
        elif total > 0:
            notes.append(
                f"Dropout/noise layers alone give an output gap of {fmt(drop)} (expected "
                "in training mode)."
            )
    if other >= NOTABLE_GAP and not inference_leaks:
        names = [r.path for r in active if r.kind in (Kind.CUSTOM_TRAINING_ARG, Kind.OTHER)]
        notes.append(
            f"Custom layers that take `training` ({name_list(names)}) alone give an output "
            f"gap of {fmt(other)}: look at what their call() does when training=True."
        )
    return findings, notes


def diagnose(
    *,
    gap: OutputGap,
    groups: dict,
    layers: Sequence[LayerRecord],
    batchnorm: Sequence[BatchNormRecord],
    leaks: Sequence[LeakCheck],
    batch_size: int,
    last_batch_size: int,
    samples: int,
    preprocessing: PreprocessingProbe | None = None,
    fit_call=None,
) -> tuple[list[Finding], list[str]]:
    """Findings (most likely cause first) and context notes for a report.
    `fit_call` (a `backend.FitCall`) says how fit() calls the model."""
    findings = _leak_findings(leaks, {r.path: r for r in layers})
    bn_findings, notes = batchnorm_findings(
        batchnorm, groups, layers, batch_size, samples, preprocessing, fit_call
    )
    findings += bn_findings
    inference_leaks = any(c.is_leak and c.path is InferencePath.FORCED for c in leaks)
    more, more_notes = _mode_group_findings(groups, layers, gap, inference_leaks)
    findings += more
    notes += more_notes
    if batchnorm and samples < 2 * SMALL_BATCH:
        notes.append(
            f"Only {samples} samples: the BN statistics of the data are rough estimates "
            "(each layer's noise level is in its record)."
        )
    if (
        last_batch_size < batch_size
        and last_batch_size < max(2, batch_size // 4)
        and any(r.fit_uses_batch_stats for r in batchnorm)
    ):
        notes.append(
            f"The last batch has only {last_batch_size} samples (as in fit()); its "
            "training-mode statistics are noisy. Choose --batch-size or --limit so "
            "that batches are full."
        )
    findings.sort(key=lambda f: (-f.severity.rank, PRIORITY.index(f.cause)))
    return rank(with_shares(findings, groups, layers, gap)), notes
