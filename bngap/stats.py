"""Streaming statistics in plain numpy: gaps between two outputs, and
per-channel moments merged exactly across batches.

Everything here accumulates in float64 and is independent of Keras, so the
numbers bngap prints can be checked against a one-shot numpy computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def relative_l2(sq_diff: float, sq_ref: float, sq_other: float = 0.0) -> float:
    """``||a - b|| / ||b||`` from sums of squares.

    ``b`` is the reference (inference mode). When the reference is exactly
    zero the other side's norm is used instead, and two zero tensors are 0
    apart, so the result is always finite.
    """
    if sq_diff <= 0.0:
        return 0.0
    # Roots first: the ratio of the sums could overflow where the norms' does not.
    if sq_ref > 0.0:
        return math.sqrt(sq_diff) / math.sqrt(sq_ref)
    if sq_other > 0.0:
        return math.sqrt(sq_diff) / math.sqrt(sq_other)
    return 0.0  # pragma: no cover - sq_diff > 0 implies one side is non-zero


@dataclass
class GapAccumulator:
    """Accumulates the difference between a "train" and an "eval" tensor over
    batches: sums of squares for the relative L2, the max absolute difference,
    and (for class scores) top-1 agreement."""

    sq_diff: float = 0.0
    sq_ref: float = 0.0
    sq_other: float = 0.0
    max_abs: float = 0.0
    agree: int = 0
    rows: int = 0
    elements: int = 0
    nonfinite_train: int = 0  # NaN/Inf values, left out of the sums
    nonfinite_ref: int = 0
    nonfinite_pairs: int = 0  # finite on one side only: an unbounded gap
    binary_cut: float | None = None

    def add_sums(
        self,
        sq_diff: float,
        sq_ref: float,
        sq_other: float = 0.0,
        max_abs: float = 0.0,
        elements: int = 0,
    ) -> None:
        """Adds precomputed partial sums (e.g. reduced on the accelerator)."""
        self.sq_diff += float(sq_diff)
        self.sq_ref += float(sq_ref)
        self.sq_other += float(sq_other)
        self.max_abs = max(self.max_abs, float(max_abs))
        self.elements += int(elements)

    def add_arrays(self, train: np.ndarray, ref: np.ndarray, classes: bool = False) -> None:
        """Adds one batch of paired outputs (first axis: samples).

        Args:
            train: output in training mode.
            ref: output in inference mode, the reference.
            classes: also count top-1 agreement (last axis holds class scores;
                a last axis of 1 is read as a sigmoid probability or logit
                around the 0.5 / 0 boundary).
        """
        t = np.asarray(train, dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        ft, fr = np.isfinite(t), np.isfinite(r)
        self.nonfinite_train += int(t.size - ft.sum())
        self.nonfinite_ref += int(r.size - fr.sum())
        both = ft & fr
        self.nonfinite_pairs += int(np.sum(ft != fr))
        if not both.all():  # a model that produced NaN/Inf: measure the rest, count these
            t, r = np.where(both, t, 0.0), np.where(both, r, 0.0)
        d = t - r
        self.add_sums(
            np.sum(d * d),
            np.sum(r * r),
            np.sum(t * t),
            np.max(np.abs(d)) if d.size else 0.0,
            d.size,
        )
        if classes and t.ndim >= 1 and t.shape[0] > 0:
            # one reading of a binary score, for both modes and all batches
            if self.binary_cut is None:
                self.binary_cut = binary_threshold(t, r)
            self.agree += int(np.sum(top1(t, self.binary_cut) == top1(r, self.binary_cut)))
            self.rows += int(np.prod(t.shape[:-1])) if t.ndim > 1 else int(t.shape[0])

    @property
    def relative_l2(self) -> float:
        """Relative L2 of the finite pairs; infinite when either mode produced
        NaN/Inf (a model that does cannot pass a gate on this number)."""
        if self.nonfinite_pairs or self.nonfinite_train or self.nonfinite_ref:
            return math.inf
        return relative_l2(self.sq_diff, self.sq_ref, self.sq_other)

    @property
    def top1_agreement(self) -> float | None:
        return self.agree / self.rows if self.rows else None


def binary_threshold(*scores: np.ndarray) -> float:
    """0.5 when every finite score lies in [0, 1] (probabilities), else 0 (logits)."""
    finite = np.concatenate([np.ravel(s)[np.isfinite(np.ravel(s))] for s in scores])
    return 0.5 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 0.0


def top1(scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class per row. A single column is a binary score, cut at
    `threshold` (default: read as probabilities if in [0, 1], else logits)."""
    s = np.asarray(scores)
    if s.ndim == 1 or s.shape[-1] == 1:
        col = s.reshape(s.shape[:-1]) if s.ndim > 1 else s
        cut = binary_threshold(col) if threshold is None else threshold
        return (col > cut).astype(np.int64)
    return np.argmax(s, axis=-1)


