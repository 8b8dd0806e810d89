"""The other inference paths, compared with model(x, training=False) on a
few samples: every layer forced into inference mode, the model called with
no `training` flag, and Keras' own predict()."""

from __future__ import annotations

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

    if TYPE_CHECKING:  # what `Probe` provides
        model: Any
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
