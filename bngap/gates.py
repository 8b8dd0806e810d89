"""The CI gates: thresholds, the `--baseline` report, values compared as reports print them.

Plain Python: no Keras here. `results.Report` derives its verdict from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .jsonform import SCHEMA_VERSION, build, opt_float
from .records import Metrics


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
    """Whether `value`, rounded as reports print it, is above `threshold`."""
    if value is None or threshold is None:
        return False
    return round(value, DISPLAY_DECIMALS) > threshold
