"""Typed, immutable result records of a check, and their JSON form.

Plain Python: no Keras here. Renderers and the exit-code policy read these
records; nothing else does I/O with them.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .errors import ExitStatus

SCHEMA_VERSION = "1"
LEAK_TOLERANCE = 1e-4  # relative L2 below this is float noise between inference paths


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
    NO_FLAG = "model(x)"                 # the call without a `training` argument
    PREDICT = "predict(x)"               # Keras' own inference loop


def _coerce(record, name: str, vocabulary: type[enum.Enum]) -> None:
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


@dataclass(frozen=True)
class ModelSummary:
    """The model checked: its file, class, size, and input/output shapes
    (batch dimension as None) and names. `layers` counts the layers of the
    layer tree (nested ones too); `dropout_like_layers` the Dropout and noise
    ones; `parameters` is count_params()."""

    path: str
    name: str
    class_name: str
    layers: int
    batchnorm_layers: int
    dropout_like_layers: int
    parameters: int
    input_shapes: tuple
    output_shapes: tuple
    input_names: tuple = ()
    output_names: tuple = ()


@dataclass(frozen=True)
class DataSummary:
    """The data used: where from (its path or paths), how many
    samples, whether labels came with them, the input shapes, and the batching
    (`batches` batches of `batch_size`, the last one `last_batch_size`).
    `notes` are remarks made while reading it (ignored keys and the like)."""

    path: str
    samples: int
    has_labels: bool
    input_shapes: tuple
    batch_size: int
    batches: int
    last_batch_size: int
    notes: tuple = ()


@dataclass(frozen=True)
class GapEntry:
    """The train-vs-eval gap of one model output."""

    name: str
    relative_l2: float
    max_abs: float
    top1_agreement: float | None


@dataclass(frozen=True)
class OutputGap:
    """The train-vs-eval gap of the model's outputs over all samples:
    relative L2 (||train - eval|| / ||eval||), the largest absolute difference,
    and the share of samples whose top-1 class agrees (None for outputs that
    are not classes); `per_output` for a model with several outputs."""

    relative_l2: float
    max_abs: float
    top1_agreement: float | None
    per_output: tuple[GapEntry, ...] = ()


@dataclass(frozen=True)
class OutputMetrics:
    """Loss and accuracy of one output of a multi-output model, both modes."""

    name: str
    train: dict
    eval: dict
    loss_name: str
    source: str
    weight: float = 1.0  # its loss weight in the total


@dataclass(frozen=True)
class Metrics:
    """Loss and accuracy on the user's labels, in both modes. For a model
    with several outputs, `loss` is the weighted total evaluate() reports and
    `per_output` holds each labelled output's own loss and accuracy."""

    train: dict
    eval: dict
    loss_name: str
    source: str  # "compiled" (the model's own loss) or "inferred"
    per_output: tuple[OutputMetrics, ...] = ()


@dataclass(frozen=True)
class LayerRecord:
    """One layer of the model (at any depth, path joined with `/`) as the
    check saw it. Divergences and effects are relative L2 norms, train vs eval;
    None where the layer was not measured. `fit_*` say how the layer behaves
    in fit() and why; `calls` counts its calls per forward pass."""

    path: str
    class_name: str
    kind: Kind
    order: int                     # first call in the inference pass; -1 if never called
    depth: int                     # nesting depth (0 = direct child of the model)
    divergence: float | None       # relative L2 of this layer's output, train vs eval
    own_contribution: float | None  # same input, two modes (mode-dependent layers)
    output_effect: float | None    # output gap with only this layer in training mode
    mode_dependent: bool = False
    trainable: bool = True
    fit_training: bool | None = None   # the `training` value it received in a fit()-like pass
    fit_mode: FitMode = FitMode.NOT_APPLICABLE  # how it behaves in fit()
    fit_mode_reason: str = ""
    calls: int = 0
    caller_training: bool | None = None  # `training` written in the graph call of it or its sub-model

    def __post_init__(self) -> None:
        _coerce(self, "fit_mode", FitMode)


