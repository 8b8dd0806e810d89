"""The BatchNormalization audit (bngap.audit) on hand-built parameters and
moments: its formulas against an independent numpy computation and a
simulation, the initial-statistics mixture, degenerate channels and the
severity rules. No TensorFlow."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bngap.audit import (
    CONVERGED_FRACTION,
    FAIL_GAP,
    WARN_GAP,
    BatchNormParams,
    audit_layer,
    clean_gap,
    compare_channels,
    estimated_updates,
    init_mixture,
    is_never_updated,
    local_gap,
    noise_of_gap,
    severity_of,
)
from bngap.results import Severity
from bngap.stats import ChannelMoments, SplitMoments

# ----------------------------------------------------------------- helpers


def params(
    mm, mv, *, gamma=None, beta=None, eps=1e-3, momentum=0.99, init=(0.0, 1.0), path="bn"
) -> BatchNormParams:
    return BatchNormParams(
        path=path,
        gamma=None if gamma is None else np.asarray(gamma, np.float64),
        beta=None if beta is None else np.asarray(beta, np.float64),
        moving_mean=np.asarray(mm, np.float64),
        moving_variance=np.asarray(mv, np.float64),
        epsilon=eps,
        momentum=momentum,
        trainable=True,
        axis=-1,
        renorm=False,
        synchronized=False,
        init_mean=init[0],
        init_variance=init[1],
    )


def split_of(x: np.ndarray) -> SplitMoments:
    """SplitMoments of (N, ..., C) data: each example's own count/mean/M2, in numpy."""
    n, c = x.shape[0], x.shape[-1]
    flat = x.reshape(n, -1, c)
    mean = flat.mean(axis=1)
    m2 = ((flat - mean[:, None, :]) ** 2).sum(axis=1)
    sm = SplitMoments()
    sm.add_examples(np.full((n, c), float(flat.shape[1])), mean, m2)
    return sm


def population(mu, v, n: int = 10**6) -> ChannelMoments:
    """Moments with exactly these means and (population) variances."""
    mu, v = np.asarray(mu, np.float64), np.asarray(v, np.float64)
    return ChannelMoments(np.full(mu.shape, float(n)), mu.copy(), v * n, n)


def reference(mu, v, mm, mv, gamma, beta, eps):
    """z, log2 variance ratio, per-channel numerator/denominator and the
    expected local gap, written out from the module docstring's formula."""
    z = (mu - mm) / np.sqrt(mv + eps)
    rho = (v + eps) / (mv + eps)
    w = v / (v + eps)
    num = gamma**2 * (z**2 + w * (np.sqrt(rho) - 1.0) ** 2)
    den = gamma**2 * (w * rho + z**2) + 2.0 * gamma * beta * z + beta**2
    return z, np.log2(rho), num, den, math.sqrt(num.sum() / den.sum())


def finite_or_none(record) -> list[str]:
    """Names of the record's numeric fields that are NaN or infinite."""
    bad = []
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f.name)
    for ch in record.worst_channels:
        if not (math.isfinite(ch.z) and math.isfinite(ch.log2_var_ratio)):
            bad.append(f"worst_channels[{ch.index}]")
    return bad


# ------------------------------------------- formulas vs independent numpy


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 0.1])
def test_compare_channels_matches_numpy(eps):
    rng = np.random.default_rng(0)
    c = 16
    x = rng.normal(rng.normal(0, 2, c), rng.uniform(0.3, 3, c), (200, c))
    mom = split_of(x).total
    mu, v = x.mean(axis=0), x.var(axis=0)
    mm, mv = rng.normal(0, 2, c), rng.uniform(0.1, 5, c)
    gamma, beta = rng.normal(0, 1.5, c), rng.normal(0, 1, c)
    cs = compare_channels(params(mm, mv, gamma=gamma, beta=beta, eps=eps), mom)
    z, log2r, num, den, gap = reference(mu, v, mm, mv, gamma, beta, eps)
    np.testing.assert_allclose(cs.z, z, rtol=1e-10)
    np.testing.assert_allclose(cs.log2_ratio, log2r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cs.sqrt_rho, np.sqrt((v + eps) / (mv + eps)), rtol=1e-10)
    np.testing.assert_allclose(cs.weight, v / (v + eps), rtol=1e-10)
    np.testing.assert_allclose(cs.gap_num, num, rtol=1e-10)
    np.testing.assert_allclose(cs.gap_den, den, rtol=1e-10)
    assert not cs.degenerate.any()
    assert local_gap(cs) == pytest.approx(gap, rel=1e-10)


