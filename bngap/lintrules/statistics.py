"""Lint rules on the stored moving statistics: never updated, bad variances, tiny epsilon."""

from __future__ import annotations

import math

import numpy as np

from ..advice.common import bn_count, name_list, verb
from ..linting import LintFinding, Rule
from ..vocabulary import Severity
from .subject import BNLayer, Subject

NEAR_ZERO_SCALE = 1e-6  # variance + epsilon below this: 1/sqrt() amplifies by over 1000
TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: below it, subnormal


def _initial_constant(init) -> float | None:
    from ..backend import initializer_constant

    return initializer_constant(init)


def never_updated(s: Subject) -> list[LintFinding]:
    """`never_updated`: moving statistics still exactly their initial constants."""
    hits = []
    for b in s.batchnorm:
        m0 = _initial_constant(b.layer.moving_mean_initializer)
        v0 = _initial_constant(b.layer.moving_variance_initializer)
        if m0 is None or v0 is None or b.var.size == 0:
            continue
        if np.all(b.mean == m0) and np.all(b.var == v0):
            hits.append((b, m0, v0))
    if not hits:
        return []
    b, m0, v0 = hits[0]
    paths = [h[0].path for h in hits]
    everyone = len(hits) == len(s.batchnorm)
    return [
        LintFinding(
            Rule.NEVER_UPDATED,
            Severity.FAIL,
            paths[0],
            f"{bn_count(len(hits))} ({name_list(paths)}) "
            f"{verb(len(hits), 'still holds', 'still hold')} the exact initial moving "
            f"statistics (mean {m0:g}, variance {v0:g} in every channel): they were never updated. "
            "In inference mode (evaluate(), predict()) they normalise with these constants instead "
            "of the data's statistics"
            + (
                ", so the model was most likely never trained in training mode, or its statistics "
                "were never saved."
                if everyone
                else "."
            ),
            "Train with the BatchNormalization layers in training mode (a custom loop must call "
            "model(x, training=True)), or re-estimate the statistics on representative data: "
            "bngap fix MODEL DATA -o fixed.keras.",
            tuple(paths),
            {"initial_mean": m0, "initial_variance": v0},
        )
    ]


def bad_variance(s: Subject) -> list[LintFinding]:
    """`bad_variance`: a fail for variances that cannot normalise (negative or
    not finite), a warning for zero or subnormal ones."""
    bad, odd = [], []
    counts: dict[str, dict[str, int]] = {}
    for b in s.batchnorm:
        c = _odd_channels(b)
        if c["not_finite"] or c["negative"]:
            bad.append(b)
        elif c["zero"] or c["subnormal"]:
            odd.append(b)
        if any(c.values()):
            counts[b.path] = {k: v for k, v in c.items() if v}
    return _cannot_normalise(bad, counts) + _near_zero(odd, counts)


def _odd_channels(b: BNLayer) -> dict[str, int]:
    """How many channels of one layer hold each kind of unusable statistic."""
    return {
        "not_finite": int(
            np.count_nonzero(~np.isfinite(b.var)) + np.count_nonzero(~np.isfinite(b.mean))
        ),
        "negative": int(np.count_nonzero(b.var < 0)),
        "zero": int(np.count_nonzero(b.var == 0)),
        "subnormal": int(np.count_nonzero((b.var != 0) & (np.abs(b.var) < TINY))),
    }


def _describe(group: list[BNLayer], counts: dict[str, dict[str, int]]) -> str:
    """The first three layers' odd channels, by kind, and how many layers more."""
    return "; ".join(
        f"{b.path}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts[b.path].items())
        for b in group[:3]
    ) + (f"; and {len(group) - 3} more layers" if len(group) > 3 else "")


def _cannot_normalise(bad: list[BNLayer], counts: dict[str, dict[str, int]]) -> list[LintFinding]:
    if not bad:
        return []
    return [
        LintFinding(
            Rule.BAD_VARIANCE,
            Severity.FAIL,
            bad[0].path,
            f"{bn_count(len(bad))} {verb(len(bad), 'has', 'have')} moving statistics that "
            f"cannot normalise: {_describe(bad, counts)} "
            "channels (a negative or non-finite variance makes the inference output NaN or "
            "meaningless). Training went numerically wrong, or the weights were converted badly.",
            "Re-estimate the statistics on representative data (bngap fix MODEL DATA -o "
            "fixed.keras), and look for the overflow or the faulty conversion that produced them.",
            tuple(b.path for b in bad),
            {"channels": {b.path: counts[b.path] for b in bad}},
        )
    ]


def _near_zero(odd: list[BNLayer], counts: dict[str, dict[str, int]]) -> list[LintFinding]:
    if not odd:
        return []
    return [
        LintFinding(
            Rule.BAD_VARIANCE,
            Severity.WARN,
            odd[0].path,
            f"{bn_count(len(odd))} {verb(len(odd), 'has', 'have')} a moving variance of zero or "
            f"subnormal (below {TINY:.3g}) in some channels: {_describe(odd, counts)}. Unless "
            "those channels' inputs are constant (dead channels), inference mode divides their "
            "spread by sqrt(epsilon) and amplifies it.",
            "Check what feeds those channels; re-estimate the statistics on representative data "
            "(bngap fix MODEL DATA -o fixed.keras).",
            tuple(b.path for b in odd),
            {"channels": {b.path: counts[b.path] for b in odd}},
        )
    ]


def _epsilon_effect(eps: float, low: float | None, broken: bool) -> str:
    if broken:
        return "1 / sqrt(variance + epsilon) is infinite (a division by zero) in some channels."
    if low is not None and low + eps < NEAR_ZERO_SCALE:
        return (
            f"1 / sqrt(variance + epsilon) reaches {1 / math.sqrt(low + eps):.3g}, so tiny "
            "input differences become large output differences."
        )
    return (
        "nothing guards the division: a channel whose variance reaches zero (a dead "
        "channel, or statistics re-estimated on constant inputs) divides by zero."
    )


def epsilon_too_small(s: Subject) -> list[LintFinding]:
    """`epsilon_too_small`: epsilon 0 or below, or too small for the smallest variance."""
    hits = []
    for b in s.batchnorm:
        eps = float(b.layer.epsilon)
        finite = b.var[np.isfinite(b.var)]
        low = float(finite.min()) if finite.size else None
        if eps <= 0 or (low is not None and low + eps < NEAR_ZERO_SCALE and eps < NEAR_ZERO_SCALE):
            hits.append((b, eps, low))
    if not hits:
        return []
    broken = [h for h in hits if h[2] is not None and h[2] + h[1] <= 0]
    b, eps, low = (broken or hits)[0]
    return [
        LintFinding(
            Rule.EPSILON_TOO_SMALL,
            Severity.FAIL if broken else Severity.WARN,
            b.path,
            f"{bn_count(len(hits))} ({name_list(h[0].path for h in hits)}) "
            f"{verb(len(hits), 'has', 'have')} epsilon {eps:g}"
            + (f" and a smallest moving variance of {low:.3g}" if low is not None else "")
            + ": "
            + _epsilon_effect(eps, low, bool(broken)),
            "Use an epsilon of 1e-5 to 1e-3 (the Keras default is 1e-3; keras.applications use 1e-3 "
            "or 1.001e-5).",
            tuple(h[0].path for h in hits),
            {
                "epsilon": {h[0].path: h[1] for h in hits},
                "variance_min": {h[0].path: h[2] for h in hits},
            },
        )
    ]
