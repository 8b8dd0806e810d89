"""`bngap render`: a saved JSON report rendered again, without TensorFlow."""

from __future__ import annotations

import sys

import click

from ..console import errors_handled
from ..errors import ExitStatus
from ..render import FORMATS
from .options import (
    EPILOG,
    all_layers_option,
    format_option,
    outputs_option,
    quiet_option,
    traceback_option,
)
from .reporting import deliver


@click.command("render", epilog=EPILOG)
@click.argument("report_file", metavar="REPORT.json", type=click.Path(dir_okay=False))
@format_option(FORMATS, "Form to render the saved report in (on stdout).")
@outputs_option(
    "Write to FILE instead of stdout; repeatable; the format follows the extension "
    "(.json, .md, .html, .xml, .txt)."
)
@all_layers_option(
    "List every layer and every BN layer (the default when the check was run with it)."
)
@traceback_option()
@quiet_option()
def render(
    report_file: str,
    fmt: str,
    outputs: tuple[str, ...],
    all_layers: bool,
    show_traceback: bool,
    quiet: bool,
) -> None:
    """Re-render a JSON report that `bngap check` saved.

    Fast and without TensorFlow: for a later CI step, or to turn a bug
    report's JSON into HTML. The output is the one the check itself would
    have written in that format.
    """
    with errors_handled(show_traceback):
        from ..saved import read_report
        from ..writing import plan_outputs

        plan = plan_outputs(outputs, FORMATS, default=fmt, inputs=(report_file,))
        report = read_report(report_file)
        deliver(
            report,
            fmt,
            plan,
            all_layers=all_layers or report.settings.get("all_layers") is True,
            quiet=quiet,
        )
        sys.exit(int(ExitStatus.OK))
