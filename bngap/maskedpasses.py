"""The probe's masked passes (mixed into `Probe`): one layer or group in
the mode it had in the training pass, every other mode-dependent layer in
inference mode; upstream of the first of them, what the inference pass
computed is taken instead (`upstream.py`), and the frontiers that needs are
chosen as the training pass goes (`_offer_cut`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .errors import ForwardPassError
from .layertree import LayerNode
from .probehost import ProbeHost
from .results import Kind
from .upstream import INPUT, Cut


class _NotUpstream(ForwardPassError):
    """A masked pass met a call the inference pass did not make, or a
    computed layer given a stand-in: the pass runs again whole."""

    def __init__(self) -> None:
        super().__init__("a masked pass left the inference pass's data flow")


class MaskedPasses(ProbeHost):
    """The probe's masked passes (mixed into `Probe`)."""

    if TYPE_CHECKING:  # what `Probe` provides
        _active: set[int]
        _cut: Cut | None
        _cuts_asked: set
        reused: int
        rerun: int

    def _offer_cut(self, node: LayerNode, k: int, pair, frontier) -> None:
        """Keeps the frontier where a masked pass may cut: at the cuts the
        last batch's masked passes asked for, or (first batch, before the
        plan) at each group's first layer in training mode and the layers
        with the largest own contribution so far (`pair()` reads its two
        sums now)."""
        up, key = self.upstream, (node.index, k)
        if frontier is None or pair is None or k != 0:
            return
        if not up.choosing():
            if up.wanted is not None and key in up.wanted:
                up.keep(key, frontier)
            return
        if node.kind is Kind.BATCHNORM and not node.layer.trainable:
            return
        sq_d, sq_r = (float(v) for v in pair())
        score = sq_d / sq_r if sq_r > 0 else (1.0 if sq_d > 0 else 0.0)
        up.offer(key, node.kind.group, score if np.isfinite(score) else 0.0, frontier)

    def _h_masked(self):
        """Training pass in which only the layers in `self._active` keep the
        mode they had in the natural training pass; all other mode-dependent
        layers are held in inference mode. Calls that end before the cut
        (`upstream.py`) hand back what the inference pass computed."""

        def handler(node, original, args, kwargs):
            st = self.stats[node.index]
            k = self._next_call(node)
            cut = self._cut
            if cut is not None:
                call = self.upstream.calls.get((node.index, k))
                if call is not None and call.end < cut.start:
                    cut.skipped += 1
                    return self.upstream.stand_in(cut, (node.index, k))
                if call is None or self.upstream.touches_stand_in(cut, args, kwargs):
                    raise _NotUpstream
            if node.mode_dependent and node.takes_training:
                if node.index in self._active:
                    natural = st.fit_training.get(k, kwargs.get("training"))
                    if natural is not None:
                        kwargs["training"] = natural
                else:
                    kwargs["training"] = False
            return self._run(node, original, args, kwargs)

        return handler

    def masked_pass(self, xs, batch_index: int, active: Iterable[int]):
        """A pass with only the `active` layers in the mode they had in the
        training pass. The model itself is called in inference mode, so logic
        of its own that branches on `training` stays off too. Upstream of the
        first active layer, what the inference pass computed is taken where
        it was kept (`upstream.py`); should that go wrong, the pass runs
        again whole."""
        self._active = set(active)
        key, cut = self.upstream.cut_for([(i, 0) for i in sorted(self._active)])
        if key != INPUT:
            self._cuts_asked.add(key)
        inputs = self._inference_inputs(xs)
        if cut is not None:
            self._set_seeds(batch_index)
            self._cut = cut
            try:
                out = self._call_model(
                    xs, "training", self._h_masked(), inputs=inputs, training=False
                )
                self.reused += cut.skipped
                return out
            except ForwardPassError:
                self.rerun += 1  # a stand-in reached a computed layer, or Keras refused one
            finally:
                self._cut = None
        self._set_seeds(batch_index)
        return self._call_model(xs, "training", self._h_masked(), inputs=inputs, training=False)


__all__ = ["MaskedPasses"]
