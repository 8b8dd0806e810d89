"""The probe's passes for `fix`, the preprocessing probe and `--backends`:
BN inputs captured level by level, the first BN layers' input moments, and
every layer's output recorded for another backend to compare with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .layertree import LayerNode
from .probe import Probe, _StopPass
from .reductions import flat_outputs
from .results import Kind
from .stats import SplitMoments


class CaptureProbe(Probe):
    """A `Probe` with the passes that capture rather than compare."""

    def _h_first_bn(self, count: int, capture: dict):
        def handler(node, original, args, kwargs):
            self._next_call(node)
            if node.kind is Kind.BATCHNORM:
                moments = self._bn_input_moments(node, args, kwargs)
                capture.setdefault(node.index, SplitMoments()).add_examples(*moments)
                if len(capture) >= count:
                    raise _StopPass()
            return self._run(node, original, args, kwargs)

        return handler

    def _h_discover(self, calls: list, taint: dict):
        """Records every BN call with the BN layers its input depends on.

        Dependencies follow tensor identity: a layer's input is the very
        tensor object an upstream layer returned (functional graphs pass them
        on unchanged). A tensor we did not see being made (computed by plain
        ops inside a custom layer) conservatively depends on every BN layer
        called so far.
        """
        seen_bn: list[int] = []

        def deps_of(args, kwargs):
            out: set[int] = set()
            for t in flat_outputs(self.keras, (args, kwargs)):
                if not hasattr(t, "shape"):
                    continue
                known = taint.get(id(t))
                if known is None:
                    out.update(seen_bn)
                else:
                    out.update(known[1])
            return out

        def handler(node, original, args, kwargs):
            self._next_call(node)
            deps = deps_of(args, kwargs)
            before = len(seen_bn)
            if node.kind is Kind.BATCHNORM:
                calls.append((node.index, self._seq, frozenset(deps)))
            self._seq += 1
            out = self._run(node, original, args, kwargs)
            if node.kind is Kind.BATCHNORM:
                seen_bn.append(node.index)
                deps = deps | {node.index}
            if node.children:  # a container: its output depends on what ran inside it
                deps = deps | set(seen_bn[before:])
            for t in flat_outputs(self.keras, out):
                if hasattr(t, "shape"):
                    taint[id(t)] = (t, frozenset(deps))  # keep t alive: ids must not be reused
            return out

        return handler

    def _h_capture(self, targets: set[int], stop_after: int, capture: dict):
        """Input moments of the `targets` BN layers; stops after call number
        `stop_after` of the pass."""

        def handler(node, original, args, kwargs):
            self._next_call(node)
            seq = self._seq
            self._seq += 1
            if node.index in targets:
                moments = self._bn_input_moments(node, args, kwargs)
                capture.setdefault(node.index, SplitMoments()).add_examples(*moments)
            if seq >= stop_after:
                raise _StopPass()
            return self._run(node, original, args, kwargs)

        return handler

    def discover_bn_dependencies(self, xs) -> list[tuple[int, int, frozenset]]:
        """(BN node index, call number, BN layers its input depends on) for
        every BN call of one inference pass, in call order."""
        calls: list = []
        taint: dict = {}
        self._seq = 0
        try:
            self._call_model(xs, "inference", self._h_discover(calls, taint), training=False)
        finally:
            taint.clear()
        return calls

    def capture_bn_inputs(self, xs, targets: set[int], stop_after: int, into: dict) -> None:
        """Adds the input moments of the `targets` BN layers on this batch to
        `into` (node index -> SplitMoments), running only as far as needed."""
        self._seq = 0
        self._call_model(
            xs, "inference", self._h_capture(targets, stop_after, into), training=False
        )

    def commit(self) -> None:
        """Makes the current variable values the ones restored on exit (used
        by `fix`, which changes BN statistics on purpose)."""
        self._guard().commit()
        self.bn.forget()

    # ----------------------------------------------------------------- passes
    def record_pass(self, xs, record: Callable[[LayerNode, int, Any], None], *, training: bool):
        """A pass that hands each layer call's output to `record(node, call,
        output)`. With training=True only BatchNormalization layers get the
        flag; random and custom mode-dependent layers stay in inference mode,
        so the pass is deterministic (backends are compared on it)."""

        def handler(node, original, args, kwargs):
            k = self._next_call(node)
            if (
                training
                and node.mode_dependent
                and node.takes_training
                and node.kind is not Kind.BATCHNORM
            ):
                kwargs["training"] = False
            out = self._run(node, original, args, kwargs)
            record(node, k, out)
            return out

        return self._call_model(
            xs, "training" if training else "inference", handler, training=training
        )

    def first_bn_moments(self, xs, count: int) -> dict[int, SplitMoments]:
        """Input moments of the first `count` BN layers in inference mode;
        the pass stops as soon as it has them."""
        capture: dict = {}
        self._call_model(xs, "inference", self._h_first_bn(count, capture), training=False)
        return capture
