"""One check, every output: repeated --output by extension, `bngap render`
reproducing each file from the JSON without TensorFlow, the warn and
baseline gates end to end, and GitHub Actions' summary and annotations."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from bngap.cli import main
from bngap.render.github import escape_data, escape_property

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "report.schema.json").read_text())


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def outputs(zoo, tmp_path_factory):
    """One check of the under-trained zoo model writing all five formats."""
    folder = tmp_path_factory.mktemp("outputs")
    mpath, dpath = zoo.files("under_trained")
    files = {ext: folder / f"r.{ext}" for ext in ("json", "md", "html", "xml", "txt")}
    res = run(
        "check",
        mpath,
        dpath,
        "--warn-above",
        "0.01",
        "--fail-above",
        "100",
        *[a for p in files.values() for a in ("--output", p)],
    )
    return res, files, folder


def test_one_run_writes_every_format(outputs):
    res, files, folder = outputs
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # --output replaces stdout, as before
    for p in files.values():
        assert f"bngap: report written to {p}" in res.stderr
    assert sorted(x.name for x in folder.iterdir()) == sorted(
        p.name for p in files.values()
    )  # no temp files
    d = json.loads(files["json"].read_text())
    pytest.importorskip("jsonschema").validate(d, SCHEMA)
    assert d["verdict"] == "warn" and d["warned"] == ["output_gap"] and d["exceeded"] == []
    gap = f"{d['output_gap']['relative_l2']:.4f}"
    assert files["md"].read_text().startswith(f"## bngap report: WARN · output gap {gap}")
    assert files["txt"].read_text().startswith(f"WARN · output gap {gap}")
    assert f"output gap {gap} (relative L2" in files["html"].read_text()
    props = {p.get("name"): p.get("value") for p in ET.parse(files["xml"]).iter("property")}
    assert props["output_gap.relative_l2"] == gap and props["verdict"] == "warn"


@pytest.mark.parametrize(
    "fmt,ext",
    [("html", "html"), ("junit", "xml"), ("markdown", "md"), ("text", "txt"), ("json", "json")],
)
def test_render_reproduces_each_file_byte_for_byte(outputs, fmt, ext):
    _, files, _ = outputs
    res = run("render", files["json"], "--format", fmt)
    assert res.exit_code == 0, res.output
    assert res.stdout == files[ext].read_text()


def test_render_does_not_import_tensorflow(outputs, tmp_path):
    _, files, _ = outputs
    out = tmp_path / "again.html"
    code = (
        "import sys; from bngap.cli import main\n"
        "try:\n    main(["
        + ", ".join(repr(a) for a in ("render", str(files["json"]), "-o", str(out)))
        + "])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False False"
    assert out.read_bytes() == files["html"].read_bytes()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["fix", "-o", "r.xml"],
            "error: --output r.xml: cannot write a junit report here; use one of .html, .json, .txt",
        ),
        (["--output", "r.json", "--output", "r.json"], "error: --output r.json is given twice"),
        (["--max-regression", "0.1"], "error: --max-regression needs --baseline OLD.json"),
        (["--warn-above", "-1"], "error: --warn-above must be 0 or more. Received: -1.0"),
        (["--baseline", "missing.json"], "error: baseline missing.json does not exist"),
    ],
)
def test_render_and_check_refuse_bad_outputs(tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "r0.json"
    saved.write_text("{}")
    if args[0] == "fix":
        res = run("fix", "m.keras", "d.npz", *args[1:])
    elif "--baseline" in args or "--max-regression" in args or "--warn-above" in args:
        res = run("check", "m.keras", "d.npz", *args)  # refused before the model is opened
    else:
        res = run("render", saved, *args)
    assert res.exit_code == 2
    assert res.stderr.strip().startswith(message), res.stderr
    assert list(tmp_path.iterdir()) == [saved]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{}", "not a bngap check report (schema version 1)"),
        (b"PK\x03\x04\xc8\x00binary", "is not a JSON report (not UTF-8 text)"),
    ],
)
@pytest.mark.parametrize("command", ["render", "baseline"])
def test_not_a_report_is_said_once(tmp_path, monkeypatch, content, message, command):
    """One plain line, the reason said once: no doubled 'not a bngap check
    report (not a bngap check report ...)', no codec error."""
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "old.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = (
        run("render", f)
        if command == "render"
        else run("check", "m.keras", "d.npz", "--baseline", f)
    )
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and message in line, line
    assert line.count("not a bngap check report") <= 1 and "codec" not in line, line