@dataclass(frozen=True)
class ChannelDeviation:
    """One channel of a BN layer: its index, the data mean's shift from the
    moving mean in moving standard deviations (z), and log2 of data variance
    over moving variance."""

    index: int
    z: float
    log2_var_ratio: float


@dataclass(frozen=True)
class BatchNormRecord:
    """The audit of one BatchNormalization layer: its moving statistics
    against the statistics of the input it receives on the data.

    Per channel, z = (data mean - moving mean) / sqrt(moving variance + eps)
    and log2 var = log2((data variance + eps) / (moving variance + eps));
    `median_/p95_/max_abs_*` summarise their absolute values over channels
    (degenerate channels, with zero or non-finite variance, left out and
    counted in `degenerate_channels`). `order` is the call order, `samples`
    the number of values per channel the data statistics rest on (samples
    times spatial positions), `severity` the audit's verdict on the layer.
    `never_updated`: the moving statistics are still exactly their initial
    constants; `estimated_updates`: how many moving-average updates at this
    momentum leave `init_fraction` of them (None when the channels disagree);
    `fit_uses_batch_stats`: whether fit() normalises this layer with batch
    statistics (None when not known)."""

    path: str
    order: int
    trainable: bool
    momentum: float
    epsilon: float
    channels: int
    axis: int
    median_abs_z: float
    p95_abs_z: float
    max_abs_z: float
    median_abs_log2_var_ratio: float
    p95_abs_log2_var_ratio: float
    max_abs_log2_var_ratio: float
    expected_local_gap: float      # relative RMS change of this layer's output, moving vs data stats
    noise_local_gap: float | None  # the same quantity's own sampling noise (split-half)
    never_updated: bool
    init_fraction: float | None    # share of the initial 0/1 still in the moving statistics
    estimated_updates: float | None
    fit_uses_batch_stats: bool | None
    severity: Severity
    samples: int
    degenerate_channels: int
    worst_channels: tuple[ChannelDeviation, ...] = ()
    renorm: bool = False
    synchronized: bool = False
    data_mean_abs: float = 0.0     # median |data mean| and data std, for the reader
    data_std: float = 0.0
    init_mean: float | None = None            # the constants the statistics started from
    init_variance: float | None = None
    init_share_estimate: float | None = None  # median per-channel initial share, consistent or not
    init_share_spread: float | None = None    # its median absolute deviation across channels
    training_stats_gap: float | None = None   # renorm: the same gap for the renorm statistics fit() uses


@dataclass(frozen=True)
class Finding:
    """One diagnosis in plain words: the cause, how serious it is, the layer
    where it shows (None for the whole model), what is wrong (`message`), what
    to do (`remedy`), and the numbers it rests on (`evidence`)."""

    cause: Cause
    severity: Severity
    layer: str | None
    message: str
    remedy: str
    evidence: dict = field(default_factory=dict)
    explains: float | None = None  # share of the fit/evaluate output gap it explains (0..1)


@dataclass(frozen=True)
class LeakCheck:
    """A comparison of another inference path against model(x, training=False)."""

    path: InferencePath
    relative_l2: float | None
    layers_in_training: tuple[str, ...] = ()
    samples: int = 0
    skipped: str = ""

    def __post_init__(self) -> None:
        _coerce(self, "path", InferencePath)

    @property
    def is_leak(self) -> bool:
        """A layer ran in training mode, or the output moved beyond float noise."""
        return bool(self.layers_in_training) or (
            self.relative_l2 is not None and self.relative_l2 > LEAK_TOLERANCE)


@dataclass(frozen=True)
class PreprocessingProbe:
    """What the first BN layers say about the input's scale and offset:
    their mismatch on the data as given and after each candidate transform."""

    input_min: float
    input_max: float
    input_mean: float
    layers: tuple[str, ...]            # the BN layers examined
    baseline_gap: float                # their mean expected local gap as given
    candidates: tuple[tuple[str, float], ...] = ()  # (transform, gap after it)
    best: str | None = None            # a transform that removes most of the mismatch


