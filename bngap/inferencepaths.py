"""The other inference paths, compared with model(x, training=False) on a
few samples: every layer forced into inference mode, the model called with
no `training` flag, and Keras' own predict()."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import backend
from .layertree import LayerNode
from .results import InferencePath, Kind, LeakCheck
from .stats import GapAccumulator

if TYPE_CHECKING:
    from .data import Dataset
    from .probe import Probe

LEAK_SAMPLES = 4  # inference paths are compared on this many samples (leaks are structural)
_PREDICT_CACHE = "_bngap_predict_function"


class PathPasses:
    """The probe's passes for the inference paths (mixed into `Probe`)."""

    _ahead: tuple[Any, threading.Thread | None, dict] | None = None  # predict() on its thread

    if TYPE_CHECKING:  # what `Probe` provides
        model: Any
        nodes: list[LayerNode]
        keras: Any
        _bypass: int
        _handler: Any

        def _call_model(self, xs: Any, what: str, handler: Any, **kwargs: Any) -> Any: ...
        def _next_call(self, node: LayerNode) -> int: ...
        def _run(self, node: LayerNode, original: Any, args: Any, kwargs: Any) -> Any: ...
        def _pack(self, xs: Any) -> Any: ...
        def _guard(self) -> Any: ...

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

    def forced_eval_pass(self, xs):
        """Every layer that takes `training` is called with training=False."""
        return self._call_model(xs, "inference", self._h_forced_eval(), training=False)

    def observe_pass(self, xs, **call_kwargs) -> tuple[Any, dict]:
        """A plain call (e.g. no `training` argument) recording what each layer received."""
        seen: dict = {}
        out = self._call_model(xs, "inference", self._h_observe(seen), **call_kwargs)
        return out, seen

    def predict_ahead(self, xs) -> None:
        """Starts predict(xs) on a thread of its own, where that is safe
        (`_ahead_safe`), so that its first trace and compilation (a second
        or more on a big model) overlap the first batch's inference pass,
        which writes no variable. `await_predict` joins it before any pass
        that may; `predict(xs)` then hands back what it got. Not when the
        function is made already: the two threads taking turns at the
        interpreter cost the inference pass more than a made predict() costs."""
        if self._ahead is not None or not _ahead_safe(self.model, self.nodes, self.keras):
            return
        if _predict_made(self.model):
            return
        box: dict = {}

        def run():
            try:
                box["out"] = self._predict_kept_aside(xs)
            except Exception:  # run again, alone, on the main thread: its error is the one told
                box.clear()

        thread = threading.Thread(target=run, name="bngap-predict", daemon=True)
        self._ahead = (xs, thread, box)
        thread.start()

    def await_predict(self) -> None:
        """Waits for a predict() started ahead; the model's state is put back after it."""
        ahead = self._ahead
        if ahead is None or ahead[1] is None:
            return
        ahead[1].join()
        self._ahead = (ahead[0], None, ahead[2])
        self._guard().restore()

    def predict(self, xs):
        """model.predict() with the wrappers out of the way (or what the
        one started ahead on these very samples got)."""
        ahead = self._ahead
        if ahead is not None and ahead[0] is xs:
            self.await_predict()
            self._ahead = None
            if "out" in ahead[2]:
                return ahead[2]["out"]
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


def _ahead_safe(model, nodes: list[LayerNode], keras) -> bool:
    """Whether predict() may run beside an inference pass: on TensorFlow
    (JAX's predict() empties every variable while it runs, to hand their
    values to the compiled step; PyTorch's compiles nothing), for a Functional or Sequential
    model of Keras' own class and layers (cells included), none of which runs
    user code (a predict_step() of the user's may call training=True). Such a model
    draws no random numbers and writes no variable in inference mode, so
    the two cannot disturb each other; a layer called with training=True
    regardless (a leak) computes its output from the batch in both, and the
    statistics it writes are put back after the join as after every pass."""
    from keras.src.models.functional import Functional

    if keras.backend.backend() != "tensorflow":
        return False
    if not isinstance(model, (Functional, keras.Sequential)):
        return False
    return all(
        type(layer).__module__.startswith("keras.")
        and type(layer).__name__ not in _PASS_TRAINING_ON
        and _library_code(getattr(layer, "activation", None))
        for layer in _model_and_layers(model, nodes)
    )


def _library_code(fn) -> bool:
    """A layer's activation that is Keras' or TensorFlow's own, or none; a
    function of the user's (it may draw random numbers) is user code, and
    so is any other library's, as the layers' own classes must be Keras'."""
    if fn is None or not callable(fn):
        return True
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return module.startswith(("keras.", "tensorflow."))


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
    """
    xs = subset.x
    m = len(subset)
    checks = []
    evaluated = {i: st.eval_training for i, st in stats.items()}
    leaked = _training_layers(nodes, evaluated)
    noflag, seen_nf = probe.observe_pass(xs)
    if _same_modes(nodes, seen_nf, evaluated) and not backend.has_own_logic(probe.model, keras):
        ref = noflag  # the same calls on the same samples: model(x, training=False) itself
    else:
        ref, _ = probe.observe_pass(xs, training=False)
    if leaked:
        forced = probe.forced_eval_pass(xs)
        checks.append(LeakCheck(InferencePath.FORCED, _rel(keras, ref, forced), leaked, m))
    else:
        checks.append(LeakCheck(InferencePath.FORCED, 0.0, (), m))
    checks.append(
        LeakCheck(
            InferencePath.NO_FLAG, _rel(keras, noflag, ref), _training_layers(nodes, seen_nf), m
        )
    )
    try:
        pred = probe.predict(xs)
        checks.append(LeakCheck(InferencePath.PREDICT, _rel(keras, pred, ref), (), m))
    except Exception as e:  # predict's tracing can fail where eager calls work
        checks.append(
            LeakCheck(
                InferencePath.PREDICT, None, (), m, skipped=f"{type(e).__name__}: {str(e)[:120]}"
            )
        )
    return checks
