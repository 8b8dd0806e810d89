"""The HTML report in a real browser (headless Chromium driven by
playwright): the demo's report and a ResNet50-sized one render without
console errors or network requests, every chart draws its marks, and the
screenshot is not blank. Skipped, with the reason, where no browser is
installed (`.ci/run` installs Debian's chromium where it can)."""

from __future__ import annotations

import os
import shutil
import struct
import zlib

import pytest
from test_html import large_report

from bngap.render import render

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for name in (os.environ.get("BNGAP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium browser installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        yield b
        b.close()


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of a PNG: enough to tell a blank image."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def look(browser, html: str, tmp_path, name: str) -> dict:
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    charts = page.evaluate("""() => [...document.querySelectorAll('svg.chart')].map(svg => {
        const marks = [...svg.querySelectorAll('.mark')];
        const drawn = marks.filter(m => { const b = m.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
        const box = svg.getBoundingClientRect();
        return {label: svg.getAttribute('aria-label'), declared: +svg.dataset.marks, marks: marks.length,
                drawn: drawn.length, width: box.width, height: box.height};
    })""")
    shot = page.screenshot(full_page=True)
    page.close()
    return {
        "errors": errors,
        "requests": requests,
        "charts": charts,
        "shot": shot,
        "uri": path.as_uri(),
    }


def check_page(seen: dict, n_charts: int) -> None:
    assert seen["errors"] == []
    assert seen["requests"] == [seen["uri"]]  # the page itself, nothing else
    assert len(seen["charts"]) == n_charts
    for c in seen["charts"]:
        assert c["width"] > 600 and c["height"] > 50, c
        assert c["marks"] == c["declared"] > 0, c
        assert c["drawn"] > 0, c
    w, h, raw = png_pixels(seen["shot"])
    assert w >= 1200 and h > 900
    assert len(set(raw)) > 20  # many colours: text and charts, not a blank page


@pytest.fixture(scope="module")
def demo_html():
    import bngap
    from bngap.demo import build_and_train, make_data

    x, y = make_data()
    return render(bngap.check(build_and_train(x, y), x, y), "html")


def test_demo_report_in_a_browser(browser, demo_html, tmp_path):
    seen = look(browser, demo_html, tmp_path, "demo")
    check_page(seen, 4)
    depth = next(c for c in seen["charts"] if "depth" in c["label"])
    assert depth["drawn"] >= 8  # the demo's 8 layers all diverge


def test_resnet50_sized_report_in_a_browser(browser, tmp_path):
    seen = look(browser, render(large_report(175, 53), "html"), tmp_path, "resnet50")
    check_page(seen, 4)
    bn = next(c for c in seen["charts"] if "BatchNormalization" in c["label"])
    assert bn["drawn"] == bn["marks"] == 4 * 53  # every BN bar and noise tick is visible