def test_missing_gamma_and_beta_mean_one_and_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, (100, 5))
    mom = split_of(x).total
    mm, mv = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    plain = compare_channels(params(mm, mv), mom)
    explicit = compare_channels(params(mm, mv, gamma=np.ones(5), beta=np.zeros(5)), mom)
    np.testing.assert_array_equal(plain.gap_num, explicit.gap_num)
    np.testing.assert_array_equal(plain.gap_den, explicit.gap_den)
    assert local_gap(compare_channels(params(mm, mv, beta=np.full(5, 3.0)), mom)) < local_gap(plain)


@settings(max_examples=50, deadline=None)
@given(c=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), eps=st.sampled_from([1e-5, 1e-3, 1e-1]))
def test_local_gap_formula_for_random_layers(c, seed, eps):
    rng = np.random.default_rng(seed)
    mu, v = rng.normal(0, 3, c), rng.uniform(0.0, 10, c)
    mm, mv = rng.normal(0, 3, c), rng.uniform(0.0, 10, c)
    gamma, beta = rng.normal(0, 2, c), rng.normal(0, 2, c)
    cs = compare_channels(params(mm, mv, gamma=gamma, beta=beta, eps=eps), population(mu, v))
    *_, gap = reference(mu, v, mm, mv, gamma, beta, eps)
    assert local_gap(cs) == pytest.approx(gap, rel=1e-9)
    assert np.all(cs.gap_den >= 0) and np.all(cs.gap_num >= 0)


