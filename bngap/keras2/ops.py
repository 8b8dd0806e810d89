"""Keras 2's TF-op layers (`TFOpLambda`, `SlicingOpLambda`) for Keras 3.

Keras 2 recorded a raw TensorFlow call on a Keras tensor (`x / 255.0`,
`a + b`, `tf.concat`, `x[:, 1:]`, MobileNetV3's hard-swish) as a layer naming
the function, e.g. ``{"class_name": "TFOpLambda", "config": {"function":
"math.truediv"}}``. Keras 3 has no such class and refuses the file. These
layers run the named function again. In safe mode only pure tensor math is
resolved (an allowlist below), so a file cannot name `tf.io.write_file`;
`--unsafe` resolves any `tf.` function.

`bngap.keras2.nodes` rewrites the nodes first (`rewrite_op_nodes`): the first
argument stays an input (a constant, as in `1.0 - x`, moves to the config);
tensors passed by keyword (`a + b` is `add(a, y=b)`) arrive as one flat list
and the constant keywords live in the config (`template` / `fill`), because
Keras refuses call arguments that mix tensors and constants.
"""

from __future__ import annotations

import inspect
import re
import types
from typing import Any

OP_CLASSES = ("TFOpLambda", "SlicingOpLambda")

# Namespaces and functions of pure tensor math: nothing here reads or writes
# files, runs Python, or talks to the outside.
SAFE_PREFIXES = ("math.", "nn.", "__operators__.", "linalg.", "signal.", "bitwise.")
SAFE_FUNCTIONS = frozenset(
    {
        "concat",
        "reshape",
        "transpose",
        "expand_dims",
        "squeeze",
        "stack",
        "unstack",
        "split",
        "cast",
        "clip_by_value",
        "tile",
        "pad",
        "gather",
        "gather_nd",
        "where",
        "maximum",
        "minimum",
        "ones_like",
        "zeros_like",
        "shape",
        "identity",
        "broadcast_to",
        "repeat",
        "reverse",
        "einsum",
        "matmul",
        "norm",
        "one_hot",
        "range",
        "fill",
        "slice",
        "strided_slice",
        "roll",
        "sort",
        "argsort",
        "size",
        "rank",
        "boolean_mask",
        "reduce_sum",
        "reduce_mean",
        "reduce_max",
        "reduce_min",
        "reduce_prod",
        "abs",
        "sqrt",
        "exp",
        "square",
        "sigmoid",
        "tanh",
        "clip_by_norm",
        "image.resize",
        "image.rgb_to_grayscale",
        "image.grayscale_to_rgb",
        "searchsorted",
        "convert_to_tensor",
        "add_n",
        "stop_gradient",
        "sequence_mask",
        "ensure_shape",
        "image.extract_patches",
    }
)  # Keras 2 records some of these under compat.v1. (tf.shape is compat.v1.shape): allowed too


_PUBLIC = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class UnsafeOpError(ValueError):
    pass


def resolve(function: str, *, unsafe: bool) -> Any:
    """The TensorFlow function a Keras 2 TF-op layer names."""
    from ..backend import import_tensorflow

    tf = import_tensorflow()

    parts = function.split(".")
    # No private or dunder attributes (the classic way out of a name allowlist),
    # except TensorFlow's own `__operators__` namespace.
    plain = all(_PUBLIC.match(p) or (i == 0 and p == "__operators__") for i, p in enumerate(parts))
    base = function[len("compat.v1.") :] if function.startswith("compat.v1.") else function
    allowed = base in SAFE_FUNCTIONS or base.startswith(SAFE_PREFIXES)
    refused = UnsafeOpError(
        f"the model calls tf.{function}, which safe mode does not run (only tensor "
        "math is allowed); pass --unsafe if you trust the file"
    )
    if not unsafe and not (plain and allowed):
        raise refused
    target: Any = tf
    for i, part in enumerate(parts):
        if i and not unsafe and not isinstance(target, types.ModuleType):
            # Through a class (tf.nn.RNNCellDropoutWrapper.from_config) lies old
            # Keras deserialisation without safe mode: only modules may be walked.
            raise refused
        target = getattr(target, part, None)
        if target is None:
            raise UnsafeOpError(
                f"the model calls tf.{function}, which this TensorFlow does not have"
            )
    if not callable(target) or isinstance(target, type):
        raise UnsafeOpError(f"the model names tf.{function}, which is not a TensorFlow function")
    function_ = inspect.isfunction(target) or inspect.isbuiltin(target)
    if not unsafe and not (
        function_ and str(getattr(target, "__module__", "")).startswith("tensorflow")
    ):
        raise refused
    return target


