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
from typing import Any, ClassVar

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


class NonFinite(Exception):
    """A deferred pair of sums came out NaN/Inf: measure the batch again, exactly."""


@dataclass(frozen=True)
class Due:
    """One device-side quantity of a pass, and where its value goes."""

    DIVERGENCE: ClassVar[str] = "divergence"  # [sum (t - r)^2, sum r^2]: train vs inference pass
    OWN: ClassVar[str] = "own"  # the same pair: the layer in both modes on one input
    OWN_SQUARES: ClassVar[str] = "own_squares"  # sum t^2 of a layer that ran in inference mode
    MOMENTS: ClassVar[str] = "moments"  # [mean, M2] per example and channel of a BN input

    kind: str
    node: int
    per: float = 0.0  # MOMENTS: values per example and channel


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
        self._sink: list[tuple[Due, Any]] | None = None  # deferred quantities of the pass
        self._compiling = False  # inside bngap's own traced pass (see compiled.py)
        self.compiled: Any = None  # compiled.CompiledPasses, when the backend compiles

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
            if self._handler is None or self._bypass:
                return original(*args, **kwargs)
            if not self._compiling and backend.tracing((args, kwargs)):
                return original(*args, **kwargs)  # someone else's trace (predict, build)
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

    def _run_bn_traced(self, node, original, args, kwargs):
        """`_run` inside a traced pass: the statistics are read before the call
        and written back after it, in the graph (saved numpy values would be
        baked in as constants and go stale when `fix` commits new ones)."""
        if not kwargs.get("training"):
            return original(*args, **kwargs)
        pairs = [(v, self.ops.copy(v)) for v, _ in self._bn_vars(node)]  # a read, not an alias
        out = original(*args, **kwargs)
        for v, before in pairs:
            v.assign(before)
        return out

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

    def _call_model(
        self, xs, what: str, handler, fit: bool = False, defer: bool = False, **call_kwargs
    ):
        """One pass with `handler` on every layer call: `fit=True` calls the
        model as fit()'s train_step does (see `backend.call_as_fit`). With
        `defer`, the per-layer quantities stay on the device until the pass
        ends and are fetched together (see `settle`)."""
        self._handler = handler
        self._counts = {}
        self._failed_at = None
        self._sink = [] if defer else None
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
            sink, self._sink = self._sink, None
        if sink:
            self.settle([d for d, _ in sink], [backend.to_numpy(t) for _, t in sink])
        return out

    # ------------------------------------------------ deferred quantities
    def _emit(self, due: Due, tensor, exact: Callable[[], np.ndarray] | None = None) -> None:
        """Hands a device-side quantity to the pass's sink, or (no sink)
        fetches and settles it now, recomputing a non-finite pair exactly."""
        if self._sink is not None:
            self._sink.append((due, tensor))
            return
        value = backend.to_numpy(tensor)
        if exact is not None and not np.all(np.isfinite(value)):
            value = exact()
        self.settle([due], [value])

    def settle(self, dues: list[Due], values: list[np.ndarray]) -> None:
        """Adds a pass's fetched quantities to the layers' accumulators. All
        or nothing: a non-finite pair of sums raises `NonFinite` before any
        is added (the batch is then measured again without deferral, where
        NaN/Inf entries are left out one pair at a time)."""
        for due, v in zip(dues, values):
            if due.kind in (Due.DIVERGENCE, Due.OWN) and not np.all(np.isfinite(v)):
                raise NonFinite(due.node)
        for due, v in zip(dues, values):
            st = self.stats[due.node]
            if due.kind == Due.MOMENTS:
                if st.moments is None:
                    st.moments = SplitMoments()
                mean, m2 = np.asarray(v[0]), np.asarray(v[1])
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

    def _bn_input_moments(self, node, args, kwargs):
        """Per-example channel moments of the input a BN layer is called with."""
        x = args[0] if args else kwargs.get("inputs")
        return _channel_moments(self.ops, x, node.layer.axis, kwargs.get("mask"))

    def _run(self, node, original, args, kwargs):
        """Calls the layer; a BN layer's statistics update is undone at once."""
        if self._compiling and node.kind is Kind.BATCHNORM:
            return self._run_bn_traced(node, original, args, kwargs)
        out = original(*args, **kwargs)
        if node.kind is Kind.BATCHNORM:
            self._restore_bn(node)
        return out

    def _eval_same_input(self, node, original, args, kwargs):
        """The layer's inference-mode output on the input it just got. A BN
        layer inside it that is called with training=True regardless (a mode
        leak) has its statistics update undone, as every other one is."""
        kw = dict(kwargs)
        kw["training"] = False
        below = self._bn_below(node)
        kept = [(v, self.ops.copy(v)) for n in below for v, _ in self._bn_vars(n)]
        self._bypass += 1
        try:
            with _context_training(False):
                return original(*args, **kw)
        finally:
            self._bypass -= 1
            for v, before in kept:
                v.assign(before)

    def _bn_below(self, node: LayerNode) -> list[LayerNode]:
        """The BN layers inside a container layer (none for a leaf)."""
        out: list[LayerNode] = []
        todo = list(node.children)
        while todo:
            n = todo.pop()
            if n.kind is Kind.BATCHNORM:
                out.append(n)
            todo.extend(n.children)
        return out

    def _compare(self, due: Due, train_out, ref_out) -> bool:
        """Emits [||t - r||^2, ||r||^2] of a pair of layer outputs (all their
        floating tensors of equal shape); False when there is nothing to compare."""
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
        self._emit(due, total, exact=lambda: _finite_pair_sums(ops, parts))
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
                x = args[0] if args else kwargs.get("inputs")
                per, mean, m2 = _channel_moment_tensors(
                    self.ops, x, node.layer.axis, kwargs.get("mask")
                )
                if per is not None:
                    self._emit(Due(Due.MOMENTS, node.index, per), self.ops.stack([mean, m2]))
                else:  # masked: counts vary per example, fetched now
                    st.moments = st.moments or SplitMoments()
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
                    ops = self.ops
                    sq = [
                        ops.sum(ops.square(_as_float32(ops, t)))
                        for t in _flatten(self.keras, out)
                        if backend.is_floating(t)
                    ]
                    if sq:
                        total = sq[0] if len(sq) == 1 else ops.sum(ops.stack(sq))
                        self._emit(Due(Due.OWN_SQUARES, node.index), total)
                else:
                    self._compare(Due(Due.OWN, node.index), out, ref)
            stored = self._eval_store.pop((node.index, k), None)
            if stored is None or not self._compare(Due(Due.DIVERGENCE, node.index), out, stored):
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

    def eval_pass(self, xs, capture_outputs=True, capture_bn=True, defer=True):
        """model(x, training=False), recording inputs of BN layers and (for
        the training pass that follows) every layer's output."""
        self._eval_store.clear()
        return self._call_model(
            xs,
            "inference",
            self._h_eval(capture_outputs, capture_bn),
            defer=defer,
            training=False,
        )

    def train_pass(self, xs, batch_index: int, own: bool = True, defer=True):
        """The model called as the installed Keras' fit() calls it on this
        backend (`backend.call_as_fit`: training=True only when its call()
        takes it; stateless_call on JAX), comparing each layer's output with
        the stored inference output of the same batch."""
        self._set_seeds(batch_index)
        try:
            return self._call_model(xs, "training", self._h_train(own), fit=True, defer=defer)
        finally:
            self._eval_store.clear()

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
        ev = self.eval_pass(xs)
        try:
            return ev, self.train_pass(xs, batch_index)
        except NonFinite:
            return self._eval_train_exact(xs, batch_index, capture_bn=False)

    def _eval_train_exact(self, xs, batch_index: int, capture_bn: bool):
        ev = self.eval_pass(xs, capture_bn=capture_bn, defer=False)
        return ev, self.train_pass(xs, batch_index, defer=False)

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


