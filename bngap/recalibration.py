"""`bngap fix`: re-estimate BatchNormalization moving statistics as the exact
population statistics of each layer's input on the user's data.

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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audit import compare_channels, local_gap
from .data import Dataset
from .errors import BngapError
from .fixedcopy import (
    keep_saved_optimizer,
    output_target,
    save_model,
    saved_optimizer_state,
    verify_reload,
)
from .jsonform import plain
from .layertree import LayerNode
from .records import Metrics, OutputGap
from .vocabulary import Kind

ENOUGH_SAMPLES = 256  # below this, say the estimates are rough
NOISE_WARN = 0.05  # relative noise of a layer's estimate worth a warning


@dataclass(frozen=True)
class LayerFix:
    """What re-estimation did to one BN layer: its dependency level (layers of
    a level are estimated in one pass, after the levels upstream), the number
    of values per channel the new statistics rest on, the expected local gap
    of the old statistics on this data (relative RMS change of the layer's
    output), the new statistics' relative sampling noise, and whether the
    layer is frozen (trainable=False)."""

    path: str
    level: int  # dependency level: 0 = no BN upstream
    samples: int
    gap_before: float  # expected local gap of the old statistics on this data
    noise: float | None  # relative sampling noise of the new statistics (split-half)
    frozen: bool


@dataclass(frozen=True)
class FixResult:
    """Before/after numbers of a fix, and what was written.

    `before`/`after`: the output gap with the old and the new statistics;
    `metrics_*` the same for loss and accuracy (None without labels);
    `skipped`: (layer path, reason) of BN layers left alone; `passes`: passes
    over the data; `samples`, `batch_size`: the data used; `helped`: the gap
    fell without the inference loss rising (see `_helped`); `written`: the
    file written, or None; `reload_max_abs_diff`: the largest absolute output
    difference between that file reloaded and the fixed model in memory;
    `seconds`: wall time."""

    before: OutputGap
    after: OutputGap
    metrics_before: Metrics | None
    metrics_after: Metrics | None
    layers: tuple[LayerFix, ...]
    skipped: tuple[tuple[str, str], ...]
    passes: int
    samples: int
    batch_size: int
    helped: bool
    written: str | None = None
    reload_max_abs_diff: float | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    devices: int = 1  # devices the batches were spread over
    _restore: Any = field(default=None, repr=False, compare=False)

    def undo(self) -> None:
        """Puts back the statistics the re-estimated layers had before the fix,
        in the in-memory model (every variable the fix assigned, bit for bit).
        A file the fix wrote is left as it is."""
        if self._restore is None:
            raise BngapError("nothing to undo: this result holds no previous statistics")
        self._restore()

    def to_dict(self) -> dict:
        d = plain(self)
        d.pop("_restore", None)
        d["schema_version"] = "1"
        return d


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
    statistics of their inputs on `data`, level by level.

    Side effects: changes `moving_mean` and `moving_variance` (and, for
    renorm layers, `moving_stddev`, `renorm_mean`, `renorm_stddev`) of the
    chosen layers; nothing else.

    Returns:
        (one LayerFix per layer, number of passes over the data).
    """
    from .backend import placed
    from .capture import CaptureProbe

    progress = progress or (lambda *a: None)
    by_index = {n.index: n for n in nodes}
    wanted = {n.index for n in chosen}
    on: list[str | None] = [*devices] if devices else [None]  # batch b on device b mod len(on)
    out: list[LayerFix] = []
    passes = 0
    from .backend import pack_inputs

    pack = lambda xs: pack_inputs(keras, model, xs, data.names, data.keyed)  # noqa: E731
    with CaptureProbe(model, nodes, keras, seed=seed, pack=pack) as probe:
        first = next(data.batches(min(2, len(data))))[0]
        calls = probe.discover_bn_dependencies(first)
        levels = dependency_levels(calls)
        last_call: dict[int, int] = {}
        for idx, seq, _ in calls:
            last_call[idx] = max(last_call.get(idx, -1), seq)
        never_called = [by_index[i].path for i in wanted if i not in levels]
        if never_called:  # before any statistics change
            raise BngapError(
                "layers never called on this data, cannot re-estimate: "
                f"{', '.join(never_called)}; leave them out with --layers"
            )
        todo = sorted({levels[i] for i in wanted if i in levels})
        batches = math.ceil(len(data) / batch_size)
        total = len(todo) * batches
        for step, lev in enumerate(todo):
            targets = {i for i in wanted if levels.get(i) == lev}
            stop = max(last_call[i] for i in targets)
            moments: dict = {}
            for b, (xs, _y) in enumerate(data.batches(batch_size)):
                with placed(on[b % len(on)]):
                    probe.capture_bn_inputs(xs, targets, stop, moments)
                progress(step * batches + b + 1, total, f"level {step + 1}/{len(todo)}")
            passes += 1
            for i in sorted(targets, key=lambda j: last_call[j]):
                node = by_index[i]
                params = probe.bn_params(node)
                mom = moments[i]
                total_m = mom.total
                before = local_gap(compare_channels(params, total_m))
                _assign(node.layer, total_m.mean, total_m.variance)
                out.append(
                    LayerFix(
                        node.path,
                        lev,
                        int(total_m.examples),
                        before,
                        _relative_noise(mom, node.layer.epsilon),
                        not node.layer.trainable,
                    )
                )
            probe.commit()
    return out, passes


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


