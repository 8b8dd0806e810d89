"""The other inference paths, compared with model(x, training=False): every
layer forced into inference mode, the model called with no `training` flag,
and Keras' own predict(). For a model of Keras' own classes they mostly
need no pass of their own (see `compare_inference_paths`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import backend
from .layertree import LayerNode
from .probehost import ProbeHost
from .results import InferencePath, Kind, LeakCheck
from .stats import GapAccumulator

if TYPE_CHECKING:
    from .data import Dataset
    from .probe import Probe

LEAK_SAMPLES = 4  # inference paths are compared on this many samples (leaks are structural)
_PREDICT_CACHE = "_bngap_predict_function"
PREDICT_BY_CONSTRUCTION = (
    "not run: Keras' own predict_step calls model(x, training=False), the inference pass "
    "measured, and no class in this model is the user's"
)


class PathPasses(ProbeHost):
    """The probe's passes for the inference paths (mixed into `Probe`)."""

    noflag_seen: dict | None = None  # what a call with no flag gave each layer (`modes_pass`)
    _watch_noflag = False

    if TYPE_CHECKING:  # what `Probe` provides
        _bypass: int
        _handler: Any

        def _pack(self, xs: Any) -> Any: ...
        def _guard(self) -> Any: ...

        plain: bool  # a model of Keras' own code, seen on entering (`plain_keras_model`)

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

    def _h_modes(self, seen: dict):
        """Records what each layer gets, as `_h_observe`; a layer with no
        layers below it hands back the output it gave in this batch's
        inference pass instead of computing (a container runs, so that the
        layers inside it are called)."""

        def handler(node, original, args, kwargs):
            k = self._next_call(node)
            seen.setdefault(node.index, set()).add(kwargs.get("training"))
            if not node.children:
                stored = self._eval_store.get((node.index, k))
                if stored is not None:
                    return stored
            return self._run(node, original, args, kwargs)

        return handler

    def forced_eval_pass(self, xs):
        """Every layer that takes `training` is called with training=False."""
        return self._call_model(xs, "inference", self._h_forced_eval(), training=False)

    def observe_pass(self, xs, **call_kwargs) -> tuple[Any, dict]:
        """A plain call (e.g. no `training` argument) recording what each layer received."""
        seen: dict = {}
        out = self._call_model(xs, "inference", self._h_observe(seen), **call_kwargs)
        return out, seen

    def watch_no_flag(self) -> None:
        """Has the first eager inference pass followed by `modes_pass`, for
        a model of Keras' own classes (`plain_keras_model`): what a call with
        no flag gives each layer is then known at almost no cost."""
        self._watch_noflag = self.plain

    def after_inference_pass(self, xs) -> None:
        """Called after an eager inference pass, its outputs still held."""
        if self._watch_noflag:
            self._watch_noflag = False
            self.noflag_seen = self.modes_pass(xs)

    def modes_pass(self, xs) -> dict:
        """model(x) with no flag on the batch whose inference pass just ran,
        recording the `training` value each layer gets. Layers compute
        nothing (see `_h_modes`): only the values are wanted; whether the
        outputs differ follows from them (`compare_inference_paths`)."""
        seen: dict = {}
        self._call_model(xs, "inference", self._h_modes(seen), inputs=self._inference_inputs(xs))
        return seen

    def predict(self, xs):
        """model.predict() with the wrappers out of the way."""
        self._handler = None
        self._bypass += 1
        try:
            return self._predict_kept_aside(xs)
        finally:
            self._bypass -= 1
            self._guard().restore()

    def _predict_kept_aside(self, xs):
        """model.predict(). The compiled predict function Keras makes is not
        left in `model.predict_function` (the user's model keeps what it
        had), but kept aside on the model, so that the next check of the
        same model does not trace it again."""
        model = self.model
        previous = getattr(model, "predict_function", None)
        key = _predict_key(model)
        cached = model.__dict__.get(_PREDICT_CACHE)
        if previous is None and _predict_made(model):
            model.predict_function = cached[1]
        try:
            return model.predict(self._pack(xs), batch_size=max(1, len(xs[0])), verbose=0)
        finally:
            made = getattr(model, "predict_function", None)
            if previous is None and made is not None:
                object.__setattr__(model, _PREDICT_CACHE, (key, made))  # untracked by Keras
            model.predict_function = previous


