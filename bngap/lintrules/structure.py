"""Lint rules on the structure around the layers.

A BN axis against the layout of the layer feeding it, trainable BN layers in a
frozen base, a call() without `training`, and layers mode-dependent by design.
"""

from __future__ import annotations

import inspect

from ..advice.common import bn_count, name_list, verb
from ..layertree import LayerNode
from ..linting import LintFinding, Rule
from ..vocabulary import Kind, Severity
from .subject import Subject

# The axis check looks upstream through at most this many layers that keep the channel layout.
_PASS_THROUGH_STEPS = 8


def _producer(layer, keras):
    """The layer that decides the channel layout of `layer`'s input: the
    nearest upstream layer with a `data_format` (convolutions, pooling) or a
    Dense-like layer (channels last), looking through single-input layers."""
    current = layer
    for _ in range(_PASS_THROUGH_STEPS):
        nodes = getattr(current, "_inbound_nodes", None) or []
        if not nodes:
            return None
        tensors = list(getattr(nodes[0], "input_tensors", None) or [])
        if not tensors:
            return None
        history = getattr(tensors[0], "_keras_history", None)
        op = getattr(history, "operation", None)
        if op is None or isinstance(op, keras.layers.InputLayer):
            return None
        if isinstance(op, keras.Model):  # a nested model's output: its own last layer decides
            return None
        if getattr(op, "data_format", None) in ("channels_last", "channels_first"):
            return op
        if isinstance(op, (keras.layers.Dense, keras.layers.EinsumDense)):
            return op
        if not _keeps_layout(op, history, keras):
            return None  # it moves or regroups axes: the layout upstream says nothing
        current = op
    return None


def _keeps_layout(op, history, keras) -> bool:
    """Whether `op` leaves its input's axes where they were (activations,
    dropout, elementwise merges), judged by the node that made the tensor:
    same shape in and out, and not an axis permutation."""
    if isinstance(op, (keras.layers.Permute, keras.layers.Reshape)):
        return False
    if isinstance(op, keras.layers.Concatenate):
        return True  # joins along one axis, moves none (DenseNet's BN inputs)
    try:
        node = op._inbound_nodes[history.node_index]
        shape_in = tuple(node.input_tensors[0].shape)
        shape_out = tuple(node.output_tensors[0].shape)
    except (AttributeError, IndexError, TypeError):
        return False
    return shape_in == shape_out


def axis_mismatch(s: Subject) -> list[LintFinding]:
    """`axis_mismatch`: a BN axis that is not the channel axis of the layer feeding it."""
    hits = []
    for b in s.batchnorm:
        axis = b.layer.axis
        if not isinstance(axis, int) or b.rank is None or b.rank < 2:
            continue
        prod = _producer(b.layer, s.keras)
        if prod is None:
            continue
        fmt = getattr(prod, "data_format", "channels_last")
        channel = 1 if fmt == "channels_first" else b.rank - 1
        if axis % b.rank != channel:
            hits.append((b, prod, channel))
    if not hits:
        return []
    b, prod, channel = hits[0]
    assert b.rank is not None  # hits holds only layers of known rank
    fmt = getattr(prod, "data_format", "channels_last")
    return [
        LintFinding(
            Rule.AXIS_MISMATCH,
            Severity.FAIL,
            b.path,
            f"{bn_count(len(hits))} ({name_list(h[0].path for h in hits)}) "
            f"{verb(len(hits), 'normalises', 'normalise')} over another axis than the channels of the "
            f"layer feeding {verb(len(hits), 'it', 'them')}: {b.path} has axis={b.layer.axis} on a "
            f"rank-{b.rank} input, but {prod.name} ({type(prod).__name__}, {fmt}) puts its channels on "
            f"axis {channel}. Statistics are then kept per position along axis "
            f"{b.layer.axis % b.rank} instead of per channel: a common porting slip ("
            + (
                "the Keras default axis=-1 left on a channels_first model)."
                if fmt == "channels_first"
                else "axis=1 from a channels-first model)."
            ),
            f"Set axis={-1 if channel == b.rank - 1 else channel} (the channel axis) and retrain or "
            "re-estimate the statistics.",
            tuple(h[0].path for h in hits),
            {
                "axes": {
                    h[0].path: {
                        "axis": h[0].layer.axis,
                        "channel_axis": h[2],
                        "producer": h[1].name,
                    }
                    for h in hits
                }
            },
        )
    ]


