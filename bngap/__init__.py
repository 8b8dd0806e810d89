"""bngap: diagnose the gap between a Keras model's training-mode and
inference-mode outputs (BatchNormalization, Dropout, augmentation).

    >>> import bngap
    >>> report = bngap.check(model, x, y)       # doctest: +SKIP
    >>> report.ok, report.output_gap.relative_l2  # doctest: +SKIP

Importing bngap does not import TensorFlow; the first check does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "__version__",
    "check",
    "fix",
    "lint",
    "load_model",
    "CheckOptions",
    "Report",
    "Thresholds",
    "FixResult",
    "GapMonitor",
    "BngapError",
]

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import GapMonitor
    from .errors import BngapError
    from .fixresult import FixResult
    from .pipeline import CheckOptions
    from .results import Report, Thresholds


def check(model: Any, x: Any, y: Any = None, **options: Any) -> Report:
    """Measures and explains the gap between training and inference mode.

    Args:
        model: a Keras model or the path of a `.keras` / `.h5` file.
        x: inputs (array, or list/dict of arrays for several inputs) or the
            path of an .npz / .npy file or image folder.
        y: labels, optional (loss and accuracy are then reported in both modes).
        **options: fields of `bngap.CheckOptions` (batch_size, limit, seed,
            effects, thresholds, ...); `fail_above=0.05` is short for
            `thresholds=Thresholds(output_gap=0.05)`, `warn_above=0.02` for
            `Thresholds(warn_above=0.02)` (verdict "warn").

    Returns:
        A `Report`; `report.ok` is False when a threshold is exceeded or a
        finding is a failure. The model's variables are left bit-identical.

    Example:
        >>> assert bngap.check(model, x_val).ok   # doctest: +SKIP
    """
    from .pipeline import CheckOptions
    from .pipeline import check as _check
    from .results import Thresholds

    loss = options.pop("loss", None)
    gate = {
        k: options.pop(k)
        for k in ("fail_above", "fail_above_loss_delta", "fail_above_accuracy_drop", "warn_above")
        if k in options
    }
    if gate:
        options["thresholds"] = Thresholds(
            gate.get("fail_above"),
            gate.get("fail_above_loss_delta"),
            gate.get("fail_above_accuracy_drop"),
            gate.get("warn_above"),
        )
    return _check(model, x, y, options=CheckOptions(**options), loss=loss)


def fix(model: Any, x: Any, y: Any = None, **options: Any) -> FixResult:
    """Re-estimates every BatchNormalization layer's moving statistics as the
    exact population statistics of its input on `x` (PreciseBN), in
    dependency order, and measures the gap before and after.

    Args:
        model: a Keras model (its BN statistics are updated in place) or a
            model file path (then pass `output=` or `in_place=True`).
        x, y: data, as for `check`.
        **options: output, in_place, force, layers (globs), include_frozen,
            batch_size, limit, seed, unsafe, custom_objects, x_key, y_key,
            backend (tensorflow, jax or torch; Keras must not yet run on another).

    Returns:
        A `FixResult` (`before`, `after`, `helped`, per-layer records);
        `result.undo()` restores the statistics the model had before.

    Example:
        >>> result = bngap.fix(model, x_train[:512])   # doctest: +SKIP
        >>> result.before.relative_l2, result.after.relative_l2  # doctest: +SKIP
        >>> result.undo()   # the previous statistics, bit for bit  # doctest: +SKIP
    """
    from .recalibration import fix as _fix

    if "backend" in options:  # chosen before Keras is imported, as for check
        from .backend import import_keras

        import_keras(options.pop("backend"))
    return _fix(model, x, y, **options)


def lint(
    model: Any, *, fail_on: str = "fail", unsafe: bool = False, custom_objects: Any = None
) -> Any:
    """Data-free checks of a model's BatchNormalization layers (`bngap lint`).

    Args:
        model: a Keras model or the path of a `.keras` / `.h5` file (loaded
            safely unless `unsafe`).
        fail_on: "fail" or "warn": the severity that makes the verdict 'fail'.

    Returns:
        A `bngap.linting.LintReport`: `findings` (rule, severity, layer,
        message, remedy), every BN layer's momentum, epsilon and variance
        range, `verdict`, and `to_dict()` for JSON. Changes nothing.
    """
    from .linting import lint as _lint

    return _lint(model, fail_on=fail_on, unsafe=unsafe, custom_objects=custom_objects)


def load_model(path: Any, *, unsafe: bool = False, custom_objects_file: Any = None) -> Any:
    """Loads a `.keras` or `.h5` file as `bngap check` does: safely, and with
    the in-memory repairs that let Keras 3 run files written by Keras 2
    (TF-op layers, '/' in layer names, nested models; see the README).

    Use it to go on working with a legacy model in Keras 3, or to open a copy
    that `bngap fix` wrote of one (it may hold bngap's stand-ins for Keras 2's
    TF-op layers, which plain `keras.models.load_model` does not know).

    Returns:
        The Keras model (not compiled). What was repaired is logged as a
        warning.
    """
    import warnings

    from .loading import load_model as _load

    loaded = _load(path, unsafe=unsafe, custom_objects_file=custom_objects_file)
    for note in loaded.notes:
        warnings.warn(f"bngap: {note}", stacklevel=2)
    return loaded.model


def __getattr__(name: str):
    if name == "CheckOptions":
        from .pipeline import CheckOptions

        return CheckOptions
    if name in ("Report", "Thresholds"):
        from . import results

        return getattr(results, name)
    if name == "GapMonitor":
        from .callbacks import GapMonitor

        return GapMonitor
    if name == "FixResult":
        from .fixresult import FixResult

        return FixResult
    if name == "BngapError":
        from .errors import BngapError

        return BngapError
    raise AttributeError(f"module 'bngap' has no attribute {name!r}")
