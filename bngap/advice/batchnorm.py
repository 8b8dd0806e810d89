"""The BatchNormalization causes in order, `small_batch`, and notes on frozen or held layers.

Each cause is its own rule (`convergence`, `shift`, `_small_batch` here); a
layer explained by one is not counted again by the next.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..records import BatchNormRecord, Finding, LayerRecord, PreprocessingProbe
from ..vocabulary import Cause, FitMode, Group, Kind, Severity
from .common import NOTABLE_GAP, SMALL_BATCH, bn_count, fmt, verb
from .convergence import never_updated, not_converged
from .shift import domain_shift, preprocessing_mismatch

BATCH_NOISE_EXCESS = 0.3  # own contribution beyond what the statistics explain


def _noisy_layers(
    batchnorm: Sequence[BatchNormRecord],
    layers: Sequence[LayerRecord],
    flagged: list[BatchNormRecord],
) -> list[tuple[BatchNormRecord, float]]:
    """BN layers (above the first flagged one) whose own contribution the
    moving statistics do not explain, with that contribution."""
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
    return noisy


def _small_batch(
    batchnorm: Sequence[BatchNormRecord],
    layers: Sequence[LayerRecord],
    flagged: list[BatchNormRecord],
    bn_gap: float,
    batch_size: int,
    samples: int,
) -> tuple[Finding | None, list[str]]:
    """A BN gap the statistics do not explain: the batch statistics are the problem."""
    noisy = _noisy_layers(batchnorm, layers, flagged)
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
    never = never_updated(batchnorm, flagged, bn_gap, layers, fit_call)
    if never is not None:
        findings.append(never)
        explained.update(r.path for r in batchnorm if r.never_updated)
    pre = preprocessing_mismatch(preprocessing, flagged)
    if pre is not None:
        findings.append(pre)
        # Downstream layers inherit the shifted input: the first flagged run is explained.
        explained.update(r.path for r in flagged)
    conv = not_converged(flagged, explained)
    if conv is not None:
        findings.append(conv)
        explained.update(conv.evidence["layers"])
    shift = domain_shift(flagged, explained, by_path)
    if shift is not None:
        findings.append(shift)
    small, notes = _small_batch(batchnorm, layers, flagged, bn_gap, batch_size, samples)
    if small is not None:
        findings.append(small)
    return findings, notes + _bn_notes(batchnorm, layers)
