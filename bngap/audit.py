"""BatchNormalization audit: moving statistics against the statistics of the
input each layer actually receives, per channel, with their own noise.

Plain numpy. For a channel with data mean/variance (mu, v) and moving
mean/variance (m, s2), BN's inference output differs from the output it
would give with the data's own statistics by

    E[(y_data - y_moving)^2] = gamma^2 * (z^2 + v/(v+eps) * (sqrt(rho) - 1)^2)

with z = (mu - m) / sqrt(s2 + eps) and rho = (v + eps) / (s2 + eps). Relative
to E[y_moving^2] this is the layer's *expected local gap*: what a training-mode
pass with large batches would show as the layer's own contribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .records import BatchNormRecord, ChannelDeviation
from .stats import ChannelMoments, SplitMoments, robust_summary
from .vocabulary import Severity

WARN_GAP = 0.25  # expected local gap (debiased) at which a layer is flagged
FAIL_GAP = 0.6
NOISE_FACTOR = 2.0  # a gap below this many times its own noise is not flagged
CONVERGED_FRACTION = 0.02  # init share below which a layer counts as converged
MIXTURE_SPREAD = 0.25  # per-channel init-share estimates must agree this well (relative)
MIXTURE_FLOOR = 0.01  # ... give or take this much (estimation noise)
IDENTIFIABLE = 0.3  # standardised distance data -> initial values that says something
MOVING_FIT = 0.5  # median misfit of the mixture in the moving statistics' own scale


@dataclass
class BatchNormParams:
    """A BatchNormalization layer's configuration and current statistics."""

    path: str
    gamma: np.ndarray | None
    beta: np.ndarray | None
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    epsilon: float
    momentum: float
    trainable: bool
    axis: int
    renorm: bool
    synchronized: bool
    init_mean: float | None  # constant the moving mean was initialised to, if known
    init_variance: float | None
    # Renorm layers: the statistics training mode normalises with (unclipped,
    # (x - renorm_mean) / renorm_stddev); None for plain BN.
    renorm_mean: np.ndarray | None = None
    renorm_stddev: np.ndarray | None = None


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel comparison of data and moving statistics."""

    z: np.ndarray
    log2_ratio: np.ndarray
    sqrt_rho: np.ndarray
    weight: np.ndarray  # v / (v + eps)
    degenerate: np.ndarray  # channels excluded from the summaries
    gap_num: np.ndarray  # gamma^2 (z^2 + w (sqrt(rho)-1)^2)
    gap_den: np.ndarray  # E[y_moving^2] per channel


def compare_channels(p: BatchNormParams, mom: ChannelMoments) -> ChannelStats:
    """Per-channel z, variance ratio and gap terms (degenerate channels zeroed)."""
    eps = p.epsilon
    mu, v = mom.mean, mom.variance
    mm, mv = p.moving_mean, p.moving_variance
    gamma = np.ones_like(mu) if p.gamma is None else p.gamma
    beta = np.zeros_like(mu) if p.beta is None else p.beta
    den_m = mv + eps
    den_d = v + eps
    degenerate = ~(
        np.isfinite(den_m)
        & np.isfinite(den_d)
        & (den_m > 0)
        & (den_d > 0)
        & np.isfinite(mm)
        & np.isfinite(mu)
        & (mom.count > 0)
    )
    safe_m = np.where(degenerate, 1.0, den_m)
    safe_d = np.where(degenerate, 1.0, den_d)
    with np.errstate(all="ignore"):
        z = np.where(degenerate, 0.0, (mu - mm) / np.sqrt(safe_m))
        rho = np.where(degenerate, 1.0, safe_d / safe_m)
        w = np.where(degenerate, 0.0, np.clip(v, 0.0, None) / safe_d)
        sqrt_rho = np.sqrt(rho)
        log2_ratio = np.log2(rho)
        g2 = gamma * gamma
        num = g2 * (z * z + w * (sqrt_rho - 1.0) ** 2)
        den = g2 * (w * rho + z * z) + 2.0 * gamma * beta * z + beta * beta
    num = np.where(np.isfinite(num), num, 0.0)
    den = np.where(np.isfinite(den), np.maximum(den, 0.0), 0.0)
    return ChannelStats(z, log2_ratio, sqrt_rho, w, degenerate, num, den)


def local_gap(cs: ChannelStats) -> float:
    """Relative RMS gap of the layer's output: moving vs data statistics."""
    num, den = float(cs.gap_num.sum()), float(cs.gap_den.sum())
    if num <= 0.0:
        return 0.0
    return math.sqrt(num / den) if den > 0 else math.inf


