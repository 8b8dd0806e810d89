"""The one adapter for Keras internals and the backends' differences.

Each submodule owns one part: `selection` (choosing and importing the
backend), `tensors`, `calls` (how the trainer calls a model), `devices`,
`state` (the state guard and seeds) and `internals` (private `keras.src`
names). Importing this package imports no Keras or backend: they are
imported inside the functions that need them.
"""

from __future__ import annotations

from .calls import FitCall, call_as_fit, call_as_trainer, fit_call, has_own_logic
from .devices import device_names, placed
from .internals import (
    child_layers,
    context_training,
    image_preprocessing_base,
    initializer_constant,
    keras_message,
)
from .selection import (
    BACKENDS,
    active,
    environment,
    import_keras,
    import_tensorflow,
    installed,
    library_version,
    requested_backend,
    select_backend,
)
from .state import (
    StateGuard,
    keep_random,
    put_back_random,
    seed_state,
    seed_values,
    seed_variables,
    set_seeds,
    tf_generator_seed,
)
from .tensors import (
    dense,
    fetch_all,
    is_floating,
    no_grad,
    numpy_outputs,
    pack_inputs,
    pair_sums,
    sum_squared_difference,
    sum_squares,
    to_numpy,
    tracing,
)

# the names probe.py imports
_keras_message = keras_message
_context_training = context_training
_initializer_constant = initializer_constant

__all__ = [
    "BACKENDS",
    "FitCall",
    "StateGuard",
    "active",
    "call_as_fit",
    "call_as_trainer",
    "child_layers",
    "context_training",
    "device_names",
    "environment",
    "fit_call",
    "has_own_logic",
    "image_preprocessing_base",
    "import_keras",
    "import_tensorflow",
    "initializer_constant",
    "installed",
    "is_floating",
    "keep_random",
    "keras_message",
    "library_version",
    "no_grad",
    "put_back_random",
    "pack_inputs",
    "pair_sums",
    "fetch_all",
    "placed",
    "requested_backend",
    "seed_state",
    "seed_values",
    "seed_variables",
    "select_backend",
    "set_seeds",
    "tf_generator_seed",
    "sum_squared_difference",
    "sum_squares",
    "numpy_outputs",
    "dense",
    "to_numpy",
    "tracing",
]