def plain_keras_model(model, nodes: list[LayerNode], keras) -> bool:
    """A Functional or Sequential model of Keras' own class whose layers
    (cells included) and the functions they run (activations, a cell's gate
    activation) are all Keras' own: no code of the user's runs in it, so its
    predict_step() is Keras' own and every layer reads a `training` of None
    as False."""
    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, keras.Sequential)):
        return False
    return all(
        type(layer).__module__.startswith("keras.")
        and type(layer).__name__ not in _PASS_TRAINING_ON
        and all(_library_code(fn) for fn in _functions_held(layer))
        for layer in _model_and_layers(model, nodes)
    )


# Where Keras layers keep a function they call that the user may have passed:
# activations, the recurrent cells' gate activation (LSTM, GRU, ConvLSTM), and
# TextVectorization's standardize and split
_FUNCTIONS_RUN = ("activation", "recurrent_activation", "_standardize", "_split")


def _functions_held(layer) -> list:
    """The functions a layer may call: those Keras layers are known to keep
    (`_FUNCTIONS_RUN`), and any other callable in its attributes that is not
    a layer or a class (an unknown one counts as the user's: the cost of a
    wrong guess is only a predict() run)."""
    from keras.src.layers.layer import Layer

    held = [getattr(layer, name, None) for name in _FUNCTIONS_RUN]
    for value in vars(layer).values():
        if callable(value) and not isinstance(value, (Layer, type)):
            held.append(value)
    return held


def _library_code(fn) -> bool:
    """A function that is Keras' or TensorFlow's own, or none; a function
    of the user's (it may draw random numbers) is user code, and so is any
    other library's, as the layers' own classes must be Keras'."""
    if fn is None or not callable(fn):
        return True
    fn = getattr(fn, "func", fn)  # a functools.partial: what it calls
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return (module or "").startswith(("keras.", "tensorflow."))


def _model_and_layers(model, nodes: list[LayerNode]) -> list:
    """The model itself (a Functional model of the user's class runs its own
    call() and predict_step()) and every layer in it, also those the tree
    does not enter (an RNN layer's cells)."""
    layers = [model] + [nd.layer for nd in nodes]
    todo = [nd.layer for nd in nodes if nd.opaque]
    while todo:
        for child in backend.child_layers(todo.pop()):
            layers.append(child)
            todo.append(child)
    return layers


def _predict_made(model) -> bool:
    """Whether predict() would find its traced function made already."""
    if getattr(model, "predict_function", None) is not None:
        return True
    cached = model.__dict__.get(_PREDICT_CACHE)
    return cached is not None and cached[0] == _predict_key(model)


def _predict_key(model) -> tuple:
    """What Keras' make_predict_function builds from: a cached function is
    reused only while these are unchanged."""
    return (
        getattr(model, "run_eagerly", None),
        getattr(model, "jit_compile", None),
        getattr(model, "steps_per_execution", None),
        id(getattr(model, "_distribute_strategy", None)),
    )


def _rel(keras, a, b) -> float:
    acc = GapAccumulator()
    for t, e in zip(backend.numpy_outputs(a), backend.numpy_outputs(b)):
        acc.add_arrays(t, e)
    return acc.relative_l2


def _training_layers(nodes: list[LayerNode], seen: dict) -> tuple[str, ...]:
    """Mode-dependent layers that received training=True and act on it."""
    out = []
    for nd in nodes:
        vals = seen.get(nd.index, set())
        if nd.mode_dependent and any(v is True for v in vals):
            if nd.kind is Kind.BATCHNORM and not nd.layer.trainable:
                continue
            out.append(nd.path)
    return tuple(out)


# Keras layers that hand `training` on to user code, where None is the code's own
# (TorchModuleWrapper's None even means training: `if training is False: eval()`)
_PASS_TRAINING_ON = ("Lambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")


