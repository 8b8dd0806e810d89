"""A Keras callback that watches the train-vs-inference gap while training."""

from __future__ import annotations

import sys
from typing import Any

import keras  # the user's Keras, on whichever backend their fit() runs
import numpy as np

from .backend import StateGuard, call_as_trainer, fit_call, no_grad, pack_inputs
from .stats import GapAccumulator


class GapMonitor(keras.callbacks.Callback):
    """Measures the gap between training-mode and inference-mode outputs on a
    held set of samples during `fit()`, and logs it as `bngap_gap`.

    The value appears in Keras' progress line and in `history.history`, and
    in TensorBoard when this callback comes before the TensorBoard callback.
    It never changes training: the BatchNormalization statistics and random
    states that a training-mode pass touches are restored right away.

    Args:
        x: samples to watch (array, or list of arrays for several inputs);
            a few batches from your training data are enough.
        batch_size: batch size of the training-mode pass (use fit()'s).
        warn_above: say so, in plain words, when the gap exceeds this.
        every_n_batches: also measure every N training batches (0: only at
            the end of each epoch).
        stop_above: stop training when the gap exceeds this (None: never).
        recalibrate_at_end: at the end of training, re-estimate every BN
            layer's moving statistics on `x` (as `bngap fix` does), so that
            inference matches what fit() saw.
        verbose: print the warnings (to stdout, after Keras' progress line).

    Example:
        >>> monitor = bngap.GapMonitor(x_train[:256], warn_above=0.1)  # doctest: +SKIP
        >>> model.fit(x_train, y_train, callbacks=[monitor])         # doctest: +SKIP
        >>> monitor.history                                          # doctest: +SKIP
        [(0, 0.83), (1, 0.41), ...]
    """

    def __init__(
        self,
        x: Any,
        *,
        batch_size: int = 32,
        warn_above: float | None = 0.1,
        every_n_batches: int = 0,
        stop_above: float | None = None,
        recalibrate_at_end: bool = False,
        verbose: bool = True,
    ):
        super().__init__()
        self.names = list(x) if isinstance(x, dict) else None
        if isinstance(x, dict):
            self.x = [np.asarray(a) for a in x.values()]
        elif isinstance(x, (list, tuple)):
            self.x = [np.asarray(a) for a in x]
        else:
            self.x = [np.asarray(x)]
        if not len(self.x[0]):
            raise ValueError("GapMonitor needs at least one sample. Received: an empty array")
        self.batch_size = max(1, int(batch_size))
        self.warn_above = warn_above
        self.every_n_batches = int(every_n_batches)
        self.stop_above = stop_above
        self.recalibrate_at_end = recalibrate_at_end
        self.verbose = verbose
        self.history: list[tuple[int, float]] = []
        self.batch_history: list[tuple[int, int, float]] = []
        self._pending: list[str] = []
        self._epoch = 0

    # ------------------------------------------------------------ measuring
    def measure(self) -> float:
        """Relative L2 gap between training- and inference-mode outputs on the
        held samples, with the model called as this backend's fit() and
        evaluate() call it. Every variable and random state a forward pass
        can change is restored (`StateGuard`), so training goes on exactly as
        without the monitor."""
        model = self.model  # on JAX, reading it syncs the trainer's state into the variables
        acc = GapAccumulator()
        n = len(self.x[0])
        forward = self._forward(model)
        # a forward pass changes only non-trainable state (BN statistics, seed generators)
        with StateGuard(model, variables=model.non_trainable_variables) as guard:
            for start in range(0, n, self.batch_size):
                part = [a[start : start + self.batch_size] for a in self.x]
                arg = pack_inputs(keras, model, part, self.names, keyed=self.names is not None)
                ev = forward(arg, False)
                tr = forward(arg, True)
                guard.restore()  # undo the BN update before the next batch
                for t, e in zip(keras.tree.flatten(tr), keras.tree.flatten(ev)):
                    acc.add_arrays(keras.ops.convert_to_numpy(t), keras.ops.convert_to_numpy(e))
        return acc.relative_l2

    def _forward(self, model):
        """The model's forward pass as this backend's trainer runs it, compiled
        where the backend compiles (one trace per mode and shape), so that
        watching costs little next to a training epoch."""
        if getattr(self, "_compiled_for", None) is not model:
            self._compiled = _trainer_forward(model)
            self._compiled_for = model
        return self._compiled

    def _record(self, value: float, logs: dict | None, where: str) -> None:
        if logs is not None:
            logs["bngap_gap"] = value
        if self.warn_above is not None and value > self.warn_above:
            self._pending.append(
                f"bngap: {where}: training-mode and inference-mode outputs differ by {value:.3f} "
                f"(relative L2) on the watched samples, above {self.warn_above:g}. What fit() "
                "reports will not match evaluate() or predict(): BatchNormalization statistics "
                "that lag behind the weights, or dropout. Run `bngap check` on the saved model "
                "for the cause."
            )
        if self.stop_above is not None and value > self.stop_above:
            self.model.stop_training = True
            self._pending.append(
                f"bngap: stopping training: gap {value:.3f} above {self.stop_above:g}"
            )

    def _flush(self) -> None:
        if self.verbose:
            for msg in self._pending:
                sys.stdout.write(msg + "\n")
            sys.stdout.flush()
        self._pending.clear()

    # ------------------------------------------------------------ callbacks
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._flush()  # after the previous epoch's progress line

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_batches and (batch + 1) % self.every_n_batches == 0:
            value = self.measure()
            self.batch_history.append((self._epoch, batch, value))
            self._record(value, logs, f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        value = self.measure()
        self.history.append((epoch, value))
        self._record(value, logs, f"epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._flush()
        if self.recalibrate_at_end:
            from .data import from_arrays
            from .layertree import build_tree
            from .loading import input_specs
            from .reestimation import recalibrate, select_layers

            nodes = build_tree(self.model, keras)
            chosen, _ = select_layers(nodes, None, include_frozen=True)
            if chosen:
                given = (
                    dict(zip(self.names, self.x))
                    if self.names
                    else (self.x if len(self.x) > 1 else self.x[0])
                )
                data = from_arrays(given, None, input_specs(self.model))
                recalibrate(self.model, nodes, chosen, data, keras, batch_size=self.batch_size)
                after = self.measure()
                if self.verbose:
                    sys.stdout.write(
                        f"bngap: re-estimated {len(chosen)} BatchNormalization layers on "
                        f"{len(data)} samples; gap now {after:.3f}\n"
                    )


def _trainer_forward(model):
    """(x, training) -> outputs, calling the model as the installed Keras
    version's trainer does on the active backend (`backend.call_as_trainer`):
    `training` only when the model's `call()` accepts it; on JAX through
    `stateless_call`.

    Compiled where the backend compiles (one trace per mode and shape): the
    monitor runs both modes at every epoch. On JAX the variables' values are
    the jitted function's arguments, read afresh at each call; read inside
    the call, `jax.jit` would freeze them at the first trace."""
    how = fit_call(model)
    if how.stateless:  # JAX
        import jax

        def stateless(trainable, non_trainable, x, training):
            return call_as_trainer(model, x, training, values=(trainable, non_trainable))

        jitted = jax.jit(stateless, static_argnames="training")
        return lambda x, training: jitted(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
            training=training,
        )
    if how.backend == "tensorflow":
        import tensorflow as tf

        def compiled(mode):
            return tf.function(lambda x: call_as_trainer(model, x, mode), reduce_retracing=True)

        fns = {mode: compiled(mode) for mode in (False, True)}
        return lambda x, training: fns[training](x)

    def call(x, training):
        with no_grad():  # torch: a measurement, not a step, so no autograd graph
            return call_as_trainer(model, x, training)

    return call
