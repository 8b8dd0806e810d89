"""The `Report`: records put together, the verdict and exit status, the JSON round trip.

Plain Python: no Keras here. Renderers and the exit-code policy read these
records; nothing else does I/O with them. The records, vocabularies and CI
gates live in `records`, `vocabulary` and `gates`; every name is re-exported
here, so that `from bngap.results import X` keeps working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ExitStatus
from .gates import DISPLAY_DECIMALS, Baseline, Thresholds, exceeds, format_number
from .jsonform import (
    SCHEMA_VERSION,
    build,
    data_json,
    fields_by_type,
    gap_json,
    metrics_json,
    model_json,
    num,
    plain,
)
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
        if not self.metrics:
            return None
        train, ev = self.metrics.train.get("loss"), self.metrics.eval.get("loss")
        if train is None or ev is None:  # not measured, or not finite (saved as null)
            return None
        return ev - train

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
        """The JSON report (schema version 1): the contract's keys plus extras.

        Records become JSON values field by field (`jsonform.plain`), the
        summary sections key by key (`jsonform.*_json`); the derived keys
        (`verdict`, `exceeded`, `warned`, `first_flagged_batchnorm`, the
        baseline's `regression`) are computed here.
        """
        first_flagged = self.first_flagged_batchnorm
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "exceeded": list(self.exceeded),
            "model": model_json(self.model),
            "data": data_json(self.data),
            "output_gap": gap_json(self.output_gap),
            "metrics": metrics_json(self.metrics),
            "groups": {k: num(self.groups.get(k, 0.0)) for k in GROUPS},
            "layers": plain(self.layers),
            "batchnorm": plain(self.batchnorm),
            "first_flagged_batchnorm": first_flagged.path if first_flagged else None,
            "findings": plain(self.findings),
            "leaks": plain(self.leaks),
            "preprocessing": plain(self.preprocessing),
            "thresholds": plain(self.thresholds),
            "settings": plain(self.settings),
            "notes": list(self.notes),
            "environment": dict(self.environment),
            "seconds": num(self.seconds),
            "warned": list(self.warned),
            "baseline": None
            if self.baseline is None
            else {**plain(self.baseline), "regression": num(self.regression)},
            **({"backends": plain(self.backends)} if self.backends else {}),
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
            # Fields added later, whose key is the field's name, come back by their type.
            later = fields_by_type(cls, d, skip=_READ_BY_HAND)
            return cls(**later, **_fields_read_by_hand(d))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(
                f"not a readable bngap check report: {type(e).__name__}: {e}"
            ) from None


# The fields `Report.from_dict` reads by hand; every other one by its type.
_READ_BY_HAND = (
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
)


def _fields_read_by_hand(d: dict[str, Any]) -> dict[str, Any]:
    """The first fields of a report from its JSON form: missing lists and
    objects read as empty, a null `seconds` as NaN, the baseline without its
    derived `regression`."""
    m, dd, g = d["model"], d["data"], d["output_gap"]
    baseline = d.get("baseline")
    if baseline is not None:
        baseline = build(Baseline, {k: v for k, v in baseline.items() if k != "regression"})
    return {
        "model": build(ModelSummary, m),
        "data": build(DataSummary, dd),
        "output_gap": build(OutputGap, g),
        "metrics": None if d.get("metrics") is None else build(Metrics, d["metrics"]),
        "groups": dict(d.get("groups") or {}),
        "layers": tuple(build(LayerRecord, x) for x in d.get("layers") or []),
        "batchnorm": tuple(build(BatchNormRecord, x) for x in d.get("batchnorm") or []),
        "findings": tuple(build(Finding, x) for x in d.get("findings") or []),
        "leaks": tuple(build(LeakCheck, x) for x in d.get("leaks") or []),
        "preprocessing": (
            None
            if d.get("preprocessing") is None
            else build(PreprocessingProbe, d["preprocessing"])
        ),
        "thresholds": build(Thresholds, d.get("thresholds") or {}),
        "settings": dict(d.get("settings") or {}),
        "notes": tuple(d.get("notes") or ()),
        "environment": dict(d.get("environment") or {}),
        "seconds": math.nan if d.get("seconds") is None else d["seconds"],
        "baseline": baseline,
    }
