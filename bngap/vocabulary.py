"""The contract's fixed vocabularies: layer kinds, causes, severities, cause
groups, fit modes, inference paths.

Plain Python. Each word is an enum member that is also its plain string, so
JSON output and comparisons with literals are unchanged.
"""

from __future__ import annotations

import enum


class Vocabulary(str, enum.Enum):
    """A fixed set of words of the contract. Each member is its own string
    value: it compares, hashes, formats and serialises as the plain string, so
    JSON output and comparisons with literals are unchanged."""

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


class FitMode(Vocabulary):
    """How a layer behaves in fit() (`LayerRecord.fit_mode`)."""

    TRAINING = "training"
    INFERENCE = "inference"
    NOT_APPLICABLE = "n/a"  # the layer's output does not depend on the mode


class Group(Vocabulary):
    """The cause groups of the contract's `groups` decomposition."""

    BATCHNORM = "batchnorm"
    DROPOUT = "dropout"
    AUGMENTATION = "augmentation"
    OTHER = "other"


class InferencePath(Vocabulary):
    """The inference paths a leak check compares (`LeakCheck.path`)."""

    FORCED = "model(x, training=False)"  # every layer explicitly in inference mode
    NO_FLAG = "model(x)"  # the call without a `training` argument
    PREDICT = "predict(x)"  # Keras' own inference loop


def coerce(record, name: str, vocabulary: type[enum.Enum]) -> None:
    """Checks a frozen record's field against its vocabulary, storing the member.

    Raises:
        ValueError: the value is not a word of the vocabulary.
    """
    object.__setattr__(record, name, vocabulary(getattr(record, name)))


class Severity(str, enum.Enum):
    """How serious a finding or a BN audit is, `ok` < `info` < `warn` < `fail`."""

    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return ["ok", "info", "warn", "fail"].index(self.value)


class Cause(str, enum.Enum):
    """Why training and inference mode differ: the contract's cause ids."""

    STATS_NEVER_UPDATED = "stats_never_updated"
    STATS_NOT_CONVERGED = "stats_not_converged"
    PREPROCESSING_MISMATCH = "preprocessing_mismatch"
    DOMAIN_SHIFT = "domain_shift"
    DROPOUT_ONLY = "dropout_only"
    AUGMENTATION = "augmentation"
    SMALL_BATCH = "small_batch"
    MODE_LEAK = "mode_leak"
    BACKEND_DIVERGENCE = "backend_divergence"


class Kind(str, enum.Enum):
    """What makes a layer's output depend on the `training` flag."""

    BATCHNORM = "batchnorm"
    DROPOUT = "dropout"
    NOISE = "noise"
    AUGMENTATION = "augmentation"
    RECURRENT = "recurrent"
    CUSTOM_TRAINING_ARG = "custom_training_arg"
    OTHER = "other"

    @property
    def group(self) -> Group:
        """The cause group of the contract's `groups` decomposition."""
        return {
            "batchnorm": Group.BATCHNORM,
            "dropout": Group.DROPOUT,
            "noise": Group.DROPOUT,
            "recurrent": Group.DROPOUT,
            "augmentation": Group.AUGMENTATION,
        }.get(self.value, Group.OTHER)


GROUPS = tuple(g.value for g in Group)  # the `groups` keys, in the contract's order