def test_local_gap_equals_the_empirical_gap_exactly():
    """On the sample itself (statistics with ddof=0) the expectation is an
    exact identity: ||y_data - y_moving|| / ||y_moving|| == local_gap."""
    rng = np.random.default_rng(2)
    c, eps = 8, 1e-3
    x = rng.normal(rng.normal(0, 2, c), rng.uniform(0.2, 3, c), (500, c))
    mm, mv = rng.normal(0, 2, c), rng.uniform(0.1, 4, c)
    gamma, beta = rng.normal(1, 0.5, c), rng.normal(0, 0.5, c)
    mu, v = x.mean(axis=0), x.var(axis=0)
    y_data = gamma * (x - mu) / np.sqrt(v + eps) + beta
    y_moving = gamma * (x - mm) / np.sqrt(mv + eps) + beta
    empirical = np.linalg.norm(y_data - y_moving) / np.linalg.norm(y_moving)
    cs = compare_channels(params(mm, mv, gamma=gamma, beta=beta, eps=eps), split_of(x).total)
    assert local_gap(cs) == pytest.approx(empirical, rel=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_local_gap_matches_a_simulation(seed):
    """Draw x ~ N(mu, v) per channel, normalise it with the true and with the
    moving statistics: the relative RMS difference is the expected local gap."""
    rng = np.random.default_rng(seed)
    c, eps, n = 6, 1e-3, 100_000
    mu, v = rng.normal(0, 2, c), rng.uniform(0.2, 4, c)
    mm, mv = mu + rng.normal(0, 1, c), v * rng.uniform(0.3, 3, c)
    gamma, beta = rng.uniform(0.5, 2, c), rng.normal(0, 0.5, c)
    x = rng.normal(mu, np.sqrt(v), (n, c))
    y_data = gamma * (x - mu) / np.sqrt(v + eps) + beta
    y_moving = gamma * (x - mm) / np.sqrt(mv + eps) + beta
    simulated = np.linalg.norm(y_data - y_moving) / np.linalg.norm(y_moving)
    gap = local_gap(
        compare_channels(params(mm, mv, gamma=gamma, beta=beta, eps=eps), population(mu, v))
    )
    assert gap > 0.1  # a real gap, not a trivially small one
    assert gap == pytest.approx(simulated, rel=0.02)


def test_moving_equal_to_data_is_no_gap():
    rng = np.random.default_rng(5)
    x = rng.normal(3, 2, (64, 4, 4, 8))
    mom = split_of(x).total
    cs = compare_channels(
        params(mom.mean, mom.variance, gamma=rng.normal(size=8), beta=rng.normal(size=8)), mom
    )
    assert local_gap(cs) == 0.0
    np.testing.assert_array_equal(cs.z, 0.0)
    np.testing.assert_array_equal(cs.log2_ratio, 0.0)


def test_output_that_is_zero_in_inference_mode_has_an_unbounded_gap():
    # Constant input (v = 0) that BN maps exactly to 0 with the moving
    # statistics: any change is infinitely large relative to it.
    mom = population([1.0], [0.0])
    cs = compare_channels(
        params([0.0], [1.0 - 1e-3], beta=[-1.0]), mom
    )  # z = 1, gamma z + beta = 0
    assert cs.gap_den[0] == pytest.approx(0.0, abs=1e-12)
    assert local_gap(cs) == math.inf or local_gap(cs) > 1e5


# ------------------------------------------------------------ noise_of_gap


def test_noise_formula_from_the_halves():
    rng = np.random.default_rng(6)
    c, eps = 10, 1e-3
    x = rng.normal(1, 2, (40, 3, 3, c))
    sm = split_of(x)
    mm, mv, gamma = rng.normal(size=c), rng.uniform(0.5, 3, c), rng.normal(1, 0.3, c)
    p = params(mm, mv, gamma=gamma, eps=eps)
    cs = compare_channels(p, sm.total)
    even, odd = x[0::2].reshape(-1, c), x[1::2].reshape(-1, c)
    za, zb = (even.mean(0) - mm) / np.sqrt(mv + eps), (odd.mean(0) - mm) / np.sqrt(mv + eps)
    ra, rb = np.sqrt((even.var(0) + eps) / (mv + eps)), np.sqrt((odd.var(0) + eps) / (mv + eps))
    v = x.reshape(-1, c).var(0)
    num = np.sum(gamma**2 * (((za - zb) / 2) ** 2 + v / (v + eps) * ((ra - rb) / 2) ** 2))
    *_, den, _ = reference(x.reshape(-1, c).mean(0), v, mm, mv, gamma, np.zeros(c), eps)
    assert noise_of_gap(p, sm.halves, cs) == pytest.approx(math.sqrt(num / den.sum()), rel=1e-9)


def test_identical_halves_have_no_noise():
    x = np.random.default_rng(7).normal(size=(20, 4))
    sm = split_of(np.repeat(x, 2, axis=0))  # example i appears at 2i (even) and 2i+1 (odd)
    p = params(np.zeros(4), np.ones(4))
    assert noise_of_gap(p, sm.halves, compare_channels(p, sm.total)) == pytest.approx(
        0.0, abs=1e-12
    )


def test_noise_shrinks_like_one_over_root_n():
    c = 64
    p = params(np.full(c, 1.5), np.full(c, 6.0))
    noise = []
    for n in (400, 1600, 6400):
        x = np.random.default_rng(8).normal(2, 3, (n, c))
        sm = split_of(x)
        noise.append(noise_of_gap(p, sm.halves, compare_channels(p, sm.total)))
    assert 0.35 < noise[1] / noise[0] < 0.65
    assert 0.35 < noise[2] / noise[1] < 0.65


def test_no_noise_without_two_halves():
    x = np.random.default_rng(9).normal(size=(1, 8, 8, 3))
    sm = split_of(x)
    p = params(np.zeros(3), np.ones(3))
    cs = compare_channels(p, sm.total)
    assert noise_of_gap(p, sm.halves, cs) is None
    assert noise_of_gap(p, [], cs) is None


# ------------------------------------------------------------ init_mixture


def mixed_layer(a: float, c: int = 16, seed: int = 10, momentum: float = 0.99, eps: float = 1e-3):
    """A layer whose moving statistics are exactly a * (0, 1) + (1 - a) * data."""
    rng = np.random.default_rng(seed)
    mu = rng.choice([-1, 1], c) * rng.uniform(2, 5, c)
    x = rng.normal(mu, rng.uniform(np.sqrt(3), 3, c), (64, 2, 2, c))
    sm = split_of(x)
    tot = sm.total
    p = params(
        a * 0.0 + (1 - a) * tot.mean, a * 1.0 + (1 - a) * tot.variance, momentum=momentum, eps=eps
    )
    return p, sm


@pytest.mark.parametrize(
    "momentum,k", [(0.99, 1), (0.99, 5), (0.99, 50), (0.99, 150), (0.9, 3), (0.9, 30)]
)
def test_mixture_recovers_the_initial_share(momentum, k):
    a = momentum**k
    p, sm = mixed_layer(a, momentum=momentum)
    frac, spread = init_mixture(p, sm.total, compare_channels(p, sm.total))
    assert abs(frac - a) < 1e-6 and spread < 1e-6
    assert estimated_updates(frac, momentum) == pytest.approx(k, abs=1e-3)
    rec = audit_layer(p, sm, 0, True)
    assert rec.init_fraction == pytest.approx(a, abs=1e-6)
    assert rec.estimated_updates == pytest.approx(k, abs=1e-3)
    assert rec.init_share_estimate == pytest.approx(a, abs=1e-6)
    assert not rec.never_updated


def test_one_odd_channel_does_not_move_the_estimate():
    # The per-channel estimates are combined by their median: one channel
    # with unrelated statistics neither shifts the share nor hides the fit.
    a = 0.99**20
    p, sm = mixed_layer(a)
    p.moving_mean[5] = 40.0 * sm.total.mean[5]
    p.moving_variance[5] = 30.0 * sm.total.variance[5]
    frac, spread = init_mixture(p, sm.total, compare_channels(p, sm.total))
    assert abs(frac - a) < 1e-6 and spread < 1e-6
    assert audit_layer(p, sm, 0, True).estimated_updates == pytest.approx(20, abs=1e-3)


def test_converged_statistics_have_no_update_count():
    a = 0.9**60  # 0.0018: below CONVERGED_FRACTION
    assert a < CONVERGED_FRACTION
    p, sm = mixed_layer(a, momentum=0.9)
    rec = audit_layer(p, sm, 0, True)
    assert rec.init_fraction == pytest.approx(a, abs=1e-6)
    assert rec.estimated_updates is None


@pytest.mark.parametrize("seed", range(5))
def test_statistics_from_unrelated_data_are_not_a_mixture(seed):
    rng = np.random.default_rng(100 + seed)
    c = 16
    x = rng.normal(rng.normal(0, 3, c), rng.uniform(0.5, 3, c), (300, c))
    p = params(rng.normal(0, 2, c), rng.uniform(0.2, 5, c))
    sm = split_of(x)
    frac, spread = init_mixture(p, sm.total, compare_channels(p, sm.total))
    assert frac is None or spread > 0.01 + 0.25 * min(frac, 1 - frac)
    assert audit_layer(p, sm, 0, None).init_fraction is None


def test_data_at_the_initial_values_cannot_tell():
    x = np.random.default_rng(11).normal(0.0, 1.0, (4000, 4))
    p = params(np.full(4, 0.3), np.full(4, 0.8))
    sm = split_of(x)
    assert init_mixture(p, sm.total, compare_channels(p, sm.total)) == (None, math.inf)
    assert audit_layer(p, sm, 0, None).init_share_spread is None


def test_unknown_initial_values_give_no_mixture():
    p, sm = mixed_layer(0.5)
    p = dataclasses.replace(p, init_mean=None, init_variance=None)
    assert init_mixture(p, sm.total, compare_channels(p, sm.total)) == (None, math.inf)
    assert not is_never_updated(p)


@pytest.mark.parametrize(
    "fraction,momentum,expected",
    [
        (None, 0.99, None),
        (1.0, 0.99, 0.0),
        (0.99**5, 0.99, 5.0),
        (0.5, 0.5, 1.0),
        (0.25, 0.5, 2.0),
        (CONVERGED_FRACTION, 0.99, None),  # converged: the count is no longer measurable
        (0.5, 0.0, None),
        (0.5, 1.0, None),
    ],
)
def test_estimated_updates(fraction, momentum, expected):
    got = estimated_updates(fraction, momentum)
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-9))


