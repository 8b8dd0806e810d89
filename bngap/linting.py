"""`bngap lint`: BatchNormalization defects visible in the model file alone, no data.

The records of a lint (rule ids, per-layer summaries, findings, the report)
and the entry points; the rules themselves are in `bngap.lintrules`. Rule ids
are part of the public contract. (Not named `lint.py`: importing a submodule
`bngap.lint` would replace the function `bngap.lint()` on the package.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import ExitStatus
from .jsonform import plain
from .vocabulary import Severity, Vocabulary, coerce


class Rule(Vocabulary):
    """The lint rule ids (public contract), in the order findings of equal
    severity are listed."""

    NEVER_UPDATED = "never_updated"
    MOMENTUM_TORCH_CONVENTION = "momentum_torch_convention"
    MOMENTUM_ONE = "momentum_one"
    BAD_VARIANCE = "bad_variance"
    EPSILON_TOO_SMALL = "epsilon_too_small"
    AXIS_MISMATCH = "axis_mismatch"
    RENORM_UNCLIPPED = "renorm_unclipped"
    TRAINABLE_BN_IN_FROZEN_BASE = "trainable_bn_in_frozen_base"
    CALL_WITHOUT_TRAINING = "call_without_training"
    MODE_DEPENDENT_LAYERS = "mode_dependent_layers"


RULES = tuple(r.value for r in Rule)


@dataclass(frozen=True)
class BatchNormLint:
    """What the file says about one BatchNormalization layer."""

    path: str
    trainable: bool
    momentum: float
    epsilon: float
    axis: int | tuple
    channels: int
    variance_min: float | None  # over finite values; None when none is finite
    variance_max: float | None
    mean_abs_max: float | None
    renorm: bool = False
    renorm_clipping: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LintFinding:
    """One defect a lint rule found: the rule, its severity, the first layer
    it applies to (None for the whole model) and every such layer (`layers`),
    what is wrong, what to do, and the numbers it rests on (`evidence`)."""

    rule: Rule
    severity: Severity
    layer: str | None
    message: str
    remedy: str
    layers: tuple[str, ...] = ()  # every layer the rule applies to (layer is the first)
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce(self, "rule", Rule)


@dataclass(frozen=True)
class LintReport:
    """The result of `bngap lint` on one model file: the model (`path`, name,
    class, number of layers at every depth), each BN layer as the file says
    it, the findings (most severe first), the severity that fails
    (`fail_on`), remarks made while loading, and the wall time in seconds."""

    path: str
    model_name: str
    class_name: str
    layers: int
    batchnorm: tuple[BatchNormLint, ...]
    findings: tuple[LintFinding, ...]
    fail_on: Severity = Severity.FAIL
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """'fail' when a finding reaches `fail_on`, else 'warn' when any warns, else 'pass'."""
        worst = max((f.severity.rank for f in self.findings), default=0)
        if worst >= self.fail_on.rank:
            return "fail"
        return "warn" if worst >= Severity.WARN.rank else "pass"

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.GAP_ABOVE_THRESHOLD if self.verdict == "fail" else ExitStatus.OK

    def counts(self) -> dict[str, int]:
        out = {"fail": 0, "warn": 0, "info": 0}
        for f in self.findings:
            out[f.severity.value] = out.get(f.severity.value, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": "1",
            "command": "lint",
            "verdict": self.verdict,
            "fail_on": self.fail_on.value,
            "model": {
                "path": self.path,
                "name": self.model_name,
                "class_name": self.class_name,
                "layers": self.layers,
                "batchnorm_layers": len(self.batchnorm),
            },
            "batchnorm": [plain(b) for b in self.batchnorm],
            "findings": [plain(f) for f in self.findings],
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def lint_model(
    model: Any,
    path: str = "<in-memory>",
    *,
    fail_on: Severity = Severity.FAIL,
    notes: tuple[str, ...] = (),
) -> LintReport:
    """Applies every lint rule to a loaded Keras model. Reads the weights; changes nothing."""
    from .backend import import_keras
    from .layertree import build_tree
    from .lintrules import apply_rules

    keras = import_keras()
    start = time.perf_counter()
    nodes = build_tree(model, keras)
    batchnorm, found = apply_rules(model, nodes, keras)
    findings = sorted(found, key=lambda f: (-f.severity.rank, RULES.index(f.rule)))
    return LintReport(
        path=path,
        model_name=model.name,
        class_name=type(model).__name__,
        layers=len(nodes),
        batchnorm=tuple(batchnorm),
        findings=tuple(findings),
        fail_on=fail_on,
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
    )


def lint(
    model: Any,
    *,
    fail_on: str | Severity = "fail",
    unsafe: bool = False,
    custom_objects: str | None = None,
) -> LintReport:
    """Lints a model file (loaded safely unless `unsafe`) or an in-memory Keras model.

    Raises:
        ModelLoadError: a file that cannot be loaded, with a one-line message.
    """
    level = Severity(fail_on) if not isinstance(fail_on, Severity) else fail_on
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .loading import load_model

        loaded = load_model(model, unsafe=unsafe, custom_objects_file=custom_objects)
        return lint_model(loaded.model, loaded.path, fail_on=level, notes=tuple(loaded.notes))
    return lint_model(model, fail_on=level)
