"""The report of a check: its frozen records put together, the CI gates
(thresholds, baseline), the verdict and exit status, and the JSON round trip.

Plain Python: no Keras here. Renderers and the exit-code policy read these
records; nothing else does I/O with them. The records and vocabularies live in
`records` and `vocabulary`; every name is re-exported here, so that
`from bngap.results import X` keeps working.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ExitStatus
from .jsonform import SCHEMA_VERSION, build, num, opt_float, plain, typed
from .records import (
    LEAK_TOLERANCE,
    BackendRun,
    BatchNormRecord,
    ChannelDeviation,
    DataSummary,
    Finding,
    GapEntry,
    LayerRecord,
    LeakCheck,
    Metrics,
    ModelSummary,
    OutputGap,
    OutputMetrics,
    PreprocessingProbe,
)
from .vocabulary import GROUPS, Cause, FitMode, Group, InferencePath, Kind, Severity, Vocabulary

__all__ = [
    "DISPLAY_DECIMALS",
    "GROUPS",
    "LEAK_TOLERANCE",
    "SCHEMA_VERSION",
    "BackendRun",
    "Baseline",
    "BatchNormRecord",
    "Cause",
    "ChannelDeviation",
    "DataSummary",
    "Finding",
    "FitMode",
    "GapEntry",
    "Group",
    "InferencePath",
    "Kind",
    "LayerRecord",
    "LeakCheck",
    "Metrics",
    "ModelSummary",
    "OutputGap",
    "OutputMetrics",
    "PreprocessingProbe",
    "Report",
    "Severity",
    "Thresholds",
    "Vocabulary",
    "exceeds",
    "format_number",
]


@dataclass(frozen=True)
class Thresholds:
    """CI gates: a value above a `fail` threshold fails the check; an output
    gap above `warn_above` only warns; `max_regression` bounds how much the
    gap may grow against a baseline report."""

    output_gap: float | None = None
    loss_delta: float | None = None
    accuracy_drop: float | None = None
    warn_above: float | None = None
    max_regression: float | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (
                self.output_gap,
                self.loss_delta,
                self.accuracy_drop,
                self.warn_above,
                self.max_regression,
            )
        )


@dataclass(frozen=True)
class Baseline:
    """An earlier report of the same model family (`--baseline OLD.json`):
    its numbers, shown side by side with this run's."""

    path: str  # the baseline report file
    model_path: str  # the model it was made from
    relative_l2: float | None
    max_abs: float | None
    top1_agreement: float | None
    metrics: Metrics | None
    verdict: str
    top_cause: str | None = None
    flagged_batchnorm: int = 0

    @classmethod
    def from_report(cls, d: dict, path: str) -> Baseline:
        """The baseline part of a saved JSON report (`Report.to_dict()`).

        Raises:
            ValueError: `d` is not a bngap report of a known schema version.
        """
        if (
            not isinstance(d, dict)
            or d.get("schema_version") != SCHEMA_VERSION
            or not isinstance(d.get("output_gap"), dict)
        ):
            raise ValueError("not a bngap check report (schema version 1)")
        g = d["output_gap"]
        m = d.get("metrics")
        findings = d.get("findings") or []
        return cls(
            path=str(path),
            model_path=str((d.get("model") or {}).get("path", "")),
            relative_l2=opt_float(g.get("relative_l2")),
            max_abs=opt_float(g.get("max_abs")),
            top1_agreement=opt_float(g.get("top1_agreement")),
            metrics=None if not isinstance(m, dict) else build(Metrics, m),
            verdict=str(d.get("verdict", "")),
            top_cause=findings[0].get("cause")
            if findings and isinstance(findings[0], dict)
            else None,
            flagged_batchnorm=sum(
                1
                for b in d.get("batchnorm") or []
                if isinstance(b, dict) and b.get("severity") in ("warn", "fail")
            ),
        )


# Values are compared as they are displayed, so a printed 0.0500 never fails
# a 0.05 threshold.
DISPLAY_DECIMALS = 4


def format_number(v: float | None, digits: int = DISPLAY_DECIMALS) -> str:
    """A number as reports print it: fixed decimals, scientific when tiny or huge."""
    if v is None:
        return "n/a"
    if v != 0 and (abs(v) < 10**-digits or abs(v) >= 1e6):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def exceeds(value: float | None, threshold: float | None) -> bool:
    if value is None or threshold is None:
        return False
    return round(value, DISPLAY_DECIMALS) > threshold