def _same_modes(nodes: list[LayerNode], seen: dict, evaluated: dict) -> bool:
    """Whether every layer got the `training` values in a call with no flag
    that it gets in model(x, training=False). A Keras layer's None is False
    (its call reads `if training`; Sequential and Pipeline pass None on to
    layers whose values are compared themselves); a custom layer's None is
    its own, and so is that of a Keras layer running user code (Lambda)."""
    for nd in nodes:
        got, want = seen.get(nd.index, set()), evaluated.get(nd.index, set())
        cls = type(nd.layer)
        if cls.__module__.startswith("keras.") and cls.__name__ not in _PASS_TRAINING_ON:
            got, want = {bool(v) for v in got}, {bool(v) for v in want}
        if got != want:
            return False
    return True


def compare_inference_paths(
    probe: Probe, nodes: list[LayerNode], subset: Dataset, keras, *, stats: dict
) -> list[LeakCheck]:
    """Compares the other inference paths with model(x, training=False).

    - forced inference: every layer explicitly in inference mode; differs
      when a layer passes training=True on to another inside the model;
    - model(x) with no flag: what users calling the model directly get;
    - predict(x): what Keras' own inference loop gets.

    `stats` holds what each layer received in the inference passes already
    run. The reference is model(subset, training=False) on the very same
    small batch, so kernels that depend on the batch size cannot pass for a
    leak; it is the no-flag call itself where that call gave every layer the
    values model(x, training=False) gives it.

    No pass is needed where the answers follow from what the layers got:
    without a layer in training mode, forced inference is the inference
    pass; a no-flag call that gave every layer those same values
    (`probe.noflag_seen`, from `modes_pass`) is the same call; and on a
    model of Keras' own classes predict() is model(x, training=False) itself.
    """
    xs, m = subset.x, len(subset)
    evaluated = {i: st.eval_training for i, st in stats.items()}
    leaked = _training_layers(nodes, evaluated)
    plain = probe.plain
    seen = probe.noflag_seen
    if plain and seen is not None and not leaked and _same_modes(nodes, seen, evaluated):
        return [
            LeakCheck(InferencePath.FORCED, 0.0, (), m),
            LeakCheck(InferencePath.NO_FLAG, 0.0, _training_layers(nodes, seen), m),
            _predict_check(probe, xs, None, keras, plain),
        ]
    noflag, seen_nf = probe.observe_pass(xs)
    if _same_modes(nodes, seen_nf, evaluated) and not backend.has_own_logic(probe.model, keras):
        ref = noflag  # the same calls on the same samples: model(x, training=False) itself
    else:
        ref, _ = probe.observe_pass(xs, training=False)
    if leaked:
        forced = probe.forced_eval_pass(xs)
        checks = [LeakCheck(InferencePath.FORCED, _rel(keras, ref, forced), leaked, m)]
    else:
        checks = [LeakCheck(InferencePath.FORCED, 0.0, (), m)]
    checks.append(
        LeakCheck(
            InferencePath.NO_FLAG, _rel(keras, noflag, ref), _training_layers(nodes, seen_nf), m
        )
    )
    checks.append(_predict_check(probe, xs, ref, keras, plain))
    return checks


def _predict_check(probe: Probe, xs, ref, keras, plain: bool) -> LeakCheck:
    """predict(x) against the reference outputs `ref` on the samples `xs`;
    not run on a model of Keras' own classes, where it is the same call."""
    if plain:
        return LeakCheck(InferencePath.PREDICT, None, (), 0, skipped=PREDICT_BY_CONSTRUCTION)
    m = len(xs[0]) if xs else 0
    try:
        pred = probe.predict(xs)
    except Exception as e:  # predict's tracing can fail where eager calls work
        return LeakCheck(
            InferencePath.PREDICT, None, (), m, skipped=f"{type(e).__name__}: {str(e)[:120]}"
        )
    return LeakCheck(InferencePath.PREDICT, _rel(keras, pred, ref), (), m)
