"""The frozen records a check's report is made of: the model, the data, the
output gap, metrics, layers, BN audits, findings, leak checks, backend runs.

Plain Python: no Keras here. `results.Report` puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .vocabulary import Cause, FitMode, InferencePath, Kind, Severity, coerce

LEAK_TOLERANCE = 1e-4  # relative L2 below this is float noise between inference paths


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
    order: int  # first call in the inference pass; -1 if never called
    depth: int  # nesting depth (0 = direct child of the model)
    divergence: float | None  # relative L2 of this layer's output, train vs eval
    own_contribution: float | None  # same input, two modes (mode-dependent layers)
    output_effect: float | None  # output gap with only this layer in training mode
    mode_dependent: bool = False
    trainable: bool = True
    fit_training: bool | None = None  # the `training` value it received in a fit()-like pass
    fit_mode: FitMode = FitMode.NOT_APPLICABLE  # how it behaves in fit()
    fit_mode_reason: str = ""
    calls: int = 0
    caller_training: bool | None = (
        None  # `training` written in the graph call of it or its sub-model
    )

    def __post_init__(self) -> None:
        coerce(self, "fit_mode", FitMode)


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
    expected_local_gap: float  # relative RMS change of this layer's output, moving vs data stats
    noise_local_gap: float | None  # the same quantity's own sampling noise (split-half)
    never_updated: bool
    init_fraction: float | None  # share of the initial 0/1 still in the moving statistics
    estimated_updates: float | None
    fit_uses_batch_stats: bool | None
    severity: Severity
    samples: int
    degenerate_channels: int
    worst_channels: tuple[ChannelDeviation, ...] = ()
    renorm: bool = False
    synchronized: bool = False
    data_mean_abs: float = 0.0  # median |data mean| and data std, for the reader
    data_std: float = 0.0
    init_mean: float | None = None  # the constants the statistics started from
    init_variance: float | None = None
    init_share_estimate: float | None = None  # median per-channel initial share, consistent or not
    init_share_spread: float | None = None  # its median absolute deviation across channels
    training_stats_gap: float | None = (
        None  # renorm: the same gap for the renorm statistics fit() uses
    )


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
        coerce(self, "path", InferencePath)

    @property
    def is_leak(self) -> bool:
        """A layer ran in training mode, or the output moved beyond float noise."""
        return bool(self.layers_in_training) or (
            self.relative_l2 is not None and self.relative_l2 > LEAK_TOLERANCE
        )


@dataclass(frozen=True)
class PreprocessingProbe:
    """What the first BN layers say about the input's scale and offset:
    their mismatch on the data as given and after each candidate transform."""

    input_min: float
    input_max: float
    input_mean: float
    layers: tuple[str, ...]  # the BN layers examined
    baseline_gap: float  # their mean expected local gap as given
    candidates: tuple[tuple[str, float], ...] = ()  # (transform, gap after it)
    best: str | None = None  # a transform that removes most of the mismatch


@dataclass(frozen=True)
class BackendRun:
    """The same check on one Keras backend (a process of its own), compared
    with the first backend's: inference outputs on the same samples, and each
    layer's output on the first batch."""

    backend: str
    version: str | None = None  # the backend library's version
    relative_l2: float | None = None  # its output gap, train vs inference
    max_abs_vs_first: float | None = None  # inference outputs against the first backend's
    relative_l2_vs_first: float | None = None
    metrics: dict | None = None  # {"train": {...}, "eval": {...}} with labels
    first_divergent_layer: str | None = (
        None  # first layer beyond float tolerance of the first backend's
    )
    error: str | None = None  # why this backend could not run the check
    first_divergent_mode: str | None = (
        None  # "inference" or "training" (BN only), where it was seen
    )
    first_divergent_relative_l2: float | None = None
    first_divergent_class: str | None = None  # its layer class (BatchNormalization, ...)
    training_relative_l2_vs_first: float | None = None  # first batch, only BN in training mode
    batchnorm_gap: float | None = None  # output gap with only BN in training mode (deterministic)
    compared_samples: int = 0
    seconds: float | None = None
