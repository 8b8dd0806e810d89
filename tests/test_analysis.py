"""bngap.analysis on hand-built layer nodes and per-layer statistics: how each
layer behaves in fit(), which numbers reach its record, the BN audit's inputs
and the output gap. No Keras model and no TensorFlow: plain records only."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from bngap.analysis import batchnorm_records, layer_records, output_gap
from bngap.audit import BatchNormParams, audit_layer
from bngap.layertree import LayerNode
from bngap.probe import NodeStats
from bngap.results import Kind
from bngap.stats import GapAccumulator, SplitMoments


@dataclass
class Measured:
    """The fields of `measurement.Measurements` that analysis reads."""

    nodes: list[LayerNode]
    stats: dict[int, NodeStats]
    bn_params: dict[int, BatchNormParams] = field(default_factory=dict)
    output: GapAccumulator = field(default_factory=GapAccumulator)
    per_output: list[tuple[str, GapAccumulator]] = field(default_factory=list)


def node(
    index,
    path,
    kind=Kind.OTHER,
    *,
    mode_dependent=False,
    trainable=True,
    parent=None,
    class_name="Dense",
) -> LayerNode:
    return LayerNode(
        path=path,
        layer=None,
        depth=path.count("/"),
        kind=kind,
        mode_dependent=mode_dependent,
        parent=parent,
        index=index,
        class_name=class_name,
        trainable=trainable,
    )


def bn_node(index, path, **kw) -> LayerNode:
    return node(
        index, path, Kind.BATCHNORM, mode_dependent=True, class_name="BatchNormalization", **kw
    )


def gap(train, ref) -> GapAccumulator:
    acc = GapAccumulator()
    acc.add_arrays(np.asarray(train, float), np.asarray(ref, float))
    return acc


def stats(order, *, fit=(True,), divergence=None, own=None, effect=None, paired=1, moments=None):
    st = NodeStats(
        order=order,
        paired=paired,
        calls=len(fit),
        moments=moments,
        fit_training=dict(enumerate(fit)),
    )
    if divergence is not None:
        st.divergence = divergence
    if own is not None:
        st.own = own
    st.effect = effect
    return st


def test_analysis_does_not_import_tensorflow():
    code = (
        "import sys, bngap.analysis; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "received,trainable,parent,expected",
    [
        ((True,), True, None, (True, "training", "")),
        (
            (True, None),
            False,
            None,
            (True, "inference", "frozen (trainable=False): Keras 3 BN uses its moving statistics"),
        ),
        (
            (False,),
            True,
            "backbone",
            (False, "inference", "called with training=False (by backbone)"),
        ),
        ((False,), True, None, (False, "inference", "called with training=False (by the model)")),
        ((None,), True, None, (None, "inference", "received no training flag")),
        ((False, True), True, None, (True, "training", "")),  # one training call is enough
    ],
)
def test_how_a_batchnorm_layer_runs_in_fit(received, trainable, parent, expected):
    up = node(0, parent) if parent else None
    bn = bn_node(1, f"{parent}/bn" if parent else "bn", trainable=trainable, parent=up)
    nodes = [up, bn] if up else [bn]
    m = Measured(nodes, {n.index: stats(n.index, fit=received) for n in nodes})
    rec = next(r for r in layer_records(m) if r.path == bn.path)
    assert (rec.fit_training, rec.fit_mode, rec.fit_mode_reason) == expected
    assert rec.trainable is trainable and rec.class_name == "BatchNormalization"


def test_a_layer_that_does_not_depend_on_the_mode_has_no_fit_mode():
    dense = node(0, "dense")
    (rec,) = layer_records(Measured([dense], {0: stats(0, fit=(True,))}))
    assert (rec.fit_training, rec.fit_mode, rec.fit_mode_reason) == (True, "n/a", "")


def test_records_carry_the_measured_numbers_in_call_order():
    d = gap([[1.0, 2.0]], [[1.0, 1.0]])  # relative L2 1 / sqrt(2)
    o = gap([[3.0, 0.0]], [[0.0, 4.0]])  # 5 / 4
    e = gap([[2.0]], [[1.0]])  # 1
    nodes = [
        node(0, "unused"),
        bn_node(1, "bn"),
        node(2, "dense"),
        node(3, "drop", Kind.DROPOUT, mode_dependent=True),
    ]
    m = Measured(
        nodes,
        {
            0: stats(-1, fit=()),  # never called
            1: stats(1, divergence=d, own=o, effect=e),
            2: stats(0, divergence=d, own=o, paired=0),  # called, but no train/eval pair
            3: stats(2, fit=(True,), divergence=d, own=o),
        },
    )
    records = layer_records(m)
    assert [r.path for r in records] == ["dense", "bn", "drop", "unused"]  # uncalled last
    dense, bn, drop, unused = records
    assert bn.divergence == pytest.approx(1 / np.sqrt(2)) and bn.own_contribution == 1.25
    assert bn.output_effect == 1.0 and bn.order == 1 and bn.calls == 1
    assert dense.divergence is None  # nothing paired: no divergence
    assert dense.own_contribution is None  # not mode-dependent: no own contribution
    assert drop.output_effect is None and drop.kind is Kind.DROPOUT
    assert (unused.divergence, unused.own_contribution, unused.order) == (None, None, -1)


def _params(path, mean, var) -> BatchNormParams:
    return BatchNormParams(
        path,
        None,
        None,
        np.asarray(mean, float),
        np.asarray(var, float),
        1e-3,
        0.99,
        True,
        -1,
        False,
        False,
        0.0,
        1.0,
    )


def _moments(x) -> SplitMoments:
    sm = SplitMoments()
    sm.add_examples(np.ones_like(x), x, np.zeros_like(x))
    return sm


def test_batchnorm_records_audit_each_layer_that_ran():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (40, 4))
    sm = _moments(x)
    nodes = [
        bn_node(0, "late"),
        bn_node(1, "frozen", trainable=False),
        bn_node(2, "skipped"),
        node(3, "dense"),
    ]
    params = {i: _params(n.path, np.zeros(4), np.ones(4)) for i, n in enumerate(nodes[:3])}
    m = Measured(
        nodes,
        {
            0: stats(5, moments=sm),
            1: stats(2, moments=sm),
            2: stats(3, moments=None),  # no inputs captured: no audit
            3: stats(4),
        },
        bn_params=params,
    )
    records = batchnorm_records(m)
    assert [r.path for r in records] == ["frozen", "late"]  # call order
    frozen, late = records
    assert late == audit_layer(params[0], sm, 5, True)
    assert frozen == audit_layer(
        params[1], sm, 2, False
    )  # frozen: fit() uses the moving statistics
    assert late.fit_uses_batch_stats is True and frozen.fit_uses_batch_stats is False
    m.stats[0] = stats(5, moments=SplitMoments())  # a capture that saw no example
    assert [r.path for r in batchnorm_records(m)] == ["frozen"]


def test_output_gap_overall_and_per_output():
    a = gap([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]])
    b = gap([[2.0]], [[1.0]])
    m = Measured([], {}, output=a, per_output=[("a", a), ("b", b)])
    g = output_gap(m)
    assert (g.relative_l2, g.max_abs, g.top1_agreement) == (a.relative_l2, 1.0, a.top1_agreement)
    assert g.relative_l2 == pytest.approx(np.sqrt(2) / np.sqrt(2))
    assert [(e.name, e.relative_l2) for e in g.per_output] == [("a", a.relative_l2), ("b", 1.0)]
