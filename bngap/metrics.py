"""Loss and accuracy as fit() and evaluate() compute them, from the model's
compiled losses (or ones inferred from outputs and labels), per output and in
total. Plain numpy, except that a Keras loss is called on the output tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import to_numpy
from .records import Metrics, OutputMetrics
from .stats import binary_threshold, top1


@dataclass(frozen=True)
class CompiledLoss:
    """A multi-output model's compile configuration: `loss` as compile() got
    it (one for all outputs, a list by position or a dict by output name) and
    its `loss_weights` (likewise; None = 1 each)."""

    loss: Any = None
    weights: Any = None


def _output_names(model, count: int) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != count:
        names = [f"output_{i}" for i in range(count)] if count > 1 else ["output"]
    return names


def _is_classes(arr: np.ndarray) -> bool:
    return arr.ndim >= 2 and arr.shape[-1] >= 2


# ------------------------------------------------------------------ metrics
def resolve_loss(keras, loss_id, outputs: np.ndarray, y: np.ndarray) -> tuple[Any, str, str]:
    """(loss callable, name, source). The model's compiled loss when the file
    names one Keras knows; otherwise inferred from the outputs and labels."""
    if isinstance(loss_id, CompiledLoss):
        loss_id = loss_id.loss
    if callable(loss_id):  # a Loss object or a function (the model's own, or the caller's)
        name = getattr(loss_id, "name", None) or getattr(
            loss_id, "__name__", type(loss_id).__name__
        )
        return loss_id, str(name), "compiled"
    named = isinstance(loss_id, str) or (isinstance(loss_id, dict) and "class_name" in loss_id)
    if named:
        try:
            fn = keras.losses.get(loss_id)
            if fn is not None:
                name = getattr(fn, "name", None) or getattr(fn, "__name__", str(loss_id))
                return fn, str(name), "compiled"
        except (ValueError, TypeError):
            pass
    probs = bool(np.all(outputs >= 0) and np.all(outputs <= 1))
    L = keras.losses
    if outputs.ndim >= 2 and outputs.shape[-1] >= 2:
        rows_sum_one = probs and np.allclose(outputs.sum(-1), 1.0, atol=1e-3)
        if (
            y.dtype.kind in "iu"
            or (y.ndim == outputs.ndim - 1)
            or (y.ndim == outputs.ndim and y.shape[-1] == 1)
        ):
            return (
                L.SparseCategoricalCrossentropy(from_logits=not rows_sum_one),
                "sparse_categorical_crossentropy",
                "inferred",
            )
        return (
            L.CategoricalCrossentropy(from_logits=not rows_sum_one),
            "categorical_crossentropy",
            "inferred",
        )
    if set(np.unique(y).tolist()) <= {0, 1}:
        return L.BinaryCrossentropy(from_logits=not probs), "binary_crossentropy", "inferred"
    return L.MeanSquaredError(), "mean_squared_error", "inferred"


def _accuracy(out: np.ndarray, y: np.ndarray, cut: float | None) -> np.ndarray | None:
    """Per-sample correctness for class outputs; None for regression. A
    binary score is cut at `cut` (decided once for both modes)."""
    if out.ndim >= 2 and out.shape[-1] >= 2:
        pred = np.argmax(out, axis=-1)
        if y.shape == out.shape:
            # one-hot (or smoothed) class labels; real-valued targets of the
            # same shape (a box, a vector) are regression: no accuracy
            yf = y.astype(np.float64)
            if not (np.all(yf >= 0) and np.allclose(yf.sum(-1), 1.0, atol=1e-3)):
                return None
            truth = np.argmax(y, axis=-1)
        else:
            if y.size != pred.size or not np.all(np.mod(y, 1) == 0):
                return None  # not class indices
            truth = y.reshape(pred.shape)
        return (pred == truth).astype(np.float64)
    flat = out.reshape(out.shape[0], -1)
    if flat.shape[1] == 1 and set(np.unique(y).tolist()) <= {0, 1}:
        return (top1(flat, cut) == y.reshape(-1).astype(np.int64)).astype(np.float64)
    return None


class _MetricSums:
    """Running sums of one output's per-sample loss and accuracy in both modes
    (`loss`, `acc` keyed by "train"/"eval"; `n` samples so far)."""

    def __init__(self):
        self.loss = {"train": 0.0, "eval": 0.0}
        self.acc = {"train": 0.0, "eval": 0.0}
        self.has_acc = True
        self.n = 0
        self.fn = None
        self.name = ""
        self.source = ""
        self.cut: float | None = None
        self.loss_id: Any = None  # this output's compiled loss, in a multi-output model

    def add(self, keras, loss_id, train, ev, y: np.ndarray) -> None:
        """Adds one batch. `train` and `ev` are the model's output tensors:
        Keras computes a softmax/sigmoid output's cross-entropy from the
        logits the tensor carries, as evaluate() does, so the loss must see
        the tensor, not a numpy copy."""
        if self.fn is None:
            self.fn, self.name, self.source = resolve_loss(keras, loss_id, to_numpy(ev), y)
            # a binary score's reading (probability or logit) is decided once
            self.cut = binary_threshold(to_numpy(ev), to_numpy(train))
        for mode, out in (("train", train), ("eval", ev)):
            val = self.fn(y, out)
            val = float(np.mean(to_numpy(val)))
            self.loss[mode] += val * len(y)
            acc = _accuracy(to_numpy(out), y, self.cut)
            if acc is None:
                self.has_acc = False
            else:
                self.acc[mode] += float(acc.sum())
        self.n += len(y)

    def result(self) -> Metrics | None:
        if not self.n:
            return None
        tr = {"loss": self.loss["train"] / self.n}
        ev = {"loss": self.loss["eval"] / self.n}
        if self.has_acc:
            tr["accuracy"] = self.acc["train"] / self.n
            ev["accuracy"] = self.acc["eval"] / self.n
        return Metrics(train=tr, eval=ev, loss_name=self.name, source=self.source)


def _by_output(value, names: list[str]):
    """compile()'s per-output form (one value for all, a list by position, a
    dict by output name) as one entry per output name."""
    if isinstance(value, dict) and "class_name" not in value:
        return [value.get(n) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            return [None] * len(names)
        return list(value)
    return [value] * len(names)


class OutputMetricSums:
    """Per-output loss and accuracy of a multi-output model, and the total
    loss as evaluate() computes it: the sum of the compiled per-output losses
    times their loss weights (regularisation penalties not included).

    All are per-sample means over the data. evaluate() weights the total by
    batch size too, but averages each output's loss over batches unweighted,
    so with a partial last batch its per-output figures differ slightly."""

    def __init__(self):
        self.sums: dict[str, _MetricSums] = {}
        self.weights: dict[str, float] = {}
        self.names: list[str] = []

    def add(self, keras, loss_id, train: list, ev: list, ys: dict, names: list[str]) -> None:
        if not self.names:
            spec = loss_id if isinstance(loss_id, CompiledLoss) else CompiledLoss(loss_id)
            losses = _by_output(spec.loss, names)
            weights = _by_output(spec.weights, names)
            for name, loss, w in zip(names, losses, weights):
                if name in ys:
                    self.names.append(name)
                    self.sums[name] = _MetricSums()
                    self.sums[name].loss_id = loss
                    self.weights[name] = 1.0 if w is None else float(w)
            if not self.names:
                raise ValueError(f"no labels for any output; outputs are {', '.join(names)}")
        for name, t, e in zip(names, train, ev):
            if name in self.sums:
                s = self.sums[name]
                s.add(keras, s.loss_id, t, e, np.asarray(ys[name]))

    def result(self) -> Metrics | None:
        results = {n: self.sums[n].result() for n in self.names}
        parts = {n: p for n, p in results.items() if p is not None}
        if not parts or len(parts) < len(results):
            return None
        tr = {"loss": sum(self.weights[n] * parts[n].train["loss"] for n in self.names)}
        ev = {"loss": sum(self.weights[n] * parts[n].eval["loss"] for n in self.names)}
        per = tuple(
            OutputMetrics(
                n,
                dict(parts[n].train),
                dict(parts[n].eval),
                parts[n].loss_name,
                parts[n].source,
                self.weights[n],
            )
            for n in self.names
        )
        sources = {p.source for p in parts.values()}
        return Metrics(
            train=tr,
            eval=ev,
            loss_name="weighted sum of per-output losses",
            source="compiled" if sources == {"compiled"} else "inferred",
            per_output=per,
        )