@dataclass(frozen=True)
class BackendRun:
    """The same check on one Keras backend (a process of its own), compared
    with the first backend's: inference outputs on the same samples, and each
    layer's output on the first batch."""

    backend: str
    version: str | None = None               # the backend library's version
    relative_l2: float | None = None         # its output gap, train vs inference
    max_abs_vs_first: float | None = None    # inference outputs against the first backend's
    relative_l2_vs_first: float | None = None
    metrics: dict | None = None              # {"train": {...}, "eval": {...}} with labels
    first_divergent_layer: str | None = None  # first layer beyond float tolerance of the first backend's
    error: str | None = None                 # why this backend could not run the check
    first_divergent_mode: str | None = None  # "inference" or "training" (BN only), where it was seen
    first_divergent_relative_l2: float | None = None
    first_divergent_class: str | None = None  # its layer class (BatchNormalization, ...)
    training_relative_l2_vs_first: float | None = None  # first batch, only BN in training mode
    batchnorm_gap: float | None = None       # output gap with only BN in training mode (deterministic)
    compared_samples: int = 0
    seconds: float | None = None


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
        return any(v is not None for v in (self.output_gap, self.loss_delta, self.accuracy_drop,
                                           self.warn_above, self.max_regression))


@dataclass(frozen=True)
class Baseline:
    """An earlier report of the same model family (`--baseline OLD.json`):
    its numbers, shown side by side with this run's."""

    path: str                      # the baseline report file
    model_path: str                # the model it was made from
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
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION or not isinstance(
                d.get("output_gap"), dict):
            raise ValueError("not a bngap check report (schema version 1)")
        g = d["output_gap"]
        m = d.get("metrics")
        findings = d.get("findings") or []
        return cls(
            path=str(path), model_path=str((d.get("model") or {}).get("path", "")),
            relative_l2=_opt_float(g.get("relative_l2")), max_abs=_opt_float(g.get("max_abs")),
            top1_agreement=_opt_float(g.get("top1_agreement")),
            metrics=None if not isinstance(m, dict) else _build(Metrics, m),
            verdict=str(d.get("verdict", "")),
            top_cause=findings[0].get("cause") if findings and isinstance(findings[0], dict) else None,
            flagged_batchnorm=sum(1 for b in d.get("batchnorm") or []
                                  if isinstance(b, dict) and b.get("severity") in ("warn", "fail")),
        )


# Values are compared as they are displayed, so a printed 0.0500 never fails
# a 0.05 threshold.
DISPLAY_DECIMALS = 4


