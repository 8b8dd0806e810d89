"""The contract's fixed word sets as enums: each member is its plain string
(JSON, comparisons, formatting), values outside the set are refused where a
record is built, and a saved report reads back as members. No TensorFlow."""

from __future__ import annotations

import json

import pytest
from test_render import make_report

from bngap.linting import RULES, LintFinding, Rule
from bngap.render import FORMATS, Format, render
from bngap.results import (
    GROUPS,
    FitMode,
    Group,
    InferencePath,
    Kind,
    LayerRecord,
    LeakCheck,
    Report,
    Severity,
)

CONTRACT_WORDS = [
    (FitMode, ["training", "inference", "n/a"]),
    (Group, ["batchnorm", "dropout", "augmentation", "other"]),
    (InferencePath, ["model(x, training=False)", "model(x)", "predict(x)"]),
    (Format, ["text", "json", "markdown", "html", "junit"]),
]


@pytest.mark.parametrize("vocabulary,words", CONTRACT_WORDS)
def test_members_are_the_contract_words_and_behave_as_strings(vocabulary, words):
    assert [m.value for m in vocabulary] == words
    for m, w in zip(vocabulary, words):
        assert m == w and str(m) == w and f"{m}" == w and f"{m:>12}" == f"{w:>12}"
        assert {w: 1}[m] == 1 and hash(m) == hash(w)
        assert json.dumps({m: m}) == json.dumps({w: w})


def test_tuples_of_words_follow_the_enums():
    assert GROUPS == ("batchnorm", "dropout", "augmentation", "other")
    assert tuple(f.value for f in Format) == FORMATS
    assert RULES[0] == "never_updated" and tuple(r.value for r in Rule) == RULES
    assert {k.group for k in Kind} == set(Group)
    assert Kind.NOISE.group is Group.DROPOUT and Kind.CUSTOM_TRAINING_ARG.group is Group.OTHER


def _layer(**kw) -> LayerRecord:
    return LayerRecord(
        path="bn",
        class_name="BatchNormalization",
        kind=Kind.BATCHNORM,
        order=0,
        depth=0,
        divergence=None,
        own_contribution=None,
        output_effect=None,
        **kw,
    )


def test_records_store_members_and_refuse_other_words():
    assert _layer(fit_mode="inference").fit_mode is FitMode.INFERENCE
    assert _layer().fit_mode is FitMode.NOT_APPLICABLE
    assert LeakCheck("predict(x)", 0.0).path is InferencePath.PREDICT
    f = LintFinding("axis_mismatch", Severity.FAIL, "bn", "m", "r")
    assert f.rule is Rule.AXIS_MISMATCH
    with pytest.raises(ValueError):
        _layer(fit_mode="eval")
    with pytest.raises(ValueError):
        LeakCheck("forced inference", 0.0)
    with pytest.raises(ValueError):
        LintFinding("no_such_rule", Severity.WARN, None, "m", "r")


def test_saved_report_reads_back_as_members_and_renders_the_same():
    r = make_report()
    d = json.loads(json.dumps(r.to_dict()))
    back = Report.from_dict(d)
    assert back.to_dict() == r.to_dict()
    assert all(isinstance(x.fit_mode, FitMode) for x in back.layers)
    assert all(isinstance(x.path, InferencePath) for x in back.leaks) and back.leaks
    for fmt in ("text", "json", "markdown"):
        assert render(back, fmt) == render(r, fmt)


def test_unknown_format_is_refused_with_the_list():
    with pytest.raises(ValueError, match="unknown format 'yaml'; expected one of text, json"):
        render(make_report(), "yaml")
