"""Sums in closed form instead of comparisons of two full-size outputs. A
BatchNormalization layer's own contribution: which layers and calls it
holds for, and the two sums themselves, from the batch moments the layer
computed in its training-mode call (the probe catches them from the
layer's `_moments`) instead of a second, inference-mode call. And the
divergence of a layer that only moves its inputs' values (`REARRANGING`):
the sums of its inputs' divergences."""

from __future__ import annotations

from typing import Any

from . import backend
from .layertree import LayerNode
from .reductions import _channels_last, squares_total
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
    """A layer whose own contribution `bn_own_total` gives exactly: Keras'
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


def own_total(keras, node: LayerNode, args, kwargs, out, moments: Any):
    """[||t - r||^2, ||r||^2] of the layer's training-mode call that gave
    `out`, from the (mean, variance) it computed; a layer that computed
    none (not trainable: it normalized with its moving statistics) gave r
    itself."""
    if moments is None:
        sq = squares_total(keras, out)
        return keras.ops.stack([sq * 0.0, sq])
    x = args[0] if args else kwargs.get("inputs")
    return bn_own_total(keras.ops, node.layer, x, *moments)


def bn_own_total(ops, layer, x, mean, variance):
    """[||t - r||^2, ||r||^2] of a BatchNormalization layer's training-mode
    output t on input x against its inference-mode output r on the same x,
    without computing r. Per channel both are affine in x:
    t = a_t (x - mean) + beta and r = a_i (x - m) + beta, with a_t =
    gamma / sqrt(variance + eps) from the batch moments the layer computed
    (`mean`, `variance`) and a_i = gamma / sqrt(v + eps) from its moving
    ones (m, v). With S = sum (x - mean)^2 and N values per channel:
    ||t - r||^2 = sum (a_t - a_i)^2 S + N a_i^2 (mean - m)^2 and
    ||r||^2 = sum a_i^2 S + N (a_i (mean - m) + beta)^2: every term is a
    square, so nothing cancels. S is N times the layer's own variance
    where the backend computes it around the mean (TensorFlow's
    `tf.nn.moments`, JAX's `jnp.var`: no pass over x at all); PyTorch's is
    E[x^2] - E[x]^2, so there S is summed around the mean here."""
    x, _ = _channels_last(ops, x, layer.axis)
    x2 = ops.reshape(x, (-1, x.shape[-1]))
    n = ops.cast(ops.shape(x2)[0], "float32")  # a tensor where the batch size is unknown (traced)
    if backend.active() in ("tensorflow", "jax"):
        s = n * variance
    else:
        s = backend.sum_squared_difference(x2, mean[None, :], axis=0)
    eps = float(layer.epsilon)
    a_t = ops.rsqrt(variance + eps)
    a_i = ops.rsqrt(ops.cast(layer.moving_variance, "float32") + eps)
    if layer.scale:
        gamma = ops.cast(layer.gamma, "float32")
        a_t, a_i = a_t * gamma, a_i * gamma
    shift = a_i * (mean - ops.cast(layer.moving_mean, "float32"))  # t's mean less r's
    r_mean = shift + ops.cast(layer.beta, "float32") if layer.center else shift
    da = a_t - a_i
    diff = ops.sum(da * da * s) + n * ops.sum(shift * shift)
    return ops.stack([diff, ops.sum(a_i * a_i * s) + n * ops.sum(r_mean * r_mean)])
