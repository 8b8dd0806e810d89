"""The model's layer tree: every layer at every depth with a `/` path, and
what (if anything) makes its output depend on the `training` flag."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from .results import Kind

# Image preprocessing layers that change nothing between modes.
_DETERMINISTIC_IMAGE_LAYERS = {
    "Resizing", "CenterCrop", "AutoContrast", "Equalization", "MaxNumBoundingBoxes", "CLAHE",
}
_MIXING_AUGMENTATIONS = {"AugMix", "RandAugment", "CutMix", "MixUp", "Solarization"}


@dataclass(eq=False)
class LayerNode:
    """One layer instance in the tree (a shared instance appears once)."""

    path: str
    layer: Any
    depth: int
    kind: Kind
    mode_dependent: bool
    parent: "LayerNode | None" = None
    children: list = field(default_factory=list)
    index: int = 0                  # position in the tree walk
    takes_training: bool = False    # its call() accepts `training`
    opaque: bool = False            # we do not look inside it (RNN cells)

    @property
    def class_name(self) -> str:
        return type(self.layer).__name__



def _children(layer) -> list:
    from .backend import child_layers

    return child_layers(layer)


def _is_keras_builtin(layer) -> bool:
    return type(layer).__module__.startswith(("keras.", "keras_hub.", "keras_cv.", "keras_nlp."))


def _takes_training(layer) -> bool:
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def classify(layer, keras) -> tuple[Kind, bool]:
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
        rates = [getattr(cell, "dropout", 0.0) or 0.0, getattr(cell, "recurrent_dropout", 0.0) or 0.0]
        return Kind.RECURRENT, any(float(r) > 0 for r in rates)
    if isinstance(layer, L.Attention) or type(layer).__name__ == "AdditiveAttention":
        return Kind.DROPOUT, float(getattr(layer, "dropout", 0.0) or 0.0) > 0.0
    name = type(layer).__name__
    from .backend import image_preprocessing_base

    BaseImagePreprocessingLayer = image_preprocessing_base()
    if (BaseImagePreprocessingLayer and isinstance(layer, BaseImagePreprocessingLayer)) or (
        _is_keras_builtin(layer) and name.startswith("Random")
    ):
        if name in _DETERMINISTIC_IMAGE_LAYERS:
            return Kind.OTHER, False
        if name.startswith("Random") or name in _MIXING_AUGMENTATIONS:
            return Kind.AUGMENTATION, True
        return Kind.OTHER, False
    if not _is_keras_builtin(layer) and _takes_training(layer) and not isinstance(layer, keras.Model):
        return Kind.CUSTOM_TRAINING_ARG, True
    return Kind.OTHER, False


def build_tree(model, keras) -> list[LayerNode]:
    """All layers below `model` in depth-first order, each instance once.

    Paths join layer names with '/'. Input layers are skipped (they compute
    nothing); RNN cells are not entered (they run inside a compiled loop).
    """
    nodes: list[LayerNode] = []
    seen: set[int] = set()

    def visit(layer, prefix: str, depth: int, parent: LayerNode | None):
        for child in _children(layer):
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            seen.add(id(child))
            kind, dep = classify(child, keras)
            path = f"{prefix}{child.name}"
            node = LayerNode(path=path, layer=child, depth=depth, kind=kind, mode_dependent=dep,
                             parent=parent, index=len(nodes), takes_training=_takes_training(child),
                             opaque=isinstance(child, keras.layers.RNN))
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