def format_number(v: float | None, digits: int = DISPLAY_DECIMALS) -> str:
    """A number as reports print it: fixed decimals, scientific when tiny or huge."""
    if v is None:
        return "n/a"
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
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
    backends: tuple[BackendRun, ...] = ()  # with --backends: one run per backend, the first is this one

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
        drops = [o.train["accuracy"] - o.eval["accuracy"] for o in self.metrics.per_output
                 if "accuracy" in o.train and "accuracy" in o.eval]
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
        return ("output_gap",) if exceeds(self.output_gap.relative_l2, self.thresholds.warn_above) else ()

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
        return next((b for b in self.batchnorm if b.severity in (Severity.WARN, Severity.FAIL)), None)

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
                "path": m.path, "name": m.name, "class_name": m.class_name,
                "layers": m.layers, "batchnorm_layers": m.batchnorm_layers,
                "dropout_like_layers": m.dropout_like_layers, "parameters": m.parameters,
                "input_shapes": [list(s) for s in m.input_shapes],
                "output_shapes": [list(s) for s in m.output_shapes],
                "input_names": list(m.input_names), "output_names": list(m.output_names),
            },
            "data": {
                "path": d.path, "samples": d.samples, "has_labels": d.has_labels,
                "input_shapes": [list(s) for s in d.input_shapes],
                "batch_size": d.batch_size, "batches": d.batches,
                "last_batch_size": d.last_batch_size, "notes": list(d.notes),
            },
            "output_gap": {
                "relative_l2": _num(g.relative_l2), "max_abs": _num(g.max_abs),
                "top1_agreement": _num(g.top1_agreement),
                "per_output": [_plain(e) for e in g.per_output],
            },
            "metrics": None if self.metrics is None else {
                "train": {k: _num(v) for k, v in self.metrics.train.items()},
                "eval": {k: _num(v) for k, v in self.metrics.eval.items()},
                "loss_name": self.metrics.loss_name, "source": self.metrics.source,
                "per_output": [_plain(o) for o in self.metrics.per_output],
            },
            "groups": {k: _num(self.groups.get(k, 0.0)) for k in GROUPS},
            "layers": [_plain(r) for r in self.layers],
            "batchnorm": [_plain(r) for r in self.batchnorm],
            "first_flagged_batchnorm": (self.first_flagged_batchnorm.path
                                        if self.first_flagged_batchnorm else None),
            "findings": [_plain(f) for f in self.findings],
            "leaks": [_plain(x) for x in self.leaks],
            "preprocessing": None if self.preprocessing is None else _plain(self.preprocessing),
            "thresholds": _plain(self.thresholds),
            "settings": _plain(self.settings),
            "notes": list(self.notes),
            "environment": dict(self.environment),
            "seconds": _num(self.seconds),
            "warned": list(self.warned),
            "baseline": None if self.baseline is None else {
                **_plain(self.baseline), "regression": _num(self.regression)},
            **({"backends": [_plain(b) for b in self.backends]} if self.backends else {}),
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
                baseline = _build(Baseline, {k: v for k, v in baseline.items() if k != "regression"})
            explicit = {"model", "data", "output_gap", "metrics", "groups", "layers", "batchnorm", "findings",
                        "leaks", "preprocessing", "thresholds", "settings", "notes", "environment", "seconds",
                        "baseline"}
            # Fields added later whose key is the field's name come back by their type.
            hints = typing.get_type_hints(cls)
            later = {f.name: _typed(hints[f.name], d[f.name]) for f in fields(cls)
                     if f.name not in explicit and f.name in d}
            return cls(
                **later,
                model=_build(ModelSummary, m),
                data=_build(DataSummary, dd),
                output_gap=_build(OutputGap, g),
                metrics=None if d.get("metrics") is None else _build(Metrics, d["metrics"]),
                groups=dict(d.get("groups") or {}),
                layers=tuple(_build(LayerRecord, x) for x in d.get("layers") or []),
                batchnorm=tuple(_build(BatchNormRecord, x) for x in d.get("batchnorm") or []),
                findings=tuple(_build(Finding, x) for x in d.get("findings") or []),
                leaks=tuple(_build(LeakCheck, x) for x in d.get("leaks") or []),
                preprocessing=(None if d.get("preprocessing") is None
                               else _build(PreprocessingProbe, d["preprocessing"])),
                thresholds=_build(Thresholds, d.get("thresholds") or {}),
                settings=dict(d.get("settings") or {}),
                notes=tuple(d.get("notes") or ()),
                environment=dict(d.get("environment") or {}),
                seconds=math.nan if d.get("seconds") is None else d["seconds"],
                baseline=baseline,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a readable bngap check report: {type(e).__name__}: {e}") from None


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def _build(cls, d: dict):
    """A dataclass record from its `_plain` form: enums, nested records and
    tuples restored from their field types; keys the record does not know
    (written by a newer bngap) are ignored, missing ones take defaults."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _typed(hints[f.name], d[f.name]) for f in fields(cls) if f.name in d})


def _typed(tp, v):
    """`v` (a JSON value) as the annotated type `tp` expects it."""
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _typed(options[0], v) if len(options) == 1 else v
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], x) for x in v)
        if args:
            return tuple(_typed(a, x) for a, x in zip(args, v))
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    if isinstance(tp, type):
        if is_dataclass(tp):
            return _build(tp, v)
        if issubclass(tp, enum.Enum):
            return tp(v)
        if tp is tuple:  # shapes and the like: lists all the way down become tuples
            return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v


def _num(v):
    """Plain Python float for JSON; NaN and infinities become null."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    f = float(v)
    return f if math.isfinite(f) else None


def _plain(obj):
    """Dataclasses, enums, tuples and numpy scalars to JSON-ready values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bool, str)) or obj is None:
        return obj
    if isinstance(obj, (int, float)):
        return _num(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return _plain(obj.item())
    return str(obj)
