"""Per-layer quantities reduced on the device: what a pass hands back
(`Due`), how fetched values are added to the layers' accumulators, and the
reductions themselves (pair sums, BN input moments), the same ops on every
backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import backend
from .stats import SplitMoments


class NonFinite(Exception):
    """A deferred pair of sums came out NaN/Inf: measure the batch again, exactly."""


@dataclass(frozen=True)
class Due:
    """One device-side quantity of a pass, and where its value goes."""

    DIVERGENCE: ClassVar[str] = "divergence"  # [sum (t - r)^2, sum r^2]: train vs inference pass
    OWN: ClassVar[str] = "own"  # the same pair: the layer in both modes on one input
    OWN_SQUARES: ClassVar[str] = "own_squares"  # sum t^2 of a layer that ran in inference mode
    MOMENTS: ClassVar[str] = "moments"  # [mean, M2] per example and channel of a BN input
    BN_OWN: ClassVar[str] = "bn_own"  # OWN of a BN layer in closed form: its batch moments

    kind: str
    node: int
    per: float = 0.0  # MOMENTS: values per example and channel; BN_OWN: per channel (0: unknown)


def settle(stats: dict, dues: list[Due], values: list[np.ndarray], strict: bool = True) -> None:
    """Adds a pass's fetched quantities to the layers' accumulators. All
    or nothing when `strict`: a non-finite pair of sums raises `NonFinite`
    before any is added (the batch is then measured again without deferral,
    where NaN/Inf entries are left out one pair at a time; sums that overflow
    even so are added as they are)."""
    for due, v in zip(dues, values):
        if strict and due.kind in (Due.DIVERGENCE, Due.OWN) and not np.all(np.isfinite(v)):
            raise NonFinite(due.node)
    for due, v in zip(dues, values):
        st = stats[due.node]
        if due.kind == Due.MOMENTS:
            if st.moments is None:
                st.moments = SplitMoments()
            m2 = np.asarray(v[1])
            mean = np.asarray(v[0]).reshape(m2.shape)  # (examples, 1, channels) on the device
            st.moments.add_examples(np.full(mean.shape, due.per), mean, m2)
        elif due.kind == Due.OWN_SQUARES:
            sq = float(v)
            st.own.add_sums(0.0, sq, sq)
        else:
            sq_d, sq_r = (float(a) for a in np.asarray(v, dtype=np.float64))
            acc = st.divergence if due.kind == Due.DIVERGENCE else st.own
            # reference all zeros: relative to the other side, whose squares are sq_d then
            acc.add_sums(sq_d, sq_r, sq_d if sq_r == 0.0 and sq_d > 0.0 else 0.0)
            if due.kind == Due.DIVERGENCE:
                st.paired += 1


def fetch(values: list) -> list:
    """A pass's deferred quantities as numpy, each a tensor or a tuple of
    tensors (a list of arrays), in a few transfers (`backend.fetch_all`)."""
    leaves = [t for v in values for t in (v if isinstance(v, tuple) else (v,))]
    got = iter(backend.fetch_all(leaves))
    return [[next(got) for _ in v] if isinstance(v, tuple) else next(got) for v in values]


def read_now(value):
    """One deferred quantity (a tensor, or a tuple of them) as numpy now,
    without an op to join its parts."""
    if isinstance(value, tuple):
        return [backend.to_numpy(t) for t in value]
    return backend.to_numpy(value)


def as_float32(ops, t):
    """`t` in float32; a float32 tensor as it is (skips the cast op's dispatch)."""
    return t if "float32" in str(getattr(t, "dtype", "")) else ops.cast(t, "float32")


def flat_outputs(keras, out) -> list:
    """A layer's outputs, in order, sparse ones made dense to be compared."""
    return [backend.dense(t) for t in keras.tree.flatten(out) if t is not None]


def pair_total(keras, train_out, ref_out):
    """(total, parts) of a pair of layer outputs: total is (||t - r||^2,
    ||r||^2) over all their floating tensors of equal shape, two scalars on
    the device; parts the (t, r, sums) it adds up (for `finite_pair_sums`).
    None when there is nothing to compare."""
    ops = keras.ops
    a, b = flat_outputs(keras, train_out), flat_outputs(keras, ref_out)
    if len(a) != len(b):
        return None
    parts = []
    for t, r in zip(a, b):
        if (
            not hasattr(t, "shape")
            or tuple(t.shape) != tuple(r.shape)
            or not backend.is_floating(t)
        ):
            continue
        t32, r32 = as_float32(ops, t), as_float32(ops, r)
        parts.append((t32, r32, backend.pair_sums(t32, r32)))
    if not parts:
        return None
    # one output (nearly every layer): its two sums as they are, without adding more
    if len(parts) == 1:
        return parts[0][2], parts
    return tuple(ops.sum(ops.stack([p[2][i] for p in parts])) for i in (0, 1)), parts


def squares_total(keras, out):
    """sum t^2 over a layer's floating outputs, on the device; None if it has none."""
    ops = keras.ops
    sq = [
        backend.sum_squares(as_float32(ops, t))
        for t in flat_outputs(keras, out)
        if backend.is_floating(t)
    ]
    if not sq:
        return None
    return sq[0] if len(sq) == 1 else ops.sum(ops.stack(sq))


def finite_pair_sums(ops, parts) -> np.ndarray:
    """[sum (t - r)^2, sum r^2] over the entries finite on both sides."""
    sums = np.zeros(2)
    for t32, r32, _ in parts:
        both = ops.logical_and(ops.isfinite(t32), ops.isfinite(r32))
        t0, r0 = ops.where(both, t32, 0.0), ops.where(both, r32, 0.0)
        sums += np.array([float(ops.sum(ops.square(t0 - r0))), float(ops.sum(ops.square(r0)))])
    return sums


def _channels_last(ops, x, axis: int):
    """`x` in float32 with its channel axis last; whether it was last already
    (Keras applies a mask along the last axis only)."""
    x = as_float32(ops, x)
    rank = len(x.shape)
    if axis % rank == rank - 1:
        return x, True
    perm = [i for i in range(rank) if i != axis % rank] + [axis % rank]
    return ops.transpose(x, perm), False


def channel_moment_tensors(ops, x, axis: int, mask=None):
    """(values per example and channel, mean, M2) of a BN input as device
    tensors, M2 (examples, channels), the mean (examples, 1, channels), as
    it is subtracted (no op to drop the axis). (None, None, None) where the counts
    are not one number known now (a mask; sizes known only at run time):
    see `channel_moments`."""
    x, last = _channels_last(ops, x, axis)
    inner = list(x.shape[1:-1])
    if (mask is not None and last) or any(d is None for d in inner):
        return None, None, None
    per = int(np.prod(inner)) if inner else 1
    x3 = ops.reshape(x, (-1, per, x.shape[-1]))  # the batch size may be unknown in a traced pass
    mean = ops.mean(x3, axis=1, keepdims=True)
    return float(per), mean, backend.sum_squared_difference(x3, mean, axis=1)


def channel_moments(ops, x, axis: int, mask=None):
    """Per-example, per-channel (count, mean, M2) of a BN layer's input, as
    numpy (examples, channels) arrays. Two-pass within each example, in the
    same float32 ops on every backend (not the backend's own `moments`: the
    PyTorch one computes E[x^2] - E[x]^2)."""
    per, mean, m2 = channel_moment_tensors(ops, x, axis, mask)
    if per is not None:
        m2_np = backend.to_numpy(m2)
        return np.full(m2_np.shape, per), backend.to_numpy(mean).reshape(m2_np.shape), m2_np
    x, last = _channels_last(ops, x, axis)
    b, c = x.shape[0], x.shape[-1]
    x3 = ops.reshape(x, (b, -1, c))
    if mask is None or not last:
        w = ops.ones_like(x3[:, :, :1])
    else:
        w = ops.reshape(ops.cast(mask, "float32"), (b, -1, 1))
    n = ops.sum(w, axis=1)
    mean = ops.sum(x3 * w, axis=1) / ops.maximum(n, 1.0)
    m2 = ops.sum(w * ops.square(x3 - mean[:, None, :]), axis=1)
    mean_np = backend.to_numpy(mean)
    counts = np.broadcast_to(backend.to_numpy(n), mean_np.shape).astype(np.float64)
    return counts, mean_np, backend.to_numpy(m2)
