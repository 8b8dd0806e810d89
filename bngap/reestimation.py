"""BN moving statistics re-estimated level by level as their inputs' exact population statistics.

This is PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021)
done exactly, in inference mode: layers are re-estimated in dependency order,
so each layer's statistics are measured on inputs normalised by the
already re-estimated layers upstream. Layers whose inputs do not depend on
each other share a pass, and each pass stops at the last layer it needs.
Means and (biased, ddof=0) variances are merged across batches with Chan's
formula, so any batch split gives the same result.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable

import numpy as np

from .audit import compare_channels, local_gap
from .data import Dataset
from .errors import BngapError
from .fixresult import LayerFix
from .layertree import LayerNode
from .vocabulary import Kind

# every statistic `_assign` may set
_STATISTICS = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")


def select_layers(
    nodes: list[LayerNode], patterns: str | None, include_frozen: bool
) -> tuple[list[LayerNode], list[tuple[str, str]]]:
    """BN layers to re-estimate and (path, reason) for those left alone.

    `patterns` is a comma-separated list of layer paths or globs, matched
    against the full path and the layer's own name.
    """
    chosen, skipped = [], []
    pats = [p.strip() for p in patterns.split(",") if p.strip()] if patterns else []
    for n in nodes:
        if n.kind is not Kind.BATCHNORM:
            continue
        name = n.path.rsplit("/", 1)[-1]
        if pats and not any(
            fnmatch.fnmatchcase(n.path, p) or fnmatch.fnmatchcase(name, p) for p in pats
        ):
            skipped.append((n.path, "not matched by --layers"))
        elif not include_frozen and not n.layer.trainable:
            skipped.append((n.path, "frozen (trainable=False) and --skip-frozen given"))
        else:
            chosen.append(n)
    if pats and not chosen:
        raise BngapError(f"--layers {patterns!r} matches no BatchNormalization layer")
    return chosen, skipped


def dependency_levels(calls: list[tuple[int, int, frozenset]]) -> dict[int, int]:
    """Level of each BN layer: 0 without BN upstream, else 1 + the highest
    level among the BN layers its input depends on."""
    level: dict[int, int] = {}
    for idx, _seq, deps in calls:
        upstream = [level[d] for d in deps if d != idx and d in level]
        level[idx] = max(level.get(idx, 0), 1 + max(upstream) if upstream else 0)
    return level


def recalibrate(
    model,
    nodes: list[LayerNode],
    chosen: list[LayerNode],
    data: Dataset,
    keras,
    *,
    batch_size: int,
    progress: Callable[[int, int, str], None] | None = None,
    seed: int = 0,
    devices: list[str] | None = None,
) -> tuple[list[LayerFix], int]:
    """Sets the chosen BN layers' moving statistics to the population
    statistics of their inputs on `data`, level by level: one pass over the
    data per level, batch b on device b mod len(`devices`).

    Side effects: changes `moving_mean` and `moving_variance` (and, for
    renorm layers, `moving_stddev`, `renorm_mean`, `renorm_stddev`) of the
    chosen layers; nothing else.

    Returns:
        (one LayerFix per layer, number of passes over the data).
    """
    from .backend import pack_inputs, placed
    from .capture import CaptureProbe

    progress = progress or (lambda *a: None)
    by_index = {n.index: n for n in nodes}
    wanted = {n.index for n in chosen}
    on: list[str | None] = [*devices] if devices else [None]
    pack = lambda xs: pack_inputs(keras, model, xs, data.names, data.keyed)  # noqa: E731
    fixes: list[LayerFix] = []
    with CaptureProbe(model, nodes, keras, seed=seed, pack=pack) as probe:
        levels, last_call = _discover_levels(probe, data, by_index, wanted)
        todo = sorted({levels[i] for i in wanted if i in levels})
        batches = math.ceil(len(data) / batch_size)
        for step, level in enumerate(todo):
            targets = {i for i in wanted if levels.get(i) == level}
            stop = max(last_call[i] for i in targets)
            moments: dict = {}
            for b, (xs, _y) in enumerate(data.batches(batch_size)):
                with placed(on[b % len(on)]):
                    probe.capture_bn_inputs(xs, targets, stop, moments)
                progress(
                    step * batches + b + 1, len(todo) * batches, f"level {step + 1}/{len(todo)}"
                )
            in_call_order = [by_index[i] for i in sorted(targets, key=lambda j: last_call[j])]
            fixes += _set_statistics(probe, in_call_order, moments, level)
            probe.commit()
    return fixes, len(todo)


def _discover_levels(
    probe, data: Dataset, by_index: dict[int, LayerNode], wanted: set[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """(dependency level, sequence number of the last call) of every BN layer,
    from one pass over the first samples; refuses, before any statistics
    change, wanted layers the data never reaches."""
    first = next(data.batches(min(2, len(data))))[0]
    calls = probe.discover_bn_dependencies(first)
    levels = dependency_levels(calls)
    last_call: dict[int, int] = {}
    for idx, seq, _ in calls:
        last_call[idx] = max(last_call.get(idx, -1), seq)
    never_called = [by_index[i].path for i in wanted if i not in levels]
    if never_called:
        raise BngapError(
            "layers never called on this data, cannot re-estimate: "
            f"{', '.join(never_called)}; leave them out with --layers"
        )
    return levels, last_call


def _set_statistics(probe, targets: list[LayerNode], moments: dict, level: int) -> list[LayerFix]:
    """Each target's statistics set to its captured input moments, and what
    the old ones were worth on this data."""
    out = []
    for node in targets:
        mom = moments[node.index]
        total = mom.total
        before = local_gap(compare_channels(probe.bn_params(node), total))
        _assign(node.layer, total.mean, total.variance)
        out.append(
            LayerFix(
                node.path,
                level,
                int(total.examples),
                before,
                _relative_noise(mom, node.layer.epsilon),
                not node.layer.trainable,
            )
        )
    return out


def _assign(layer, mean: np.ndarray, var: np.ndarray) -> None:
    """Every statistic the layer keeps, set consistently from (mean, var).

    A renorm layer normalises with `renorm_mean`/`renorm_stddev` in training
    mode and `moving_mean`/`moving_variance` in inference mode (Keras keeps
    `moving_variance = moving_stddev**2 - epsilon`): all are set, so that
    both modes use the same re-estimated statistics afterwards.
    """
    dtype = layer.moving_mean.dtype
    layer.moving_mean.assign(mean.astype(dtype))
    layer.moving_variance.assign(var.astype(dtype))
    if getattr(layer, "renorm", False):
        std = np.sqrt(var + layer.epsilon)
        for name, value in (("moving_stddev", std), ("renorm_mean", mean), ("renorm_stddev", std)):
            v = getattr(layer, name, None)
            if v is not None:
                v.assign(value.astype(dtype))


def snapshot_statistics(layers) -> Callable[[], None]:
    """A function that restores every statistic `recalibrate` may change."""
    saved = [
        (v, np.array(v.numpy(), copy=True))
        for layer in layers
        for name in _STATISTICS
        if (v := getattr(layer, name, None)) is not None
    ]

    def restore() -> None:
        for v, value in saved:
            v.assign(value)

    return restore


def _relative_noise(mom, eps: float) -> float | None:
    """How far apart the two halves' statistics are, relative to the spread:
    RMS over channels of the half-difference of standardized means and of
    log standard deviations."""
    if len(mom.halves) != 2 or min(h.examples for h in mom.halves) < 1:
        return None
    a, b = mom.halves
    s = np.sqrt(mom.total.variance + eps)
    dz = (a.mean - b.mean) / s / 2.0
    dl = 0.5 * (np.log(a.variance + eps) - np.log(b.variance + eps)) / 2.0
    return float(np.sqrt(np.mean(dz * dz + dl * dl)))