@dataclass
class ChannelMoments:
    """Exact per-channel count, mean and sum of squared deviations (M2),
    merged with Chan et al.'s parallel formula. Merging the moments of any
    split of the data gives the moments of the whole (up to rounding)."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    examples: int = 0

    @classmethod
    def empty(cls, channels: int) -> ChannelMoments:
        z = np.zeros(channels, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy(), 0)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def variance(self) -> np.ndarray:
        """Population (biased, ddof=0) variance, as BatchNormalization uses."""
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(self.count > 0, self.m2 / np.maximum(self.count, 1e-300), 0.0)
        return np.maximum(v, 0.0)

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        """Returns the moments of both parts together (neither is modified)."""
        if other.channels == 0:  # the empty moments are the identity on either side
            return ChannelMoments(
                self.count.copy(), self.mean.copy(), self.m2.copy(), self.examples
            )
        if self.channels == 0:
            return ChannelMoments(
                other.count.copy(), other.mean.copy(), other.m2.copy(), other.examples
            )
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (n_b / safe)
        m2 = self.m2 + other.m2 + delta * delta * (n_a * n_b / safe)
        return ChannelMoments(
            n, np.where(n > 0, mean, 0.0), np.where(n > 0, m2, 0.0), self.examples + other.examples
        )

    @classmethod
    def from_examples(
        cls, counts: np.ndarray, means: np.ndarray, m2s: np.ndarray
    ) -> ChannelMoments:
        """Moments of a group of examples from each example's own moments.

        Args:
            counts: (examples, channels) number of elements per example and
                channel (spatial positions, time steps, unmasked entries).
            means: (examples, channels) per-example channel means.
            m2s: (examples, channels) per-example sums of squared deviations.
        """
        counts = np.asarray(counts, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        m2s = np.asarray(m2s, dtype=np.float64)
        n = counts.sum(axis=0)
        safe = np.where(n > 0, n, 1.0)
        mean = (counts * means).sum(axis=0) / safe
        dev = means - mean
        m2 = m2s.sum(axis=0) + (counts * dev * dev).sum(axis=0)
        examples = int(np.count_nonzero(counts.sum(axis=1) > 0))
        return cls(n, np.where(n > 0, mean, 0.0), np.where(n > 0, m2, 0.0), examples)


@dataclass
class SplitMoments:
    """Per-channel moments of all examples, kept as two interleaved halves
    (even and odd example index) so that their disagreement measures the
    estimate's own sampling noise."""

    halves: list = field(default_factory=list)
    seen: int = 0

    def add_examples(self, counts: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> None:
        """Adds a batch of per-example moments, each (examples, channels)."""
        counts = np.asarray(counts, dtype=np.float64)
        if not self.halves:
            c = counts.shape[1]
            self.halves = [ChannelMoments.empty(c), ChannelMoments.empty(c)]
        idx = np.arange(self.seen, self.seen + counts.shape[0])
        for h in (0, 1):
            sel = idx % 2 == h
            if np.any(sel):
                part = ChannelMoments.from_examples(
                    counts[sel], np.asarray(means)[sel], np.asarray(m2s)[sel]
                )
                self.halves[h] = self.halves[h].merge(part)
        self.seen += counts.shape[0]

    @property
    def total(self) -> ChannelMoments:
        return self.halves[0].merge(self.halves[1])


def robust_summary(values: np.ndarray) -> tuple[float, float, float]:
    """(median, 95th percentile, max) of finite values; zeros when none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0, 0.0
    return float(np.median(v)), float(np.percentile(v, 95)), float(np.max(v))


@dataclass
class NodeStats:
    """Accumulators for one layer over all batches."""

    divergence: GapAccumulator = field(default_factory=GapAccumulator)
    own: GapAccumulator = field(default_factory=GapAccumulator)
    effect: GapAccumulator | None = None
    fit_training: dict = field(default_factory=dict)  # call index -> value received, train pass
    eval_training: set = field(default_factory=set)  # values received in inference passes
    calls: int = 0  # calls per pass
    order: int = -1
    matched: bool = True  # every train call had an eval twin
    paired: int = 0  # calls compared, train vs eval
    moments: SplitMoments | None = None  # BN layers: stats of their inputs
