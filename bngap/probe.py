"""Forward passes in training and inference mode with per-layer capture.

This is where Keras lives. Every layer instance in the tree gets a wrapper on
its `call` (Keras has no hooks; `Layer.__call__` looks `call` up on the
instance), so each pass sees every layer at every depth, also inside nested
and subclassed models. Per-layer quantities are reduced to sums as the
batches stream through; a batch's inference activations are held only until
the training pass of the same batch has consumed them, or (a model of Keras'
own classes, `lockstep.py`) computed beside it and held only while used.

Side effects are undone: a training-mode pass updates BatchNormalization
moving statistics and random-generator states, so every variable is
snapshotted first and restored after each pass and in `finally`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from . import backend, closedform, layertree
from .audit import BatchNormParams
from .backend import (
    StateGuard,
    _context_training,
    _keras_message,
    pack_inputs,
)
from .bnstate import BatchNormState, batchnorm_below
from .errors import ForwardPassError, one_line
from .inferencepaths import PathPasses, plain_keras_model
from .inputmoments import InputMoments
from .layertree import LayerNode, bn_params
from .lockstep import Abandon, LockstepPass
from .maskedpasses import MaskedPasses
from .reductions import (
    Due,
    NonFinite,
    channel_moment_tensors,
    channel_moments,
    fetch,
    finite_pair_sums,
    pair_total,
    read_now,
    settle,
    squares_total,
)
from .results import Kind
from .stats import NodeStats, SplitMoments
from .upstream import Cut, Upstream


class _StopPass(Exception):
    """Raised by a wrapper to end a pass early once it has what it needs."""


class Probe(LockstepPass, PathPasses, MaskedPasses):
    """Installs call wrappers on every layer of a model and runs passes.

    Use as a context manager: wrappers are removed and all variables are
    restored on exit, also when a pass raises.
    """

    def __init__(self, model, nodes: list[LayerNode], keras, seed: int = 0, pack=None):
        self.pack = pack or (lambda xs: pack_inputs(keras, model, xs))
        self.ops = keras.ops
        self.keras = keras
        self.model = model
        self.nodes = nodes
        self.seed = int(seed)
        self.stats = {n.index: NodeStats() for n in nodes}
        self._handler: Callable | None = None
        self._bypass = 0
        self._counts: dict[int, int] = {}
        self._stack: list[LayerNode] = []
        self._failed_at: LayerNode | None = None
        self._eval_store: dict = {}
        self._installed: list[tuple[Any, str, Any]] = []  # (layer, attribute, what it had)
        self._moments_got: tuple[Any, Any] | None = None  # a BN call's batch (mean, variance)
        self._closed: set[int] = set()  # BN layers whose moments are caught (closedform)
        self._rearranging: set[int] = set()  # layers whose divergence sums their inputs'
        self._producers: dict[int, tuple] = {}  # id of an inference output: its call
        self._parts_of: dict[tuple, tuple] = {}  # a rearranging call: its inputs' calls
        self._totals: dict[int, tuple] = {}  # id of a training output: (ref, call, its pair)
        self._input_moments = InputMoments(self.ops)  # BN input moments, joined at concatenations
        self._order_counter = 0
        self._active: set[int] = set()
        self._seq = 0
        self._bn: BatchNormState | None = None
        self.guard: StateGuard | None = None
        self._seed_vars: list = []
        self._adopted = False  # trainable variables a training pass writes, found once
        self._sink: list[tuple[Due, Any]] | None = None  # deferred quantities of the pass
        self._compiling = False  # inside bngap's own traced pass (see compiled.py)
        self._held_inputs: tuple[Any, Any] | None = None  # (xs, tensors) of the batch
        self.upstream = Upstream(
            keras, pure=all(layertree.is_keras_builtin(n.layer) for n in nodes)
        )
        self._cut: Cut | None = None  # the masked pass's cut, while it runs
        self._cuts_asked: set = set()  # cuts the masked passes of this batch looked up
        self.reused = 0  # layer calls masked passes took from the inference pass
        self.rerun = 0  # masked passes that left the inference pass's data flow and ran again
        self.compiled: Any = None  # compiled.CompiledPasses, when the backend compiles
        self._held: frozenset[int] = frozenset()  # guard variables `_run` itself puts back
        self.plain = False  # a model of Keras' own code (`plain_keras_model`), seen on entering
        self._node_at = {n.index: n for n in nodes}

    # ---------------------------------------------------------------- set-up
    def __enter__(self):
        self.guard = StateGuard(self.model, [n.layer for n in self.nodes])
        self._bn = BatchNormState(self.nodes, self.guard, self.ops)
        self._seed_vars = backend.seed_variables(self.model, self.guard)
        self.plain = plain_keras_model(self.model, self.nodes, self.keras)  # before the wrappers
        if self.plain:
            # every BN call of a pass goes through `_run`, which puts the statistics back at once
            self._held = self._bn.indices()
        self._lockstep_setup()
        for node in self.nodes:
            self._install(node.layer, "call", self._make_wrapper(node, node.layer.call))
            if closedform.rearranging(node, self.keras):
                self._rearranging.add(node.index)
            if closedform.closed_form_ok(node, self.keras):
                self._install(node.layer, "_moments", self._moments_catcher(node.layer._moments))
                self._closed.add(node.index)
        return self

    def _install(self, layer, attr: str, value) -> None:
        """Sets an instance attribute over the class's method (Keras looks
        both up on the instance), remembering what to put back."""
        self._installed.append((layer, attr, layer.__dict__.get(attr, _MISSING)))
        object.__setattr__(layer, attr, value)

    def _moments_catcher(self, original):
        """A BN layer's `_moments`, keeping the batch moments it computes
        for its own contribution in closed form (`_own_closed`)."""

        def moments(inputs, mask):
            got = original(inputs, mask)
            if mask is None:
                self._moments_got = got
            return got

        return moments

    def __exit__(self, *exc):
        for layer, attr, previous in reversed(self._installed):
            if previous is _MISSING:
                layer.__dict__.pop(attr, None)
            else:
                object.__setattr__(layer, attr, previous)
        self._installed.clear()
        self.end_batch()
        if self.guard is not None:
            self.guard.close()
        return False

    def _make_wrapper(self, node: LayerNode, original):
        def wrapper(*args, **kwargs):
            if self._handler is None or self._bypass:
                return original(*args, **kwargs)
            if not self._compiling and backend.tracing((args, kwargs)):
                return original(*args, **kwargs)  # someone else's trace (predict, build)
            self._stack.append(node)
            try:
                return self._handler(node, original, args, kwargs)
            except (_StopPass, Abandon, ForwardPassError):
                raise
            except Exception:
                if self._failed_at is None:
                    self._failed_at = node
                raise
            finally:
                self._stack.pop()

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]  # functools' convention
        return wrapper

    # --------------------------------------------------------------- helpers
    def _next_call(self, node: LayerNode) -> int:
        k = self._counts.get(node.index, 0)
        self._counts[node.index] = k + 1
        return k

    @property
    def bn(self) -> BatchNormState:
        """The BN statistics held still during passes, set up on entering."""
        assert self._bn is not None, "the probe is used outside its `with` block"
        return self._bn

    def _guard(self) -> StateGuard:
        """The state guard, set up on entering the probe."""
        assert self.guard is not None, "the probe is used outside its `with` block"
        return self.guard

    def _set_seeds(self, batch_index: int) -> None:
        """Same random masks in every training-like pass of one batch, new ones
        for the next batch, all derived from --seed."""
        backend.set_seeds(self._seed_vars, self.seed, batch_index)

    def _pack(self, xs: list[np.ndarray]):
        return self.pack(xs)

    def _inference_inputs(self, xs):
        """`xs` packed as backend tensors, once per batch for its
        inference-mode passes: the inference pass's data flow starts from
        these very tensors (`upstream` follows it by identity), and a masked
        pass that hands a model input on gets them too."""
        held = self._held_inputs
        if held is not None and held[0] is xs:
            return held[1]
        ops = self.ops
        packed = self.keras.tree.map_structure(
            lambda t: ops.convert_to_tensor(t) if isinstance(t, np.ndarray) else t, self._pack(xs)
        )
        self._held_inputs = (xs, packed)  # holding xs keeps its id from being reused
        return packed

    def _clear_store(self) -> None:
        """Lets go of the inference outputs held for the training pass, and
        of what was noted about the calls that made them."""
        self._eval_store.clear()
        self._producers.clear()
        self._parts_of.clear()
        self._totals.clear()
        self._input_moments.clear()

    def end_batch(self) -> None:
        """Lets go of what the batch's passes shared (the inference outputs,
        the packed inputs); the next batch keeps the cuts this one asked for."""
        self._clear_store()
        self._held_inputs = None
        self.upstream.reset()
        if self._adopted:  # a training pass ran, the plan is made: these cuts (maybe none)
            self.upstream.wanted = set(self._cuts_asked)
        self._cuts_asked = set()

    def _call_model(
        self,
        xs,
        what: str,
        handler,
        fit: bool = False,
        defer: bool = False,
        inputs=None,
        **call_kwargs,
    ):
        """One pass with `handler` on every layer call: `fit=True` calls the
        model as fit()'s train_step does (see `backend.call_as_fit`). With
        `defer`, the per-layer quantities stay on the device until the pass
        ends and are fetched together (see `settle`). `inputs`: `xs` packed
        already."""
        packed = self._pack(xs) if inputs is None else inputs
        self._handler = handler
        self._counts = {}
        self._failed_at = None
        self._sink = [] if defer else None
        try:
            with backend.no_grad():
                if fit:
                    out = backend.call_as_fit(self.model, packed)
                else:
                    out = self.model(packed, **call_kwargs)
        except (_StopPass, Abandon):
            return None
        except ForwardPassError:
            raise
        except Exception as e:
            where = self._failed_at
            loc = f" in layer '{where.path}' ({where.class_name})" if where else ""
            raise ForwardPassError(
                f"the model failed{loc} during the {what} pass: {type(e).__name__}: "
                f"{one_line(_keras_message(e), 300)}",
                layer=where.path if where else None,
            ) from e
        finally:
            self._handler = None
            self._stack.clear()
            self._guard().restore(skip=self._held)
            sink, self._sink = self._sink, None
        if sink:
            self.settle([d for d, _ in sink], fetch([t for _, t in sink]))
        return out

    # ------------------------------------------------ deferred quantities
    def _emit(self, due: Due, tensor, exact: Callable[[], np.ndarray] | None = None) -> None:
        """Hands a device-side quantity to the pass's sink, or (no sink)
        fetches and settles it now, recomputing a non-finite pair exactly."""
        if self._sink is not None:
            self._sink.append((due, tensor))
            return
        value = read_now(tensor)
        if exact is not None and not np.all(np.isfinite(value)):
            value = exact()
        dues, values = self._closed_pairs([due], [value])
        settle(self.stats, dues, values, strict=False)

    def settle(self, dues: list[Due], values: list[np.ndarray]) -> None:
        """Adds a pass's fetched quantities to the layers' accumulators (see
        `reductions.settle`)."""
        dues, values = self._closed_pairs(dues, values)
        settle(self.stats, dues, values)

    def _closed_pairs(self, dues: list[Due], values: list[np.ndarray]):
        """(dues, values) with each BN layer's batch moments (`Due.BN_OWN`)
        turned into its own pair of sums (`closedform.own_pair`), from the
        parameters the passes use."""
        if not any(d.kind == Due.BN_OWN for d in dues):
            return dues, values
        out_dues, out_values = [], []
        for d, v in zip(dues, values):
            if d.kind == Due.BN_OWN:
                v = closedform.own_pair(d.per, v, self.bn.moving(self._node_at[d.node]))
                d = Due(Due.OWN, d.node)
            out_dues.append(d)
            out_values.append(v)
        return out_dues, out_values

    def _bn_input_moments(self, node, args, kwargs):
        """Per-example channel moments of the input a BN layer is called with."""
        x = args[0] if args else kwargs.get("inputs")
        return channel_moments(self.ops, x, node.layer.axis, kwargs.get("mask"))

    def _run(self, node, original, args, kwargs):
        """Calls the layer; a BN layer's statistics update is undone at once."""
        if node.kind is not Kind.BATCHNORM or not kwargs.get("training"):
            return original(*args, **kwargs)  # BN moves its statistics only when training
        if self._compiling:  # in the graph: read before, written back after
            kept = self.bn.keep([node])
            out = original(*args, **kwargs)
            self.bn.put_back(kept)
            return out
        out = original(*args, **kwargs)
        self.bn.restore(node)
        return out

    def _eval_same_input(self, node, original, args, kwargs):
        """The layer's inference-mode output on the input it just got. A BN
        layer inside it that is called with training=True regardless (a mode
        leak) has its statistics update undone, as every other one is."""
        kw = dict(kwargs)
        kw["training"] = False
        kept = self.bn.keep(batchnorm_below(node))
        self._bypass += 1
        try:
            with _context_training(False):
                return original(*args, **kw)
        finally:
            self._bypass -= 1
            self.bn.put_back(kept)

    def _compare(self, due: Due, train_out, ref_out):
        """Emits (||t - r||^2, ||r||^2) of a pair of layer outputs (see
        `reductions.pair_total`) and returns it, two scalars on the device;
        None when there is nothing to compare."""
        got = pair_total(self.keras, train_out, ref_out)
        if got is None:
            return None
        total, parts = got
        self._emit(due, total, exact=lambda: finite_pair_sums(self.ops, parts))
        return total

    def _own_training(self, node, closed: bool, args, kwargs, out, ref):
        """Emits the own contribution of a layer that ran in training mode:
        in closed form (`closed`: a BN layer), else its output against its
        inference-mode output `ref`; returns what reads the pair now."""
        if closed:
            got, self._moments_got = self._moments_got, None
            return self._own_closed(node, args, kwargs, out, got)
        total = self._compare(Due(Due.OWN, node.index), out, ref)
        return None if total is None else lambda: read_now(total)

    def _own_closed(self, node, args, kwargs, out, moments) -> Callable[[], np.ndarray]:
        """Emits a BN layer's own contribution in closed form (`closedform`):
        its batch `moments`, the sums made of them when the pass settles; a
        layer that computed none (not trainable: it normalized with its
        moving statistics) gave r itself. Returns what reads the pair now."""
        if moments is None:
            sq = squares_total(self.keras, out)
            total = (sq * 0.0, sq)
            self._emit(Due(Due.OWN, node.index), total)
            return lambda: read_now(total)
        x = args[0] if args else kwargs.get("inputs")
        per, rows = closedform.moment_rows(self.ops, node.layer, x, *moments)
        self._emit(Due(Due.BN_OWN, node.index, per), rows)
        moving = self.bn.moving(node)
        return lambda: closedform.own_pair(per, read_now(rows), moving)

    # -------------------------------------------------------------- handlers
    def _h_eval(self, capture_outputs: bool, capture_bn: bool):
        def handler(node, original, args, kwargs):
            k = self._next_call(node)
            self._eval_enter(node, k, args, kwargs, capture_outputs, capture_bn)
            out = self._run(node, original, args, kwargs)
            if capture_outputs:
                self._eval_store[(node.index, k)] = out
            self._eval_leave(node, k, args, kwargs, out, capture_outputs)
            return out

        return handler

    def _eval_enter(self, node, k: int, args, kwargs, capture_outputs: bool, capture_bn: bool):
        """What an inference-mode call records before it runs: its order, the
        `training` value it got, a BN layer's input moments, its inputs' calls."""
        st = self.stats[node.index]
        if st.order < 0:
            st.order = self._order_counter
            self._order_counter += 1
        st.eval_training.add(kwargs.get("training"))
        if capture_bn and node.kind is Kind.BATCHNORM:
            x = args[0] if args else kwargs.get("inputs")
            axis, mask = node.layer.axis, kwargs.get("mask")
            if self._compiling:
                per, mean, m2 = channel_moment_tensors(self.ops, x, axis, mask)
            else:
                per, mean, m2 = self._input_moments.of(x, axis, mask)
            if per is not None:
                self._emit(Due(Due.MOMENTS, node.index, per), (mean, m2))
            else:  # masked: counts vary per example, fetched now
                st.moments = st.moments or SplitMoments()
                st.moments.add_examples(*self._bn_input_moments(node, args, kwargs))
        if capture_outputs:
            self.upstream.entered((node.index, k), args, kwargs)

    def _eval_leave(self, node, k: int, args, kwargs, out, capture_outputs: bool) -> None:
        """What an inference-mode call records once it has run: its output,
        for the masked passes and the summed pairs."""
        if capture_outputs:
            self.upstream.left((node.index, k), out)
            self._produced(node, (node.index, k), args, kwargs, out)
        if not self._compiling and isinstance(node.layer, self.keras.layers.Concatenate):
            parts = args[0] if args else kwargs.get("inputs")
            self._input_moments.concatenated(node.layer.axis, parts, out)
        st = self.stats[node.index]
        st.calls = max(st.calls, k + 1)

    def _h_train(self, own: bool = True):
        def handler(node, original, args, kwargs):
            key = (node.index, self._next_call(node))
            self.upstream.reached(key)
            out, stored = self._train_call(
                node, key[1], original, args, kwargs, own, lambda _: self._eval_store.pop(key, None)
            )
            self.upstream.passed(key, stored)
            return out

        return handler

    def _train_call(self, node, k: int, original, args, kwargs, own: bool, stored_of):
        """A training-mode call: runs it, emits its own contribution (a
        mode-dependent layer) and its divergence from its inference output,
        `stored_of(its output)`; returns (its output, that inference output)."""
        st = self.stats[node.index]
        st.fit_training[k] = kwargs.get("training")
        up = self.upstream
        ref = frontier = None
        training = own and node.mode_dependent and kwargs.get("training")
        # deferred sums only: a non-finite batch is measured again in both modes, entry by entry
        closed = (
            training
            and self._sink is not None
            and node.index in self._closed
            and closedform.call_ok(args, kwargs)
        )
        if training:
            frontier = self._frontier_now() if up.wants((node.index, k)) else None
            if not closed:
                ref = self._eval_same_input(node, original, args, kwargs)
        self._moments_got = None
        out = self._run(node, original, args, kwargs)
        if node.mode_dependent and own:
            if not training:  # ran in inference mode: same input, same output
                self._own_squares(node, out)
            else:
                pair = self._own_training(node, closed, args, kwargs, out, ref)
                self._offer_cut(node, k, pair, frontier)
        stored = stored_of(out)
        if stored is None or self._divergence(node, (node.index, k), args, kwargs, out, stored):
            st.matched = False
        return out, stored

    def _produced(self, node: LayerNode, key: tuple, args, kwargs, out) -> None:
        """Notes, in the inference pass, which call made each output, and
        which calls' outputs a rearranging layer took (`_divergence`)."""
        if node.index in self._rearranging:
            inputs = closedform.layer_inputs(self.keras, args, kwargs)
            parts = [self._producers.get(id(t)) for t in inputs]
            if parts and None not in parts:
                self._parts_of[key] = tuple(parts)
        if hasattr(out, "shape"):
            self._producers[id(out)] = key  # held in the store: the id stays its own

    def _divergence(self, node: LayerNode, key: tuple, args, kwargs, out, stored) -> bool:
        """Emits [||t - r||^2, ||r||^2] of a call's training output against
        its stored inference output; True when there was nothing to compare.
        A rearranging layer whose inputs are, in both passes, the outputs of
        the same calls gets the sum of their pairs (deferred sums only: a
        non-finite batch is compared again entry by entry)."""
        due = Due(Due.DIVERGENCE, node.index)
        parts = self._parts_of.get(key) if self._sink is not None else None
        total = None if parts is None else self._summed_pairs(parts, args, kwargs)
        if total is not None:
            self._emit(due, total)
        else:
            total = self._compare(due, out, stored)
            if total is None:
                return True
        if hasattr(out, "shape"):
            self._totals[id(out)] = (weakref.ref(out), key, total)
        return False

    def _summed_pairs(self, parts: tuple, args, kwargs):
        """The sum of the pairs of a call's inputs, if each is the very
        training output of the call in `parts` that made its inference twin."""
        inputs = closedform.layer_inputs(self.keras, args, kwargs)
        if len(inputs) != len(parts):
            return None
        pairs = []
        for t, part in zip(inputs, parts):
            got = self._totals.get(id(t))
            if got is None or got[0]() is not t or got[1] != part:
                return None
            pairs.append(got[2])
        d, r = pairs[0]
        for more_d, more_r in pairs[1:]:
            d, r = d + more_d, r + more_r
        return d, r

    def _own_squares(self, node: LayerNode, out) -> None:
        total = squares_total(self.keras, out)
        if total is not None:
            self._emit(Due(Due.OWN_SQUARES, node.index), total)

    def eval_pass(self, xs, capture_outputs=True, capture_bn=True, defer=True):
        """model(x, training=False), recording inputs of BN layers and (for
        the training pass that follows) every layer's output."""
        self._clear_store()
        inputs = self._inference_inputs(xs)
        if capture_outputs:
            self.upstream.begin(inputs)
        out = self._call_model(
            xs,
            "inference",
            self._h_eval(capture_outputs, capture_bn),
            defer=defer,
            inputs=inputs,
            training=False,
        )
        if capture_outputs:
            self.upstream.finished(out)
        return out

    def train_pass(self, xs, batch_index: int, own: bool = True, defer=True):
        """The model called as the installed Keras' fit() calls it on this
        backend (`backend.call_as_fit`: training=True only when its call()
        takes it; stateless_call on JAX), comparing each layer's output with
        the stored inference output of the same batch."""
        self._set_seeds(batch_index)
        try:
            return self._call_model(xs, "training", self._h_train(own), fit=True, defer=defer)
        finally:
            # inference outputs it did not take (calls of the inference pass only): not held
            # through the masked passes, which take only the frontiers `upstream` kept
            self._clear_store()
            self.after_training_pass()

    def after_training_pass(self) -> None:
        """After the first training pass: trainable variables it wrote are
        restored from now on after every pass (see `StateGuard.adopt_changed`)."""
        if not self._adopted:
            self._adopted = True
            self._guard().adopt_changed()

    def eval_train(self, xs, batch_index: int):
        """One batch's inference pass, then its training pass: compiled where
        the backend allows it (`compiled.py`), else eagerly with each pass's
        quantities fetched at its end. A batch whose sums come out non-finite
        is measured again layer by layer, leaving the NaN/Inf entries out."""
        if self.compiled is not None:
            try:
                got = self.compiled.run(self, xs, batch_index)
            except NonFinite:
                return self._eval_train_exact(xs, batch_index, capture_bn=True)
            if got is not None:
                return got
        try:
            got = self.lockstep_pass(xs, batch_index)
        except NonFinite:
            self._modes_after(xs)  # the first batch's, as the classic structure runs it
            return self._eval_train_exact(xs, batch_index, capture_bn=True)
        if got is not None:
            return got
        ev = self.eval_pass(xs)
        self.after_inference_pass(xs)
        try:
            return ev, self.train_pass(xs, batch_index)
        except NonFinite:
            return self._eval_train_exact(xs, batch_index, capture_bn=False)

    def _eval_train_exact(self, xs, batch_index: int, capture_bn: bool):
        ev = self.eval_pass(xs, capture_bn=capture_bn, defer=False)
        return ev, self.train_pass(xs, batch_index, defer=False)

    def bn_params(self, node: LayerNode) -> BatchNormParams:
        """The BN layer's parameters and settings (see `layertree.bn_params`)."""
        return bn_params(node)


_MISSING = object()


__all__ = ["Probe", "StateGuard", "NodeStats"]
