"""From raw measurements to per-layer and per-BN-layer records. Plain Python."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .audit import BatchNormParams, audit_layer
from .layertree import LayerNode
from .records import BatchNormRecord, GapEntry, LayerRecord, OutputGap
from .stats import GapAccumulator
from .vocabulary import FitMode, Kind


class Measured(Protocol):
    """What the passes measured (`measurement.Measurements`, or hand-built records)."""

    @property
    def nodes(self) -> Sequence[LayerNode]: ...
    @property
    def stats(self) -> Mapping[int, Any]: ...  # node index -> probe.NodeStats
    @property
    def bn_params(self) -> Mapping[int, BatchNormParams]: ...
    @property
    def output(self) -> GapAccumulator: ...
    @property
    def per_output(self) -> Sequence[tuple[str, GapAccumulator]]: ...


def _no_flag_reason(fit_call: Any) -> str:
    """Why a layer got no `training` value in fit(), from how fit() calls the model."""
    if fit_call is None:
        return "received no training flag"
    cls = fit_call.model_class
    if not fit_call.passes_training:
        return f"fit() calls {cls}(x) without training: {cls}.call() has no training argument"
    if fit_call.stateless:
        return (
            f"fit() on JAX runs {cls} through stateless_call, which does not hand training=True "
            f"to layers that {cls}.call() calls without it"
        )
    return "received no training flag"


def _fit_mode(
    node: LayerNode, received: list[Any], fit_call: Any = None
) -> tuple[bool | None, FitMode, str]:
    """(training value received, behaviour in fit(), why) for one layer."""
    got = [v for v in received if v is not None]
    training = None if not got else any(bool(v) for v in got)
    if not node.mode_dependent:
        return training, FitMode.NOT_APPLICABLE, ""
    if training is None:
        return None, FitMode.INFERENCE, _no_flag_reason(fit_call)
    if not training:
        caller = node.parent.path if node.parent else "the model"
        return False, FitMode.INFERENCE, f"called with training=False (by {caller})"
    if node.kind is Kind.BATCHNORM and not node.trainable:
        return (
            True,
            FitMode.INFERENCE,
            "frozen (trainable=False): Keras 3 BN uses its moving statistics",
        )
    if node.kind is Kind.BATCHNORM and node.renorm_unclipped:
        return (
            True,
            FitMode.TRAINING,
            "renorm: normalises with the renorm statistics, not the batch's",
        )
    return True, FitMode.TRAINING, ""


def layer_records(m: Measured) -> tuple[LayerRecord, ...]:
    """One record per layer, in the order they ran in the inference pass."""
    out = []
    for node in m.nodes:
        st = m.stats[node.index]
        fit_training, fit_mode, why = _fit_mode(
            node, list(st.fit_training.values()), getattr(m, "fit_call", None)
        )
        called = st.order >= 0
        divergence = st.divergence.relative_l2 if called and st.paired else None
        own = st.own.relative_l2 if node.mode_dependent and called else None
        effect = st.effect.relative_l2 if st.effect is not None else None
        out.append(
            LayerRecord(
                path=node.path,
                class_name=node.class_name,
                kind=node.kind,
                order=st.order,
                depth=node.depth,
                divergence=divergence,
                own_contribution=own,
                output_effect=effect,
                mode_dependent=node.mode_dependent,
                trainable=node.trainable,
                fit_training=fit_training,
                fit_mode=fit_mode,
                fit_mode_reason=why,
                calls=st.calls,
                caller_training=node.caller_training,
            )
        )
    out.sort(key=lambda r: (r.order < 0, r.order))
    return tuple(out)


def batchnorm_records(m: Measured) -> tuple[BatchNormRecord, ...]:
    """The audit of every BN layer that ran, in call order."""
    recs = []
    for node in m.nodes:
        if node.kind is not Kind.BATCHNORM:
            continue
        st = m.stats[node.index]
        if st.moments is None or not st.moments.halves:
            continue
        got = [v for v in st.fit_training.values() if v is not None]
        uses_batch = (any(bool(v) for v in got) and node.trainable) if got else False
        # Renorm without clipping: training mode normalises with the renorm
        # statistics, (x - renorm_mean) / renorm_stddev, never the batch's own.
        if node.renorm_unclipped:
            uses_batch = False
        recs.append(audit_layer(m.bn_params[node.index], st.moments, st.order, uses_batch))
    recs.sort(key=lambda r: r.order)
    return tuple(recs)


def output_gap(m: Measured) -> OutputGap:
    """The output gap overall and per named output."""
    per = tuple(
        GapEntry(name, acc.relative_l2, acc.max_abs, acc.top1_agreement)
        for name, acc in m.per_output
    )
    return OutputGap(m.output.relative_l2, m.output.max_abs, m.output.top1_agreement, per)