def test_is_never_updated_needs_exact_initial_values():
    assert is_never_updated(params(np.zeros(3), np.ones(3)))
    assert not is_never_updated(params([0.0, 0.0, 1e-7], np.ones(3)))
    assert not is_never_updated(params(np.zeros(3), [1.0, 1.0, 0.9999999]))
    assert is_never_updated(params(np.full(3, 0.5), np.full(3, 2.0), init=(0.5, 2.0)))


# ---------------------------------------------------- severity and clean gap


def test_clean_gap():
    assert clean_gap(0.5, None) == 0.5
    assert clean_gap(0.5, 0.3) == pytest.approx(0.4)
    assert clean_gap(0.3, 0.5) == 0.0


@pytest.mark.parametrize(
    "gap,noise,never,expected",
    [
        (0.10, 0.01, False, Severity.OK),
        (WARN_GAP, 0.0, False, Severity.WARN),
        (0.30, 0.01, False, Severity.WARN),
        (FAIL_GAP, 0.0, False, Severity.FAIL),
        (0.70, 0.01, False, Severity.FAIL),
        (0.70, 0.40, False, Severity.OK),  # below twice its own noise
        (0.65, 0.30, False, Severity.WARN),  # debiased: sqrt(0.65^2 - 0.3^2) = 0.577 < FAIL_GAP
        (0.30, 0.01, True, Severity.FAIL),  # never updated: the warn level fails
        (0.20, 0.01, True, Severity.OK),
        (0.70, None, False, Severity.WARN),  # one sample: no hard verdict
        (0.30, None, True, Severity.WARN),
        (0.10, None, False, Severity.OK),
        (math.inf, 0.1, False, Severity.FAIL),
    ],
)
def test_severity_of(gap, noise, never, expected):
    assert severity_of(gap, noise, never) is expected


