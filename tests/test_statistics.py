"""Streaming statistics against one-shot numpy, for any split of the data
(hypothesis), and degenerate inputs. No TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from bngap.stats import ChannelMoments, GapAccumulator, SplitMoments, relative_l2, robust_summary, top1

FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def per_example(x: np.ndarray, w: np.ndarray | None = None):
    """count, mean, M2 per example and channel of (N, S, C) data, numpy only."""
    if w is None:
        w = np.ones(x.shape[:2])
    n = w.sum(axis=1)[:, None].repeat(x.shape[2], axis=1)
    mean = np.einsum("ns,nsc->nc", w, x) / np.maximum(n, 1e-300)
    m2 = np.einsum("ns,nsc->nc", w, (x - mean[:, None, :]) ** 2)
    return n, mean, m2


def splits(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    pts = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return [(a, b) for a, b in zip(pts, pts[1:]) if b > a]


@settings(max_examples=60, deadline=None)
@given(data=arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 4)), elements=FINITE),
       cuts=st.lists(st.integers(0, 40), max_size=5))
def test_streaming_moments_equal_one_shot(data, cuts):
    n, mean, m2 = per_example(data)
    acc = ChannelMoments.empty(data.shape[2])
    for a, b in splits(len(data), cuts):
        acc = acc.merge(ChannelMoments.from_examples(n[a:b], mean[a:b], m2[a:b]))
    flat = data.reshape(-1, data.shape[2])
    np.testing.assert_allclose(acc.mean, flat.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(acc.variance, flat.var(axis=0), rtol=1e-7, atol=1e-7)
    assert acc.examples == len(data)


@settings(max_examples=40, deadline=None)
@given(data=arrays(np.float64, st.tuples(st.integers(2, 10), st.integers(1, 4), st.integers(1, 3)), elements=FINITE),
       cuts=st.lists(st.integers(0, 30), max_size=4))
def test_split_moments_halves_and_total(data, cuts):
    n, mean, m2 = per_example(data)
    sm = SplitMoments()
    for a, b in splits(len(data), cuts):
        sm.add_examples(n[a:b], mean[a:b], m2[a:b])
    flat = data.reshape(-1, data.shape[2])
    np.testing.assert_allclose(sm.total.mean, flat.mean(axis=0), rtol=1e-9, atol=1e-9)
    even = data[0::2].reshape(-1, data.shape[2])
    odd = data[1::2].reshape(-1, data.shape[2])
    np.testing.assert_allclose(sm.halves[0].mean, even.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sm.halves[1].variance, odd.var(axis=0), rtol=1e-7, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(a=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=FINITE),
       b=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=FINITE),
       c=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 5)), elements=FINITE))
def test_merge_is_associative_and_commutative(a, b, c):
    k = min(a.shape[1], b.shape[1], c.shape[1])

    def mom(x):
        x = x[:, :k]
        return ChannelMoments.from_examples(np.ones_like(x), x, np.zeros_like(x))

    left = mom(a).merge(mom(b)).merge(mom(c))
    right = mom(c).merge(mom(b).merge(mom(a)))
    np.testing.assert_allclose(left.mean, right.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(left.m2, right.m2, rtol=1e-7, atol=1e-6)


def test_weighted_counts_match_masked_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (7, 6, 4))
    w = (rng.random((7, 6)) > 0.3).astype(float)
    w[2] = 0  # a fully masked example
    n, mean, m2 = per_example(x, w)
    acc = ChannelMoments.from_examples(n[:3], mean[:3], m2[:3]).merge(
        ChannelMoments.from_examples(n[3:], mean[3:], m2[3:]))
    keep = w.reshape(-1) > 0
    flat = x.reshape(-1, 4)[keep]
    np.testing.assert_allclose(acc.mean, flat.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(acc.variance, flat.var(axis=0), rtol=1e-9)
    assert acc.examples == 6


@settings(max_examples=60, deadline=None)
@given(t=arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 6)), elements=FINITE),
       noise=arrays(np.float64, st.tuples(st.just(20), st.just(6)), elements=FINITE),
       cut=st.integers(0, 20), scale=st.floats(1e-3, 1e3))
def test_gap_accumulator_equals_one_shot(t, noise, cut, scale):
    r = t + noise[: t.shape[0], : t.shape[1]] * 0.1
    acc = GapAccumulator()
    cut = min(cut, len(t))
    for a, b in ((0, cut), (cut, len(t))):
        if b > a:
            acc.add_arrays(t[a:b], r[a:b], classes=True)
    d = t - r
    want = np.linalg.norm(d) / np.linalg.norm(r) if np.linalg.norm(r) > 0 else (
        0.0 if np.linalg.norm(d) == 0 else np.linalg.norm(d) / np.linalg.norm(t))
    assert acc.relative_l2 == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert acc.max_abs == pytest.approx(np.max(np.abs(d)) if d.size else 0.0)
    assert math.isfinite(acc.relative_l2)
    # relative L2 is scale-invariant
    scaled = GapAccumulator()
    scaled.add_arrays(t * scale, r * scale)
    assert scaled.relative_l2 == pytest.approx(acc.relative_l2, rel=1e-6, abs=1e-12)
    # top-1 agreement over class scores is symmetric
    if t.shape[1] >= 2:
        swapped = GapAccumulator()
        swapped.add_arrays(r, t, classes=True)
        assert swapped.top1_agreement == acc.top1_agreement


def test_relative_l2_edge_cases():
    assert relative_l2(0.0, 0.0) == 0.0
    assert relative_l2(4.0, 1.0) == 2.0
    assert relative_l2(4.0, 0.0, 16.0) == 0.5  # reference all zeros: relative to the other side
    acc = GapAccumulator()
    acc.add_arrays(np.zeros((2, 3)), np.zeros((2, 3)))
    assert acc.relative_l2 == 0.0


def test_non_finite_values_are_counted_and_kept_out():
    acc = GapAccumulator()
    t = np.array([[1.0, np.nan], [2.0, 3.0]])
    r = np.array([[1.0, np.nan], [2.0, 4.0]])
    acc.add_arrays(t, r)
    assert acc.nonfinite_train == 1 and acc.nonfinite_ref == 1 and acc.nonfinite_pairs == 0
    # the finite pairs are summed as usual ...
    assert math.sqrt(acc.sq_diff) / math.sqrt(acc.sq_ref) == pytest.approx(1 / math.sqrt(1 + 4 + 16))
    # ... but a model that produces NaN/Inf cannot pass a gate on this number
    assert acc.relative_l2 == math.inf
    acc.add_arrays(np.array([[np.inf]]), np.array([[1.0]]))
    assert acc.nonfinite_pairs == 1 and acc.relative_l2 == math.inf


@pytest.mark.parametrize("values", [
    np.zeros((5, 3)), np.full((5, 3), 7.0), np.full((5, 3), 1e-40), np.full((5, 3), 1e30),
])
def test_degenerate_data_gives_finite_moments(values):
    n, mean, m2 = per_example(values[:, None, :])
    acc = ChannelMoments.from_examples(n, mean, m2)
    assert np.all(np.isfinite(acc.mean)) and np.all(np.isfinite(acc.variance))
    assert np.all(acc.variance >= 0)
    np.testing.assert_allclose(acc.mean, values[0])


def test_binary_scores_are_read_once_for_both_modes():
    acc = GapAccumulator()
    acc.add_arrays(np.array([[0.2], [0.7]]), np.array([[0.3], [0.4]]), classes=True)
    acc.add_arrays(np.array([[0.9]]), np.array([[0.6]]), classes=True)
    assert acc.binary_cut == 0.5 and acc.top1_agreement == pytest.approx(2 / 3)


def test_top1_reads_binary_scores():
    assert top1(np.array([[0.2], [0.7]])).tolist() == [0, 1]       # probabilities
    assert top1(np.array([[-1.0], [2.0]])).tolist() == [0, 1]      # logits
    assert top1(np.array([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]


def test_robust_summary():
    assert robust_summary(np.array([1.0, 2.0, np.nan, 3.0])) == (2.0, pytest.approx(2.9), 3.0)
    assert robust_summary(np.array([])) == (0.0, 0.0, 0.0)