def _weighted_leaves(node: LayerNode) -> list[LayerNode]:
    out, stack = [], list(node.children)
    while stack:
        n = stack.pop()
        if n.children:
            stack.extend(n.children)
        elif n.layer.weights:
            out.append(n)
    return out


def trainable_bn_in_frozen_base(s: Subject) -> list[LintFinding]:
    """`trainable_bn_in_frozen_base`: trainable BN layers inside a sub-model
    whose other weighted layers are all frozen."""
    hits: list[str] = []
    bases: list[str] = []
    for node in s.nodes:
        if not isinstance(node.layer, s.keras.Model):
            continue
        leaves = _weighted_leaves(node)
        others = [n for n in leaves if n.kind is not Kind.BATCHNORM]
        bns = [n for n in leaves if n.kind is Kind.BATCHNORM and n.layer.trainable]
        if others and bns and not any(n.layer.trainable for n in others):
            bases.append(node.path)
            hits.extend(n.path for n in bns if n.path not in hits)
    if not hits:
        return []
    return [
        LintFinding(
            Rule.TRAINABLE_BN_IN_FROZEN_BASE,
            Severity.WARN,
            hits[0],
            f"{bn_count(len(hits))} ({name_list(hits)}) {verb(len(hits), 'is', 'are')} trainable inside "
            f"{name_list(bases)}, whose other weighted layers are all frozen. In Keras 3 fit() runs a "
            "trainable BN layer in training mode: these layers normalise each batch by its own "
            "statistics and overwrite the pretrained moving statistics while the base is meant to "
            "stay fixed.",
            "Freeze them too (set base.trainable = False after any per-layer changes, or "
            "layer.trainable = False on each BatchNormalization layer): a frozen BN layer stays in "
            "inference mode in fit(). Passing training=False to the base does not hold inside a "
            "functional model in Keras 3.",
            tuple(hits),
            {"bases": bases},
        )
    ]


def call_without_training(s: Subject) -> list[LintFinding]:
    """`call_without_training`: a model whose call() takes no `training`, so
    fit() runs its mode-dependent layers in inference mode."""
    model = s.model
    has_arg = getattr(model, "_call_has_training_arg", None)
    if has_arg is None:
        try:
            has_arg = "training" in inspect.signature(model.call).parameters
        except (TypeError, ValueError):
            return []
    if has_arg:
        return []
    dependent = [n for n in s.nodes if n.mode_dependent and n.kind is not Kind.CUSTOM_TRAINING_ARG]
    if not dependent:
        return []
    bn = [n.path for n in dependent if n.kind is Kind.BATCHNORM and n.layer.trainable]
    return [
        LintFinding(
            Rule.CALL_WITHOUT_TRAINING,
            Severity.WARN,
            dependent[0].path,
            f"{type(model).__name__}.call() has no `training` argument, so fit() calls the model "
            f"without one and its {len(dependent)} mode-dependent "
            f"{verb(len(dependent), 'layer', 'layers')} ({name_list(n.path for n in dependent)}) "
            "run in inference mode during training"
            + (": the BatchNormalization statistics are never updated by fit()" if bn else "")
            + ". A direct model(x, training=True) behaves differently from fit().",
            "Add `training=None` to the model's call() signature and pass it to the layers that "
            "take it.",
            tuple(n.path for n in dependent),
            {"class_name": type(model).__name__},
        )
    ]


def mode_dependent_layers(s: Subject) -> list[LintFinding]:
    """`mode_dependent_layers` (info): layers that compute something else in
    training mode by design (dropout, noise, augmentation, recurrent)."""
    kinds = (Kind.DROPOUT, Kind.NOISE, Kind.AUGMENTATION, Kind.RECURRENT)
    hits = [n for n in s.nodes if n.mode_dependent and n.kind in kinds]
    if not hits:
        return []
    by_kind: dict[str, list[str]] = {}
    for n in hits:
        by_kind.setdefault(n.kind.value, []).append(n.path)
    listed = "; ".join(f"{k}: {name_list(v)}" for k, v in by_kind.items())
    return [
        LintFinding(
            Rule.MODE_DEPENDENT_LAYERS,
            Severity.INFO,
            hits[0].path,
            f"{len(hits)} {verb(len(hits), 'layer computes', 'layers compute')} something different in "
            f"training mode ({listed}): expect "
            "fit()'s metrics to differ from evaluate()'s on the same data. That gap is by design.",
            "Nothing to fix. To compare like with like, run model.evaluate() on the training data "
            "after fit(); `bngap check MODEL DATA` measures the gap each layer causes.",
            tuple(n.path for n in hits),
            {"kinds": by_kind},
        )
    ]