# ------------------------------------------------------------ audit_layer


def test_audit_record_summaries_match_numpy():
    rng = np.random.default_rng(12)
    c = 12
    x = rng.normal(rng.normal(0, 2, c), rng.uniform(0.5, 2, c), (128, 3, 3, c))
    mm, mv = rng.normal(0, 1, c), rng.uniform(0.3, 3, c)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c)
    p = params(mm, mv, gamma=gamma, beta=beta, path="block/bn")
    rec = audit_layer(p, split_of(x), 7, True, worst=4)
    flat = x.reshape(-1, c)
    z, log2r, num, _, gap = reference(flat.mean(0), flat.var(0), mm, mv, gamma, beta, 1e-3)
    assert (rec.path, rec.order, rec.channels, rec.samples, rec.axis) == ("block/bn", 7, c, 128, -1)
    assert rec.median_abs_z == pytest.approx(np.median(np.abs(z)), rel=1e-9)
    assert rec.p95_abs_z == pytest.approx(np.percentile(np.abs(z), 95), rel=1e-9)
    assert rec.max_abs_z == pytest.approx(np.max(np.abs(z)), rel=1e-9)
    assert rec.median_abs_log2_var_ratio == pytest.approx(np.median(np.abs(log2r)), rel=1e-9)
    assert rec.max_abs_log2_var_ratio == pytest.approx(np.max(np.abs(log2r)), rel=1e-9)
    assert rec.expected_local_gap == pytest.approx(gap, rel=1e-9)
    assert [ch.index for ch in rec.worst_channels] == list(np.argsort(-num)[:4])
    assert rec.worst_channels[0].z == pytest.approx(z[np.argmax(num)], rel=1e-9)
    assert rec.data_std == pytest.approx(np.median(flat.std(0)), rel=1e-9)
    assert rec.degenerate_channels == 0 and rec.fit_uses_batch_stats is True


def test_healthy_layer_is_ok():
    rng = np.random.default_rng(13)
    c = 16
    mu, sd = rng.normal(0, 3, c), rng.uniform(0.5, 3, c)
    earlier = rng.normal(mu, sd, (300, c))  # what the moving statistics saw
    x = rng.normal(mu, sd, (300, c))  # the data now, same distribution
    rec = audit_layer(params(earlier.mean(0), earlier.var(0)), split_of(x), 0, True)
    assert rec.severity is Severity.OK
    assert rec.noise_local_gap is not None and rec.expected_local_gap < 3 * rec.noise_local_gap
    assert rec.expected_local_gap < WARN_GAP
    assert not rec.never_updated and rec.init_fraction is None
    assert finite_or_none(rec) == []


def test_never_updated_layer_fails():
    x = np.random.default_rng(14).normal(5.0, 3.0, (256, 4, 4, 8))
    rec = audit_layer(params(np.zeros(8), np.ones(8)), split_of(x), 0, True)
    assert rec.never_updated and rec.severity is Severity.FAIL
    assert rec.expected_local_gap > FAIL_GAP
    assert rec.init_fraction == pytest.approx(1.0) and rec.estimated_updates == 0.0
    assert rec.median_abs_z == pytest.approx(5.0 / math.sqrt(1 + 1e-3), rel=0.02)
    assert rec.median_abs_log2_var_ratio == pytest.approx(math.log2(9 / (1 + 1e-3)), rel=0.02)


