"""How the installed Keras' trainer calls a model on the active backend (`fit()`, `evaluate()`)."""

from __future__ import annotations

from dataclasses import dataclass

from .selection import import_keras


@dataclass(frozen=True)
class FitCall:
    """How the installed Keras' `train_step` calls this model on this backend
    (`keras/src/backend/*/trainer.py`)."""

    backend: str
    model_class: str
    passes_training: bool  # the model's call() accepts `training`: fit() passes training=True
    stateless: bool  # JAX: through model.stateless_call(...)

    @property
    def expression(self) -> str:
        args = "x, training=True" if self.passes_training else "x"
        if self.stateless:
            return f"model.stateless_call(trainable, non_trainable, {args})"
        return f"model({args})"


def fit_call(model) -> FitCall:
    """Describes how `fit()` calls `model` (see `call_as_fit`)."""
    keras = import_keras()
    name = keras.backend.backend()
    return FitCall(
        backend=name,
        model_class=type(model).__name__,
        passes_training=bool(getattr(model, "_call_has_training_arg", True)),
        stateless=name == "jax",
    )


def call_as_trainer(model, x, training: bool, values=None):
    """Calls `model` on `x` exactly as the installed Keras' trainer does on the
    active backend: as `train_step` with `training=True`, as `test_step` and
    `predict_step` with False. The `training` argument is passed only when
    the model's `call()` accepts it (`_call_has_training_arg`); on JAX the
    call goes through `stateless_call`, whose handling of the call context
    differs from a plain call, with `values=(trainable, non_trainable)` when
    given, else the variables' current values.

    Side effects: on TensorFlow and PyTorch, the same as the trainer's
    forward pass (in training mode BN moving statistics, seed states); on JAX
    none (the new state is dropped, as bngap restores it anyway).
    """
    keras = import_keras()
    kwargs = {"training": training} if getattr(model, "_call_has_training_arg", True) else {}
    if keras.backend.backend() == "jax":
        if values is None:  # read here: a caller that jit-compiles passes them as arguments
            values = (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
            )
        trainable, non_trainable = values
        out, _ = model.stateless_call(trainable, non_trainable, x, **kwargs)
        return out
    return model(x, **kwargs)


def call_as_fit(model, x):
    """Calls `model` on `x` exactly as the installed Keras' `train_step` does
    on the active backend (`call_as_trainer` with training=True).

    Side effects: on TensorFlow and PyTorch, the same as fit()'s forward pass
    (BN moving statistics, seed states); on JAX none.
    """
    return call_as_trainer(model, x, True)


def has_own_logic(model, keras) -> bool:
    """A subclassed model whose own call() takes `training` may branch on it
    outside any layer bngap can see."""
    from keras.src.models.functional import Functional

    if isinstance(model, (Functional, keras.Sequential)):
        return False
    import inspect

    try:
        return "training" in inspect.signature(model.call).parameters
    except (TypeError, ValueError):
        return False