def _finite_pair_sums(ops, parts) -> np.ndarray:
    """[sum (t - r)^2, sum r^2] over the entries finite on both sides."""
    sums = np.zeros(2)
    for t32, r32, _ in parts:
        both = ops.logical_and(ops.isfinite(t32), ops.isfinite(r32))
        t0, r0 = ops.where(both, t32, 0.0), ops.where(both, r32, 0.0)
        sums += np.array([float(ops.sum(ops.square(t0 - r0))), float(ops.sum(ops.square(r0)))])
    return sums


def _channel_moment_tensors(ops, x, axis: int, mask=None):
    """(values per example and channel, mean, M2) of a BN input as device
    tensors, each (examples, channels); with a mask, (None, None, None): the
    counts vary, see `_channel_moments`."""
    if mask is not None and axis % len(x.shape) == len(x.shape) - 1:
        return None, None, None
    x = ops.cast(x, "float32")
    rank = len(x.shape)
    axis = axis % rank
    if axis != rank - 1:
        perm = [i for i in range(rank) if i != axis] + [axis]
        x = ops.transpose(x, perm)
    c = x.shape[-1]
    inner = [d for d in x.shape[1:-1]]
    if any(d is None for d in inner):  # sizes known only at run time: counts fetched now
        return None, None, None
    per = int(np.prod(inner)) if inner else 1
    x3 = ops.reshape(x, (-1, per, c))  # the batch size may be unknown in a traced pass
    mean = ops.mean(x3, axis=1)
    m2 = backend.sum_squared_difference(x3, mean[:, None, :], axis=1)
    return float(per), mean, m2


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
