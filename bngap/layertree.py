"""The model's layer tree: every layer at every depth with a `/` path, and
what (if anything) makes its output depend on the `training` flag."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .audit import BatchNormParams
from .vocabulary import Kind

# Image preprocessing layers that change nothing between modes.
_DETERMINISTIC_IMAGE_LAYERS = {
    "Resizing",
    "CenterCrop",
    "AutoContrast",
    "Equalization",
    "MaxNumBoundingBoxes",
    "CLAHE",
}
_MIXING_AUGMENTATIONS = {"AugMix", "RandAugment", "CutMix", "MixUp", "Solarization"}


@dataclass(eq=False)
class LayerNode:
    """One layer instance in the tree (a shared instance appears once).

    `layer` is the live Keras layer, for the forward passes; the other fields
    are plain data read when the tree is built, so that analysis can work on
    hand-built nodes.
    """

    path: str
    layer: Any
    depth: int
    kind: Kind
    mode_dependent: bool
    parent: LayerNode | None = None
    children: list[LayerNode] = field(default_factory=list)
    index: int = 0  # position in the tree walk
    takes_training: bool = False  # its call() accepts `training`
    opaque: bool = False  # we do not look inside it (RNN cells)
    class_name: str = ""  # the layer's class, e.g. "BatchNormalization"
    trainable: bool = True  # layer.trainable when the tree was built
    # `training` written where it or an enclosing sub-model was called into a
    # graph (`base(x, training=False)`); Keras 3 may override it in fit().
    caller_training: bool | None = None
    renorm_unclipped: bool = False  # BN renorm without clipping: same output in both modes


def _children(layer: Any) -> list[Any]:
    from .backend import child_layers

    return list(child_layers(layer))


def is_keras_builtin(layer: Any) -> bool:
    return type(layer).__module__.startswith(("keras.", "keras_hub.", "keras_cv.", "keras_nlp."))


def _takes_training(layer: Any) -> bool:
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def classify(layer: Any, keras: Any) -> tuple[Kind, bool]:
    """(kind, mode_dependent) of one layer."""
    L = keras.layers
    if isinstance(layer, L.BatchNormalization):
        return Kind.BATCHNORM, True
    if isinstance(layer, (L.Dropout, L.AlphaDropout, L.GaussianDropout)):
        return Kind.DROPOUT, float(getattr(layer, "rate", 1.0) or 0.0) > 0.0
    if isinstance(layer, L.GaussianNoise):
        return Kind.NOISE, float(getattr(layer, "stddev", 1.0) or 0.0) > 0.0
    if isinstance(layer, L.RNN):
        cell = getattr(layer, "cell", None)
        rates = [
            getattr(cell, "dropout", 0.0) or 0.0,
            getattr(cell, "recurrent_dropout", 0.0) or 0.0,
        ]
        return Kind.RECURRENT, any(float(r) > 0 for r in rates)
    if isinstance(layer, L.Attention) or type(layer).__name__ == "AdditiveAttention":
        return Kind.DROPOUT, float(getattr(layer, "dropout", 0.0) or 0.0) > 0.0
    name = type(layer).__name__
    from .backend import image_preprocessing_base

    image_base = image_preprocessing_base()
    if (image_base and isinstance(layer, image_base)) or (
        is_keras_builtin(layer) and name.startswith("Random")
    ):
        if name in _DETERMINISTIC_IMAGE_LAYERS:
            return Kind.OTHER, False
        if name.startswith("Random") or name in _MIXING_AUGMENTATIONS:
            return Kind.AUGMENTATION, True
        return Kind.OTHER, False
    if (
        not is_keras_builtin(layer)
        and _takes_training(layer)
        and not isinstance(layer, keras.Model)
    ):
        return Kind.CUSTOM_TRAINING_ARG, True
    return Kind.OTHER, False


def _declared_training(layer: Any) -> bool | None:
    """The `training` value a functional graph passes this layer by name."""
    for node in getattr(layer, "_inbound_nodes", None) or []:
        kwargs = getattr(getattr(node, "arguments", None), "kwargs", None) or {}
        if kwargs.get("training") is not None:
            return bool(kwargs["training"])
    return None


def _renorm_unclipped(layer: Any) -> bool:
    clip = getattr(layer, "renorm_clipping", None) or {}
    return bool(getattr(layer, "renorm", False)) and not any(v is not None for v in clip.values())


def build_tree(model: Any, keras: Any) -> list[LayerNode]:
    """All layers below `model` in depth-first order, each instance once.

    Paths join layer names with '/'. Input layers are skipped (they compute
    nothing); RNN cells are not entered (they run inside a compiled loop).
    """
    nodes: list[LayerNode] = []
    seen: set[int] = set()

    def visit(layer: Any, prefix: str, depth: int, parent: LayerNode | None) -> None:
        for child in _children(layer):
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            seen.add(id(child))
            kind, dep = classify(child, keras)
            path = f"{prefix}{child.name}"
            node = LayerNode(
                path=path,
                layer=child,
                depth=depth,
                kind=kind,
                mode_dependent=dep,
                parent=parent,
                index=len(nodes),
                takes_training=_takes_training(child),
                opaque=isinstance(child, keras.layers.RNN),
                class_name=type(child).__name__,
                trainable=bool(child.trainable),
                renorm_unclipped=kind is Kind.BATCHNORM and _renorm_unclipped(child),
            )
            declared = _declared_training(child)
            node.caller_training = (
                declared
                if declared is not None
                else (parent.caller_training if parent is not None else None)
            )
            nodes.append(node)
            if parent is not None:
                parent.children.append(node)
            if not node.opaque:
                visit(child, path + "/", depth + 1, node)

    visit(model, "", 0, None)
    # A custom container's mode dependence may live in its children only.
    for node in nodes:
        if node.kind is Kind.CUSTOM_TRAINING_ARG and node.children:
            node.mode_dependent = True
    return nodes


def bn_params(node: LayerNode) -> BatchNormParams:
    """A BN layer's parameters and settings as numpy, read from the live layer."""
    from .backend import initializer_constant, to_numpy

    layer = node.layer

    def arr(v: Any) -> Any:  # None stays None
        return None if v is None else np.asarray(to_numpy(v), dtype=np.float64)

    return BatchNormParams(
        path=node.path,
        gamma=arr(getattr(layer, "gamma", None)),
        beta=arr(getattr(layer, "beta", None)),
        moving_mean=arr(layer.moving_mean),
        moving_variance=arr(layer.moving_variance),
        epsilon=float(layer.epsilon),
        momentum=float(layer.momentum),
        trainable=bool(layer.trainable),
        axis=int(layer.axis),
        renorm=bool(getattr(layer, "renorm", False)),
        synchronized=bool(getattr(layer, "synchronized", False)),
        init_mean=initializer_constant(layer.moving_mean_initializer),
        init_variance=initializer_constant(layer.moving_variance_initializer),
        renorm_mean=arr(getattr(layer, "renorm_mean", None)),
        renorm_stddev=arr(getattr(layer, "renorm_stddev", None)),
    )
