"""Driving the probe over the data: batch by batch, the passes a check needs,
reduced to the raw numbers that analysis turns into a report."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from . import backend, compiled
from .audit import BatchNormParams
from .backend import pack_inputs
from .data import Dataset
from .layertree import LayerNode
from .metrics import OutputMetricSums, _is_classes, _MetricSums, _output_names
from .probe import NodeStats, Probe
from .results import GROUPS, InferencePath, Kind, LeakCheck, Metrics
from .stats import GapAccumulator

LEAK_SAMPLES = 4  # inference paths are compared on this many samples (leaks are structural)
AUTO_EFFECTS_ALL = 8  # with --effects auto, models with up to this many get every layer's effect


@dataclass
class Measurements:
    """Everything the forward passes produced, before interpretation."""

    nodes: list[LayerNode]
    stats: dict[int, NodeStats]
    output: GapAccumulator
    per_output: list[tuple[str, GapAccumulator]]
    groups: dict[str, float]
    bn_params: dict[int, BatchNormParams]
    leaks: list[LeakCheck]
    metrics: Metrics | None
    batch_size: int
    batches: int
    last_batch_size: int
    samples: int
    effects_computed: int = 0
    effects_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    outputs_are_classes: bool = False
    fit_call: Any = None  # backend.FitCall: how fit() calls this model
    devices: int = 1  # devices the batches were spread over


Progress = Callable[[int, int, str], None]


def _noop(done: int, total: int, label: str) -> None:
    pass


def effective_nodes(nodes: list[LayerNode], stats: dict[int, NodeStats]) -> list[LayerNode]:
    """Mode-dependent layers that actually behave differently in the
    training pass: they received training=True and (BN) are trainable."""
    out = []
    for n in nodes:
        if not n.mode_dependent:
            continue
        got = stats[n.index].fit_training.values()
        if not any(bool(v) for v in got if v is not None):
            continue
        if n.kind is Kind.BATCHNORM and not n.layer.trainable:
            continue
        out.append(n)
    return out


def _to_numpy_list(keras, out) -> list[np.ndarray]:
    return [backend.to_numpy(t) for t in keras.tree.flatten(out) if t is not None]


# --------------------------------------------------------------- the loop
@dataclass
class PassPlan:
    """Which extra training passes each batch gets, decided on the first batch."""

    group_members: dict[str, list[int]]
    run_groups: list[str]  # groups measured by a pass of their own
    reuse_total: str | None  # the one active group whose value is the whole gap
    effect_idx: list[int]  # layers whose output effect gets a pass
    effects_skipped: int
    layers_pass: bool  # measure what all layers together explain


has_own_logic = backend.has_own_logic  # kept under its old name for one merge cycle


def plan_passes(
    nodes: list[LayerNode], stats: dict[int, NodeStats], effects, own_logic: bool
) -> PassPlan:
    """Plans the group and effect passes from the first batch's training pass.

    When only one group is active in a model without logic of its own, that
    group's gap is the whole gap and needs no pass; likewise a lone layer's
    output effect.
    """
    eff = effective_nodes(nodes, stats)
    members = {g: [nd.index for nd in eff if nd.kind.group == g] for g in GROUPS}
    active = [g for g in GROUPS if members[g]]
    reuse = active[0] if len(active) == 1 and not own_logic else None
    run_groups = [] if reuse else active
    ranked = sorted(eff, key=lambda nd: stats[nd.index].own.relative_l2, reverse=True)
    ranked = [nd for nd in ranked if stats[nd.index].own.relative_l2 > 0.0]
    covered = {members[g][0] for g in run_groups if len(members[g]) == 1}
    if len(eff) == 1 and not own_logic:
        covered.add(eff[0].index)
    candidates = [nd.index for nd in ranked if nd.index not in covered]
    if effects == "auto":  # every layer in a small model, the strongest in a big one
        limit = len(candidates) if len(candidates) <= AUTO_EFFECTS_ALL else 1
    else:
        limit = len(candidates) if effects is None else max(0, int(effects))
    return PassPlan(
        members,
        run_groups,
        reuse,
        candidates[:limit],
        len(candidates) - min(limit, len(candidates)),
        layers_pass=own_logic and bool(eff),
    )


def measure(
    model,
    nodes: list[LayerNode],
    dataset: Dataset,
    keras,
    *,
    batch_size: int,
    seed: int = 0,
    effects: int | str | None = "auto",
    loss_id=None,
    progress: Progress = _noop,
    leak_checks: bool = True,
    compile_passes: bool = True,
    devices: list[str] | None = None,
) -> Measurements:
    """Runs every pass a check needs, batch by batch.

    Per batch: one inference pass (recording BN inputs and keeping each
    layer's output), one training pass (comparing each layer with it), one
    pass per cause group when more than one group is active, and one pass per
    layer whose output effect is measured (the `effects` layers with the
    largest own contribution on the first batch; None = all; "auto" = all
    when there are at most 8, else the strongest one).

    `compile_passes`: on TensorFlow, each batch's inference and training
    passes run as one compiled graph, as fit() runs its train_step, where
    that pays off (several batches, or a model checked before: see
    `compiled.py`); False runs them eagerly.

    `devices` (names from `backend.device_names`): batch b runs on device
    b mod len(devices); each batch is whole on one device, so its
    training-mode statistics are what one device computes, and the sums
    merge exactly.

    Side effects: none on the model (see `Probe`); reports progress.
    """
    n = len(dataset)
    batch_size = max(1, min(int(batch_size), n))
    batches = math.ceil(n / batch_size)
    last = n - (batches - 1) * batch_size
    out_acc = GapAccumulator()
    layers_acc = GapAccumulator()
    per_out: list[tuple[str, GapAccumulator]] = []
    group_acc: dict[str, GapAccumulator] = {}
    plan: PassPlan | None = None
    metric: _MetricSums | OutputMetricSums = _MetricSums()
    notes: list[str] = []
    classes = False
    loss_ok = dataset.y is not None
    own_logic = has_own_logic(model, keras)
    devs = devices or backend.device_names(1)

    pack = lambda xs: pack_inputs(keras, model, xs, dataset.names, dataset.keyed)  # noqa: E731
    with Probe(model, nodes, keras, seed=seed, pack=pack) as probe:
        if compile_passes:
            probe.compiled = compiled.for_check(model, nodes, batches)
        stats = probe.stats
        for b, (xs, y) in enumerate(dataset.batches(batch_size)):
            device = devs[b % len(devs)]
            with backend.placed(device):
                ev_raw, tr_raw = probe.eval_train(xs, b)
            ev, tr = _to_numpy_list(keras, ev_raw), _to_numpy_list(keras, tr_raw)
            if plan is None:
                names = _output_names(model, len(ev))
                per_out = [(nm, GapAccumulator()) for nm in names]
                classes = len(ev) == 1 and _is_classes(ev[0])
                plan = plan_passes(nodes, stats, effects, own_logic)
                group_acc = {g: GapAccumulator() for g in plan.run_groups}
                for i in plan.effect_idx:
                    stats[i].effect = GapAccumulator()
                if loss_ok and len(ev) != 1 and not isinstance(dataset.y, dict):
                    loss_ok = False
                    notes.append(
                        "labels ignored: a model with several outputs needs one label array "
                        "per output (npz keys y_<output name>)"
                    )
                elif loss_ok and isinstance(dataset.y, dict):
                    metric = OutputMetricSums()
            extra: list[tuple[list[int], GapAccumulator]] = (
                [(plan.group_members[g], group_acc[g]) for g in plan.run_groups]
                + [([i], stats[i].effect) for i in plan.effect_idx]
                + (
                    [([nd.index for nd in effective_nodes(nodes, stats)], layers_acc)]
                    if plan.layers_pass
                    else []
                )
            )
            total = batches * (2 + len(extra))
            progress(b * (2 + len(extra)) + 2, total, f"batch {b + 1}/{batches}")
            for (_name, acc), t, e in zip(per_out, tr, ev):
                acc.add_arrays(t, e, classes=_is_classes(e))
                out_acc.add_arrays(t, e, classes=classes)
            for k, (active, acc) in enumerate(extra):
                with backend.placed(device):
                    masked = probe.masked_pass(xs, b, active)
                for t, e in zip(_to_numpy_list(keras, masked), ev):
                    acc.add_arrays(t, e)
                progress(b * (2 + len(extra)) + 3 + k, total, f"batch {b + 1}/{batches}")
            if loss_ok and y is not None:
                try:
                    if isinstance(metric, OutputMetricSums):
                        metric.add(
                            keras,
                            loss_id,
                            keras.tree.flatten(tr_raw),
                            keras.tree.flatten(ev_raw),
                            cast(dict, y),
                            names,
                        )  # per-output labels come as a dict
                    else:
                        metric.add(
                            keras,
                            loss_id,
                            keras.tree.flatten(tr_raw)[0],
                            keras.tree.flatten(ev_raw)[0],
                            y,
                        )
                except Exception as e:  # labels that fit no loss: say so, keep the rest
                    loss_ok = False
                    notes.append(f"loss not computed: {type(e).__name__}: {str(e)[:160]}")

        # the data were validated non-empty, so the first batch made the plan
        assert plan is not None, "no batch was measured"
        groups = {g: 0.0 for g in GROUPS}
        if plan.reuse_total:
            groups[plan.reuse_total] = out_acc.relative_l2
        for g, acc in group_acc.items():
            groups[g] = acc.relative_l2
        eff = effective_nodes(nodes, stats)
        for nd in eff:
            st = stats[nd.index]
            if st.effect is not None:
                continue
            if len(eff) == 1 and not own_logic:
                st.effect = out_acc
            elif group_acc.get(nd.kind.group) is not None and plan.group_members[nd.kind.group] == [
                nd.index
            ]:
                st.effect = group_acc[nd.kind.group]
        if plan.layers_pass:
            explained, whole = layers_acc.relative_l2, out_acc.relative_l2
            if abs(whole - explained) > 0.1 * whole + 0.01:
                notes.append(
                    f"With all its layers in training mode but the model's own call() in "
                    f"inference mode, the output gap is {explained:.4f}, against {whole:.4f} for "
                    f"{backend.fit_call(model).expression}: the rest comes from what {type(model).__name__}.call() "
                    "itself does when training=True, outside any layer."
                )
        if leak_checks:
            leaks = compare_inference_paths(
                probe, nodes, dataset.subset(min(LEAK_SAMPLES, n)), keras, stats=stats
            )
        else:
            leaks = []
        bn_params = {nd.index: probe.bn_params(nd) for nd in nodes if nd.kind is Kind.BATCHNORM}

    return Measurements(
        nodes=nodes,
        stats=stats,
        output=out_acc,
        per_output=per_out,
        groups=groups,
        bn_params=bn_params,
        leaks=leaks,
        metrics=metric.result() if loss_ok else None,
        batch_size=batch_size,
        batches=batches,
        last_batch_size=last,
        samples=n,
        effects_computed=len(plan.effect_idx),
        effects_skipped=plan.effects_skipped,
        notes=notes,
        outputs_are_classes=classes,
        fit_call=backend.fit_call(model),
        devices=min(len(devs), batches),
    )


def _rel(keras, a, b) -> float:
    acc = GapAccumulator()
    for t, e in zip(_to_numpy_list(keras, a), _to_numpy_list(keras, b)):
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
    leak.
    """
    xs = subset.x
    m = len(subset)
    checks = []
    leaked = _training_layers(nodes, {i: st.eval_training for i, st in stats.items()})
    ref, _ = probe.observe_pass(xs, training=False)
    if leaked:
        forced = probe.forced_eval_pass(xs)
        checks.append(LeakCheck(InferencePath.FORCED, _rel(keras, ref, forced), leaked, m))
    else:
        checks.append(LeakCheck(InferencePath.FORCED, 0.0, (), m))
    noflag, seen_nf = probe.observe_pass(xs)
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
