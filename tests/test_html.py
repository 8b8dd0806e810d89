"""The HTML report: valid HTML5, self-contained (nothing loaded from
anywhere), every chart inline SVG with one mark per data point, legible at
ResNet50 and DenseNet121 sizes; the `fix` page too. No TensorFlow (the
browser test is tests/test_html_browser.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from test_render import bn_record, make_report

from bngap.fixresult import FixResult, LayerFix
from bngap.render import render
from bngap.render.fixing import render_fix_html
from bngap.results import Baseline, Kind, LayerRecord, Metrics, OutputGap, Severity, Thresholds

html5lib = pytest.importorskip("html5lib")


def large_report(layers: int = 175, bn: int = 53):
    """A hand-built report the size of ResNet50's (175 layers, 53 BN)."""
    recs, bns = [], []
    every = max(1, layers // bn)
    for i in range(layers):
        if len(bns) < bn and i % every == 1:
            path = f"resnet50/conv{i // 30 + 2}_block{i % 7 + 1}_{i}_bn"
            sev = (Severity.FAIL, Severity.WARN, Severity.OK)[len(bns) % 3]
            recs.append(
                LayerRecord(
                    path,
                    "BatchNormalization",
                    Kind.BATCHNORM,
                    i,
                    1,
                    0.9 + 0.001 * i,
                    0.5 + 0.002 * i,
                    1.1 if i == 1 else None,
                    mode_dependent=True,
                    fit_training=True,
                    fit_mode="training",
                    calls=1,
                )
            )
            bns.append(bn_record(path, i, sev, gap=0.3 + 0.01 * (i % 40), mz=0.5 + 0.1 * (i % 17)))
        else:
            recs.append(
                LayerRecord(
                    f"resnet50/layer_{i}",
                    "Conv2D",
                    Kind.OTHER,
                    i,
                    1,
                    0.0 if i == 0 else 0.8 + 0.002 * i,
                    None,
                    None,
                    calls=1,
                )
            )
    r = make_report(batchnorm=tuple(bns))
    return dataclasses.replace(r, layers=tuple(recs))


def parse(html: str):
    """The document (strict HTML5: a parse error raises)."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)


def tag(el) -> str:
    return el.tag.split("}")[-1]


def charts(doc) -> list:
    return [el for el in doc.iter() if tag(el) == "svg"]


def marks(svg) -> list:
    return [el for el in svg.iter() if "mark" in (el.get("class") or "").split()]


def expected_depth_marks(r) -> int:
    ran = [x for x in r.layers if x.order >= 0]
    return (
        sum(x.divergence is not None for x in ran)
        + sum(x.mode_dependent for x in ran)
        + sum(x.own_contribution is not None for x in ran)
    )


def expected_bn_marks(r) -> int:
    return 3 * len(r.batchnorm) + sum(b.noise_local_gap is not None for b in r.batchnorm)


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_report(thresholds=Thresholds(output_gap=0.05, warn_above=0.01)),
        lambda: large_report(),
        lambda: large_report(430, 121),  # DenseNet121's size
        lambda: make_report(metrics=None, findings=(), batchnorm=()),
    ],
)
def test_html_is_valid_and_every_chart_has_its_marks(make):
    r = make()
    html = render(r, "html")
    doc = parse(html)
    svgs = charts(doc)
    names = [s.get("aria-label") for s in svgs]
    expected = {
        "Divergence of each layer's output along the depth": expected_depth_marks(r),
        "Output gap by cause group": len(r.groups),
        "Output gap by model output": len(r.output_gap.per_output),
    }
    if r.batchnorm:
        expected["BatchNormalization statistics against the data"] = expected_bn_marks(r)
    assert sorted(names) == sorted(expected)
    for s in svgs:
        got = marks(s)
        assert len(got) == int(s.get("data-marks")) == expected[s.get("aria-label")], s.get(
            "aria-label"
        )
        for m in got:  # every mark says what it is on hover
            assert any(tag(c) == "title" and c.text for c in m), m.attrib
            for attr in ("width", "height", "x", "y", "cx", "cy"):
                v = m.get(attr)
                assert v is None or (re.fullmatch(r"-?\d+(\.\d+)?", v) and float(v) >= 0), (attr, v)
    assert len(html) < 400_000  # a DenseNet-sized page stays small


def test_depth_bars_follow_the_divergence():
    """Bar heights are proportional to the values (the chart does not lie)."""
    r = make_report()
    svg = next(s for s in charts(parse(render(r, "html"))) if "depth" in s.get("aria-label"))
    bars = [m for m in marks(svg) if "divergence" in m.get("class")]
    ran = [x for x in r.layers if x.order >= 0 and x.divergence is not None]
    heights = [float(b.get("height")) for b in bars]
    top = max(x.divergence for x in ran)
    for x, h in zip(ran, heights):
        assert h / max(heights) == pytest.approx(x.divergence / top, abs=0.01)


def test_html_is_self_contained():
    html = render(large_report(), "html")
    doc = parse(html)
    for el in doc.iter():
        assert tag(el) not in ("script", "link", "img", "iframe", "object", "embed"), tag(el)
        for attr in ("src", "href", "xlink:href", "{http://www.w3.org/1999/xlink}href", "srcset"):
            assert el.get(attr) is None, (tag(el), attr)
    style = "".join(el.text or "" for el in doc.iter() if tag(el) == "style")
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    # the only address in the file is the SVG namespace, which is a name, not a download
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}


def test_html_content_matches_the_report():
    r = dataclasses.replace(
        make_report(thresholds=Thresholds(output_gap=0.05, max_regression=0.1)),
        baseline=Baseline(
            "old.json",
            "models/old.keras",
            0.2,
            2.0,
            0.9,
            Metrics({"loss": 0.3}, {"loss": 0.9}, "mse", "compiled"),
            "pass",
            "domain_shift",
            1,
        ),
    )
    html = render(r, "html")
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "FAIL output gap 0.4123 (relative L2, train vs inference) &gt; 0.05" in text
    assert "grew by 0.2123 against the baseline (at most 0.1)" in text
    assert "Against the baseline" in text and "output gap (relative L2) 0.2000 0.4123" in text
    assert "most likely cause domain_shift stats_never_updated" in text
    assert "--max-regression 0.1 0.2123 FAIL" in text
    assert "loss 0.3125 1.8750" in text and "accuracy 93.8% 68.8%" in text
    assert "fix: Train with the layer in training mode" in text
    assert "1 stem/conv[1]_bn FAIL 4.20 8.40 2.10 0.873 0.020 never yes" in text
    assert "keras: 3.8.0" in text
    assert render(r, "html") == html  # deterministic: no timestamp, no random ids


def test_fix_page_has_before_and_after_per_layer():
    gap = OutputGap(1.1226, 0.99, 0.333)
    layers = tuple(LayerFix(f"bn{i}", 0, 48, 0.9 - 0.1 * i, 0.01 * i, i == 2) for i in range(1, 4))
    res = FixResult(
        gap,
        OutputGap(0.0046, 0.013, 1.0),
        None,
        None,
        layers,
        (("bn9", "frozen"),),
        2,
        48,
        32,
        True,
        "fixed.keras",
        0.0,
        ("re-estimated from 48 samples",),
    )
    html = render_fix_html(res)
    doc = parse(html)
    svgs = charts(doc)
    assert [len(marks(s)) for s in svgs] == [2, 6]
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "output gap 1.1226 → 0.0046 · written to fixed.keras" in text
    assert (
        "2 bn2 (frozen) 0.700 0.020 0" in text
        and "3 bn3 0.600 0.030 0" in text
        and "bn9 frozen" in text
    )


def _saved_values_kept(saved, now) -> bool:
    if isinstance(saved, dict):
        return isinstance(now, dict) and all(
            k in now and _saved_values_kept(v, now[k]) for k, v in saved.items()
        )
    if isinstance(saved, list):
        return (
            isinstance(now, list)
            and len(saved) == len(now)
            and all(_saved_values_kept(a, b) for a, b in zip(saved, now))
        )
    return saved == now


def test_the_real_resnet50_report_round_trips_and_renders():
    """docs/resnet50-report.json: a real check of ResNet50 (53 BN layers)."""
    import json
    from pathlib import Path

    from bngap.results import Report

    d = json.loads((Path(__file__).parents[1] / "docs" / "resnet50-report.json").read_text())
    r = Report.from_dict(d)
    again = r.to_dict()
    assert Report.from_dict(again).to_dict() == again  # exact, on a real report
    # a report saved by an earlier version reads back with every saved value
    # unchanged; keys added since then get their defaults
    assert _saved_values_kept(d, again)
    assert len(r.batchnorm) == 53 and r.model.batchnorm_layers == 53
    svgs = charts(parse(render(r, "html")))
    by_label = {s.get("aria-label"): len(marks(s)) for s in svgs}
    assert by_label["BatchNormalization statistics against the data"] == expected_bn_marks(r)
    assert by_label["Divergence of each layer's output along the depth"] == expected_depth_marks(r)


def test_depth_chart_legend_colours_are_told_apart():
    """Each swatch of the depth chart's legend names one thing: the
    divergence bars and the dropout/noise strip were two near-identical
    blues (RGB distance 18)."""
    from bngap.render.svg import BAR, KIND_COLOR

    def rgb(c):
        return tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))

    swatches = {
        "divergence": BAR,
        **{k: KIND_COLOR[k] for k in ("batchnorm", "dropout", "augmentation", "other")},
    }
    names = sorted(swatches)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = sum((p - q) ** 2 for p, q in zip(rgb(swatches[a]), rgb(swatches[b]))) ** 0.5
            assert d > 45, (a, b, d)  # blue against grey is 53
