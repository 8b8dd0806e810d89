"""The BN audit's formulas against independent numpy computations and a
simulation; degenerate channels; the severity rules. No TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bngap.audit import (
    FAIL_GAP, WARN_GAP, BatchNormParams, audit_layer, clean_gap, compare_channels, estimated_updates,
    init_mixture, is_never_updated, local_gap, noise_of_gap, severity_of,
)
from bngap.results import Severity
from bngap.stats import ChannelMoments, SplitMoments


def params(mm, mv, gamma=None, beta=None, eps=1e-3, momentum=0.99, init=(0.0, 1.0)):
    mm, mv = np.asarray(mm, float), np.asarray(mv, float)
    return BatchNormParams("bn", None if gamma is None else np.asarray(gamma, float),
                           None if beta is None else np.asarray(beta, float), mm, mv, eps, momentum,
                           True, -1, False, False, init[0], init[1])


def moments_of(x: np.ndarray) -> SplitMoments:
    """SplitMoments of (N, C) samples, one element per example."""
    sm = SplitMoments()
    sm.add_examples(np.ones_like(x), x, np.zeros_like(x))
    return sm


def expected_gap(mu, v, mm, mv, gamma, beta, eps):
    z = (mu - mm) / np.sqrt(mv + eps)
    rho = (v + eps) / (mv + eps)
    w = v / (v + eps)
    num = gamma ** 2 * (z ** 2 + w * (np.sqrt(rho) - 1) ** 2)
    den = gamma ** 2 * (w * rho + z ** 2) + 2 * gamma * beta * z + beta ** 2
    return z, np.log2(rho), math.sqrt(num.sum() / den.sum())


def test_channel_comparison_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 0.5], [2.0, 0.5, 1.0], (4000, 3))
    p = params([0.2, -1.0, 0.5], [1.0, 1.0, 0.25], gamma=[1.5, 0.5, 1.0], beta=[0.1, -0.2, 0.0])
    mom = moments_of(x).total
    cs = compare_channels(p, mom)
    z, l2r, gap = expected_gap(x.mean(0), x.var(0), p.moving_mean, p.moving_variance, p.gamma, p.beta, p.epsilon)
    np.testing.assert_allclose(cs.z, z, rtol=1e-12)
    np.testing.assert_allclose(cs.log2_ratio, l2r, rtol=1e-12)
    assert local_gap(cs) == pytest.approx(gap, rel=1e-12)


def test_local_gap_matches_a_simulation():
    """Normalise samples with data statistics and with moving statistics, as
    BatchNormalization does: the relative RMS difference is the local gap."""
    rng = np.random.default_rng(1)
    mu, sd = np.array([3.0, -1.0, 0.0, 10.0]), np.array([1.0, 2.0, 0.3, 5.0])
    x = rng.normal(mu, sd, (200000, 4))
    gamma, beta, eps = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.0, 0.5, -1.0, 0.2]), 1e-3
    mm, mv = np.array([2.0, 0.0, 0.1, 4.0]), np.array([2.0, 3.0, 0.04, 10.0])
    y_data = gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta
    y_move = gamma * (x - mm) / np.sqrt(mv + eps) + beta
    simulated = np.linalg.norm(y_data - y_move) / np.linalg.norm(y_move)
    cs = compare_channels(params(mm, mv, gamma, beta, eps), moments_of(x).total)
    assert local_gap(cs) == pytest.approx(simulated, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 300), momentum=st.sampled_from([0.9, 0.99, 0.999]), seed=st.integers(0, 100))
def test_init_mixture_recovers_the_update_count(k, momentum, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-5, 5, 8), rng.uniform(0.1, 4, 8), (64, 8))
    mom = moments_of(x).total
    a = momentum ** k
    p = params(a * 0.0 + (1 - a) * mom.mean, a * 1.0 + (1 - a) * mom.variance, momentum=momentum)
    frac, spread = init_mixture(p, mom, compare_channels(p, mom))
    if frac is None:  # every channel's data happen to sit on the initial values
        return
    assert frac == pytest.approx(a, abs=1e-9)
    assert spread < 1e-9
    upd = estimated_updates(frac, momentum)
    if a > 0.02:
        assert upd == pytest.approx(k, rel=1e-6)
    else:
        assert upd is None  # converged: the count is no longer measurable


def test_statistics_from_other_data_are_not_a_mixture():
    rng = np.random.default_rng(3)
    x = rng.normal(rng.uniform(-3, 3, 16), rng.uniform(0.5, 3, 16), (256, 16))
    p = params(rng.normal(0, 2, 16), rng.uniform(0.2, 5, 16))
    rec = audit_layer(p, moments_of(x), 0, True)
    assert rec.init_fraction is None and rec.estimated_updates is None


@pytest.mark.parametrize("mv,eps,data", [
    ([1e-36, 1.0], 1e-3, None),          # moving variance 1e-36, as seen in real models
    ([1e-36, 1.0], 0.0, None),           # ... with epsilon 0
    ([1.0, 1.0], 0.0, "constant"),       # a constant channel with epsilon 0
    ([1.0, 1.0], 1e-3, "denormal"),      # denormal data
])
def test_degenerate_channels_stay_finite(mv, eps, data):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, (50, 2))
    if data == "constant":
        x[:, 0] = 3.0
    if data == "denormal":
        x[:, 1] = 1e-310 * rng.random(50)
    rec = audit_layer(params([0.0, 0.0], mv, eps=eps), moments_of(x), 0, True)
    for v in (rec.median_abs_z, rec.max_abs_z, rec.median_abs_log2_var_ratio, rec.expected_local_gap):
        assert math.isfinite(v)
    assert rec.severity in Severity
    if data == "constant":  # variance 0 + epsilon 0: nothing to compare, left out
        assert rec.degenerate_channels == 1
    else:
        assert rec.degenerate_channels == 0


def test_zero_count_channels_are_degenerate():
    mom = ChannelMoments(np.array([0.0, 10.0]), np.array([0.0, 1.0]), np.array([0.0, 5.0]), 10)
    cs = compare_channels(params([0, 0], [1, 1]), mom)
    assert cs.degenerate.tolist() == [True, False]


def test_healthy_layer_is_ok_and_never_updated_fails():
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (300, 16))
    healthy = audit_layer(params(np.full(16, 2.0), np.full(16, 9.0)), moments_of(x), 0, True)
    assert healthy.severity is Severity.OK and not healthy.never_updated
    never = audit_layer(params(np.zeros(16), np.ones(16)), moments_of(x), 0, True)
    assert never.never_updated and never.severity is Severity.FAIL
    assert never.init_fraction == pytest.approx(1.0) and never.estimated_updates == 0.0


def test_one_sample_has_no_noise_measure_and_no_hard_verdict():
    x = np.array([[5.0, -5.0, 7.0]])
    rec = audit_layer(params([0, 0, 0], [1, 1, 1]), moments_of(x), 0, True)
    assert rec.noise_local_gap is None
    assert rec.severity is not Severity.FAIL


def test_noise_of_gap_shrinks_with_more_samples():
    rng = np.random.default_rng(7)
    p = params(np.zeros(32), np.ones(32))
    noise = []
    for n in (16, 256, 4096):
        sm = moments_of(rng.normal(0, 1, (n, 32)))
        noise.append(noise_of_gap(p, sm.halves, compare_channels(p, sm.total)))
    assert noise[0] > noise[1] > noise[2]
    assert noise[2] < 0.05


@pytest.mark.parametrize("gap,noise,never,sev", [
    (0.1, 0.01, False, Severity.OK),
    (WARN_GAP + 0.01, 0.01, False, Severity.WARN),
    (FAIL_GAP + 0.01, 0.01, False, Severity.FAIL),
    (FAIL_GAP + 0.01, 0.4, False, Severity.OK),      # within twice its noise
    (WARN_GAP + 0.05, 0.01, True, Severity.FAIL),    # never updated: no benefit of the doubt
    (FAIL_GAP + 0.5, None, False, Severity.WARN),    # no noise measure: no hard verdict
])
def test_severity_rules(gap, noise, never, sev):
    assert severity_of(gap, noise, never) is sev


def test_clean_gap_removes_noise_in_quadrature():
    assert clean_gap(0.5, 0.3) == pytest.approx(0.4)
    assert clean_gap(0.2, 0.3) == 0.0
    assert clean_gap(0.2, None) == 0.2


def test_never_updated_needs_exact_initial_values():
    assert is_never_updated(params([0, 0], [1, 1]))
    assert not is_never_updated(params([0, 1e-9], [1, 1]))
    assert not is_never_updated(params([0, 0], [1, 1], init=(None, None)))