_STATISTICS = ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev")


def _snapshot_statistics(layers) -> Callable[[], None]:
    """A function that restores every statistic `_assign` may change."""
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


# Long mostly by its docstring: the body is the five steps in order (open, measure, re-estimate,
# measure, write), each one call.
def fix(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    output: str | os.PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    layers: str | None = None,
    include_frozen: bool = True,
    batch_size: int = 32,
    limit: int | None = None,
    unsafe: bool = False,
    custom_objects: str | None = None,
    x_key: str | None = None,
    y_key: str | None = None,
    seed: int = 0,
    preprocess: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    status: Callable[[str], None] | None = None,
    devices: int | None = None,
) -> FixResult:
    """Re-estimates BN statistics on `x`, verifies the gap, and saves a copy.

    Args:
        model: a Keras model (updated in place) or a model file path (the
            file is read; the fixed model goes to `output`).
        x, y: data as for `bngap.check` (arrays or a file/folder path).
        output: where to save the fixed model (.keras or .h5). With a path
            model, required unless `in_place`.
        in_place: write over the model file itself.
        force: write even when the fix does not reduce the gap, and replace
            an existing output file.
        layers: comma-separated BN layer paths or globs to re-estimate.
        include_frozen: also re-estimate frozen (trainable=False) layers.
        devices: devices to spread the batches over (see `backend.device_names`).

    Returns:
        A FixResult with the output gap (and loss/accuracy with labels)
        before and after.

    Side effects: changes the chosen BN layers' moving statistics of the
    in-memory model; writes `output` atomically (temporary file, then
    rename) only when the fix helps or `force` is set.
    """
    from .analysis import output_gap
    from .backend import device_names, import_keras
    from .layertree import build_tree
    from .measurement import measure
    from .pipeline import open_inputs

    started = time.perf_counter()
    say = status or (lambda s: None)
    if batch_size < 1:
        raise BngapError(f"--batch-size must be at least 1. Received: {batch_size}")
    from_file = isinstance(model, (str, os.PathLike))
    target = output_target(model, output, in_place=in_place, force=force)

    # Compiled, so that the copy keeps the loss, metrics and optimizer state.
    loaded, data = open_inputs(
        model,
        x,
        y,
        unsafe=unsafe,
        custom_objects=custom_objects,
        x_key=x_key,
        y_key=y_key,
        limit=limit,
        preprocess=preprocess,
        compile=True,
        status=say,
    )
    keras = import_keras()
    net = loaded.model
    if from_file:
        kept = keep_saved_optimizer(net, saved_optimizer_state(Path(model)))
        if kept:
            loaded.notes.append(kept)
    nodes = build_tree(net, keras)
    chosen, skipped = select_layers(nodes, layers, include_frozen)
    if not chosen:
        raise BngapError("the model has no BatchNormalization layers to re-estimate")
    bs = max(1, min(batch_size, len(data)))
    devs = device_names(devices)

    def measure_gap():  # the same measurement before and after, to compare like with like
        return measure(
            net,
            nodes,
            data,
            keras,
            batch_size=bs,
            seed=seed,
            effects=0,
            loss_id=loaded.loss,
            leak_checks=False,
            devices=devs,
        )

    say("measuring the gap before")
    m0 = measure_gap()
    restore = _snapshot_statistics([n.layer for n in chosen])
    say(f"re-estimating {len(chosen)} BatchNormalization layers on {len(data)} samples")
    fixes, passes = recalibrate(
        net, nodes, chosen, data, keras, batch_size=bs, progress=progress, seed=seed, devices=devs
    )
    say("measuring the gap after")
    m1 = measure_gap()
    before, after = output_gap(m0), output_gap(m1)
    helped, why_not = _helped(before, after, m0.metrics, m1.metrics)
    notes = list(loaded.notes) + _estimate_notes(len(data), fixes)
    written = None
    reload_diff = None
    if target is not None and (helped or force):
        say(f"writing {target}")
        save_model(net, target)
        written = str(target)
        reload_diff = verify_reload(target, net, data, keras, unsafe=unsafe, custom=custom_objects)
    elif target is not None:
        notes.append(f"not written: {why_not}; pass --force to write it anyway")
    return FixResult(
        before=before,
        after=after,
        metrics_before=m0.metrics,
        metrics_after=m1.metrics,
        layers=tuple(fixes),
        skipped=tuple(skipped),
        passes=passes,
        samples=len(data),
        batch_size=bs,
        helped=helped,
        written=written,
        reload_max_abs_diff=reload_diff,
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        devices=min(len(devs), math.ceil(len(data) / bs)),
        _restore=restore,
    )


