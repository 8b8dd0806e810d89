"""One batch's inference and training passes compiled into one TensorFlow
graph, as fit()'s own train_step is (`tf.function`), cached on the model.

The probe's wrappers run while the graph is traced: every per-layer
quantity becomes an output of the graph, fetched once per batch, and what
the wrappers learn about the model's structure (which layers got which
`training` value, in which order) is kept with the graph, so that a later
check of the same model replays it without tracing again. Anything that
cannot be traced (Python control flow on values, numpy inside a custom
layer, `run_eagerly`) falls back to the eager passes, which report errors
as usual.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

from . import backend
from .reductions import fetch

_CACHE = "_bngap_compiled_passes"  # on the model, untracked by Keras


@dataclass
class _Entry:
    """A traced function and what its trace learned."""

    function: Any
    probe: Any = None  # the probe whose wrappers a trace calls, set only during a call
    dues: list = field(default_factory=list)
    structure: dict | None = None  # node index -> NodeStats fields set while tracing
    order_counter: int = 0
    failed: bool = False


def _key(model, nodes) -> tuple:
    """What the traced graph depends on besides the inputs: every layer's
    class and its settings, as Python reads them while tracing (a Dropout's
    rate, a BN layer's epsilon and momentum, `trainable`, the dtype policy)."""
    return (
        tuple((n.path, type(n.layer).__name__, _settings(n.layer)) for n in nodes),
        getattr(model, "_call_has_training_arg", True),
        str(getattr(getattr(model, "dtype_policy", None), "name", "")),
    )


_PLAIN = (bool, int, float, str, type(None))


def _settings(layer) -> tuple:
    """A layer's public plain-valued attributes (and tuples of them), its
    `trainable` flag and dtype policy: changing one makes a new graph."""
    out = [
        (k, v)
        for k, v in vars(layer).items()
        if not k.startswith("_")
        and (
            isinstance(v, _PLAIN)
            or (isinstance(v, tuple) and all(isinstance(e, _PLAIN) for e in v))
        )
    ]
    policy = getattr(getattr(layer, "dtype_policy", None), "name", "")
    return (bool(layer.trainable), str(policy), tuple(sorted(out, key=lambda kv: kv[0])))


def available(model) -> bool:
    """The backend compiles the passes, and the model was not asked to run eagerly."""
    return backend.active() == "tensorflow" and not getattr(model, "run_eagerly", False)


# Tracing and instantiating the instrumented graph costs about 5 to 7 ms per
# layer call (ResNet50: 2.4 s; DenseNet121: 4.8 s, on 2 cores); the graph then
# runs a batch's two passes in 40 to 60% less time than eagerly (ResNet50 at
# 224x224: 2.5 against 4.0 s; DenseNet121 at 128x128: 0.86 against 2.1 s).
# The eager masked passes reuse the inference pass (upstream.py) and the
# compiled ones do not, so a compiled batch saves less: measured on the first
# check in a fresh process, compiling every batch lost at 4 batches (ResNet50
# 23.2/20.8 against 20.1/21.1 s eager; DenseNet121 14.1 against 11.7 s) and
# at 6 (DenseNet121 17.4 against 15.9 s), and won from 8 on DenseNet121 (19.2
# against 20.4 s; 10 batches: 22.5 against 24.4 s), while on ResNet50 it was
# even (8 batches: 36.2 against 34.6 s). A graph made once is reused.
COMPILE_FROM_BATCHES = 8


def for_check(model, nodes, batches: int) -> CompiledPasses | None:
    """The compiled passes of this model when they pay off: the data has
    COMPILE_FROM_BATCHES batches or more, or a graph was made before (they
    are kept on the model). None where the passes run eagerly: other
    backends, `run_eagerly`, fewer batches."""
    if not available(model):
        return None
    passes = CompiledPasses(model, nodes)
    if batches < COMPILE_FROM_BATCHES and not any(e.function for e in passes.entries()):
        return None
    return passes


class CompiledPasses:
    """The compiled inference + training passes of one model: one graph per
    input signature (shapes but the batch size, dtypes, structure)."""

    def __init__(self, model, nodes):
        cache = model.__dict__.get(_CACHE)
        if cache is None:
            cache = {}
            object.__setattr__(model, _CACHE, cache)
        self.cache: dict = cache
        self.model = model
        self.base = _key(model, nodes)

    def entries(self) -> list[_Entry]:
        """The graphs made for this model as it is now, one per input signature."""
        return [e for k, e in self.cache.items() if k[0] == self.base]

    def _entry(self, packed) -> _Entry:
        import tensorflow as tf

        flat = tf.nest.flatten(packed)
        signature = (
            str(tf.nest.map_structure(lambda t: 0, packed)),
            tuple((tuple(t.shape[1:]), t.dtype.name) for t in flat),
        )
        return self.cache.setdefault((self.base, signature), _Entry(function=None))

    def _trace_body(self, entry: _Entry, packed, seeds, generator_state):
        """What the graph computes; runs only while TensorFlow traces it.

        As eagerly: the inference pass sees the state the guard restored, the
        training pass the batch's seeds (`seeds`, and `generator_state` for
        TensorFlow's global generator) and, for every other variable a pass
        may write, the values the inference pass started from."""
        import tensorflow as tf

        probe = entry.probe
        guard = probe._guard()
        probe._compiling = True
        probe._sink = []
        try:
            kept = [(v, probe.ops.copy(v)) for v in (guard.variables[i] for i in guard.mutable)]
            probe._clear_store()
            probe._handler, probe._counts = probe._h_eval(True, True), {}
            ev = self.model(packed, training=False)
            probe._handler, probe._counts = probe._h_train(True), {}
            # the training pass after the inference pass, as eagerly: run side by
            # side, both passes' activations are alive at once (1.5x the memory)
            with tf.control_dependencies(
                _values(ev) + tf.nest.flatten([t for _, t in probe._sink])
            ):
                for v, before in kept:
                    v.assign(before)
                for v, value in zip(probe._seed_vars, seeds):
                    v.assign(value)
                tf.random.get_global_generator().reset(generator_state)
                packed = tf.nest.map_structure(tf.identity, packed)
            tr = backend.call_as_fit(self.model, packed)
            entry.dues = [d for d, _ in probe._sink]
            return ev, tr, [t for _, t in probe._sink], _riders(ev), _riders(tr)
        finally:
            probe._compiling = False
            probe._sink = None
            probe._handler = None
            probe._clear_store()
            probe._stack.clear()

    def _function(self, entry: _Entry, packed):
        import tensorflow as tf

        if entry.function is None:
            spec = tf.nest.map_structure(
                lambda t: tf.TensorSpec((None, *t.shape[1:]), t.dtype), packed
            )
            seed_values, generator_state = _seed_inputs(entry.probe, 0)
            seeds = [tf.TensorSpec(v.shape, v.dtype) for v in seed_values]
            state = tf.TensorSpec(generator_state.shape, generator_state.dtype)
            # autograph off: it would rewrite the probe's handlers on every trace (slow), and a
            # model needing it falls back to the eager passes
            entry.function = tf.function(
                lambda p, s, g: self._trace_body(entry, p, s, g),
                input_signature=[spec, seeds, state],
                autograph=False,
            )
        return entry.function

    def run(self, probe, xs, batch_index: int):
        """(inference output, training output) of the batch, its quantities
        settled into the probe; None when the passes cannot be compiled (the
        caller then runs them eagerly). Raises probe.NonFinite before
        settling anything when a pair of sums is NaN/Inf."""
        import tensorflow as tf

        packed = tf.nest.map_structure(tf.convert_to_tensor, probe._pack(xs))
        entry = self._entry(packed)
        if entry.failed:
            return None
        entry.probe = probe
        traces_before = _traces(entry.function)
        seeds, state = _seed_inputs(probe, batch_index)
        try:
            with _without_grappler():
                function = self._function(entry, packed)
                ev, tr, tensors, ev_riders, tr_riders = function(packed, seeds, state)
        except Exception:  # untraceable here: the eager passes run instead, and say what fails
            # What a failed trace recorded (which layer got which training value) is
            # what the eager passes record too; the sums of earlier batches stay.
            entry.failed = True
            return None
        finally:
            entry.probe = (
                None  # the cache on the model must not keep a probe (and its snapshot) alive
            )
            probe._guard().restore()
        if _traces(entry.function) > traces_before:  # this probe's wrappers ran: keep what they saw
            entry.structure = _structure(probe)
            entry.order_counter = probe._order_counter
        elif entry.structure is not None:
            _replay(probe, entry)
        probe.after_training_pass()
        probe.settle(entry.dues, fetch(tensors))
        _attach(ev, ev_riders)
        _attach(tr, tr_riders)
        return ev, tr


# Keras hangs these on output tensors (a softmax's logits, which its
# cross-entropy uses, as evaluate() does; a sequence mask): a graph's outputs
# lose them, so they travel as outputs of their own and are hung back on.
_RIDERS = ("_keras_logits", "_keras_mask")


def _riders(out) -> list:
    import tensorflow as tf

    return [[getattr(t, a, None) for a in _RIDERS] for t in tf.nest.flatten(out)]


def _attach(out, riders) -> None:
    import tensorflow as tf

    for t, values in zip(tf.nest.flatten(out), riders):
        for a, v in zip(_RIDERS, values):
            if v is not None:
                with contextlib.suppress(AttributeError):  # a tensor type without a __dict__
                    setattr(t, a, v)


@contextlib.contextmanager
def _without_grappler():
    """Our graph runs without TensorFlow's graph optimizer: on the probe's
    instrumented graph it costs more than it saves (DenseNet121 at 128x128,
    18k ops: 2.5 s on the first call, then 0.86 s a batch either way;
    ResNet50 at 224x224: 0.8 s, then 2.59 against 2.54 s). The option is
    the context's, read on every call: set around each call of ours, so the
    user's own functions keep it."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(before)


def _seed_inputs(probe, batch_index: int):
    """The batch's seed-variable values and TensorFlow's global-generator state."""
    import tensorflow as tf

    seeds = [tf.constant(v) for v in backend.seed_values(probe._seed_vars, probe.seed, batch_index)]
    generator = tf.random.get_global_generator()
    state = tf.random.create_rng_state(
        backend.tf_generator_seed(probe.seed, batch_index), alg=generator.algorithm
    )
    return seeds, tf.cast(state, generator.state.dtype)


def _values(out) -> list:
    import tensorflow as tf

    return [t for t in tf.nest.flatten(out) if t is not None]


def _traces(function) -> int:
    if function is None:
        return 0
    try:
        return int(function.experimental_get_tracing_count())
    except AttributeError:  # pragma: no cover - older TensorFlow
        return 0


_FIELDS = ("fit_training", "eval_training", "calls", "order", "matched")


def _structure(probe) -> dict:
    return {i: {f: copy.copy(getattr(st, f)) for f in _FIELDS} for i, st in probe.stats.items()}


def _replay(probe, entry: _Entry) -> None:
    assert entry.structure is not None
    for i, fields in entry.structure.items():
        st = probe.stats.get(i)
        if st is not None and st.order < 0:
            for f, v in fields.items():
                setattr(st, f, copy.copy(v))
    probe._order_counter = max(probe._order_counter, entry.order_counter)
