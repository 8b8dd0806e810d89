"""The command line on real files: report forms, the CI gate, the demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bngap.cli import main

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "report.schema.json").read_text())
ANSI = re.compile(r"\x1b\[")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_json_report_validates_against_the_documented_schema(zoo):
    jsonschema = pytest.importorskip("jsonschema")
    for name in ("under_trained", "nested", "dropout_only", "preprocessing_mismatch"):
        mpath, dpath = zoo.files(name)
        res = run("check", mpath, dpath, "--format", "json", "-q")
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        jsonschema.validate(report, SCHEMA)
        assert report["data"]["has_labels"] is True
        assert res.stderr == ""


def test_stdout_carries_only_the_report(zoo):
    mpath, dpath = zoo.files("under_trained")
    res = run("check", mpath, dpath, "--format", "json")
    json.loads(res.stdout)  # status lines did not leak into stdout
    assert "bngap: loading model" in res.stderr


@pytest.mark.parametrize(
    "args,code",
    [
        ([], 0),
        (["--fail-above", "0.05"], 1),
        (["--fail-above", "100"], 0),
        (["--fail-above-loss-delta", "0.01"], 1),
        (["--fail-above-accuracy-drop", "0.9"], 0),
        (["--fail-above", "-1"], 2),
    ],
)
def test_exit_codes(zoo, args, code):
    mpath, dpath = zoo.files("under_trained")
    res = run("check", mpath, dpath, "-q", *args)
    assert res.exit_code == code, res.output
    if code == 1:
        assert res.stdout.startswith("FAIL")


def test_custom_objects_file_that_raises_is_bad_input(zoo, tmp_path):
    plugin = tmp_path / "objs.py"
    plugin.write_text("raise SystemError('plugin exploded')\n")
    mpath, dpath = zoo.files("under_trained")
    res = run("check", mpath, dpath, "-q", "--custom-objects", plugin)
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: error while running --custom-objects file {plugin}: SystemError: plugin exploded"
    )


def test_internal_failure_exits_3_with_one_line(zoo, tmp_path):
    """A failure that is not the user's input (here a renderer broken from a
    trusted plugin file) is exit 3, one line, traceback only on request."""
    plugin = tmp_path / "breaks_bngap.py"
    plugin.write_text(
        "import bngap.render.text as t\n"
        "def boom(*a, **k):\n    raise ZeroDivisionError('renderer bug')\n"
        "t.render_text = boom\n"
    )
    mpath, dpath = zoo.files("dropout_only")
    try:
        res = run("check", mpath, dpath, "-q", "--custom-objects", plugin)
        assert res.exit_code == 3
        assert res.stderr.strip() == (
            "internal error: ZeroDivisionError: renderer bug (rerun with --traceback for details)"
        )
        res = run("check", mpath, dpath, "-q", "--custom-objects", plugin, "--traceback")
        assert res.exit_code == 3 and "Traceback (most recent call last)" in res.stderr
    finally:
        import importlib

        import bngap.render.text

        importlib.reload(bngap.render.text)


def test_markdown_report_has_environment_and_findings(zoo):
    mpath, dpath = zoo.files("under_trained")
    res = run("check", mpath, dpath, "--format", "markdown", "-q")
    assert res.exit_code == 0
    md = res.stdout
    assert md.startswith("## bngap report:")
    for needle in (
        "### Environment",
        "tensorflow:",
        "keras:",
        "numpy:",
        "### Model and data",
        "### Findings",
        "`stats_not_converged`",
        "| output gap (relative L2) |",
    ):
        assert needle in md, needle


def test_text_report_is_plain_outside_a_terminal(zoo):
    mpath, dpath = zoo.files("nested")
    res = run("check", mpath, dpath, "-q", "--all-layers")
    assert res.exit_code == 0
    assert not ANSI.search(res.stdout)
    assert "base/conv_bn" in res.stdout
    assert all(line == line.rstrip() for line in res.stdout.splitlines())


def test_output_file_is_written_atomically(zoo, tmp_path):
    mpath, dpath = zoo.files("under_trained")
    out = tmp_path / "report.json"
    out.write_text("old")
    res = run("check", mpath, dpath, "--format", "json", "--output", out, "-q")
    assert res.exit_code == 0 and res.stdout == ""
    assert json.loads(out.read_text())["schema_version"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_demo_finds_and_explains_the_gap(tmp_path):
    res = run("demo", "--out", tmp_path, "-q")
    assert res.exit_code == 0, res.output
    assert "likely cause: stats_not_converged" in res.stdout.splitlines()[0]
    assert "100.0%" in res.stdout and "33.3%" in res.stdout  # the fit-vs-evaluate story
    assert (tmp_path / "model.keras").exists() and (tmp_path / "data.npz").exists()
    assert f"bngap check {tmp_path / 'model.keras'}" in res.stdout
