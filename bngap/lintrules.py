"""The `bngap lint` rules: one function per rule id, each reading the BN
layers' configuration and weights once, as numpy arrays; no forward pass.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .advice.common import bn_count, name_list, verb
from .linting import BatchNormLint, LintFinding, Rule
from .vocabulary import Kind, Severity

TORCH_MOMENTUM = 0.5  # below this a Keras momentum is most likely PyTorch's convention
NEAR_ZERO_SCALE = 1e-6  # variance + epsilon below this: 1/sqrt() amplifies by over 1000
TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: below it, subnormal
# Layers that keep the channel layout of their input: the axis check looks through them.
_PASS_THROUGH_STEPS = 8


def apply_rules(
    model: Any, nodes: list, keras: Any
) -> tuple[list[BatchNormLint], list[LintFinding]]:
    """(each built BN layer as the file says it, the findings of every rule) for a
    model and its layer tree. Reads the weights; changes nothing."""
    bns = [_read(n) for n in nodes if n.kind is Kind.BATCHNORM and n.layer.built]
    findings: list[LintFinding] = []
    findings += _never_updated(bns)
    findings += _momentum(bns)
    findings += _bad_variance(bns)
    findings += _epsilon(bns)
    findings += _axis_mismatch(bns, keras)
    findings += _renorm(bns)
    findings += _frozen_base(nodes, keras)
    findings += _call_without_training(model, nodes)
    findings += _mode_dependent(nodes)
    return [_summary(b) for b in bns], findings


def _initial_constant(init) -> float | None:
    from .backend import initializer_constant

    return initializer_constant(init)


@dataclass
class _BN:
    """One BN layer's numbers, read once."""

    path: str
    layer: Any
    mean: np.ndarray
    var: np.ndarray
    rank: int | None


def _read(node) -> _BN:
    layer = node.layer
    mean = np.asarray(layer.moving_mean.numpy(), dtype=np.float64).ravel()
    var = np.asarray(layer.moving_variance.numpy(), dtype=np.float64).ravel()
    spec = getattr(layer, "input_spec", None)
    rank = getattr(spec, "ndim", None) if spec is not None else None
    return _BN(node.path, layer, mean, var, rank)


def _summary(b: _BN) -> BatchNormLint:
    finite = b.var[np.isfinite(b.var)]
    means = np.abs(b.mean[np.isfinite(b.mean)])
    layer = b.layer
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    return BatchNormLint(
        path=b.path,
        trainable=bool(layer.trainable),
        momentum=float(layer.momentum),
        epsilon=float(layer.epsilon),
        axis=axis,
        channels=int(b.var.size),
        variance_min=float(finite.min()) if finite.size else None,
        variance_max=float(finite.max()) if finite.size else None,
        mean_abs_max=float(means.max()) if means.size else None,
        renorm=bool(getattr(layer, "renorm", False)),
        renorm_clipping=dict(getattr(layer, "renorm_clipping", None) or {}),
    )


def _never_updated(bns: list[_BN]) -> list[LintFinding]:
    hits = []
    for b in bns:
        m0 = _initial_constant(b.layer.moving_mean_initializer)
        v0 = _initial_constant(b.layer.moving_variance_initializer)
        if m0 is None or v0 is None or b.var.size == 0:
            continue
        if np.all(b.mean == m0) and np.all(b.var == v0):
            hits.append((b, m0, v0))
    if not hits:
        return []
    b, m0, v0 = hits[0]
    paths = [h[0].path for h in hits]
    everyone = len(hits) == len(bns)
    return [
        LintFinding(
            Rule.NEVER_UPDATED,
            Severity.FAIL,
            paths[0],
            f"{bn_count(len(hits))} ({name_list(paths)}) "
            f"{verb(len(hits), 'still holds', 'still hold')} the exact initial moving "
            f"statistics (mean {m0:g}, variance {v0:g} in every channel): they were never updated. "
            "In inference mode (evaluate(), predict()) they normalise with these constants instead "
            "of the data's statistics"
            + (
                ", so the model was most likely never trained in training mode, or its statistics "
                "were never saved."
                if everyone
                else "."
            ),
            "Train with the BatchNormalization layers in training mode (a custom loop must call "
            "model(x, training=True)), or re-estimate the statistics on representative data: "
            "bngap fix MODEL DATA -o fixed.keras.",
            tuple(paths),
            {"initial_mean": m0, "initial_variance": v0},
        )
    ]


