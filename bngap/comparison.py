"""One backend's run compared with the first backend's (`--backends`): float
tolerances, a side output read back, what diverged and the first layer where.

Plain numpy on the side outputs that `sideoutput.save_outputs` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .records import BackendRun

# Float tolerance, relative to the largest value of the first backend's
# output: inference mode, and training mode (batch statistics divide by the
# batch's spread, which amplifies rounding: 6e-5 on a ResNet50 at batch 8).
TOLERANCE = {
    "float64": (1e-10, 1e-8),
    "float32": (1e-5, 1e-3),
    "float16": (1e-2, 5e-2),
    "bfloat16": (1e-2, 5e-2),
}
GAP_TOLERANCE = 1e-3  # |gap difference| beyond 1e-3 + 1e-3 * gap


def tolerance(dtype: str | None) -> tuple[float, float]:
    """(inference, training) tolerance for a model computing in `dtype`."""
    return TOLERANCE.get(dtype or "float32", TOLERANCE["float32"])


class SideOutput:
    """One backend's side output, read back."""

    def __init__(self, path: str | Path):
        with np.load(path, allow_pickle=False) as f:
            self.meta = json.loads(str(f["meta"]))
            self.arrays = {k: f[k] for k in f.files if k != "meta"}

    def outputs(self, prefix: str = "output") -> list[np.ndarray]:
        return [
            self.arrays[f"{prefix}/{i}"]
            for i in range(sum(k.startswith(prefix + "/") for k in self.arrays))
        ]

    def layer(self, mode: str, key: str) -> np.ndarray | None:
        return self.arrays.get(f"{mode}/{key}")


def _diff(a_list: list[np.ndarray], b_list: list[np.ndarray], n: int | None = None):
    """(max |a - b|, relative L2 ||a - b|| / ||b||, max |b|) over arrays
    paired in order, in float64, on their first `n` samples."""
    sq_d = sq_b = 0.0
    max_d = max_b = 0.0
    for a, b in zip(a_list, b_list):
        a = np.asarray(a[:n] if n else a, np.float64)
        b = np.asarray(b[:n] if n else b, np.float64)
        if a.shape != b.shape:
            return None, None, None
        d = a - b
        sq_d += float(np.sum(d * d))
        sq_b += float(np.sum(b * b))
        if d.size:
            max_d = max(max_d, float(np.max(np.abs(d))))
            max_b = max(max_b, float(np.max(np.abs(b))))
    rel = (sq_d / sq_b) ** 0.5 if sq_b > 0 else (0.0 if sq_d == 0 else float("inf"))
    return max_d, rel, max_b


def _beyond(max_d: float | None, max_ref: float | None, tol: float) -> bool:
    if max_d is None:
        return True  # shapes differ: nothing agrees
    return max_d > tol * max_ref if max_ref else max_d > 0


def first_divergent(ref: SideOutput, other: SideOutput, tol: tuple[float, float]):
    """(layer path, mode, relative L2) of the first layer call, in the first
    backend's call order, whose output differs beyond tolerance, in the first
    mode whose model outputs do on the first batch (inference, then the pass
    with BN in training mode); or (None, None, None). Rounding differences
    inside a model whose outputs agree are not reported."""
    n = ref.meta.get("first_batch")
    for mode, t, outputs in (
        ("inference", tol[0], "output"),
        ("training", tol[1], "training_output"),
    ):
        max_d, _, max_b = _diff(other.outputs(outputs), ref.outputs(outputs), n)
        if not _beyond(max_d, max_b, t):
            continue
        for key in ref.meta["layers"][mode]:
            a, b = other.layer(mode, key), ref.layer(mode, key)
            if a is None or b is None:
                continue
            max_d, rel, max_b = _diff([a], [b])
            if _beyond(max_d, max_b, t):
                return key.rsplit("#", 1)[0], mode, rel
    return None, None, None


