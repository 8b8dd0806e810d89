"""`bngap fix` from start to finish: the gap before and after re-estimation, the copy written."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import Dataset
from .errors import BngapError
from .fixedcopy import (
    keep_saved_optimizer,
    output_target,
    save_model,
    saved_optimizer_state,
    verify_reload,
)
from .fixresult import FixResult, LayerFix
from .layertree import LayerNode
from .records import Metrics, OutputGap
from .reestimation import recalibrate, select_layers, snapshot_statistics

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .measurement import Measurements

ENOUGH_SAMPLES = 256  # below this, say the estimates are rough
NOISE_WARN = 0.05  # relative noise of a layer's estimate worth a warning


@dataclass(frozen=True)
class _FixRun:
    """What one fix works on: the opened model and data, its layer tree, the
    BN layers chosen (and those left alone), and how every pass runs."""

    loaded: LoadedModel
    data: Dataset
    keras: Any
    nodes: list[LayerNode]
    chosen: list[LayerNode]
    skipped: list[tuple[str, str]]
    batch_size: int  # no larger than the data
    seed: int
    devices: list[str]

    def measure(self) -> Measurements:
        """The gap, measured the same way before and after, to compare like with like."""
        from .measurement import measure

        return measure(
            self.loaded.model,
            self.nodes,
            self.data,
            self.keras,
            batch_size=self.batch_size,
            seed=self.seed,
            effects=0,
            loss_id=self.loaded.loss,
            leak_checks=False,
            devices=self.devices,
        )

    def reestimate(
        self, progress: Callable[[int, int, str], None] | None
    ) -> tuple[list[LayerFix], int]:
        """The chosen layers' statistics re-estimated (see `reestimation.recalibrate`)."""
        return recalibrate(
            self.loaded.model,
            self.nodes,
            self.chosen,
            self.data,
            self.keras,
            batch_size=self.batch_size,
            progress=progress,
            seed=self.seed,
            devices=self.devices,
        )


# Long by its signature and docstring (the public API's options, each documented); the body is
# its steps in order (open, measure, re-estimate, measure again, judge, write), a call or two
# each, and the result they fill.
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

    started = time.perf_counter()
    say = status or (lambda s: None)
    if batch_size < 1:
        raise BngapError(f"--batch-size must be at least 1. Received: {batch_size}")
    target = output_target(model, output, in_place=in_place, force=force)
    opening: dict[str, Any] = dict(
        unsafe=unsafe,
        custom_objects=custom_objects,
        x_key=x_key,
        y_key=y_key,
        limit=limit,
        preprocess=preprocess,
    )
    run = _open(
        model,
        x,
        y,
        opening,
        layers=layers,
        include_frozen=include_frozen,
        batch_size=batch_size,
        seed=seed,
        devices=devices,
        say=say,
    )

    say("measuring the gap before")
    m0 = run.measure()
    restore = snapshot_statistics([n.layer for n in run.chosen])
    say(f"re-estimating {len(run.chosen)} BatchNormalization layers on {len(run.data)} samples")
    fixes, passes = run.reestimate(progress)
    say("measuring the gap after")
    m1 = run.measure()

    before, after = output_gap(m0), output_gap(m1)
    helped, why_not = _helped(before, after, m0.metrics, m1.metrics)
    notes = list(run.loaded.notes) + _estimate_notes(len(run.data), fixes)
    written, reload_diff = _write(
        run, target, helped or force, say, unsafe=unsafe, custom_objects=custom_objects
    )
    if target is not None and written is None:
        notes.append(f"not written: {why_not}; pass --force to write it anyway")
    return FixResult(
        before=before,
        after=after,
        metrics_before=m0.metrics,
        metrics_after=m1.metrics,
        layers=tuple(fixes),
        skipped=tuple(run.skipped),
        passes=passes,
        samples=len(run.data),
        batch_size=run.batch_size,
        helped=helped,
        written=written,
        reload_max_abs_diff=reload_diff,
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        devices=min(len(run.devices), math.ceil(len(run.data) / run.batch_size)),
        _restore=restore,
    )


def _open(
    model: Any,
    x: Any,
    y: Any,
    opening: dict[str, Any],
    *,
    layers: str | None,
    include_frozen: bool,
    batch_size: int,
    seed: int,
    devices: int | None,
    say: Callable[[str], None],
) -> _FixRun:
    """The model and data opened, the layer tree built, the BN layers and
    devices chosen: refused here, before anything changes, when no layer is
    left to re-estimate.

    The model is compiled, so that the copy keeps the loss, metrics and
    optimizer state (a file's optimizer state is kept).
    """
    from .backend import device_names, import_keras
    from .layertree import build_tree
    from .pipeline import open_inputs

    loaded, data = open_inputs(model, x, y, compile=True, status=say, **opening)
    keras = import_keras()
    if isinstance(model, (str, os.PathLike)):
        kept = keep_saved_optimizer(loaded.model, saved_optimizer_state(Path(model)))
        if kept:
            loaded.notes.append(kept)
    nodes = build_tree(loaded.model, keras)
    chosen, skipped = select_layers(nodes, layers, include_frozen)
    if not chosen:
        raise BngapError("the model has no BatchNormalization layers to re-estimate")
    return _FixRun(
        loaded=loaded,
        data=data,
        keras=keras,
        nodes=nodes,
        chosen=chosen,
        skipped=skipped,
        batch_size=max(1, min(batch_size, len(data))),
        seed=seed,
        devices=device_names(devices),
    )


def _write(
    run: _FixRun,
    target: Path | None,
    wanted: bool,
    say: Callable[[str], None],
    *,
    unsafe: bool,
    custom_objects: str | None,
) -> tuple[str | None, float | None]:
    """The fixed model saved to `target` when `wanted`, reloaded and compared:
    (the file written, the largest output difference after reloading), or
    (None, None) when nothing was written."""
    if target is None or not wanted:
        return None, None
    say(f"writing {target}")
    save_model(run.loaded.model, target)
    diff = verify_reload(
        target, run.loaded.model, run.data, run.keras, unsafe=unsafe, custom=custom_objects
    )
    return str(target), diff


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
