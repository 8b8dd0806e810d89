"""BN input moments carried through channel concatenations.

A DenseNet feeds each BatchNormalization the concatenation of the previous
BN's input and a few new channels. Per example and channel, the mean and M2
of a concatenation along the channel axis are those of its parts, channel
by channel: the parts' moments, computed once, are joined (two small
concatenations) instead of reading the whole, ever wider input again. Only
where a part's moments are known already: a concatenation that feeds no
BN costs nothing.
"""

from __future__ import annotations

import weakref
from typing import Any

from .reductions import channel_moment_tensors

Moments = tuple[
    Any, Any, Any
]  # (values per example and channel, mean, M2), as channel_moment_tensors


class InputMoments:
    """The moments of one pass's inference-mode tensors, by identity."""

    def __init__(self, ops):
        self.ops = ops
        self._known: dict[int, tuple[weakref.ref, int, Moments]] = {}

    def clear(self) -> None:
        self._known.clear()

    def of(self, x, axis: int, mask=None) -> Moments:
        """`channel_moment_tensors(x, axis, mask)`, joined from its parts'
        where `x` is a channel concatenation of tensors whose moments are known."""
        if mask is None:
            got = self._lookup(x, axis)
            if got is not None:
                return got
        got = channel_moment_tensors(self.ops, x, axis, mask)
        if mask is None and got[0] is not None:
            self._keep(x, axis, got)
        return got

    def concatenated(self, axis: int, parts, out) -> None:
        """After an inference-mode concatenation of `parts` along `axis` into
        `out`: its moments, if any part's are known (the rest computed now)."""
        if not self._known or not isinstance(parts, (list, tuple)) or not hasattr(out, "shape"):
            return
        rank = len(out.shape)
        axis %= rank
        if axis == 0 or any(len(getattr(p, "shape", ())) != rank for p in parts):
            return  # along the examples, or not plain tensors
        if not any(self._lookup(p, axis) is not None for p in parts):
            return
        got = [self._lookup(p, axis) or channel_moment_tensors(self.ops, p, axis) for p in parts]
        if any(g[0] is None or g[0] != got[0][0] for g in got):
            return  # sizes known only at run time: as the BN layer finds them
        ops = self.ops
        mean = ops.concatenate([g[1] for g in got], axis=-1)
        m2 = ops.concatenate([g[2] for g in got], axis=-1)
        self._keep(out, axis, (got[0][0], mean, m2))

    def _lookup(self, t: Any, axis: int) -> Moments | None:
        entry = self._known.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        rank = len(getattr(t, "shape", ()))
        return entry[2] if rank and entry[1] == axis % rank else None

    def _keep(self, t, axis: int, moments: Moments) -> None:
        try:
            ref = weakref.ref(t)
        except TypeError:  # a value that cannot be watched: not kept
            return
        self._known[id(t)] = (ref, axis % len(t.shape), moments)
