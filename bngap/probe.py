"""Forward passes in training and inference mode with per-layer capture.

This is where Keras lives. Every layer instance in the tree gets a wrapper on
its `call` (Keras has no hooks; `Layer.__call__` looks `call` up on the
instance), so each pass sees every layer at every depth, also inside nested
and subclassed models. Per-layer quantities are reduced to sums as the
batches stream through; a batch's inference activations are held only until
the training pass of the same batch has consumed them.

Side effects are undone: a training-mode pass updates BatchNormalization
moving statistics and random-generator states, so every variable is
snapshotted first and restored after each pass and in `finally`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend
from .audit import BatchNormParams
from .backend import (
    StateGuard,
    _context_training,
    _initializer_constant,
    _keras_message,
    pack_inputs,
)
from .errors import ForwardPassError, one_line
from .layertree import LayerNode
from .results import Kind
from .stats import GapAccumulator, SplitMoments


class _StopPass(Exception):
    """Raised by a wrapper to end a pass early once it has what it needs."""


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


def _flatten(keras, out) -> list:
    return [t for t in keras.tree.flatten(out) if t is not None]


class Probe:
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
        self._installed: list[tuple[Any, Any]] = []
        self._order_counter = 0
        self._active: set[int] = set()
        self._seq = 0
        self._bn_var_cache: dict | None = None
        self.guard: StateGuard | None = None
        self._seed_vars: list = []

    # ---------------------------------------------------------------- set-up
    def __enter__(self):
        self.guard = StateGuard(self.model, [n.layer for n in self.nodes])
        self._seed_vars = backend.seed_variables(self.model, self.guard)
        for node in self.nodes:
            layer = node.layer
            previous = layer.__dict__.get("call", _MISSING)
            original = layer.call
            object.__setattr__(layer, "call", self._make_wrapper(node, original))
            self._installed.append((layer, previous))
        return self

    def __exit__(self, *exc):
        for layer, previous in reversed(self._installed):
            if previous is _MISSING:
                layer.__dict__.pop("call", None)
            else:
                object.__setattr__(layer, "call", previous)
        self._installed.clear()
        self._eval_store.clear()
        if self.guard is not None:
            self.guard.close()
        return False

    def _make_wrapper(self, node: LayerNode, original):
        def wrapper(*args, **kwargs):
            if self._handler is None or self._bypass or backend.tracing((args, kwargs)):
                return original(*args, **kwargs)
            self._stack.append(node)
            try:
                return self._handler(node, original, args, kwargs)
            except (_StopPass, ForwardPassError):
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

    def _restore_bn(self, node: LayerNode) -> None:
        """Undo a BN layer's moving-statistics update right away, so a layer
        called twice in one pass sees the same statistics both times."""
        for v, saved in self._bn_vars(node):
            v.assign(saved)

    def _guard(self) -> StateGuard:
        """The state guard, set up on entering the probe."""
        assert self.guard is not None, "the probe is used outside its `with` block"
        return self.guard

    def _bn_vars(self, node: LayerNode):
        cache = self._bn_var_cache
        if cache is None:
            cache = self._bn_var_cache = {}
            where = {id(v): i for i, v in enumerate(self._guard().variables)}
            for n in self.nodes:
                if n.kind is Kind.BATCHNORM:
                    pairs = []
                    for v in n.layer.non_trainable_variables:
                        i = where.get(id(v))
                        if i is not None:
                            pairs.append((v, self._guard().saved[i]))
                    cache[n.index] = pairs
        return cache.get(node.index, ())

    def _set_seeds(self, batch_index: int) -> None:
        """Same random masks in every training-like pass of one batch, new ones
        for the next batch, all derived from --seed."""
        backend.set_seeds(self._seed_vars, self.seed, batch_index)

    def _pack(self, xs: list[np.ndarray]):
        return self.pack(xs)

    def _call_model(self, xs, what: str, handler, fit: bool = False, **call_kwargs):
        """One pass with `handler` on every layer call: `fit=True` calls the
        model as fit()'s train_step does (see `backend.call_as_fit`)."""
        self._handler = handler
        self._counts = {}
        self._failed_at = None
        try:
            with backend.no_grad():
                if fit:
                    out = backend.call_as_fit(self.model, self._pack(xs))
                else:
                    out = self.model(self._pack(xs), **call_kwargs)
        except _StopPass:
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
            self._guard().restore()
        return out

    def _bn_input_moments(self, node, args, kwargs):
        """Per-example channel moments of the input a BN layer is called with."""
        x = args[0] if args else kwargs.get("inputs")
        return _channel_moments(self.ops, x, node.layer.axis, kwargs.get("mask"))

    def _run(self, node, original, args, kwargs):
        """Calls the layer; a BN layer's statistics update is undone at once."""
        out = original(*args, **kwargs)
        if node.kind is Kind.BATCHNORM:
            self._restore_bn(node)
        return out

    def _eval_same_input(self, node, original, args, kwargs):
        """The layer's inference-mode output on the input it just got."""
        kw = dict(kwargs)
        kw["training"] = False
        self._bypass += 1
        try:
            with _context_training(False):
                return original(*args, **kw)
        finally:
            self._bypass -= 1

    def _accumulate(self, acc: GapAccumulator, train_out, ref_out) -> bool:
        """Adds ||t - r||^2 and ||r||^2 of a pair of layer outputs to `acc`.

        Fast path first (two reductions); only when a sum comes out
        non-finite is it recomputed without the NaN/Inf entries.
        """
        ops = self.ops
        a, b = _flatten(self.keras, train_out), _flatten(self.keras, ref_out)
        if len(a) != len(b):
            return False
        parts = []
        for t, r in zip(a, b):
            if (
                not hasattr(t, "shape")
                or tuple(t.shape) != tuple(r.shape)
                or not backend.is_floating(t)
            ):
                continue
            t32, r32 = _as_float32(ops, t), _as_float32(ops, r)
            parts.append((t32, r32, backend.pair_sums(t32, r32)))
        if not parts:
            return False
        # one output (nearly every layer): its two sums as they are, without a stack and sum more
        if len(parts) == 1:
            total = parts[0][2]
        else:
            total = ops.sum(ops.stack([p[2] for p in parts]), axis=0)
        sums = backend.to_numpy(total).astype(np.float64)
        if not np.all(np.isfinite(sums)):
            sums = np.zeros(2)
            for t32, r32, _ in parts:
                both = ops.logical_and(ops.isfinite(t32), ops.isfinite(r32))
                t0, r0 = ops.where(both, t32, 0.0), ops.where(both, r32, 0.0)
                sums += np.array(
                    [float(ops.sum(ops.square(t0 - r0))), float(ops.sum(ops.square(r0)))]
                )
        sq_d, sq_r = sums
        sq_o = 0.0
        if sq_r == 0.0 and sq_d > 0.0:  # reference all zeros: relative to the other side
            sq_o = sum(float(ops.sum(ops.square(p[0]))) for p in parts)
        acc.add_sums(sq_d, sq_r, sq_o)
        return True

    # -------------------------------------------------------------- handlers
    def _h_eval(self, capture_outputs: bool, capture_bn: bool):
        def handler(node, original, args, kwargs):
            st = self.stats[node.index]
            k = self._next_call(node)
            if st.order < 0:
                st.order = self._order_counter
                self._order_counter += 1
            st.eval_training.add(kwargs.get("training"))
            if capture_bn and node.kind is Kind.BATCHNORM:
                if st.moments is None:
                    st.moments = SplitMoments()
                st.moments.add_examples(*self._bn_input_moments(node, args, kwargs))
            out = self._run(node, original, args, kwargs)
            if capture_outputs:
                self._eval_store[(node.index, k)] = out
            st.calls = max(st.calls, k + 1)
            return out

        return handler

    def _h_train(self, own: bool = True):
        def handler(node, original, args, kwargs):
            st = self.stats[node.index]
            k = self._next_call(node)
            st.fit_training[k] = kwargs.get("training")
            ref = None
            if own and node.mode_dependent and kwargs.get("training"):
                ref = self._eval_same_input(node, original, args, kwargs)
            out = self._run(node, original, args, kwargs)
            if node.mode_dependent and own:
                if ref is None:  # ran in inference mode: same input, same output
                    flat = _flatten(self.keras, out)
                    ops = self.ops
                    sq = sum(
                        float(ops.sum(ops.square(ops.cast(t, "float32"))))
                        for t in flat
                        if backend.is_floating(t)
                    )
                    st.own.add_sums(0.0, sq, sq)
                else:
                    self._accumulate(st.own, out, ref)
            stored = self._eval_store.pop((node.index, k), None)
            if stored is not None and self._accumulate(st.divergence, out, stored):
                st.paired += 1
            else:
                st.matched = False
            return out

        return handler

    def _h_masked(self):
        """Training pass in which only the layers in `self._active` keep the
        mode they had in the natural training pass; all other mode-dependent
        layers are held in inference mode."""

        def handler(node, original, args, kwargs):
            st = self.stats[node.index]
            k = self._next_call(node)
            if node.mode_dependent and node.takes_training:
                if node.index in self._active:
                    natural = st.fit_training.get(k, kwargs.get("training"))
                    if natural is not None:
                        kwargs["training"] = natural
                else:
                    kwargs["training"] = False
            return self._run(node, original, args, kwargs)

        return handler

    def _h_forced_eval(self):
        def handler(node, original, args, kwargs):
            self._next_call(node)
            if node.takes_training:
                kwargs["training"] = False
            return original(*args, **kwargs)

        return handler

    def _h_observe(self, seen: dict):
        def handler(node, original, args, kwargs):
            self._next_call(node)
            seen.setdefault(node.index, set()).add(kwargs.get("training"))
            return self._run(node, original, args, kwargs)

        return handler

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
            for t in _flatten(self.keras, (args, kwargs)):
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
            for t in _flatten(self.keras, out):
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
        self._bn_var_cache = None

    # ----------------------------------------------------------------- passes
    def eval_pass(self, xs, capture_outputs=True, capture_bn=True):
        """model(x, training=False), recording inputs of BN layers and (for
        the training pass that follows) every layer's output."""
        self._eval_store.clear()
        return self._call_model(
            xs, "inference", self._h_eval(capture_outputs, capture_bn), training=False
        )

    def train_pass(self, xs, batch_index: int, own: bool = True):
        """The model called as the installed Keras' fit() calls it on this
        backend (`backend.call_as_fit`: training=True only when its call()
        takes it; stateless_call on JAX), comparing each layer's output with
        the stored inference output of the same batch."""
        self._set_seeds(batch_index)
        try:
            return self._call_model(xs, "training", self._h_train(own), fit=True)
        finally:
            self._eval_store.clear()

    def masked_pass(self, xs, batch_index: int, active: Iterable[int]):
        """A pass with only the `active` layers in the mode they had in the
        training pass. The model itself is called in inference mode, so logic
        of its own that branches on `training` stays off too."""
        self._active = set(active)
        self._set_seeds(batch_index)
        return self._call_model(xs, "training", self._h_masked(), training=False)

    def forced_eval_pass(self, xs):
        """Every layer that takes `training` is called with training=False."""
        return self._call_model(xs, "inference", self._h_forced_eval(), training=False)

    def observe_pass(self, xs, **call_kwargs) -> tuple[Any, dict]:
        """A plain call (e.g. no `training` argument) recording what each layer received."""
        seen: dict = {}
        out = self._call_model(xs, "inference", self._h_observe(seen), **call_kwargs)
        return out, seen

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

    def predict(self, xs):
        """model.predict() with the wrappers out of the way. The compiled
        predict function Keras makes is not left in `model.predict_function`
        (the user's model keeps what it had), but kept aside on the model, so
        that the next check of the same model does not trace it again."""
        model = self.model
        previous = getattr(model, "predict_function", None)
        key = _predict_key(model)
        cached = model.__dict__.get(_PREDICT_CACHE)
        if previous is None and cached is not None and cached[0] == key:
            model.predict_function = cached[1]
        self._handler = None
        self._bypass += 1
        try:
            return model.predict(self._pack(xs), batch_size=max(1, len(xs[0])), verbose=0)
        finally:
            self._bypass -= 1
            made = getattr(model, "predict_function", None)
            if previous is None and made is not None:
                object.__setattr__(model, _PREDICT_CACHE, (key, made))  # untracked by Keras
            model.predict_function = previous
            self._guard().restore()

    def bn_params(self, node: LayerNode) -> BatchNormParams:
        layer = node.layer

        def arr(v):
            return None if v is None else np.asarray(backend.to_numpy(v), dtype=np.float64)

        return BatchNormParams(
            path=node.path,
            gamma=arr(getattr(layer, "gamma", None)),
            beta=arr(getattr(layer, "beta", None)),
            moving_mean=arr(layer.moving_mean),
            moving_variance=arr(layer.moving_variance),
            epsilon=float(layer.epsilon),
            momentum=float(layer.momentum),
            trainable=bool(layer.trainable),
            axis=int(layer.axis),
            renorm=bool(getattr(layer, "renorm", False)),
            synchronized=bool(getattr(layer, "synchronized", False)),
            init_mean=_initializer_constant(layer.moving_mean_initializer),
            init_variance=_initializer_constant(layer.moving_variance_initializer),
            renorm_mean=arr(getattr(layer, "renorm_mean", None)),
            renorm_stddev=arr(getattr(layer, "renorm_stddev", None)),
        )