def _estimate_notes(samples: int, fixes: list[LayerFix]) -> list[str]:
    """Remarks on how reliable the new statistics are: too few samples, noisy layers."""
    notes = []
    if samples < ENOUGH_SAMPLES:
        notes.append(
            f"re-estimated from {samples} samples; use {ENOUGH_SAMPLES} or more "
            "representative samples for stable statistics"
        )
    noisy = [(f.path, f.noise) for f in fixes if f.noise is not None and f.noise > NOISE_WARN]
    if noisy:
        whose = "layers'" if len(noisy) != 1 else "layer's"
        notes.append(
            f"{len(noisy)} {whose} new statistics are "
            f"noisy (relative noise up to "
            f"{max(n for _, n in noisy):.3f}, e.g. {noisy[0][0]}); more data would help"
        )
    return notes


def _helped(
    before: OutputGap, after: OutputGap, m0: Metrics | None, m1: Metrics | None
) -> tuple[bool, str]:
    """Whether the fix helped, and why not. The gap must fall without the
    inference loss rising; or, where there was no gap to close (a frozen or
    renorm model whose stale statistics hurt both modes alike), the gap must
    stay float noise while the inference loss falls (labels needed)."""
    from .records import LEAK_TOLERANCE

    b, a = before.relative_l2, after.relative_l2
    loss0 = m0.eval.get("loss") if m0 else None
    loss1 = m1.eval.get("loss") if m1 else None
    if a < b - 1e-9:
        if loss0 is not None and loss1 is not None and loss1 > loss0 + 1e-9:
            return False, (
                f"the gap fell ({b:.4f} -> {a:.4f}) but the inference loss rose "
                f"({loss0:.4f} -> {loss1:.4f})"
            )
        return True, ""
    if a <= LEAK_TOLERANCE and loss0 is not None and loss1 is not None and loss1 < loss0 - 1e-9:
        return True, ""
    why = f"the fix did not reduce the gap ({b:.4f} -> {a:.4f})"
    if a <= LEAK_TOLERANCE and loss0 is None:
        why += "; with no gap to close, only labels can show whether inference improved"
    elif loss0 is not None and loss1 is not None:
        why += f" nor the inference loss ({loss0:.4f} -> {loss1:.4f})"
    return False, why
