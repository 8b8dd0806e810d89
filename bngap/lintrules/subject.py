"""What the lint rules read, once: the model, its layer tree, each BN layer's numbers.

Also the per-layer summary (`BatchNormLint`) the lint report lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layertree import LayerNode
from ..linting import BatchNormLint
from ..vocabulary import Kind


@dataclass(frozen=True)
class BNLayer:
    """One BN layer's numbers, read once: moving statistics (flat, float64)
    and the rank its input spec declares (None when it declares none)."""

    path: str
    layer: Any
    mean: np.ndarray
    var: np.ndarray
    rank: int | None


@dataclass(frozen=True)
class Subject:
    """Everything a rule may look at: the loaded model, every node of its
    layer tree, its built BN layers in call order, and the Keras module."""

    model: Any
    nodes: list[LayerNode]
    batchnorm: tuple[BNLayer, ...]
    keras: Any


def read_subject(model: Any, nodes: list[LayerNode], keras: Any) -> Subject:
    """The subject of a lint: reads every built BN layer's weights; changes nothing."""
    bns = tuple(_read(n) for n in nodes if n.kind is Kind.BATCHNORM and n.layer.built)
    return Subject(model, nodes, bns, keras)


def _read(node: LayerNode) -> BNLayer:
    layer = node.layer
    mean = np.asarray(layer.moving_mean.numpy(), dtype=np.float64).ravel()
    var = np.asarray(layer.moving_variance.numpy(), dtype=np.float64).ravel()
    spec = getattr(layer, "input_spec", None)
    rank = getattr(spec, "ndim", None) if spec is not None else None
    return BNLayer(node.path, layer, mean, var, rank)


def summary(b: BNLayer) -> BatchNormLint:
    """What the file says about one BN layer, as the report lists it."""
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