_MISSING = object()
_PREDICT_CACHE = "_bngap_predict_function"


def _predict_key(model) -> tuple:
    """What Keras' make_predict_function builds from: a cached function is
    reused only while these are unchanged."""
    return (
        getattr(model, "run_eagerly", None),
        getattr(model, "jit_compile", None),
        getattr(model, "steps_per_execution", None),
        id(getattr(model, "_distribute_strategy", None)),
    )


def _as_float32(ops, t):
    """`t` in float32; a float32 tensor as it is (skips the cast op's dispatch)."""
    return t if "float32" in str(getattr(t, "dtype", "")) else ops.cast(t, "float32")


def _channel_moments(ops, x, axis: int, mask=None):
    """Per-example, per-channel (count, mean, M2) of a BN layer's input, as
    numpy (examples, channels) arrays. Two-pass within each example, in the
    same float32 ops on every backend (not the backend's own `moments`: the
    PyTorch one computes E[x^2] - E[x]^2)."""
    x = ops.cast(x, "float32")
    rank = len(x.shape)
    axis = axis % rank
    if axis != rank - 1:
        perm = [i for i in range(rank) if i != axis] + [axis]
        x = ops.transpose(x, perm)
        mask = None  # Keras applies masks along the last axis only
    c = x.shape[-1]
    b = x.shape[0]
    x3 = ops.reshape(x, (b, -1, c))
    if mask is None:
        mean = ops.mean(x3, axis=1)
        m2 = backend.sum_squared_difference(x3, mean[:, None, :], axis=1)
        per = int(np.prod([d for d in x.shape[1:-1]])) if rank > 2 else 1
        mean_np = backend.to_numpy(mean)
        counts = np.full(mean_np.shape, float(per))
        return counts, mean_np, backend.to_numpy(m2)
    w = ops.reshape(ops.cast(mask, "float32"), (b, -1, 1))
    n = ops.sum(w, axis=1)
    mean = ops.sum(x3 * w, axis=1) / ops.maximum(n, 1.0)
    m2 = ops.sum(w * ops.square(x3 - mean[:, None, :]), axis=1)
    mean_np = backend.to_numpy(mean)
    counts = np.broadcast_to(backend.to_numpy(n), mean_np.shape).astype(np.float64)
    return counts, mean_np, backend.to_numpy(m2)


__all__ = ["Probe", "StateGuard", "NodeStats"]
