"""bngap.stats against one-shot numpy: per-channel moments for any split of
the data (uneven batches, masks, weights), the split-half moments, the gap
accumulator, top-1 agreement and degenerate inputs. No TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bngap.stats import (
    ChannelMoments,
    GapAccumulator,
    SplitMoments,
    binary_threshold,
    relative_l2,
    robust_summary,
    top1,
)

FAST = settings(max_examples=50, deadline=None)


# ----------------------------------------------------------------- helpers


def per_example(x: np.ndarray, w: np.ndarray | None = None):
    """(count, mean, M2) per example and channel of (N, ..., C) data, numpy only.

    `w` (same shape as `x`) holds non-negative element weights: 0/1 for a
    mask, integers for repeated elements. Examples with no weight in a
    channel get count 0, mean 0, M2 0.
    """
    n, c = x.shape[0], x.shape[-1]
    flat = x.reshape(n, -1, c).astype(np.float64)
    w = np.ones_like(flat) if w is None else w.reshape(n, -1, c).astype(np.float64)
    count = w.sum(axis=1)
    mean = (w * flat).sum(axis=1) / np.where(count > 0, count, 1.0)
    m2 = (w * (flat - mean[:, None, :]) ** 2).sum(axis=1)
    return count, mean, m2


def stream(count, mean, m2, sizes, start: ChannelMoments | None = None) -> ChannelMoments:
    """Folds batches of the given sizes with from_examples + merge."""
    acc = ChannelMoments.empty(count.shape[1]) if start is None else start
    a = 0
    for size in sizes:
        acc = acc.merge(
            ChannelMoments.from_examples(count[a : a + size], mean[a : a + size], m2[a : a + size])
        )
        a += size
    assert a == len(count), "the batch sizes must cover the data"
    return acc


def cut(n: int, cuts: list[int]) -> list[int]:
    """Batch sizes (possibly 0) from arbitrary cut points into n examples."""
    pts = sorted([0, n, *(c % (n + 1) for c in cuts)])
    return [b - a for a, b in zip(pts, pts[1:])]


def scale_tol(x: np.ndarray) -> float:
    """Absolute tolerance for second moments of data of this magnitude."""
    return 1e-9 * (1.0 + float(np.max(np.abs(x))) ** 2)


VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
DATA = arrays(
    np.float64, st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 4)), elements=VALUES
)
CUTS = st.lists(st.integers(0, 50), max_size=6)


# ------------------------------------------- ChannelMoments vs one-shot numpy


def test_4d_moments_with_uneven_batches_equal_numpy():
    rng = np.random.default_rng(0)
    # A large offset against a small spread: the naive E[x^2] - E[x]^2 would lose digits.
    x = 1e4 + 3.0 * rng.standard_normal((32, 5, 6, 4)) + np.arange(4)
    count, mean, m2 = per_example(x)
    acc = stream(count, mean, m2, [1, 7, 3, 21])
    np.testing.assert_array_equal(acc.count, np.full(4, 32 * 5 * 6))
    np.testing.assert_allclose(acc.mean, np.mean(x, axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(acc.variance, np.var(x, axis=(0, 1, 2)), rtol=1e-9)
    assert acc.examples == 32 and acc.channels == 4


def test_batch_split_does_not_change_the_moments():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 5.0, (32, 3, 3, 2))
    count, mean, m2 = per_example(x)
    ref = stream(count, mean, m2, [32])
    for sizes in ([1, 7, 3, 21], [16, 16], [1] * 32, [0, 5, 0, 27]):
        acc = stream(count, mean, m2, sizes)
        np.testing.assert_allclose(acc.mean, ref.mean, rtol=1e-12)
        np.testing.assert_allclose(acc.m2, ref.m2, rtol=1e-10)
        assert acc.examples == 32


def test_2d_one_element_per_example_equals_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(-3.0, 0.5, (50, 3))
    acc = stream(np.ones_like(x), x, np.zeros_like(x), [1, 7, 3, 21, 18])
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(acc.variance, x.var(axis=0), rtol=1e-10)  # ddof=0, as BN uses
    assert not np.allclose(
        acc.variance, x.var(axis=0, ddof=1), rtol=1e-4
    )  # and not the sample variance


def test_masked_counts_equal_numpy_on_the_kept_elements():
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, (24, 10, 3))
    mask = rng.random(x.shape) < 0.6
    mask[5] = False  # an example masked out entirely
    mask[7, :, 1] = False  # an example masked out in one channel only
    count, mean, m2 = per_example(x, mask)
    assert len(np.unique(count)) > 3  # per-example counts really differ
    acc = stream(count, mean, m2, [1, 7, 3, 13])
    for c in range(3):
        kept = x[..., c][mask[..., c]]
        assert acc.count[c] == kept.size
        np.testing.assert_allclose(acc.mean[c], np.mean(kept), rtol=1e-12)
        np.testing.assert_allclose(acc.variance[c], np.var(kept), rtol=1e-10)
    assert acc.examples == 23  # the fully masked example does not count


def test_integer_weights_equal_repeated_elements():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, (9, 4, 2))
    w = rng.integers(0, 4, x.shape)
    count, mean, m2 = per_example(x, w)
    acc = stream(count, mean, m2, [2, 3, 4])
    for c in range(2):
        repeated = np.repeat(x[..., c].ravel(), w[..., c].ravel())
        np.testing.assert_allclose(acc.mean[c], repeated.mean(), rtol=1e-12)
        np.testing.assert_allclose(acc.variance[c], repeated.var(), rtol=1e-10)


def test_channel_without_any_element_is_zero_not_nan():
    x = np.random.default_rng(5).normal(size=(6, 4, 2))
    mask = np.ones_like(x)
    mask[..., 1] = 0
    acc = stream(*per_example(x, mask), [2, 4])
    assert acc.count[1] == 0 and acc.mean[1] == 0.0 and acc.variance[1] == 0.0
    assert np.all(np.isfinite(acc.mean)) and np.all(np.isfinite(acc.variance))


def test_merge_leaves_its_operands_alone():
    x = np.random.default_rng(6).normal(size=(10, 3))
    a = ChannelMoments.from_examples(np.ones((4, 3)), x[:4], np.zeros((4, 3)))
    b = ChannelMoments.from_examples(np.ones((6, 3)), x[4:], np.zeros((6, 3)))
    before = [v.copy() for v in (a.count, a.mean, a.m2, b.count, b.mean, b.m2)]
    a.merge(b)
    for old, new in zip(before, (a.count, a.mean, a.m2, b.count, b.mean, b.m2)):
        np.testing.assert_array_equal(old, new)


def test_empty_moments_are_a_left_identity():
    x = np.random.default_rng(7).normal(size=(5, 2))
    a = ChannelMoments.from_examples(np.ones((5, 2)), x, np.zeros((5, 2)))
    for left in (ChannelMoments(), ChannelMoments.empty(2)):
        m = left.merge(a)
        np.testing.assert_array_equal(m.mean, a.mean)
        np.testing.assert_array_equal(m.m2, a.m2)
        assert m.examples == 5


def test_empty_moments_are_a_right_identity():
    x = np.random.default_rng(7).normal(size=(5, 2))
    a = ChannelMoments.from_examples(np.ones((5, 2)), x, np.zeros((5, 2)))
    m = a.merge(ChannelMoments())
    np.testing.assert_array_equal(m.mean, a.mean)
    assert m.examples == 5


# ------------------------------------------------------ hypothesis properties


@FAST
@given(data=DATA, cuts=CUTS)
def test_streaming_moments_equal_one_shot_for_any_split(data, cuts):
    acc = stream(*per_example(data), cut(len(data), cuts))
    flat = data.reshape(-1, data.shape[-1])
    tol = scale_tol(data)
    np.testing.assert_allclose(
        acc.mean, flat.mean(axis=0), rtol=1e-10, atol=1e-10 * (1 + np.abs(data).max())
    )
    np.testing.assert_allclose(acc.variance, flat.var(axis=0), rtol=1e-8, atol=tol)
    assert np.all(acc.variance >= 0.0)
    assert acc.examples == len(data)


@FAST
@given(data=DATA, cuts=CUTS, mask_seed=st.integers(0, 2**32 - 1))
def test_streaming_masked_moments_equal_one_shot(data, cuts, mask_seed):
    mask = np.random.default_rng(mask_seed).random(data.shape) < 0.5
    acc = stream(*per_example(data, mask), cut(len(data), cuts))
    tol = scale_tol(data)
    for c in range(data.shape[-1]):
        kept = data[..., c][mask[..., c]]
        assert acc.count[c] == kept.size
        if kept.size:
            np.testing.assert_allclose(
                acc.mean[c], kept.mean(), rtol=1e-10, atol=1e-10 * (1 + np.abs(data).max())
            )
            np.testing.assert_allclose(acc.variance[c], kept.var(), rtol=1e-8, atol=tol)
        else:
            assert acc.mean[c] == 0.0 and acc.variance[c] == 0.0


def _moments(x: np.ndarray) -> ChannelMoments:
    return ChannelMoments.from_examples(*per_example(x))


@FAST
@given(a=DATA, b=DATA, c=DATA)
def test_merge_is_associative_and_commutative(a, b, c):
    ch = min(a.shape[-1], b.shape[-1], c.shape[-1])
    ma, mb, mc = _moments(a[..., :ch]), _moments(b[..., :ch]), _moments(c[..., :ch])
    left, right = ma.merge(mb).merge(mc), ma.merge(mb.merge(mc))
    swapped = mc.merge(mb).merge(ma)
    tol = scale_tol(np.concatenate([a.ravel(), b.ravel(), c.ravel()])) * 100
    for other in (right, swapped):
        np.testing.assert_array_equal(left.count, other.count)
        np.testing.assert_allclose(left.mean, other.mean, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(left.m2, other.m2, rtol=1e-8, atol=tol)
        assert left.examples == other.examples == len(a) + len(b) + len(c)
    np.testing.assert_allclose(ma.merge(mb).mean, mb.merge(ma).mean, rtol=1e-12, atol=1e-12)


@FAST
@given(
    data=arrays(
        np.float64,
        st.tuples(st.integers(1, 14), st.integers(1, 4), st.integers(1, 3)),
        elements=VALUES,
    ),
    cuts=CUTS,
)
def test_split_moments_total_and_interleaved_halves(data, cuts):
    count, mean, m2 = per_example(data)
    sm = SplitMoments()
    a = 0
    for size in cut(len(data), cuts):
        sm.add_examples(count[a : a + size], mean[a : a + size], m2[a : a + size])
        a += size
    assert sm.seen == len(data)
    tol = scale_tol(data)
    flat = data.reshape(-1, data.shape[-1])
    np.testing.assert_allclose(sm.total.mean, flat.mean(axis=0), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(sm.total.variance, flat.var(axis=0), rtol=1e-8, atol=tol)
    assert sm.total.examples == len(data)
    for h, part in ((0, data[0::2]), (1, data[1::2])):
        half = sm.halves[h]
        assert half.examples == len(part)
        if len(part):
            pflat = part.reshape(-1, part.shape[-1])
            np.testing.assert_allclose(half.mean, pflat.mean(axis=0), rtol=1e-10, atol=1e-9)
            np.testing.assert_allclose(half.variance, pflat.var(axis=0), rtol=1e-8, atol=tol)
        else:
            assert np.all(half.count == 0)


def test_split_moments_halves_follow_the_global_index_across_batches():
    # Odd-sized batches: the second batch starts on an odd index, so its first
    # example belongs to the odd half.
    x = np.arange(10, dtype=np.float64)[:, None]  # example i has value i
    sm = SplitMoments()
    for a, b in ((0, 3), (3, 4), (4, 9), (9, 10)):
        sm.add_examples(np.ones((b - a, 1)), x[a:b], np.zeros((b - a, 1)))
    assert sm.halves[0].mean[0] == pytest.approx(np.mean([0, 2, 4, 6, 8]))
    assert sm.halves[1].mean[0] == pytest.approx(np.mean([1, 3, 5, 7, 9]))
    assert sm.halves[0].examples == sm.halves[1].examples == 5


# ------------------------------------------------------------- relative_l2


def test_relative_l2_from_sums_of_squares():
    assert relative_l2(4.0, 16.0) == 0.5
    assert relative_l2(0.0, 16.0) == 0.0
    assert relative_l2(4.0, 0.0, 1.0) == 2.0  # zero reference: the other side's norm
    assert relative_l2(0.0, 0.0, 0.0) == 0.0  # two zero tensors are 0 apart
    assert relative_l2(-1e-30, 1.0) == 0.0  # rounding below zero is no gap


SQUARES = st.one_of(st.just(0.0), st.floats(1e-90, 1e84))  # sums of squares reachable from float32


@FAST
@given(d=SQUARES, r=SQUARES, o=SQUARES)
def test_relative_l2_is_finite_and_non_negative(d, r, o):
    v = relative_l2(d, r, o)
    assert math.isfinite(v) and v >= 0.0


def test_relative_l2_does_not_overflow_for_a_tiny_reference():
    # A float64 reference of ~2e-154 per element: its sum of squares is ~1e-307.
    v = relative_l2(25.0, 1e-307)
    assert math.isfinite(v)
    assert v == pytest.approx(5.0 / math.sqrt(1e-307), rel=1e-12)


# ---------------------------------------------------------- GapAccumulator


def accumulate(
    t: np.ndarray, r: np.ndarray, sizes: list[int], classes: bool = False
) -> GapAccumulator:
    acc = GapAccumulator()
    a = 0
    for size in sizes:
        acc.add_arrays(t[a : a + size], r[a : a + size], classes=classes)
        a += size
    return acc


# Outputs as a float32 model can produce them: no float64 subnormals, whose
# squares underflow (see test_relative_l2_does_not_overflow_for_a_tiny_reference).
OUTPUTS = VALUES.map(lambda v: 0.0 if abs(v) < 1e-30 else v)
PAIRS = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 3), elements=OUTPUTS), arrays(np.float64, (n, 3), elements=OUTPUTS)
    )
)


@FAST
@given(pair=PAIRS, cuts=CUTS)
def test_gap_accumulator_over_batches_equals_one_shot(pair, cuts):
    t, r = pair
    acc = accumulate(t, r, cut(len(t), cuts))
    nr, nt, nd = np.linalg.norm(r), np.linalg.norm(t), np.linalg.norm(t - r)
    expected = nd / nr if nr > 0 else (nd / nt if nt > 0 else 0.0)
    assert acc.relative_l2 == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert acc.max_abs == pytest.approx(np.max(np.abs(t - r)), rel=1e-12, abs=0.0)
    assert acc.elements == t.size
    assert acc.nonfinite_pairs == acc.nonfinite_train == acc.nonfinite_ref == 0


@FAST
@given(pair=PAIRS)
def test_gap_is_zero_for_identical_inputs(pair):
    t, _ = pair
    acc = accumulate(t, t.copy(), [len(t)])
    assert acc.relative_l2 == 0.0 and acc.max_abs == 0.0


@FAST
@given(pair=PAIRS, scale=st.sampled_from([1e-30, 1e-3, 0.5, 7.0, 1e3, 1e30]))
def test_relative_l2_is_scale_invariant(pair, scale):
    t, r = pair
    plain = accumulate(t, r, [len(t)])
    scaled = accumulate(t * scale, r * scale, [len(t)])
    assert scaled.relative_l2 == pytest.approx(plain.relative_l2, rel=1e-9, abs=1e-12)
    assert scaled.max_abs == pytest.approx(plain.max_abs * scale, rel=1e-12)


EXTREME = st.sampled_from(
    [0.0, 1e-40, -1e-40, 1e-45, 3e-38, 1.0, -1.0, 1e30, -1e30, 3.4e38, -3.4e38]
)


@FAST
@given(
    t=arrays(np.float32, (6, 2), elements=EXTREME), r=arrays(np.float32, (6, 2), elements=EXTREME)
)
def test_extreme_float32_values_give_finite_gaps(t, r):
    acc = accumulate(t, r, [2, 4], classes=True)
    assert math.isfinite(acc.relative_l2) and acc.relative_l2 >= 0
    assert math.isfinite(acc.max_abs)
    agreement = acc.top1_agreement
    assert agreement is not None and 0.0 <= agreement <= 1.0
    t64, r64 = t.astype(np.float64), r.astype(np.float64)
    nr, nt, nd = np.linalg.norm(r64), np.linalg.norm(t64), np.linalg.norm(t64 - r64)
    expected = nd / nr if nr > 0 else (nd / nt if nt > 0 else 0.0)
    assert acc.relative_l2 == pytest.approx(expected, rel=1e-9)


def test_denormal_outputs_keep_their_relative_gap():
    r = np.full((4, 3), 1e-40, dtype=np.float32)
    t = r * 2
    acc = accumulate(t, r, [4])
    assert acc.relative_l2 == pytest.approx(1.0, rel=1e-3)  # not 0 from underflow, not NaN


def test_zero_reference_uses_the_other_side():
    t = np.array([[3.0, 4.0]])
    acc = accumulate(t, np.zeros_like(t), [1])
    assert acc.relative_l2 == 1.0
    assert accumulate(np.zeros((2, 2)), np.zeros((2, 2)), [1, 1]).relative_l2 == 0.0


def test_nonfinite_values_are_counted_and_left_out():
    r = np.array([[1.0, 2.0], [3.0, 4.0]])
    t = np.array([[1.0, np.nan], [3.0, 5.0]])
    r_nan = r.copy()
    r_nan[0, 1] = np.nan
    both = accumulate(t, r_nan, [2])  # NaN on both sides, same place
    assert both.nonfinite_train == 1 and both.nonfinite_ref == 1 and both.nonfinite_pairs == 0
    # the finite pairs are summed; the gap itself is unbounded, so no gate passes a NaN model
    assert math.sqrt(both.sq_diff / both.sq_ref) == pytest.approx(1.0 / math.sqrt(1 + 9 + 16))
    assert both.relative_l2 == math.inf
    one = accumulate(t, r, [1, 1])  # NaN in training mode only: unbounded gap
    assert one.nonfinite_pairs == 1 and one.relative_l2 == math.inf
    assert math.isfinite(one.max_abs)


def test_add_sums_accumulates_precomputed_parts():
    acc = GapAccumulator()
    acc.add_sums(1.0, 4.0, 9.0, 0.5, 3)
    acc.add_sums(np.float32(3.0), np.float64(12.0), 0.0, 2.0, 5)
    assert (acc.sq_diff, acc.sq_ref, acc.max_abs, acc.elements) == (4.0, 16.0, 2.0, 8)
    assert acc.relative_l2 == 0.5
    assert type(acc.sq_diff) is float


# ------------------------------------------------------------------- top-1


def test_top1_multiclass_and_binary():
    s = np.array([[0.1, 0.7, 0.2], [3.0, -1.0, 2.0]])
    np.testing.assert_array_equal(top1(s), [1, 0])
    np.testing.assert_array_equal(
        top1(np.array([[0.2], [0.6], [0.5]])), [0, 1, 0]
    )  # probabilities at 0.5
    np.testing.assert_array_equal(top1(np.array([[-0.2], [0.6], [2.0]])), [0, 1, 1])  # logits at 0
    np.testing.assert_array_equal(top1(np.array([0.4, 0.45]), threshold=0.42), [0, 1])
    assert binary_threshold(np.array([0.0, 1.0])) == 0.5
    assert binary_threshold(np.array([0.0, 1.5])) == 0.0
    assert binary_threshold(np.array([0.2, np.nan])) == 0.5  # NaN does not decide the reading


SCORES = st.integers(1, 10).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 4), elements=OUTPUTS), arrays(np.float64, (n, 4), elements=OUTPUTS)
    )
)


@FAST
@given(pair=SCORES, cuts=CUTS)
def test_top1_agreement_is_symmetric_and_equals_numpy(pair, cuts):
    t, r = pair
    sizes = cut(len(t), cuts)
    ab = accumulate(t, r, sizes, classes=True)
    ba = accumulate(r, t, sizes, classes=True)
    assert ab.top1_agreement == ba.top1_agreement
    assert ab.top1_agreement == pytest.approx(np.mean(np.argmax(t, -1) == np.argmax(r, -1)))
    assert ab.rows == len(t)


@FAST
@given(
    pair=st.integers(1, 10).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, (n, 1), elements=st.floats(0, 1)),
            arrays(np.float64, (n, 1), elements=st.floats(0, 1)),
        )
    )
)
def test_binary_probability_agreement_is_symmetric(pair):
    t, r = pair
    ab = accumulate(t, r, [len(t)], classes=True).top1_agreement
    assert ab == accumulate(r, t, [len(t)], classes=True).top1_agreement
    assert ab == pytest.approx(np.mean((t > 0.5) == (r > 0.5)))


def test_binary_reading_is_fixed_by_the_first_batch():
    # First batch: probabilities, cut at 0.5. The second batch's 0.3 vs 0.7
    # must still be cut at 0.5 (disagree), not re-read as logits at 0 (agree).
    acc = GapAccumulator()
    acc.add_arrays(np.array([[0.2], [0.9]]), np.array([[0.1], [0.8]]), classes=True)
    acc.add_arrays(np.array([[0.3], [1.5]]), np.array([[0.7], [1.2]]), classes=True)
    assert acc.binary_cut == 0.5
    assert acc.top1_agreement == 3 / 4


def test_binary_reading_comes_from_both_modes():
    # Training-mode scores in [0, 1], inference-mode scores outside: both are
    # read as logits (cut at 0), so 0.3 / -0.5 disagree and 0.8 / 2.0 agree.
    acc = GapAccumulator()
    acc.add_arrays(np.array([[0.3], [0.8]]), np.array([[-0.5], [2.0]]), classes=True)
    assert acc.binary_cut == 0.0
    assert acc.top1_agreement == 0.5


@FAST
@given(
    pair=st.integers(1, 10).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, (n, 1), elements=st.floats(-2, 2)),
            arrays(np.float64, (n, 1), elements=st.floats(-2, 2)),
        )
    )
)
def test_binary_agreement_is_symmetric_for_any_scores(pair):
    t, r = pair
    ab = accumulate(t, r, [len(t)], classes=True)
    ba = accumulate(r, t, [len(t)], classes=True)
    assert ab.top1_agreement == ba.top1_agreement and ab.binary_cut == ba.binary_cut


def test_top1_rows_of_sequence_outputs():
    rng = np.random.default_rng(8)
    t, r = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    acc = accumulate(t, r, [1, 2], classes=True)
    assert acc.rows == 15
    assert acc.top1_agreement == pytest.approx(np.mean(np.argmax(t, -1) == np.argmax(r, -1)))


def test_no_classes_no_agreement():
    assert accumulate(np.ones((2, 3)), np.ones((2, 3)), [2]).top1_agreement is None


# -------------------------------------------------------- degenerate inputs


@FAST
@given(
    value=EXTREME,
    shape=st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 3)),
    cuts=CUTS,
)
def test_constant_data_has_zero_variance_and_finite_moments(value, shape, cuts):
    x = np.full(shape, float(value))
    acc = stream(*per_example(x), cut(shape[0], cuts))
    assert np.all(np.isfinite(acc.mean)) and np.all(np.isfinite(acc.variance))
    np.testing.assert_allclose(acc.mean, value, rtol=1e-12)
    assert np.all(acc.variance >= 0.0)
    assert np.all(acc.variance <= 1e-20 * value * value)
    sm = SplitMoments()
    sm.add_examples(*per_example(x))
    assert np.all(np.isfinite(sm.total.variance))


def test_huge_and_tiny_spreads_stay_finite():
    rng = np.random.default_rng(9)
    for scale in (1e-40, 1e30):
        x = scale * rng.normal(size=(20, 3, 2))
        acc = stream(*per_example(x), [3, 17])
        assert np.all(np.isfinite(acc.variance)) and np.all(acc.variance > 0)
        np.testing.assert_allclose(acc.variance, x.reshape(-1, 2).var(axis=0), rtol=1e-9)


# ------------------------------------------------------------ robust_summary


def test_robust_summary_equals_numpy_on_finite_values():
    v = np.array([3.0, np.nan, 1.0, np.inf, 2.0, -np.inf, 10.0])
    finite = np.array([3.0, 1.0, 2.0, 10.0])
    assert robust_summary(v) == (np.median(finite), np.percentile(finite, 95), 10.0)
    assert robust_summary(np.array([])) == (0.0, 0.0, 0.0)
    assert robust_summary(np.array([np.nan, np.inf])) == (0.0, 0.0, 0.0)
    assert all(type(x) is float for x in robust_summary(np.arange(5, dtype=np.float32)))
