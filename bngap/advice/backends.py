"""The cross-backend finding (`backend_divergence`): the same file and data
give different numbers on different Keras backends."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import BackendRun, Finding
from ..vocabulary import Cause, Severity
from .common import fmt


def _what_diverged(r: BackendRun, ref: BackendRun, what: list[str]) -> tuple[str, bool]:
    """One backend's divergence in words, and whether it is past failing."""
    bits = []
    fail = False
    if "inference" in what:
        bits.append(
            f"inference outputs differ by max |diff| {fmt(r.max_abs_vs_first)} "
            f"(relative L2 {fmt(r.relative_l2_vs_first)})"
        )
        fail |= (r.relative_l2_vs_first or 0.0) > 1e-3
    if "training" in what:
        bits.append(
            "with BatchNormalization in training mode, outputs differ by relative L2 "
            f"{fmt(r.training_relative_l2_vs_first)}"
        )
        fail |= (r.training_relative_l2_vs_first or 0.0) > 1e-2
    if "gap" in what:
        bits.append(
            f"the BatchNormalization gap is {fmt(r.batchnorm_gap)} against {fmt(ref.batchnorm_gap)}"
        )
        fail |= abs((r.batchnorm_gap or 0.0) - (ref.batchnorm_gap or 0.0)) > 0.05
    where = ""
    if r.first_divergent_layer:
        where = (
            f"; the first layer where they part: {r.first_divergent_layer} "
            f"({r.first_divergent_mode} mode, relative L2 {fmt(r.first_divergent_relative_l2)})"
        )
    return f"on {r.backend}, " + "; ".join(bits) + where, fail


def _torch_variance(bad: Sequence[BackendRun]) -> BackendRun | None:
    """A torch run that first parts at a BN layer in training mode: the
    signature of its E[x^2] - E[x]^2 batch variance."""
    return next(
        (
            r
            for r in bad
            if r.backend == "torch"
            and r.first_divergent_mode == "training"
            and r.first_divergent_class == "BatchNormalization"
        ),
        None,
    )


def _report_remedy(
    runs: Sequence[BackendRun],
    bad: Sequence[BackendRun],
    worst: BackendRun,
    variance: BackendRun | None,
    keras_version: str | None,
) -> str:
    """Trust the training backend; what to send Keras; the variance workaround."""
    versions = ", ".join(
        ([f"keras {keras_version}"] if keras_version else [])
        + [f"{r.backend} {r.version}" for r in runs if r.version]
    )
    layer = worst.first_divergent_layer
    names = ",".join(r.backend for r in [runs[0], *bad])
    return (
        f"Trust the numbers of the backend the model was trained on for now. Report it to "
        f"Keras (github.com/keras-team/keras/issues) with: the output of `bngap check MODEL "
        f"DATA --backends {names} --format markdown`; the versions ({versions}); "
        + (
            f"a minimal reproduction with layer {layer} alone, called on the same input on "
            f"each backend ({worst.first_divergent_mode} mode); "
            if layer
            else "the model file or a minimal model that shows it; "
        )
        + "and the inputs (a few samples are enough)."
        + (
            f" Meanwhile, centre and scale the input of {variance.first_divergent_layer} (e.g. "
            "a Normalization layer adapted to the data before it): with a mean near zero "
            "the variance keeps its precision."
            if variance is not None
            else ""
        )
    )


def backend_divergence(
    runs: Sequence[BackendRun],
    diverged: dict[str, list[str]],
    *,
    tolerance: tuple[float, float],
    dtype: str,
    keras_version: str | None,
) -> Finding | None:
    """A `backend_divergence` finding when a backend's inference outputs, its
    outputs with BN in training mode, or its BN gap differ from the first
    backend's beyond float tolerance; None when they all agree.

    `diverged` maps each backend to what of it diverged ('inference',
    'training', 'gap'); `runs[0]` is the reference backend.
    """
    bad = [r for r in runs if diverged.get(r.backend)]
    if not bad:
        return None
    ref = runs[0]
    told = [_what_diverged(r, ref, diverged[r.backend]) for r in bad]
    fail = any(f for _, f in told)
    worst = max(
        bad, key=lambda r: (r.relative_l2_vs_first or 0.0, r.training_relative_l2_vs_first or 0.0)
    )
    message = (
        f"The Keras backends disagree beyond {dtype} rounding (tolerance {tolerance[0]:g} of "
        f"the largest output in inference mode, {tolerance[1]:g} in training mode) against "
        f"{ref.backend}: " + ". ".join(p for p, _ in told) + ". The same file and data give "
        "different numbers depending on the backend, so part of what this report says may "
        "come from the backend, not from the model."
    )
    variance = _torch_variance(bad)
    if variance is not None:
        message += (
            f" Likely why: Keras' PyTorch backend computes a batch's variance as "
            f"E[x^2] - E[x]^2, which in {dtype} loses the spread when the mean is large "
            f"against it; the other backends subtract the mean first."
        )
    evidence = {
        r.backend: {
            "diverged": list(diverged.get(r.backend, [])),
            "max_abs_vs_first": r.max_abs_vs_first,
            "relative_l2_vs_first": r.relative_l2_vs_first,
            "training_relative_l2_vs_first": r.training_relative_l2_vs_first,
            "batchnorm_gap": r.batchnorm_gap,
            "first_divergent_layer": r.first_divergent_layer,
        }
        for r in runs
    }
    return Finding(
        Cause.BACKEND_DIVERGENCE,
        Severity.FAIL if fail else Severity.WARN,
        worst.first_divergent_layer,
        message,
        _report_remedy(runs, bad, worst, variance, keras_version),
        evidence,
    )