@dataclass(frozen=True)
class Report:
    """Everything one check found, in the order a report shows it.

    `groups`: output gap (relative L2) with only that cause group in training
    mode (keys `GROUPS`); `layers` every layer, `batchnorm` the BN audits,
    `findings` most likely cause first; `settings` the options the check ran
    with; `environment` library versions and the backend; `seconds` the wall
    time of the check. The verdict and exit status are derived, not stored."""

    model: ModelSummary
    data: DataSummary
    output_gap: OutputGap
    metrics: Metrics | None
    groups: dict
    layers: tuple[LayerRecord, ...]
    batchnorm: tuple[BatchNormRecord, ...]
    findings: tuple[Finding, ...]
    leaks: tuple[LeakCheck, ...] = ()
    preprocessing: PreprocessingProbe | None = None
    thresholds: Thresholds = Thresholds()
    settings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0
    baseline: Baseline | None = None
    backends: tuple[
        BackendRun, ...
    ] = ()  # with --backends: one run per backend, the first is this one

    @property
    def loss_delta(self) -> float | None:
        """Inference-mode loss minus training-mode loss."""
        if not self.metrics or "loss" not in self.metrics.train:
            return None
        return self.metrics.eval["loss"] - self.metrics.train["loss"]

    @property
    def accuracy_drop(self) -> float | None:
        """Training-mode accuracy minus inference-mode accuracy; for several
        outputs, the largest drop among those with an accuracy."""
        if not self.metrics:
            return None
        if "accuracy" in self.metrics.train:
            return self.metrics.train["accuracy"] - self.metrics.eval["accuracy"]
        drops = [
            o.train["accuracy"] - o.eval["accuracy"]
            for o in self.metrics.per_output
            if "accuracy" in o.train and "accuracy" in o.eval
        ]
        return max(drops) if drops else None

    @property
    def exceeded(self) -> tuple[str, ...]:
        """Names of the thresholds this report exceeds."""
        t = self.thresholds
        out = []
        if exceeds(self.output_gap.relative_l2, t.output_gap):
            out.append("output_gap")
        if exceeds(self.loss_delta, t.loss_delta):
            out.append("loss_delta")
        if exceeds(self.accuracy_drop, t.accuracy_drop):
            out.append("accuracy_drop")
        if exceeds(self.regression, t.max_regression):
            out.append("regression")
        return tuple(out)

    @property
    def regression(self) -> float | None:
        """How much the output gap grew against the baseline, as both print."""
        old = self.baseline.relative_l2 if self.baseline else None
        new = self.output_gap.relative_l2
        if old is None or new is None or not math.isfinite(old) or math.isnan(new):
            return None
        if math.isinf(new):  # NaN/Inf in one mode only: as bad as it gets
            return math.inf
        return round(new, DISPLAY_DECIMALS) - round(old, DISPLAY_DECIMALS)

    @property
    def warned(self) -> tuple[str, ...]:
        """Names of the warn thresholds this report exceeds (`--warn-above`)."""
        return (
            ("output_gap",)
            if exceeds(self.output_gap.relative_l2, self.thresholds.warn_above)
            else ()
        )

    @property
    def verdict(self) -> str:
        """`fail` when a fail gate is exceeded, else `warn` when a warn gate
        is, else `pass`. The exit status follows from it (`exit_status`)."""
        if self.exceeded:
            return "fail"
        return "warn" if self.warned else "pass"

    @property
    def ok(self) -> bool:
        """True when no threshold is exceeded and no finding is a failure.

        Meant for `assert bngap.check(model, x).ok` in a test suite.
        """
        return not self.exceeded and not any(f.severity is Severity.FAIL for f in self.findings)

    @property
    def exit_status(self) -> ExitStatus:
        """The one exit-code policy: 1 for `fail`, 0 for `warn` and `pass`."""
        return ExitStatus.GAP_ABOVE_THRESHOLD if self.verdict == "fail" else ExitStatus.OK

    @property
    def first_flagged_batchnorm(self) -> BatchNormRecord | None:
        """The first flagged BN layer in call order: where the problem starts,
        as opposed to the layers after it that inherit shifted inputs."""
        return next(
            (b for b in self.batchnorm if b.severity in (Severity.WARN, Severity.FAIL)), None
        )

    @property
    def top_finding(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def layer(self, path: str) -> LayerRecord | None:
        return next((r for r in self.layers if r.path == path), None)

    def batchnorm_layer(self, path: str) -> BatchNormRecord | None:
        return next((r for r in self.batchnorm if r.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema version 1): the contract's keys plus extras."""
        m, d, g = self.model, self.data, self.output_gap
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "exceeded": list(self.exceeded),
            "model": {
                "path": m.path,
                "name": m.name,
                "class_name": m.class_name,
                "layers": m.layers,
                "batchnorm_layers": m.batchnorm_layers,
                "dropout_like_layers": m.dropout_like_layers,
                "parameters": m.parameters,
                "input_shapes": [list(s) for s in m.input_shapes],
                "output_shapes": [list(s) for s in m.output_shapes],
                "input_names": list(m.input_names),
                "output_names": list(m.output_names),
            },
            "data": {
                "path": d.path,
                "samples": d.samples,
                "has_labels": d.has_labels,
                "input_shapes": [list(s) for s in d.input_shapes],
                "batch_size": d.batch_size,
                "batches": d.batches,
                "last_batch_size": d.last_batch_size,
                "notes": list(d.notes),
            },
            "output_gap": {
                "relative_l2": num(g.relative_l2),
                "max_abs": num(g.max_abs),
                "top1_agreement": num(g.top1_agreement),
                "per_output": [plain(e) for e in g.per_output],
            },
            "metrics": None
            if self.metrics is None
            else {
                "train": {k: num(v) for k, v in self.metrics.train.items()},
                "eval": {k: num(v) for k, v in self.metrics.eval.items()},
                "loss_name": self.metrics.loss_name,
                "source": self.metrics.source,
                "per_output": [plain(o) for o in self.metrics.per_output],
            },
            "groups": {k: num(self.groups.get(k, 0.0)) for k in GROUPS},
            "layers": [plain(r) for r in self.layers],
            "batchnorm": [plain(r) for r in self.batchnorm],
            "first_flagged_batchnorm": (
                self.first_flagged_batchnorm.path if self.first_flagged_batchnorm else None
            ),
            "findings": [plain(f) for f in self.findings],
            "leaks": [plain(x) for x in self.leaks],
            "preprocessing": None if self.preprocessing is None else plain(self.preprocessing),
            "thresholds": plain(self.thresholds),
            "settings": plain(self.settings),
            "notes": list(self.notes),
            "environment": dict(self.environment),
            "seconds": num(self.seconds),
            "warned": list(self.warned),
            "baseline": None
            if self.baseline is None
            else {**plain(self.baseline), "regression": num(self.regression)},
            **({"backends": [plain(b) for b in self.backends]} if self.backends else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """The report back from its JSON form (`to_dict()`), for `bngap render`.

        `from_dict(r.to_dict()).to_dict() == r.to_dict()`, so a saved report
        renders exactly as the run did. Derived keys (`verdict`, `exceeded`,
        `warned`, `first_flagged_batchnorm`) are recomputed, not read.

        Raises:
            ValueError: `d` is not a bngap report of schema version 1.
        """
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError("not a bngap check report (schema version 1)")
        try:
            m, dd, g = d["model"], d["data"], d["output_gap"]
            baseline = d.get("baseline")
            if baseline is not None:
                baseline = build(Baseline, {k: v for k, v in baseline.items() if k != "regression"})
            explicit = {
                "model",
                "data",
                "output_gap",
                "metrics",
                "groups",
                "layers",
                "batchnorm",
                "findings",
                "leaks",
                "preprocessing",
                "thresholds",
                "settings",
                "notes",
                "environment",
                "seconds",
                "baseline",
            }
            # Fields added later whose key is the field's name come back by their type.
            hints = typing.get_type_hints(cls)
            later = {
                f.name: typed(hints[f.name], d[f.name])
                for f in fields(cls)
                if f.name not in explicit and f.name in d
            }
            return cls(
                **later,
                model=build(ModelSummary, m),
                data=build(DataSummary, dd),
                output_gap=build(OutputGap, g),
                metrics=None if d.get("metrics") is None else build(Metrics, d["metrics"]),
                groups=dict(d.get("groups") or {}),
                layers=tuple(build(LayerRecord, x) for x in d.get("layers") or []),
                batchnorm=tuple(build(BatchNormRecord, x) for x in d.get("batchnorm") or []),
                findings=tuple(build(Finding, x) for x in d.get("findings") or []),
                leaks=tuple(build(LeakCheck, x) for x in d.get("leaks") or []),
                preprocessing=(
                    None
                    if d.get("preprocessing") is None
                    else build(PreprocessingProbe, d["preprocessing"])
                ),
                thresholds=build(Thresholds, d.get("thresholds") or {}),
                settings=dict(d.get("settings") or {}),
                notes=tuple(d.get("notes") or ()),
                environment=dict(d.get("environment") or {}),
                seconds=math.nan if d.get("seconds") is None else d["seconds"],
                baseline=baseline,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(
                f"not a readable bngap check report: {type(e).__name__}: {e}"
            ) from None