def compare(
    ref: SideOutput, other: SideOutput, ref_report: dict, report: dict, seconds: float | None
) -> BackendRun:
    """`other` backend's run, measured against the first backend's."""
    tol = tolerance(ref.meta.get("compute_dtype"))
    n = min(ref.meta["samples"], other.meta["samples"])
    max_d, rel, _ = _diff(other.outputs(), ref.outputs(), n)
    _, train_rel, _ = _diff(other.outputs("training_output"), ref.outputs("training_output"))
    layer, mode, layer_rel = (
        first_divergent(ref, other, tol) if other is not ref else (None, None, None)
    )
    metrics = report.get("metrics")
    return BackendRun(
        backend=other.meta["backend"],
        version=other.meta.get("version"),
        relative_l2=report["output_gap"]["relative_l2"],
        max_abs_vs_first=max_d,
        relative_l2_vs_first=rel,
        metrics=None if metrics is None else {"train": metrics["train"], "eval": metrics["eval"]},
        first_divergent_layer=layer,
        first_divergent_mode=mode,
        first_divergent_relative_l2=layer_rel,
        first_divergent_class=ref.meta.get("classes", {}).get(layer) if layer else None,
        training_relative_l2_vs_first=train_rel,
        batchnorm_gap=(report.get("groups") or {}).get("batchnorm"),
        compared_samples=n,
        seconds=seconds,
    )


def divergences(
    run: BackendRun, first: BackendRun, ref: SideOutput | None, other: SideOutput | None
) -> list[str]:
    """What of `run` differs from the first backend's beyond tolerance:
    'inference' outputs, 'training' outputs (only BN in training mode), 'gap'."""
    if run.error or ref is None or other is None or run is first:
        return []
    tol = tolerance(ref.meta.get("compute_dtype"))
    out = []
    n = run.compared_samples
    max_d, _, max_b = _diff(other.outputs(), ref.outputs(), n)
    if _beyond(max_d, max_b, tol[0]):
        out.append("inference")
    max_d, _, max_b = _diff(other.outputs("training_output"), ref.outputs("training_output"))
    if _beyond(max_d, max_b, tol[1]):
        out.append("training")
    a, b = run.batchnorm_gap, first.batchnorm_gap
    if a is not None and b is not None and abs(a - b) > GAP_TOLERANCE + GAP_TOLERANCE * abs(b):
        out.append("gap")
    return out


def loss_note(runs: list[BackendRun], diverged: dict[str, list[str]], loss_name: str) -> str | None:
    """Says so when a backend's loss differs from the first's while its
    outputs agree: Keras computes some losses differently per backend, and
    its own evaluate() reports the same numbers."""
    ref = runs[0]
    if not ref.metrics:
        return None
    parts = []
    for mode, what, label in (
        ("eval", "inference", "inference"),
        ("train", "training", "training"),
    ):
        a = ref.metrics[mode].get("loss")
        differ = [
            (r.backend, loss)
            for r in runs[1:]
            if r.metrics
            and a is not None
            and what not in diverged.get(r.backend, [])
            and (loss := r.metrics[mode].get("loss")) is not None
            and abs(loss - a) > GAP_TOLERANCE * abs(a) + 1e-6
        ]
        if differ:
            parts.append(
                f"{label} mode: {a:.4f} on {ref.backend}, "
                + ", ".join(f"{loss:.4f} on {backend}" for backend, loss in differ)
            )
    if not parts:
        return None
    why = "that is how Keras computes the loss on each backend, and evaluate() reports the same"
    if "crossentropy" in loss_name:
        why += (
            ": on TensorFlow the cross-entropy of a softmax or sigmoid output is computed from "
            "the logits behind it, elsewhere from the probabilities clipped at 1e-7, so a "
            "confidently wrong prediction costs at most 16.1 there"
        )
    return f"the loss differs between backends whose outputs agree ({'; '.join(parts)}): {why}"
