"""Sums in closed form instead of comparisons of two full-size outputs. A
BatchNormalization layer's own contribution: which layers and calls it
holds for, what the pass hands back (the batch moments the layer computed
in its training-mode call, caught from its `_moments`) and the two sums
made of them on the host when the pass settles, instead of a second,
inference-mode call. And the divergence of a layer that only moves its
inputs' values (`REARRANGING`): the sums of its inputs' divergences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend
from .layertree import LayerNode
from .reductions import _channels_last
from .vocabulary import Kind

# Keras layers whose output holds their inputs' values, moved, and zeros: a
# pair's [||t - r||^2, ||r||^2] is the sum of their inputs' pairs
REARRANGING = (
    "Concatenate",
    "Flatten",
    "Reshape",
    "Permute",
    "Identity",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
)


def rearranging(node: LayerNode, keras) -> bool:
    """Keras' own layer (not a subclass) of a kind in `REARRANGING`."""
    cls = type(node.layer)
    return cls.__name__ in REARRANGING and cls is getattr(keras.layers, cls.__name__, None)


def layer_inputs(keras, args, kwargs) -> list:
    """A layer call's input tensors, in order."""
    return keras.tree.flatten(args[0] if args else kwargs.get("inputs"))


def closed_form_ok(node: LayerNode, keras) -> bool:
    """A layer whose own contribution `own_pair` gives exactly: Keras'
    own BatchNormalization (not a subclass, whose call may differ) computing
    in float32, without renorm (its output is not the plain affine map of
    the batch moments) or synchronized moments."""
    layer = node.layer
    return (
        node.kind is Kind.BATCHNORM
        and type(layer) is keras.layers.BatchNormalization
        and not getattr(layer, "renorm", False)
        and not getattr(layer, "synchronized", False)
        and getattr(layer, "compute_dtype", None) == "float32"
        and callable(getattr(layer, "_moments", None))
    )


def call_ok(args, kwargs) -> bool:
    """Whether a call of an eligible layer (`closed_form_ok`) gets the
    closed form: no mask (it weights the moments), a float32 input."""
    if kwargs.get("mask") is not None:
        return False
    x = args[0] if args else kwargs.get("inputs")
    return "float32" in str(getattr(x, "dtype", ""))


def moment_rows(ops, layer, x, mean, variance) -> tuple[float, Any]:
    """(per, rows): what `own_pair` computes the layer's own contribution
    from on the host, in float64. `rows`, a tuple of (channels,) tensors on
    the device (`reductions.fetch` joins them): the batch moments
    the layer computed (mean, variance); on PyTorch also S = sum (x -
    mean)^2 per channel (its variance is E[x^2] - E[x]^2, so S is summed
    around the mean here); where the number of values per channel is not
    known now (a traced pass: the batch size), that number as a last row.
    `per` is that number where known, else 0 (nothing batch-dependent is
    kept outside the rows, as a compiled pass reuses what it recorded)."""
    rows = [mean, variance]
    if backend.active() == "torch":
        x2, _ = _channels_last(ops, x, layer.axis)
        x2 = ops.reshape(x2, (-1, x2.shape[-1]))
        rows.append(backend.sum_squared_difference(x2, mean[None, :], axis=0))
    rank = len(x.shape)
    dims = [i for i in range(rank) if i != layer.axis % rank]  # the axes reduced over
    if all(x.shape[i] is not None for i in dims):
        return float(np.prod([x.shape[i] for i in dims])), tuple(rows)
    shape, count = ops.shape(x), ops.ones_like(mean)
    for i in dims:
        count = count * ops.cast(shape[i], "float32")
    return 0.0, (*rows, count)


@dataclass(frozen=True)
class Moving:
    """What a BN layer's inference-mode output is computed from, in float64
    (its scale and offset None where the layer has none)."""

    epsilon: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    variance: np.ndarray


def own_pair(per: float, rows: np.ndarray, p: Moving) -> np.ndarray:
    """[||t - r||^2, ||r||^2] of a BatchNormalization layer's training-mode
    output t on its input x against its inference-mode output r on the same
    x, without computing r, in float64 from `moment_rows`' rows and the
    parameters the pass used (`p`). Per channel both are affine in x:
    t = a_t (x - mean) + beta and r = a_i (x - m) + beta, with a_t =
    gamma / sqrt(variance + eps) from the batch moments the layer computed
    and a_i = gamma / sqrt(v + eps) from its moving ones (m, v). With S =
    sum (x - mean)^2 and N values per channel: ||t - r||^2 = sum (a_t -
    a_i)^2 S + N a_i^2 (mean - m)^2 and ||r||^2 = sum a_i^2 S + N (a_i
    (mean - m) + beta)^2: every term is a square, so nothing cancels. S is
    N times the layer's own variance where the backend computes it around
    the mean (TensorFlow's `tf.nn.moments`, JAX's `jnp.var`)."""
    v = np.asarray(rows, np.float64)
    n = per or float(v[-1][0])
    mean, variance = v[0], v[1]
    s = v[2] if len(v) - (0 if per else 1) == 3 else n * variance
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a_t, a_i = 1.0 / np.sqrt(variance + p.epsilon), 1.0 / np.sqrt(p.variance + p.epsilon)
        if p.gamma is not None:
            a_t, a_i = a_t * p.gamma, a_i * p.gamma
        shift = a_i * (mean - p.mean)  # t's mean less r's
        r_mean = shift + p.beta if p.beta is not None else shift
        da = a_t - a_i
        diff = np.sum(da * da * s) + n * np.sum(shift * shift)
        return np.array([diff, np.sum(a_i * a_i * s) + n * np.sum(r_mean * r_mean)])