def _slice(spec: Any) -> Any:
    if isinstance(spec, dict) and set(spec) <= {"start", "stop", "step"}:
        return slice(spec.get("start"), spec.get("stop"), spec.get("step"))
    if spec in ("...", "Ellipsis"):
        return Ellipsis
    if isinstance(spec, list):
        return tuple(_slice(s) for s in spec)
    return spec  # an int, or None (tf.newaxis)


def layer_classes(unsafe: bool) -> dict[str, type]:
    """The Keras 3 stand-ins, keyed by the Keras 2 class names."""
    from ..backend import import_keras

    keras = import_keras()

    class TFOpLambda(keras.layers.Layer):  # type: ignore[name-defined]
        """Runs the TensorFlow function a Keras 2 TF-op layer recorded."""

        def __init__(
            self,
            function: str,
            call_kwargs: dict[str, Any] | None = None,
            first_constant: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if keras.backend.backend() != "tensorflow":
                from ..errors import ModelLoadError

                raise ModelLoadError(
                    f"the model has Keras 2 TF-op layers (tf.{function}), which run TensorFlow "
                    f"functions and need the TensorFlow backend; check it with --backend tensorflow. "
                    f"Received: backend={keras.backend.backend()}"
                )
            super().__init__(**kwargs)
            self.function = function
            self.call_kwargs = call_kwargs or {}
            # `1.0 - x`: the first argument is a constant, [value] (Keras only
            # takes tensors positionally, so the keyword tensors come first then)
            self.first_constant = first_constant
            self._fn = resolve(function, unsafe=unsafe)

        def call(self, inputs: Any, bngap_tensors: Any = None, **kwargs: Any) -> Any:
            if self.first_constant is not None:
                inputs, bngap_tensors = self.first_constant[0], inputs
            # Constants live in the config; the tensors among the keyword
            # arguments arrive flat (Keras refuses arguments that mix both).
            kwargs = {**fill(self.call_kwargs, list(bngap_tensors or [])), **kwargs}
            kwargs.pop("name", None)
            if "slice_spec" in kwargs:  # SlicingOpLambda: x[spec]
                return self._fn(inputs, _slice(kwargs.pop("slice_spec")))
            return self._fn(inputs, **kwargs)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "function": self.function,
                "call_kwargs": self.call_kwargs,
                "first_constant": self.first_constant,
            }

    class SlicingOpLambda(TFOpLambda):
        pass

    return {"TFOpLambda": TFOpLambda, "SlicingOpLambda": SlicingOpLambda}


TENSOR_SLOT = "__bngap_tensor__"


def template(value: Any, tensors: list[Any]) -> Any:
    """`value` with each serialized Keras tensor replaced by a numbered slot,
    the tensors appended to `tensors`."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        tensors.append(value)
        return {TENSOR_SLOT: len(tensors) - 1}
    if isinstance(value, list):
        return [template(v, tensors) for v in value]
    if isinstance(value, dict):
        return {k: template(v, tensors) for k, v in value.items()}
    return value


def fill(value: Any, tensors: list[Any]) -> Any:
    """The inverse of `template`, with the real tensors."""
    if isinstance(value, dict) and set(value) == {TENSOR_SLOT}:
        return tensors[value[TENSOR_SLOT]]
    if isinstance(value, list):
        return [fill(v, tensors) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, tensors) for k, v in value.items()}
    return value
