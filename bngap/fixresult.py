"""What a fix did: its `FixResult`, with one `LayerFix` per re-estimated BN layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BngapError
from .jsonform import plain
from .records import Metrics, OutputGap


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
    fell without the inference loss rising (see `recalibration._helped`);
    `written`: the file written, or None; `reload_max_abs_diff`: the
    largest absolute output difference between that file reloaded and the
    fixed model in memory; `seconds`: wall time."""

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
