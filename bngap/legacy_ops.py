"""Keras 2's TF-op layers (`TFOpLambda`, `SlicingOpLambda`) for Keras 3.

Keras 2 recorded a raw TensorFlow call on a Keras tensor (`x / 255.0`,
`a + b`, `tf.concat`, `x[:, 1:]`, MobileNetV3's hard-swish) as a layer naming
the function, e.g. ``{"class_name": "TFOpLambda", "config": {"function":
"math.truediv"}}``. Keras 3 has no such class and refuses the file. These
layers run the named function again. In safe mode only pure tensor math is
resolved (an allowlist below), so a file cannot name `tf.io.write_file`;
`--unsafe` resolves any `tf.` function.

`bngap.loading` rewrites the nodes first (see `rewrite_op_nodes`): Keras 2
wrote a tensor passed by keyword (`a + b` is `add(a, y=b)`) as a reference
that Keras 3 would pass on as a plain list, so such tensors become extra
inputs and the layer's config says which keyword each one fills.
"""

from __future__ import annotations

import re
from typing import Any

OP_CLASSES = ("TFOpLambda", "SlicingOpLambda")

# Namespaces and functions of pure tensor math: nothing here reads or writes
# files, runs Python, or talks to the outside.
SAFE_PREFIXES = ("math.", "nn.", "__operators__.", "linalg.", "signal.", "bitwise.")
SAFE_FUNCTIONS = frozenset({
    "concat", "reshape", "transpose", "expand_dims", "squeeze", "stack", "unstack", "split",
    "cast", "clip_by_value", "tile", "pad", "gather", "gather_nd", "where", "maximum", "minimum",
    "ones_like", "zeros_like", "shape", "identity", "broadcast_to", "repeat", "reverse", "einsum",
    "matmul", "norm", "one_hot", "range", "fill", "slice", "strided_slice", "roll", "sort",
    "argsort", "size", "rank", "boolean_mask", "reduce_sum", "reduce_mean", "reduce_max",
    "reduce_min", "reduce_prod", "abs", "sqrt", "exp", "square", "sigmoid", "tanh", "clip_by_norm",
    "image.resize", "image.rgb_to_grayscale", "image.grayscale_to_rgb", "compat.v1.transpose",
    "compat.v1.squeeze", "compat.v1.gather", "searchsorted", "convert_to_tensor", "add_n",
})


_PUBLIC = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class UnsafeOpError(ValueError):
    pass


def resolve(function: str, *, unsafe: bool) -> Any:
    """The TensorFlow function a Keras 2 TF-op layer names."""
    import tensorflow as tf

    parts = function.split(".")
    # No private or dunder attributes (the classic way out of a name allowlist),
    # except TensorFlow's own `__operators__` namespace.
    plain = all(_PUBLIC.match(p) or (i == 0 and p == "__operators__") for i, p in enumerate(parts))
    if not unsafe and not (plain and (function in SAFE_FUNCTIONS or function.startswith(SAFE_PREFIXES))):
        raise UnsafeOpError(
            f"the model calls tf.{function}, which safe mode does not run (only tensor math is "
            "allowed); pass --unsafe if you trust the file")
    target: Any = tf
    for part in parts:
        target = getattr(target, part, None)
        if target is None:
            raise UnsafeOpError(f"the model calls tf.{function}, which this TensorFlow does not have")
    if not callable(target) or isinstance(target, type):
        raise UnsafeOpError(f"the model names tf.{function}, which is not a TensorFlow function")
    if not unsafe and not str(getattr(target, "__module__", "")).startswith("tensorflow"):
        raise UnsafeOpError(f"the model names tf.{function}, which is not a TensorFlow function")
    return target


def _slice(spec):
    if isinstance(spec, dict) and set(spec) <= {"start", "stop", "step"}:
        return slice(spec.get("start"), spec.get("stop"), spec.get("step"))
    if spec in ("...", "Ellipsis"):
        return Ellipsis
    if isinstance(spec, list):
        return tuple(_slice(s) for s in spec)
    return spec  # an int, or None (tf.newaxis)


def layer_classes(unsafe: bool) -> dict[str, type]:
    """The Keras 3 stand-ins, keyed by the Keras 2 class names."""
    from .runtime import import_keras

    keras = import_keras()

    class TFOpLambda(keras.layers.Layer):
        """Runs the TensorFlow function a Keras 2 TF-op layer recorded."""

        def __init__(self, function: str, tensor_kwargs=(), first_arg_count=None, **kwargs):
            super().__init__(**kwargs)
            self.function = function
            self.tensor_kwargs = list(tensor_kwargs)
            self.first_arg_count = first_arg_count
            self._fn = resolve(function, unsafe=unsafe)

        def call(self, inputs, **kwargs):
            kwargs.pop("name", None)
            if self.tensor_kwargs:
                inputs = list(inputs)
                n = len(inputs) - len(self.tensor_kwargs)
                kwargs.update(zip(self.tensor_kwargs, inputs[n:]))
                inputs = inputs[0] if self.first_arg_count is None else inputs[:n]
            if "slice_spec" in kwargs:  # SlicingOpLambda: x[spec]
                return self._fn(inputs, _slice(kwargs.pop("slice_spec")))
            return self._fn(inputs, **kwargs)

        def get_config(self):
            return {**super().get_config(), "function": self.function,
                    "tensor_kwargs": self.tensor_kwargs, "first_arg_count": self.first_arg_count}

    class SlicingOpLambda(TFOpLambda):
        pass

    return {"TFOpLambda": TFOpLambda, "SlicingOpLambda": SlicingOpLambda}


def _is_ref(v) -> bool:
    return (isinstance(v, list) and len(v) >= 3 and isinstance(v[0], str)
            and isinstance(v[1], int) and isinstance(v[2], int))


def rewrite_op_nodes(entry: dict) -> None:
    """Rewrites one TF-op layer entry's inbound nodes into the form Keras 3's
    legacy loader understands (a list of input references per node, tensors
    passed by keyword among them)."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        return
    tensor_kwargs: list[str] | None = None
    first_arg_count: int | None = None
    rewritten = []
    for node in nodes:
        refs = [node] if _is_ref(node) else list(node)
        single = _is_ref(node) or len(refs) == 1
        kwargs = dict(refs[-1][3]) if len(refs[-1]) > 3 and isinstance(refs[-1][3], dict) else {}
        extra = [k for k, v in kwargs.items() if _is_ref(v)]
        new_refs = [list(r[:3]) for r in refs] + [list(kwargs.pop(k)[:3]) for k in extra]
        for r in new_refs:
            r.append(kwargs)
        rewritten.append(new_refs)
        tensor_kwargs = extra
        first_arg_count = None if single else len(refs)
    entry["inbound_nodes"] = rewritten
    entry["config"]["tensor_kwargs"] = tensor_kwargs or []
    entry["config"]["first_arg_count"] = first_arg_count
