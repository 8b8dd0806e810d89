"""Atomic writes (bngap.writing): the old file or the complete new one,
never a half-written file or a stray temporary; bad targets are BngapErrors
with one-line messages. No TensorFlow."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from bngap.errors import BngapError, ExitStatus
from bngap.writing import replace_atomic, write_atomic


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_text_as_utf8(tmp_path):
    target = tmp_path / "report.md"
    assert write_atomic(target, "gap · 0.41 µ\n") == target
    assert target.read_bytes() == "gap · 0.41 µ\n".encode()
    assert listing(tmp_path) == ["report.md"]


def test_writes_bytes_unchanged(tmp_path):
    data = bytes(range(256)) + b"\r\n\x00"
    target = write_atomic(str(tmp_path / "blob.bin"), data)  # a str path works too
    assert Path(target).read_bytes() == data
    assert listing(tmp_path) == ["blob.bin"]


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old, and longer than the new content\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert listing(tmp_path) == ["report.json"]


def test_relative_path_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_atomic("here.txt", "x")
    assert (tmp_path / "here.txt").read_text() == "x"
    assert listing(tmp_path) == ["here.txt"]


def test_failing_fill_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"original model")
    seen = []

    def fill(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"half a mod")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        replace_atomic(target, fill)
    assert target.read_bytes() == b"original model"
    assert listing(tmp_path) == ["model.keras"]
    assert seen and not seen[0].exists()


def test_failing_fill_without_a_target_creates_nothing(tmp_path):
    def fill(tmp: Path) -> None:
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomic(tmp_path / "new.json", fill)
    assert listing(tmp_path) == []


def test_fill_that_deletes_its_temporary_is_reported_not_hidden(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep")
    with pytest.raises(BngapError, match="cannot write .*out.txt: No such file or directory"):
        replace_atomic(target, lambda tmp: tmp.unlink())
    assert target.read_text() == "keep"
    assert listing(tmp_path) == ["out.txt"]


def test_permission_error_in_fill_is_a_bngap_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep")

    def fill(tmp: Path) -> None:
        raise PermissionError(13, "Permission denied", str(tmp))

    with pytest.raises(BngapError) as info:
        replace_atomic(target, fill)
    assert str(info.value) == f"cannot write {target}: permission denied"
    assert info.value.exit_status is ExitStatus.BAD_INPUT
    assert target.read_text() == "keep" and listing(tmp_path) == ["out.txt"]


def test_suffix_of_the_temporary(tmp_path):
    names = []
    replace_atomic(
        tmp_path / "model.keras", lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"k"))
    )
    replace_atomic(
        tmp_path / "model.h5",
        lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"h")),
        suffix=".tmp.h5",
    )
    # Keras picks the format from the suffix, so the temporary keeps it; and
    # it is a hidden file, so a half-written one is not mistaken for output.
    assert names[0].startswith(".") and names[0].endswith(".keras")
    assert names[1].startswith(".") and names[1].endswith(".tmp.h5")
    assert listing(tmp_path) == ["model.h5", "model.keras"]


def test_missing_folder_is_a_one_line_bngap_error(tmp_path):
    target = tmp_path / "no" / "such" / "report.json"
    with pytest.raises(BngapError) as info:
        write_atomic(target, "x")
    message = str(info.value)
    assert message == f"cannot write {target}: folder {target.parent} does not exist"
    assert "\n" not in message
    assert info.value.exit_status is ExitStatus.BAD_INPUT
    assert not (tmp_path / "no").exists()


def test_directory_target_is_a_one_line_bngap_error(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "inside.txt").write_text("untouched")
    with pytest.raises(BngapError) as info:
        write_atomic(folder, "x")
    assert str(info.value) == f"cannot write {folder}: it is a directory"
    assert "\n" not in str(info.value)
    assert listing(folder) == ["inside.txt"] and (folder / "inside.txt").read_text() == "untouched"
    assert listing(tmp_path) == ["reports"]


def test_file_in_place_of_the_folder_is_a_bngap_error(tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(BngapError, match="does not exist"):
        write_atomic(tmp_path / "plain" / "report.json", "x")


# ------------------------------------------------------------ known bugs

UNWRITABLE = Path("/sys")  # sysfs: no regular files can be created there, even by root


@pytest.mark.parametrize("case", ["unwritable folder", "name too long"])
def test_filesystem_refusals_are_bngap_errors(tmp_path, case):
    if case == "unwritable folder":
        if not sys.platform.startswith("linux") or not UNWRITABLE.is_dir():
            pytest.skip("needs Linux sysfs")
        target = UNWRITABLE / "bngap-report.json"
    else:
        target = tmp_path / ("r" * 300 + ".json")  # longer than any file system allows
    with pytest.raises(BngapError) as info:
        write_atomic(target, "x")
    assert str(info.value).startswith(f"cannot write {target}")
    assert "\n" not in str(info.value)


def test_long_but_legal_file_name(tmp_path):
    target = tmp_path / ("r" * 240 + ".json")  # 245 characters: legal on ext4/xfs/apfs (255)
    write_atomic(target, "x")
    assert target.read_text() == "x"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = write_atomic(tmp_path / "report.json", "x")
        kept = tmp_path / "shared.json"
        kept.write_text("old")
        kept.chmod(0o664)
        write_atomic(kept, "new")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        assert stat.S_IMODE(kept.stat().st_mode) == 0o664
    finally:
        os.umask(umask)


# ------------------------------------------------------------ report files


def test_plan_outputs_reads_the_format_from_the_extension(tmp_path):
    from bngap.writing import plan_outputs

    names = ["r.json", "r.MD", "r.html", "r.htm", "r.xml", "r.txt", "r.markdown", "r.log"]
    plan = plan_outputs(
        [tmp_path / n for n in names], ("json", "markdown", "html", "junit", "text"), default="json"
    )
    assert [f for _, f in plan] == [
        "json",
        "markdown",
        "html",
        "html",
        "junit",
        "text",
        "markdown",
        "json",
    ]


@pytest.mark.parametrize(
    "paths,message",
    [
        (["r.log"], "--output {d}/r.log: cannot write this extension here; use one of .json, .txt"),
        (["r.xml"], "--output {d}/r.xml: cannot write a junit report here; use one of .json, .txt"),
        (["r.json", "./r.json"], "--output {d}/./r.json is given twice"),
        (["model.keras.json"], "--output {d}/model.keras.json is one of the inputs"),
        (["missing/r.json"], "cannot write {d}/missing/r.json: folder {d}/missing does not exist"),
    ],
)
def test_plan_outputs_refuses_before_any_work(tmp_path, paths, message):
    from bngap.writing import plan_outputs

    with pytest.raises(BngapError) as e:
        plan_outputs(
            [f"{tmp_path}/{p}" for p in paths],
            ("json", "text"),
            inputs=(tmp_path / "model.keras.json", None),
        )
    assert str(e.value).startswith(message.format(d=tmp_path))
    assert listing(tmp_path) == []


def test_write_outputs_renders_everything_before_writing(tmp_path):
    from bngap.writing import plan_outputs, write_outputs

    calls = []

    def ok(subject):
        calls.append("json")
        return f"{subject}\n"

    def broken(subject):
        raise ZeroDivisionError("renderer bug")

    plan = plan_outputs(
        [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.txt"], ("json", "text")
    )
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(ZeroDivisionError):
        write_outputs("report", plan, {"json": ok, "text": broken})
    assert (tmp_path / "a.json").read_text() == "old" and listing(tmp_path) == [
        "a.json"
    ]  # nothing written
    written = write_outputs("report", plan, {"json": ok, "text": lambda s: "text\n"})
    assert written == [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.txt"]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text() == "report\n"
    assert calls == ["json", "json"]  # once per run and format, not once per file
