"""The state a forward pass can change (`StateGuard`), and the seeds of random layers."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .selection import import_keras
from .tensors import to_numpy


class StateGuard:
    """Snapshot of the state a forward pass can change, restored on demand
    and on exit: every model variable, variables that custom layers hold
    without Keras tracking them (TensorFlow), the states of stateful RNN
    layers (untracked too), and the global random
    generators (Keras' and TensorFlow's) that layers without a seed generator
    of their own draw from. Keras' training-mode call mutates BN moving
    statistics and seed-generator states; this guard makes `check` leave them
    bit-identical.

    `variables` may be given instead of a model's (a callback snapshots only
    the non-trainable ones).
    """

    def __init__(self, model, layers=(), variables=None):
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        keras = import_keras()
        self.backend = keras.backend.backend()
        self.variables = list(model.variables if variables is None else variables)
        tracked = {id(v) for v in self.variables}
        if self.backend == "tensorflow":
            import tensorflow as tf

            for layer in layers:  # raw tf.Variables in custom layers
                for value in list(vars(layer).values()):
                    if isinstance(value, tf.Variable) and id(value) not in tracked:
                        tracked.add(id(value))
                        self.variables.append(value)
        for v in _rnn_states(model, layers):  # untracked by Keras, written by every call
            if id(v) not in tracked:
                tracked.add(id(v))
                self.variables.append(v)
        self._had_keras_generator = (
            global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR) is not None
        )
        self.keras_generator = seed_generator.global_seed_generator()
        if id(self.keras_generator.state) not in tracked:
            self.variables.append(self.keras_generator.state)
        self.tf_generator = None
        self.torch_rng = None
        if self.backend == "tensorflow":
            import tensorflow as tf

            self.tf_generator = tf.random.get_global_generator()
            self.tf_generator_state = np.array(self.tf_generator.state.numpy(), copy=True)
        elif self.backend == "torch":  # unseeded Dropout draws from torch's global generators
            import torch

            self.torch_rng = (
                torch.get_rng_state(),
                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            )
        self.saved = [kept_value(v) for v in self.variables]
        self.mutable = [
            i for i, v in enumerate(self.variables) if not getattr(v, "trainable", False)
        ]

    def restore(self, everything: bool = False, skip: frozenset[int] = frozenset()) -> None:
        """Puts back what a pass may have written (`everything`: every
        variable); `skip`: indices of variables the caller put back itself."""
        idx = range(len(self.variables)) if everything else self.mutable
        for i in idx:
            if i not in skip:
                self.variables[i].assign(self.saved[i])
        if self.tf_generator is not None:
            self.tf_generator.reset(self.tf_generator_state)
        if self.torch_rng is not None:
            import torch

            torch.set_rng_state(self.torch_rng[0])
            if self.torch_rng[1] is not None:
                torch.cuda.set_rng_state_all(self.torch_rng[1])

    def adopt_changed(self) -> None:
        """Trainable variables a training-mode pass wrote (SpectralNormalization
        sets its kernel) are put back now and after every later pass, as the
        non-trainable ones are. Called once, after the first training pass."""
        fixed = set(self.mutable)
        for i, v in enumerate(self.variables):
            if i not in fixed and not np.array_equal(
                _in_place(kept_value(v)), _in_place(self.saved[i]), equal_nan=True
            ):
                v.assign(self.saved[i])
                self.mutable.append(i)

    def commit(self) -> None:
        """Makes the current values the ones restored (`fix` changes BN statistics on purpose)."""
        self.saved = [kept_value(v) for v in self.variables]

    def close(self) -> None:
        """Restores everything and leaves no global generator that was not there."""
        self.restore(everything=True)
        if not self._had_keras_generator:
            from keras.src.backend.common import global_state
            from keras.src.random import seed_generator

            global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def kept_value(v):
    """A variable's value now, held so that later writes leave it as it is,
    as the backend's own tensor (restored with one `assign`, no numpy round
    trip) and without a copy where the backend allows one to be skipped:
    a TensorFlow read is a snapshot (a write to a variable whose buffer is
    still read elsewhere goes to a new buffer), a JAX array never changes.
    PyTorch writes parameters in place, so there it is a copy, as it is for
    anything else."""
    name = import_keras().backend.backend()
    try:
        if name == "tensorflow":
            inner = getattr(v, "value", None)  # a Keras variable's tf.Variable; tf's own: a method
            read: Any = inner if hasattr(inner, "read_value") else v
            return read.read_value()
        if name == "jax":
            return v.value
        if name == "torch":
            return v.value.detach().clone()
    except Exception:  # a variable of another kind: its value as numpy
        pass
    return np.array(to_numpy(v), copy=True)


def _in_place(value) -> np.ndarray:
    """A kept value as numpy, read where it is when it is in host memory (a
    TensorFlow or JAX CPU tensor, a torch CPU tensor: no copy), else copied
    to the host."""
    try:
        got = np.asarray(value)
    except Exception:  # a torch tensor on an accelerator
        return to_numpy(value)
    return got if got.dtype != object else to_numpy(value)


def _rnn_states(model, layers) -> list:
    """The state variables of stateful RNN layers (`stateful=True`): Keras
    keeps them out of `model.variables`, and each call of the layer writes
    them, in either mode."""
    try:
        below = list(model._flatten_layers(include_self=False, recursive=True))
    except Exception:  # a model whose tracking cannot be read: the layers given
        below = []
    out = []
    for layer in [*layers, *below]:
        states = getattr(layer, "states", None) if getattr(layer, "stateful", False) else None
        if states is not None:
            out += [v for v in import_keras().tree.flatten(states) if hasattr(v, "assign")]
    return out


def seed_variables(model, guard: StateGuard | None = None) -> list:
    """The seed-generator states that random layers draw from, in a fixed
    order: the model's own, then Keras' global generator (when guarded)."""
    out = [v for v in model.variables if "seed_generator_state" in getattr(v, "path", v.name)]
    if guard is not None:
        out.append(guard.keras_generator.state)
    return out


def seed_state(seed: int, index: int, batch_index: int) -> list[int]:
    """The state given to seed variable `index` for batch `batch_index`:
    derived from `--seed` only, so runs (and backends) repeat each other."""
    base = zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF
    return [base, batch_index * 100003]


def seed_values(variables: list, seed: int, batch_index: int) -> list[np.ndarray]:
    """What `set_seeds` gives each seed variable, for a graph that sets them itself."""
    return [
        np.array(seed_state(seed, i, batch_index), dtype=v.dtype) for i, v in enumerate(variables)
    ]


def tf_generator_seed(seed: int, batch_index: int) -> int:
    """The seed `set_seeds` gives TensorFlow's global generator."""
    return zlib.crc32(f"{seed}:tf:{batch_index}".encode())