def noise_of_gap(
    p: BatchNormParams, halves: list[ChannelMoments], full: ChannelStats
) -> float | None:
    """The gap that sampling noise alone would produce, from the disagreement
    of the two interleaved halves of the data (None with fewer than 2 samples
    in either half)."""
    if len(halves) != 2 or min(h.examples for h in halves) < 1:
        return None
    a, b = compare_channels(p, halves[0]), compare_channels(p, halves[1])
    gamma = np.ones_like(full.z) if p.gamma is None else p.gamma
    ok = ~(a.degenerate | b.degenerate | full.degenerate)
    dz = np.where(ok, (a.z - b.z) / 2.0, 0.0)
    dr = np.where(ok, (a.sqrt_rho - b.sqrt_rho) / 2.0, 0.0)
    noise_num = float(np.sum(gamma * gamma * (dz * dz + full.weight * dr * dr)))
    den = float(full.gap_den.sum())
    if den <= 0:
        return None
    return math.sqrt(max(noise_num, 0.0) / den)


def init_mixture(
    p: BatchNormParams, mom: ChannelMoments, cs: ChannelStats
) -> tuple[float | None, float]:
    """How much of the initial moving statistics remains, if that explains them.

    After k updates with momentum m, every channel's moving statistics are
    ``a * initial + (1 - a) * data`` with the same ``a = m**k``. Each channel
    whose data statistics are far enough from the initial values gives its
    own estimate of ``a`` (from the mean and from the variance); their
    median is the answer and their median absolute deviation says whether
    the model fits: statistics estimated on other data scatter widely.

    Returns:
        (a clipped to [0, 1], or None when no channel can tell; the median
        absolute deviation of the per-channel estimates).
    """
    if p.init_mean is None or p.init_variance is None:
        return None, math.inf
    ok = ~cs.degenerate
    if not np.any(ok):
        return None, math.inf
    var = mom.variance[ok]
    s = np.sqrt(var + p.epsilon)
    dm = (p.init_mean - mom.mean[ok]) / s  # standardised distance init -> data
    dv = (p.init_variance - var) / (var + p.epsilon)
    with np.errstate(all="ignore"):
        am = (p.moving_mean[ok] - mom.mean[ok]) / s / dm
        av = (p.moving_variance[ok] - var) / (var + p.epsilon) / dv
    est = np.concatenate([am, av])
    dist = np.abs(np.concatenate([dm, dv]))
    # A channel whose data sit near the initial values says nothing; the
    # others count equally, so one extreme channel cannot hide the scatter.
    keep = np.isfinite(est) & (dist >= IDENTIFIABLE)
    if not np.any(keep):
        return None, math.inf
    est = est[keep]
    a = float(np.median(est))
    spread = float(np.median(np.abs(est - a)))
    return min(max(a, 0.0), 1.0), spread


def mixture_reproduces_moving(
    p: BatchNormParams, mom: ChannelMoments, cs: ChannelStats, a: float
) -> bool:
    """Whether ``a * initial + (1 - a) * data`` lands on the moving statistics
    in their own scale, not only in the data's: statistics learnt on data a
    hundred times smaller look like the initial 0 and 1 from far away, yet
    miss them by orders of magnitude up close."""
    # a comes from init_mixture, which answers only when both are known
    assert p.init_mean is not None and p.init_variance is not None
    ok = ~cs.degenerate
    pred_mean = a * p.init_mean + (1 - a) * mom.mean[ok]
    pred_var = a * p.init_variance + (1 - a) * mom.variance[ok]
    with np.errstate(all="ignore"):
        off_mean = np.abs(p.moving_mean[ok] - pred_mean) / np.sqrt(pred_var + p.epsilon)
        off_var = np.abs(np.log((p.moving_variance[ok] + p.epsilon) / (pred_var + p.epsilon)))
    off_mean, off_var = off_mean[np.isfinite(off_mean)], off_var[np.isfinite(off_var)]
    if not off_mean.size or not off_var.size:
        return False
    return float(np.median(off_mean)) <= MOVING_FIT and float(np.median(off_var)) <= MOVING_FIT


def estimated_updates(fraction: float | None, momentum: float) -> float | None:
    """Updates k with momentum**k == fraction (None when not measurable)."""
    if fraction is None or not 0.0 < momentum < 1.0:
        return None
    if fraction >= 1.0:
        return 0.0
    if fraction <= CONVERGED_FRACTION:
        return None
    return math.log(fraction) / math.log(momentum)


def is_never_updated(p: BatchNormParams) -> bool:
    """Moving statistics still exactly equal to their initial constants."""
    if p.init_mean is None or p.init_variance is None:
        return False
    return bool(
        np.all(p.moving_mean == p.init_mean) and np.all(p.moving_variance == p.init_variance)
    )


def clean_gap(gap: float, noise: float | None) -> float:
    """The gap with the part that sampling noise explains removed."""
    if noise is None:
        return gap
    return math.sqrt(max(gap * gap - noise * noise, 0.0))


