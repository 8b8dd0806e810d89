"""Testing input-preprocessing hypotheses on the first BN layers: if a
standard transform of the input makes their statistics match, the input was
most likely not preprocessed the way the model was trained."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .audit import WARN_GAP, clean_gap, compare_channels, local_gap, noise_of_gap
from .data import Dataset
from .layertree import LayerNode
from .records import BatchNormRecord, PreprocessingProbe
from .vocabulary import Kind, Severity

FIRST_LAYERS = 3
PROBE_SAMPLES = 64
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def candidate_transforms(x: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Transforms worth trying for inputs with x's range (name -> function)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    rgb = x.ndim >= 3 and x.shape[-1] == 3
    out = {}
    if hi > 2.0 and lo >= -1e-6:  # looks like 0..255 pixels
        out["x / 255"] = lambda a: a / 255.0
        out["x / 127.5 - 1"] = lambda a: a / 127.5 - 1.0
        if rgb:
            out["caffe: BGR, minus ImageNet mean"] = lambda a: a[..., ::-1] - _CAFFE_MEAN_BGR
            out["torch: x / 255, ImageNet mean/std"] = lambda a: (
                (a / 255.0 - _TORCH_MEAN) / _TORCH_STD
            )
    elif lo >= -1e-6 and hi <= 1.0 + 1e-6:  # 0..1
        out["x * 255"] = lambda a: a * 255.0
        out["x * 2 - 1"] = lambda a: a * 2.0 - 1.0
        if rgb:
            out["x * 255, then caffe: BGR, minus ImageNet mean"] = lambda a: (
                (a * 255.0)[..., ::-1] - _CAFFE_MEAN_BGR
            )
            out["ImageNet mean/std (torch, from 0..1)"] = lambda a: (a - _TORCH_MEAN) / _TORCH_STD
    elif lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6:  # -1..1
        out["(x + 1) * 127.5"] = lambda a: (a + 1.0) * 127.5
        out["(x + 1) / 2"] = lambda a: (a + 1.0) / 2.0
    return out


def _mean_gap(params: dict[int, Any], captured: dict[int, Any]) -> float:
    gaps = []
    for idx, mom in captured.items():
        p = params[idx]
        cs = compare_channels(p, mom.total)
        gaps.append(clean_gap(local_gap(cs), noise_of_gap(p, mom.halves, cs)))
    return float(np.mean(gaps)) if gaps else float("nan")


def probe_input_transforms(
    model: Any,
    nodes: list[LayerNode],
    data: Dataset,
    bn: tuple[BatchNormRecord, ...],
    keras: Any,
    seed: int = 0,
) -> PreprocessingProbe | None:
    """Runs the first BN layers on transformed copies of a few samples.

    Only when the first BN layer in call order is flagged and its statistics
    are not simply the initial ones; only for one floating-point input.
    Side effects: none on the model.
    """
    from .capture import CaptureProbe

    if not bn or len(data.x) != 1 or data.x[0].dtype.kind != "f":
        return None
    first = bn[0]
    if first.severity is Severity.OK or first.never_updated:
        return None
    x = np.asarray(data.x[0][:PROBE_SAMPLES], dtype=np.float32)
    transforms = candidate_transforms(x)
    if not transforms:
        return None
    count = min(FIRST_LAYERS, len(bn))
    with CaptureProbe(model, nodes, keras, seed=seed) as probe:
        params = {n.index: probe.bn_params(n) for n in nodes if n.kind is Kind.BATCHNORM}
        base = probe.first_bn_moments([x], count)
        names = [next(n.path for n in nodes if n.index == i) for i in base]
        baseline = _mean_gap(params, base)
        results = []
        for name, fn in transforms.items():
            got = probe.first_bn_moments([fn(x).astype(np.float32)], count)
            results.append((name, _mean_gap(params, got)))
    results.sort(key=lambda r: r[1])
    best = None
    if results and results[0][1] < WARN_GAP and results[0][1] < 0.5 * baseline:
        best = results[0][0]
    return PreprocessingProbe(
        input_min=float(np.min(data.x[0][:PROBE_SAMPLES])),
        input_max=float(np.max(data.x[0][:PROBE_SAMPLES])),
        input_mean=float(np.mean(x)),
        layers=tuple(names),
        baseline_gap=baseline,
        candidates=tuple(results),
        best=best,
    )