def keep_random(variables: list) -> list:
    """What a call may draw from, read now, for `put_back_random`: these
    seed-generator states and the backend's global generator (torch's, which
    Keras' unseeded dropout draws from; TensorFlow's). The lockstep pass puts
    back what a layer's inference call drew (an RNN draws its dropout masks
    in either mode), as the classic structure's `set_seeds` does."""
    keras = import_keras()
    kept: list = [(v.assign, kept_value(v)) for v in variables]
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        generator = tf.random.get_global_generator()
        kept.append((generator.reset, kept_value(generator.state)))
    elif name == "torch":
        import torch

        kept.append((torch.set_rng_state, torch.get_rng_state()))
        if torch.cuda.is_available():
            kept.append((torch.cuda.set_rng_state_all, torch.cuda.get_rng_state_all()))
    return kept


def put_back_random(kept: list) -> None:
    """Writes back what `keep_random` read."""
    for put, value in kept:
        put(value)


def set_seeds(variables: list, seed: int, batch_index: int) -> None:
    """Same random masks in every training-like pass of one batch, new ones
    for the next batch, all derived from `seed`: the seed-generator states,
    and the backend's global generator that some ops draw from (TensorFlow's;
    torch's, which Keras' unseeded Dropout uses). `StateGuard` restores them.
    """
    for v, value in zip(variables, seed_values(variables, seed, batch_index)):
        v.assign(value)
    name = import_keras().backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.random.get_global_generator().reset_from_seed(tf_generator_seed(seed, batch_index))
    elif name == "torch":
        import torch

        torch.manual_seed(zlib.crc32(f"{seed}:torch:{batch_index}".encode()))
