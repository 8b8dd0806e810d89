"""The `bngap lint` rules: the registry (`CHECKS`), one function per rule id.

The linter iterates it in rule order; each rule reads the model's
configuration and its BN layers' weights, read once as numpy arrays; no
forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..layertree import LayerNode
from ..linting import BatchNormLint, LintFinding, Rule
from . import settings, statistics, structure
from .subject import Subject, read_subject, summary

CHECKS: dict[Rule, Callable[[Subject], list[LintFinding]]] = {
    Rule.NEVER_UPDATED: statistics.never_updated,
    Rule.MOMENTUM_TORCH_CONVENTION: settings.momentum_torch_convention,
    Rule.MOMENTUM_ONE: settings.momentum_one,
    Rule.BAD_VARIANCE: statistics.bad_variance,
    Rule.EPSILON_TOO_SMALL: statistics.epsilon_too_small,
    Rule.AXIS_MISMATCH: structure.axis_mismatch,
    Rule.RENORM_UNCLIPPED: settings.renorm_unclipped,
    Rule.TRAINABLE_BN_IN_FROZEN_BASE: structure.trainable_bn_in_frozen_base,
    Rule.CALL_WITHOUT_TRAINING: structure.call_without_training,
    Rule.MODE_DEPENDENT_LAYERS: structure.mode_dependent_layers,
}


def apply_rules(
    model: Any, nodes: list[LayerNode], keras: Any
) -> tuple[list[BatchNormLint], list[LintFinding]]:
    """(each built BN layer as the file says it, the findings of every rule) for a
    model and its layer tree. Reads the weights; changes nothing."""
    subject = read_subject(model, nodes, keras)
    findings: list[LintFinding] = []
    for check in CHECKS.values():
        findings += check(subject)
    return [summary(b) for b in subject.batchnorm], findings