def test_one_sample_is_never_a_hard_failure():
    x = np.random.default_rng(15).normal(5.0, 3.0, (1, 8, 8, 4))
    rec = audit_layer(params(np.zeros(4), np.ones(4)), split_of(x), 0, True)
    assert rec.samples == 1 and rec.noise_local_gap is None
    assert rec.expected_local_gap > FAIL_GAP and rec.never_updated
    assert rec.severity is not Severity.FAIL
    assert rec.severity is Severity.WARN


@pytest.mark.parametrize("eps,expected_degenerate", [(1e-3, 1), (0.0, 3)])
@pytest.mark.parametrize("constant", [0.75, 0.7])
def test_degenerate_channels_stay_finite(eps, expected_degenerate, constant):
    """Channels: 0 healthy-ish, 1 moving variance 1e-36, 2 zero data
    variance, 3 no elements at all (count 0), 4 moving variance exactly 0.

    A constant 0.75 has an exactly zero merged variance; a constant 0.7 a
    rounding residue (~1e-32), which with eps = 0 is a tiny but real
    variance: only finiteness is asserted for it."""
    rng = np.random.default_rng(16)
    n, c = 32, 5
    x = rng.normal(1.0, 2.0, (n, 4, c))
    x[..., 2] = constant  # constant input
    counts = np.full((n, c), 4.0)
    counts[:, 3] = 0.0  # masked out everywhere
    mean = x.mean(axis=1)
    m2 = ((x - mean[:, None, :]) ** 2).sum(axis=1)
    mean[:, 3], m2[:, 3] = 0.0, 0.0
    sm = SplitMoments()
    sm.add_examples(counts[:13], mean[:13], m2[:13])
    sm.add_examples(counts[13:], mean[13:], m2[13:])
    p = params([0.5, 0.2, 0.1, 0.0, 0.3], [1.0, 1e-36, 1.0, 1.0, 0.0], eps=eps)
    cs = compare_channels(p, sm.total)
    for arr in (cs.z, cs.log2_ratio, cs.sqrt_rho, cs.weight, cs.gap_num, cs.gap_den):
        assert np.all(np.isfinite(arr))
    # eps > 0: only the empty channel; eps = 0 also zero data variance and zero moving variance.
    if constant == 0.75:
        assert int(cs.degenerate.sum()) == expected_degenerate
    assert cs.degenerate[3] and cs.degenerate[4] == (eps == 0.0)
    rec = audit_layer(p, sm, 0, True)
    assert rec.degenerate_channels == int(cs.degenerate.sum())
    assert finite_or_none(rec) == []
    assert rec.noise_local_gap is not None
    assert all(not cs.degenerate[ch.index] for ch in rec.worst_channels)


def test_all_channels_empty():
    sm = SplitMoments()
    sm.add_examples(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3)))
    rec = audit_layer(params(np.zeros(3), np.ones(3)), sm, 0, None)
    assert rec.degenerate_channels == 3 and rec.samples == 0
    assert rec.expected_local_gap == 0.0 and rec.noise_local_gap is None
    assert rec.severity is Severity.OK and rec.worst_channels == ()
    assert finite_or_none(rec) == []


def test_nonfinite_parameters_are_degenerate_not_nan():
    x = np.random.default_rng(17).normal(1.0, 1.0, (50, 4))
    p = params([0.0, np.nan, np.inf, 0.0], [1.0, 1.0, 1.0, np.nan], gamma=[1.0, 1.0, 1.0, 1.0])
    rec = audit_layer(p, split_of(x), 0, None)
    assert rec.degenerate_channels == 3
    assert finite_or_none(rec) == []


# ---------------------------------------------- merged from test_audit_math.py


def test_denormal_data_stays_finite():
    """Input values around 1e-310 (float64 subnormals): their squares underflow."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, (50, 2))
    x[:, 1] = 1e-310 * rng.random(50)
    rec = audit_layer(params([0.0, 0.0], [1.0, 1.0]), split_of(x), 0, True)
    assert finite_or_none(rec) == []
    assert rec.degenerate_channels == 0 and rec.severity in Severity