def _momentum(bns: list[_BN]) -> list[LintFinding]:
    out = []
    torch = [b for b in bns if float(b.layer.momentum) < TORCH_MOMENTUM]
    if torch:
        ms = sorted({float(b.layer.momentum) for b in torch})
        m = ms[0]
        out.append(
            LintFinding(
                Rule.MOMENTUM_TORCH_CONVENTION,
                Severity.WARN,
                torch[0].path,
                f"{bn_count(len(torch))} ({name_list(b.path for b in torch)}) "
                f"{verb(len(torch), 'has', 'have')} momentum "
                f"{', '.join(f'{v:g}' for v in ms)}. In Keras momentum is the weight of the old value "
                "(moving = momentum * moving + (1 - momentum) * batch), so the moving statistics "
                f"follow the last batch or two; PyTorch's momentum={m:g} is the weight of the new "
                f"value, the Keras equivalent of momentum={1 - m:g}. Typical of a ported model.",
                f"Use momentum = 1 - (PyTorch momentum), e.g. {1 - m:g}, or the Keras default 0.99.",
                tuple(b.path for b in torch),
                {"momenta": ms},
            )
        )
    stuck = [b for b in bns if not float(b.layer.momentum) < 1.0]
    if stuck:
        trainable = [b for b in stuck if b.layer.trainable]
        out.append(
            LintFinding(
                Rule.MOMENTUM_ONE,
                Severity.FAIL if trainable else Severity.WARN,
                stuck[0].path,
                f"{bn_count(len(stuck))} ({name_list(b.path for b in stuck)}) "
                f"{verb(len(stuck), 'has', 'have')} momentum "
                f"{', '.join(sorted({f'{float(b.layer.momentum):g}' for b in stuck}))}: the moving "
                "statistics never move towards the data's (at momentum 1 they keep their old value; "
                "above 1 they diverge), "
                + (
                    "so inference mode normalises with whatever they hold while training mode uses each "
                    "batch's statistics."
                    if trainable
                    else "so they will not follow the data if the layers are ever unfrozen. They are frozen "
                    "(trainable=False) now: both modes normalise with the stored statistics."
                ),
                "Set momentum below 1 (the Keras default is 0.99) and re-estimate the statistics: "
                "bngap fix MODEL DATA -o fixed.keras.",
                tuple(b.path for b in stuck),
                {"momenta": sorted({float(b.layer.momentum) for b in stuck})},
            )
        )
    return out


def _bad_variance(bns: list[_BN]) -> list[LintFinding]:
    bad, odd = [], []
    counts: dict[str, dict[str, int]] = {}
    for b in bns:
        c = {
            "not_finite": int(
                np.count_nonzero(~np.isfinite(b.var)) + np.count_nonzero(~np.isfinite(b.mean))
            ),
            "negative": int(np.count_nonzero(b.var < 0)),
            "zero": int(np.count_nonzero(b.var == 0)),
            "subnormal": int(np.count_nonzero((b.var != 0) & (np.abs(b.var) < TINY))),
        }
        if c["not_finite"] or c["negative"]:
            bad.append(b)
        elif c["zero"] or c["subnormal"]:
            odd.append(b)
        if any(c.values()):
            counts[b.path] = {k: v for k, v in c.items() if v}
    out = []

    def describe(group):
        return "; ".join(
            f"{b.path}: "
            + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts[b.path].items())
            for b in group[:3]
        ) + (f"; and {len(group) - 3} more layers" if len(group) > 3 else "")

    if bad:
        out.append(
            LintFinding(
                Rule.BAD_VARIANCE,
                Severity.FAIL,
                bad[0].path,
                f"{bn_count(len(bad))} {verb(len(bad), 'has', 'have')} moving statistics that "
                f"cannot normalise: {describe(bad)} "
                "channels (a negative or non-finite variance makes the inference output NaN or "
                "meaningless). Training went numerically wrong, or the weights were converted badly.",
                "Re-estimate the statistics on representative data (bngap fix MODEL DATA -o "
                "fixed.keras), and look for the overflow or the faulty conversion that produced them.",
                tuple(b.path for b in bad),
                {"channels": {b.path: counts[b.path] for b in bad}},
            )
        )
    if odd:
        out.append(
            LintFinding(
                Rule.BAD_VARIANCE,
                Severity.WARN,
                odd[0].path,
                f"{bn_count(len(odd))} {verb(len(odd), 'has', 'have')} a moving variance of zero or subnormal (below "
                f"{TINY:.3g}) in some channels: {describe(odd)}. Unless those channels' inputs are "
                "constant (dead channels), inference mode divides their spread by sqrt(epsilon) and "
                "amplifies it.",
                "Check what feeds those channels; re-estimate the statistics on representative data "
                "(bngap fix MODEL DATA -o fixed.keras).",
                tuple(b.path for b in odd),
                {"channels": {b.path: counts[b.path] for b in odd}},
            )
        )
    return out


def _epsilon_effect(eps: float, low: float | None, broken: bool) -> str:
    if broken:
        return "1 / sqrt(variance + epsilon) is infinite (a division by zero) in some channels."
    if low is not None and low + eps < NEAR_ZERO_SCALE:
        return (
            f"1 / sqrt(variance + epsilon) reaches {1 / math.sqrt(low + eps):.3g}, so tiny "
            "input differences become large output differences."
        )
    return (
        "nothing guards the division: a channel whose variance reaches zero (a dead "
        "channel, or statistics re-estimated on constant inputs) divides by zero."
    )