def severity_of(gap: float, noise: float | None, never_updated: bool) -> Severity:
    """ok / warn / fail from the debiased expected local gap."""
    if noise is not None and gap < NOISE_FACTOR * noise:
        return Severity.OK
    clean = clean_gap(gap, noise)
    if clean >= FAIL_GAP or (never_updated and clean >= WARN_GAP):
        sev = Severity.FAIL
    elif clean >= WARN_GAP:
        sev = Severity.WARN
    else:
        return Severity.OK
    if noise is None and sev is Severity.FAIL:
        return Severity.WARN  # one sample: no measure of noise, no hard verdict
    return sev


def _renorm_training_gap(p: BatchNormParams, total: ChannelMoments) -> float | None:
    """A renorm layer's expected local gap for the statistics training mode
    uses: renorm_mean and renorm_stddev (as a variance: stddev**2 - eps, the
    way Keras derives the moving variance), against the data's."""
    if not p.renorm or p.renorm_mean is None or p.renorm_stddev is None:
        return None
    as_moving = replace(
        p,
        moving_mean=p.renorm_mean,
        moving_variance=np.maximum(p.renorm_stddev**2 - p.epsilon, 0.0),
    )
    return local_gap(compare_channels(as_moving, total))


def _consistent_fraction(
    p: BatchNormParams, total: ChannelMoments, cs: ChannelStats, frac: float | None, spread: float
) -> float | None:
    """The initial share `frac` when the channels agree on it and the mixture
    lands on the moving statistics; else None."""
    # Only a consistent fit says how many updates the statistics saw.
    # The agreement that matters is on the smaller of the two shares: a layer
    # 97% initial must agree on the 3% it moved, or it is something else (for
    # instance statistics from other data that sit near 0 and 1 next to these).
    return (
        frac
        if frac is not None
        and spread <= MIXTURE_FLOOR + MIXTURE_SPREAD * min(frac, 1.0 - frac)
        and mixture_reproduces_moving(p, total, cs, frac)
        else None
    )


def _worst_channels(cs: ChannelStats, worst: int) -> tuple[ChannelDeviation, ...]:
    """The `worst` channels by their share of the gap (degenerate and
    gap-free channels left out)."""
    order_idx = np.argsort(-cs.gap_num)[:worst]
    return tuple(
        ChannelDeviation(int(i), float(cs.z[i]), float(cs.log2_ratio[i]))
        for i in order_idx
        if not cs.degenerate[i] and cs.gap_num[i] > 0
    )


def audit_layer(
    p: BatchNormParams,
    moments: SplitMoments,
    order: int,
    fit_uses_batch_stats: bool | None,
    worst: int = 3,
) -> BatchNormRecord:
    """The audit record of one BN layer from its parameters and input moments."""
    total = moments.total
    cs = compare_channels(p, total)
    ok = ~cs.degenerate
    mz = robust_summary(np.abs(cs.z[ok]))
    ml = robust_summary(np.abs(cs.log2_ratio[ok]))
    gap = local_gap(cs)
    noise = noise_of_gap(p, moments.halves, cs)
    never = is_never_updated(p)
    frac, spread = init_mixture(p, total, cs)
    fraction = _consistent_fraction(p, total, cs, frac, spread)
    return BatchNormRecord(
        training_stats_gap=_renorm_training_gap(p, total),
        path=p.path,
        order=order,
        trainable=p.trainable,
        momentum=p.momentum,
        epsilon=p.epsilon,
        channels=int(cs.z.shape[0]),
        axis=p.axis,
        median_abs_z=mz[0],
        p95_abs_z=mz[1],
        max_abs_z=mz[2],
        median_abs_log2_var_ratio=ml[0],
        p95_abs_log2_var_ratio=ml[1],
        max_abs_log2_var_ratio=ml[2],
        expected_local_gap=gap,
        noise_local_gap=noise,
        never_updated=never,
        init_fraction=fraction,
        estimated_updates=estimated_updates(fraction, p.momentum),
        fit_uses_batch_stats=fit_uses_batch_stats,
        severity=severity_of(gap, noise, never),
        samples=int(total.examples),
        degenerate_channels=int(cs.degenerate.sum()),
        worst_channels=_worst_channels(cs, worst),
        renorm=p.renorm,
        synchronized=p.synchronized,
        data_mean_abs=float(np.median(np.abs(total.mean[ok]))) if ok.any() else 0.0,
        data_std=float(np.median(np.sqrt(total.variance[ok]))) if ok.any() else 0.0,
        init_mean=p.init_mean,
        init_variance=p.init_variance,
        init_share_estimate=frac,
        init_share_spread=spread if math.isfinite(spread) else None,
    )