@pytest.mark.parametrize(
    "saved,kind",
    [
        (
            {
                "schema_version": "1",
                "command": "lint",
                "verdict": "pass",
                "model": {"path": "m.keras"},
            },
            "lint",
        ),
        ({"schema_version": "1", "command": "fix", "before": {}, "after": {}}, "fix"),
        ({"before": {"relative_l2": 1.0}, "after": {"relative_l2": 0.1}, "layers": []}, "fix"),
    ],
)
def test_render_names_a_lint_or_fix_report(tmp_path, saved, kind):
    """A lint or fix JSON given to render: said as such, not 'KeyError: data'."""
    f = tmp_path / "r.json"
    f.write_text(json.dumps(saved))
    res = run("render", f)
    assert res.exit_code == 2
    assert f"is a bngap {kind} report" in res.stderr and "KeyError" not in res.stderr, res.stderr


def test_render_repeats_all_layers(zoo, tmp_path):
    mpath, dpath = zoo.files("nested")
    res = run(
        "check",
        mpath,
        dpath,
        "-q",
        "--all-layers",
        "-o",
        tmp_path / "r.json",
        "-o",
        tmp_path / "r.txt",
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["all_layers"] is True
    again = run("render", tmp_path / "r.json", "--format", "text")
    assert again.stdout == (tmp_path / "r.txt").read_text() and "All layers" in again.stdout


def test_an_unknown_extension_takes_the_format(outputs, tmp_path):
    _, files, _ = outputs
    out = tmp_path / "report.log"
    res = run("render", files["json"], "--format", "markdown", "-o", out)
    assert res.exit_code == 0 and out.read_text() == files["md"].read_text()


def test_render_refuses_what_is_not_a_report(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": "1", "model": {}}')
    res = run("render", bad)
    assert res.exit_code == 2 and res.stderr.startswith(
        f"error: {bad}: not a readable bngap check report"
    )
    bad.write_text("[1, 2")
    res = run("render", bad, "--format", "html")
    assert res.exit_code == 2 and res.stderr.startswith(f"error: report {bad} is not JSON")


def test_baseline_regression_gate(zoo, tmp_path, outputs):
    """Against a baseline with a smaller gap: fail beyond --max-regression,
    pass within it; every output shows old and new side by side."""
    _, files, _ = outputs
    mpath, dpath = zoo.files("under_trained")
    old = json.loads(files["json"].read_text())
    gap = old["output_gap"]["relative_l2"]
    old["output_gap"]["relative_l2"] = round(gap - 0.2, 4)
    base = tmp_path / "old.json"
    base.write_text(json.dumps(old))
    new = tmp_path / "new.json"
    res = run(
        "check",
        mpath,
        dpath,
        "-q",
        "--baseline",
        base,
        "--max-regression",
        "0.1",
        "-o",
        new,
        "-o",
        tmp_path / "new.md",
    )
    assert res.exit_code == 1, res.output
    d = json.loads(new.read_text())
    assert d["verdict"] == "fail" and d["exceeded"] == ["regression"]
    assert d["baseline"]["relative_l2"] == round(gap - 0.2, 4)
    assert d["baseline"]["regression"] == pytest.approx(0.2, abs=1e-4)
    md = (tmp_path / "new.md").read_text()
    assert f"| output gap (relative L2) | {round(gap - 0.2, 4):.4f} | {gap:.4f} |" in md
    res = run(
        "check",
        mpath,
        dpath,
        "-q",
        "--baseline",
        base,
        "--max-regression",
        "0.25",
        "--format",
        "json",
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["verdict"] == "pass"


def test_github_actions_summary_and_annotations(zoo, tmp_path):
    mpath, dpath = zoo.files("under_trained")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    res = run(
        "check", mpath, dpath, "-q", "--fail-above", "0.05", "-o", tmp_path / "r.json", env=env
    )
    assert res.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n## bngap report: FAIL · output gap")  # appended
    lines = res.stdout.splitlines()  # the report went to a file: stdout is free for the runner
    assert lines[0].startswith(
        f"::error file={escape_property(str(mpath))},title=bngap%3A output gap "
        "(relative L2) above 0.05::output gap (relative L2) is "
    )
    assert any(
        x.startswith("::error ") and "title=bngap%3A stats_not_converged" in x for x in lines
    )
    assert all("\n" not in x and x.startswith("::") for x in lines)
    # with the report on stdout, annotations go to stderr; --no-github: nothing at all
    res = run("check", mpath, dpath, "-q", "--format", "json", env=env)
    json.loads(res.stdout)
    assert "::error " in res.stderr
    before = summary.read_text()
    res = run("check", mpath, dpath, "-q", "--no-github", env=env)
    assert "::" not in res.stdout + res.stderr and summary.read_text() == before


def test_workflow_command_escaping():
    assert escape_data("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext: a,b"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_fix_writes_reports_beside_the_model(zoo, tmp_path):
    mpath, dpath = zoo.files("under_trained")
    out = tmp_path / "fixed.keras"
    res = run(
        "fix",
        mpath,
        dpath,
        "-q",
        "-o",
        out,
        "-o",
        tmp_path / "fix.html",
        "-o",
        tmp_path / "fix.json",
    )
    assert res.exit_code == 0, res.output
    assert out.exists() and res.stdout == ""
    d = json.loads((tmp_path / "fix.json").read_text())
    assert d["written"] == str(out) and d["after"]["relative_l2"] < d["before"]["relative_l2"]
    html = (tmp_path / "fix.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and f"{d['after']['relative_l2']:.4f}" in html
    res = run("fix", mpath, dpath, "-q", "-o", tmp_path / "a.keras", "-o", tmp_path / "b.keras")
    assert res.exit_code == 2 and "one fixed model at a time" in res.stderr


def test_ci_examples_run_bngap_once():
    examples = Path(__file__).parents[1] / "examples"
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (examples / name).read_text()
        runs = [
            line
            for line in text.splitlines()
            if "bngap check" in line and not line.strip().startswith("#")
        ]
        assert len(runs) == 1, (name, runs)
        assert "--output bngap-report.json" in text and "bngap-junit.xml" in text
    assert "junit: bngap-junit.xml" in (examples / "gitlab-ci.yml").read_text()


@pytest.mark.parametrize(
    "name", ["under_trained", "nested", "dropout_only", "preprocessing_mismatch"]
)
def test_a_real_report_round_trips_exactly(zoo, name):
    """What `check` returns survives its JSON form unchanged, so no key is
    lost when the CLI renders every output from it (a key added to
    `to_dict()` must come back through `Report.from_dict()`)."""
    import bngap
    from bngap.results import Report

    model, x, y = zoo.get(name)
    r = bngap.check(model, x, y, effects=0)
    d = json.loads(json.dumps(r.to_dict()))
    assert Report.from_dict(d).to_dict() == d


def test_annotations_follow_the_verdict():
    from test_render import make_report

    from bngap.render.github import annotations
    from bngap.results import Thresholds

    warn = annotations(make_report(thresholds=Thresholds(output_gap=1.0, warn_above=0.1)))
    assert [a.split(" ")[0] for a in warn] == [
        "::warning",
        "::error",
        "::warning",
    ]  # gate, fail finding, warn finding
    assert warn[0].startswith(
        "::warning file=models/tiny_resnet.keras,title=bngap%3A output gap (relative L2) "
        "above 0.1::output gap (relative L2) is 0.4123, above 0.1."
    )
    fail = annotations(make_report(thresholds=Thresholds(output_gap=0.2, warn_above=0.1)))
    assert [a.split(" ")[0] for a in fail] == [
        "::error",
        "::error",
        "::warning",
    ]  # no warning beside the failure
    assert annotations(make_report(findings=())) == []


def test_render_is_quiet_with_q(tmp_path):
    """-q, as for check, fix and lint: a CI script passes it to every step."""
    from pathlib import Path

    golden = Path(__file__).parent / "golden" / "render_report.json"
    res = run("render", golden, "-q", "-o", tmp_path / "r.md")
    assert res.exit_code == 0, res.stderr
    assert res.stderr == "" and (tmp_path / "r.md").read_text().startswith("## bngap report")
    loud = run("render", golden, "-o", tmp_path / "s.md")
    assert "report written to" in loud.stderr