def _epsilon(bns: list[_BN]) -> list[LintFinding]:
    hits = []
    for b in bns:
        eps = float(b.layer.epsilon)
        finite = b.var[np.isfinite(b.var)]
        low = float(finite.min()) if finite.size else None
        if eps <= 0 or (low is not None and low + eps < NEAR_ZERO_SCALE and eps < NEAR_ZERO_SCALE):
            hits.append((b, eps, low))
    if not hits:
        return []
    broken = [h for h in hits if h[2] is not None and h[2] + h[1] <= 0]
    b, eps, low = (broken or hits)[0]
    return [
        LintFinding(
            Rule.EPSILON_TOO_SMALL,
            Severity.FAIL if broken else Severity.WARN,
            b.path,
            f"{bn_count(len(hits))} ({name_list(h[0].path for h in hits)}) "
            f"{verb(len(hits), 'has', 'have')} epsilon {eps:g}"
            + (f" and a smallest moving variance of {low:.3g}" if low is not None else "")
            + ": "
            + _epsilon_effect(eps, low, bool(broken)),
            "Use an epsilon of 1e-5 to 1e-3 (the Keras default is 1e-3; keras.applications use 1e-3 "
            "or 1.001e-5).",
            tuple(h[0].path for h in hits),
            {
                "epsilon": {h[0].path: h[1] for h in hits},
                "variance_min": {h[0].path: h[2] for h in hits},
            },
        )
    ]


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


def _axis_mismatch(bns: list[_BN], keras) -> list[LintFinding]:
    hits = []
    for b in bns:
        axis = b.layer.axis
        if not isinstance(axis, int) or b.rank is None or b.rank < 2:
            continue
        prod = _producer(b.layer, keras)
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


def _renorm(bns: list[_BN]) -> list[LintFinding]:
    hits = [
        b
        for b in bns
        if getattr(b.layer, "renorm", False)
        and not any(
            v is not None for v in (getattr(b.layer, "renorm_clipping", None) or {}).values()
        )
    ]
    if not hits:
        return []
    apart = {}
    for b in hits:
        rm = getattr(b.layer, "renorm_mean", None)
        rs = getattr(b.layer, "renorm_stddev", None)
        if rm is None or rs is None:
            continue
        std = np.sqrt(np.maximum(b.var, 0) + float(b.layer.epsilon))
        d = np.abs(np.asarray(rm.numpy(), np.float64).ravel() - b.mean) / std
        r = np.abs(np.log2(np.maximum(np.asarray(rs.numpy(), np.float64).ravel(), 1e-30) / std))
        apart[b.path] = float(max(d.max(initial=0.0), r.max(initial=0.0)))
    return [
        LintFinding(
            Rule.RENORM_UNCLIPPED,
            Severity.WARN,
            hits[0].path,
            f"{bn_count(len(hits))} ({name_list(b.path for b in hits)}) "
            f"{verb(len(hits), 'uses', 'use')} batch renormalization "
            "without clipping (renorm_clipping empty). Then training mode normalises with the renorm "
            "statistics (renorm_mean, renorm_stddev) and inference mode with the moving ones "
            "(moving_mean, moving_variance), never with the batch's own: when those are stale, fit() "
            "and evaluate() are wrong alike and show no gap, and re-estimating only the moving "
            "statistics makes the two modes disagree.",
            "Give renorm_clipping bounds (e.g. {'rmax': 3, 'rmin': 1/3, 'dmax': 5}) or use plain "
            "BatchNormalization; to repair statistics, re-estimate all of them together (bngap fix "
            "MODEL DATA -o fixed.keras does).",
            tuple(b.path for b in hits),
            {"renorm_vs_moving": apart},
        )
    ]


def _weighted_leaves(node) -> list:
    out, stack = [], list(node.children)
    while stack:
        n = stack.pop()
        if n.children:
            stack.extend(n.children)
        elif n.layer.weights:
            out.append(n)
    return out


def _frozen_base(nodes, keras) -> list[LintFinding]:
    hits: list[str] = []
    bases: list[str] = []
    for node in nodes:
        if not isinstance(node.layer, keras.Model):
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


def _call_without_training(model, nodes) -> list[LintFinding]:
    has_arg = getattr(model, "_call_has_training_arg", None)
    if has_arg is None:
        try:
            has_arg = "training" in inspect.signature(model.call).parameters
        except (TypeError, ValueError):
            return []
    if has_arg:
        return []
    dependent = [n for n in nodes if n.mode_dependent and n.kind is not Kind.CUSTOM_TRAINING_ARG]
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


def _mode_dependent(nodes) -> list[LintFinding]:
    kinds = (Kind.DROPOUT, Kind.NOISE, Kind.AUGMENTATION, Kind.RECURRENT)
    hits = [n for n in nodes if n.mode_dependent and n.kind in kinds]
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
