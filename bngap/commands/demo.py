"""`bngap demo`: a small model with a real gap, built, saved and checked."""

from __future__ import annotations

import sys

import click

from ..console import ProgressDisplay, errors_handled
from ..errors import ExitStatus
from .options import EPILOG, format_option, quiet_option, traceback_option
from .reporting import run_and_report


@click.command("demo", epilog=EPILOG)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for the demo's model.keras and data.npz (default: a new temporary folder).",
)
@format_option(["text", "json", "markdown"], "Report form.")
@traceback_option()
@quiet_option()
def demo(out: str | None, fmt: str, show_traceback: bool, quiet: bool) -> None:
    """Build a small model with a real gap and check it.

    A CNN with BatchNormalization is trained for a few steps on 48 small
    images, reaching 100% accuracy in fit() and chance on the same images in
    evaluate(): the classic report. Its model and data are saved so that you
    can run `bngap check` on them yourself. Takes a few seconds.
    """
    progress = ProgressDisplay(enabled=not quiet)
    with errors_handled(show_traceback):
        import tempfile
        from pathlib import Path

        from ..demo import write_demo
        from ..pipeline import CheckOptions

        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="bngap-demo-"))
        progress.status(f"training the demo model in {folder} (a few seconds)")
        mpath, dpath = write_demo(folder)
        run_and_report(
            str(mpath),
            str(dpath),
            CheckOptions(),
            fmt=fmt,
            plan=[],
            all_layers=False,
            progress=progress,
        )
        if fmt == "text":
            click.echo(
                f"Demo files: {mpath} and {dpath}\nRun it yourself: bngap check {mpath} {dpath}"
            )
        sys.exit(int(ExitStatus.OK))
