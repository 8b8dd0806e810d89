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
from .inferencepaths import LEAK_SAMPLES, compare_inference_paths
from .layertree import LayerNode
from .metrics import OutputMetricSums, _is_classes, _MetricSums, _output_names
from .probe import NodeStats, Probe
from .results import GROUPS, Kind, LeakCheck, Metrics
from .stats import GapAccumulator

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


# Long mostly by its docstring: the body is the batch loop, the state it adds to lives in _Sweep.
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
    that pays off (8 batches or more, or a graph made before: see
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
    devs = devices or backend.device_names(1)
    sweep = _Sweep(model, nodes, keras, dataset, effects, loss_id)
    pack = lambda xs: pack_inputs(keras, model, xs, dataset.names, dataset.keyed)  # noqa: E731
    with Probe(model, nodes, keras, seed=seed, pack=pack) as probe:
        if compile_passes:
            probe.compiled = compiled.for_check(model, nodes, batches)
        subset = dataset.subset(min(LEAK_SAMPLES, n)) if leak_checks else None
        if subset is not None:
            probe.watch_no_flag()
        sweep.stats = probe.stats
        for b, (xs, y) in enumerate(dataset.batches(batch_size)):
            device = devs[b % len(devs)]
            with backend.placed(device):
                ev_raw, tr_raw = probe.eval_train(xs, b)
            ev = sweep.outputs(ev_raw, tr_raw)
            extra = sweep.extra_passes()
            done, total = b * (2 + len(extra)), batches * (2 + len(extra))
            progress(done + 2, total, f"batch {b + 1}/{batches}")
            for k, (active, acc) in enumerate(extra):
                with backend.placed(device):
                    masked = probe.masked_pass(xs, b, active)
                for t, e in zip(backend.numpy_outputs(masked), ev):
                    acc.add_arrays(t, e)
                progress(done + 3 + k, total, f"batch {b + 1}/{batches}")
            probe.end_batch()
            sweep.add_metrics(tr_raw, ev_raw, y)
        plan = sweep.finish()
        leaks = []
        if subset is not None:
            leaks = compare_inference_paths(probe, nodes, subset, keras, stats=probe.stats)
        bn_params = {nd.index: probe.bn_params(nd) for nd in nodes if nd.kind is Kind.BATCHNORM}

    return Measurements(
        nodes=nodes,
        stats=probe.stats,
        output=sweep.out_acc,
        per_output=sweep.per_out,
        groups=sweep.groups(),
        bn_params=bn_params,
        leaks=leaks,
        metrics=sweep.metric.result() if sweep.loss_ok else None,
        batch_size=batch_size,
        batches=batches,
        last_batch_size=n - (batches - 1) * batch_size,
        samples=n,
        effects_computed=len(plan.effect_idx),
        effects_skipped=plan.effects_skipped,
        notes=sweep.notes,
        outputs_are_classes=sweep.classes,
        fit_call=backend.fit_call(model),
        devices=min(len(devs), batches),
    )


class _Sweep:
    """What the batch loop accumulates at the output, and the pass plan the
    first batch decides."""

    def __init__(self, model, nodes, keras, dataset: Dataset, effects, loss_id):
        self.model, self.nodes, self.keras = model, nodes, keras
        self.effects, self.loss_id, self.labels = effects, loss_id, dataset.y
        self.stats: dict[int, NodeStats] = {}
        self.out_acc = GapAccumulator()
        self.layers_acc = GapAccumulator()
        self.per_out: list[tuple[str, GapAccumulator]] = []
        self.group_acc: dict[str, GapAccumulator] = {}
        self.plan: PassPlan | None = None
        self.metric: _MetricSums | OutputMetricSums = _MetricSums()
        self.notes: list[str] = []
        self.names: list[str] = []
        self.classes = False
        self.loss_ok = dataset.y is not None
        self.own_logic = has_own_logic(model, keras)

    def outputs(self, ev_raw, tr_raw) -> list[np.ndarray]:
        """Adds one batch's output gap; returns its inference outputs."""
        ev, tr = backend.numpy_outputs(ev_raw), backend.numpy_outputs(tr_raw)
        if self.plan is None:
            self._first_batch(ev)
        for (_name, acc), t, e in zip(self.per_out, tr, ev):
            acc.add_arrays(t, e, classes=_is_classes(e))
            self.out_acc.add_arrays(t, e, classes=self.classes)
        return ev

    def _first_batch(self, ev: list[np.ndarray]) -> None:
        self.names = _output_names(self.model, len(ev))
        self.per_out = [(nm, GapAccumulator()) for nm in self.names]
        self.classes = len(ev) == 1 and _is_classes(ev[0])
        plan = self.plan = plan_passes(self.nodes, self.stats, self.effects, self.own_logic)
        self.group_acc = {g: GapAccumulator() for g in plan.run_groups}
        for i in plan.effect_idx:
            self.stats[i].effect = GapAccumulator()
        if self.loss_ok and len(ev) != 1 and not isinstance(self.labels, dict):
            self.loss_ok = False
            self.notes.append(
                "labels ignored: a model with several outputs needs one label array "
                "per output (npz keys y_<output name>)"
            )
        elif self.loss_ok and isinstance(self.labels, dict):
            self.metric = OutputMetricSums()

    def extra_passes(self) -> list[tuple[list[int], GapAccumulator]]:
        """(layers in training mode, accumulator) of each masked pass a batch gets."""
        plan, stats = self._plan(), self.stats
        out = [(plan.group_members[g], self.group_acc[g]) for g in plan.run_groups]
        out += [([i], cast(GapAccumulator, stats[i].effect)) for i in plan.effect_idx]
        if plan.layers_pass:
            out.append(([nd.index for nd in effective_nodes(self.nodes, stats)], self.layers_acc))
        return out

    def add_metrics(self, tr_raw, ev_raw, y) -> None:
        if not self.loss_ok or y is None:
            return
        flat_tr, flat_ev = self.keras.tree.flatten(tr_raw), self.keras.tree.flatten(ev_raw)
        try:
            if isinstance(self.metric, OutputMetricSums):  # per-output labels come as a dict
                self.metric.add(
                    self.keras, self.loss_id, flat_tr, flat_ev, cast(dict, y), self.names
                )
            else:
                self.metric.add(self.keras, self.loss_id, flat_tr[0], flat_ev[0], y)
        except Exception as e:  # labels that fit no loss: say so, keep the rest
            self.loss_ok = False
            self.notes.append(f"loss not computed: {type(e).__name__}: {str(e)[:160]}")

    def _plan(self) -> PassPlan:
        # the data were validated non-empty, so the first batch made the plan
        assert self.plan is not None, "no batch was measured"
        return self.plan

    def groups(self) -> dict[str, float]:
        """Each cause group's share of the gap: a pass of its own, or the whole gap."""
        plan = self._plan()
        groups = {g: 0.0 for g in GROUPS}
        if plan.reuse_total:
            groups[plan.reuse_total] = self.out_acc.relative_l2
        for g, acc in self.group_acc.items():
            groups[g] = acc.relative_l2
        return groups

    def finish(self) -> PassPlan:
        """Output effects that need no pass of their own, and the note on what
        a subclassed model's own call() adds; returns the plan."""
        plan = self._plan()
        eff = effective_nodes(self.nodes, self.stats)
        for nd in eff:
            st = self.stats[nd.index]
            if st.effect is not None:
                continue
            if len(eff) == 1 and not self.own_logic:
                st.effect = self.out_acc
            elif self.group_acc.get(nd.kind.group) is not None and plan.group_members[
                nd.kind.group
            ] == [nd.index]:
                st.effect = self.group_acc[nd.kind.group]
        if plan.layers_pass:
            explained, whole = self.layers_acc.relative_l2, self.out_acc.relative_l2
            if abs(whole - explained) > 0.1 * whole + 0.01:
                self.notes.append(
                    f"With all its layers in training mode but the model's own call() in "
                    f"inference mode, the output gap is {explained:.4f}, against {whole:.4f} for "
                    f"{backend.fit_call(self.model).expression}: the rest comes from what "
                    f"{type(self.model).__name__}.call() itself does when training=True, "
                    "outside any layer."
                )
        return plan
