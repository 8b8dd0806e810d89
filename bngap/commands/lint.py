"""`bngap lint`: the model file checked for BatchNormalization defects, without data."""

from __future__ import annotations

import sys

import click

from ..console import ProgressDisplay, err, errors_handled, terminal_width
from .options import (
    all_layers_option,
    custom_objects_option,
    format_option,
    outputs_option,
    quiet_option,
    traceback_option,
    unsafe_option,
)

LINT_FORMATS = ("text", "json", "markdown")


@click.command(
    "lint",
    epilog="""\b
Exit codes: 0 no finding at the --fail-on severity, 1 at least one, 2 bad
input or usage, 3 internal failure.
""",
)
@click.argument("model", type=click.Path())
@format_option(LINT_FORMATS, "Report form.")
@outputs_option(
    "Write the report to FILE (atomically) instead of stdout; repeatable. The format "
    "follows the extension: .json, .md, .txt; another extension gets --format."
)
@click.option(
    "--fail-on",
    type=click.Choice(["warn", "fail"]),
    default="fail",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
@all_layers_option("List every BN layer in the text report.")
@unsafe_option()
@custom_objects_option()
@traceback_option()
@quiet_option()
def lint(
    model: str,
    fmt: str,
    outputs: tuple[str, ...],
    fail_on: str,
    all_layers: bool,
    unsafe: bool,
    custom_objects: str | None,
    show_traceback: bool,
    quiet: bool,
) -> None:
    """Check the model file for BatchNormalization defects, without data.

    Reads MODEL (safely, as check does) and reports never-updated
    statistics, momentum in PyTorch's convention or 1.0, bad variances, too
    small an epsilon, a BN axis that is not the channel axis, renorm without
    clipping, trainable BN layers in a frozen base, a call() without
    `training`, and layers that make a gap by design. Changes nothing.
    """
    progress = ProgressDisplay(enabled=not quiet)
    with errors_handled(show_traceback):
        from ..linting import lint as run_lint
        from ..render.lint import lint_headline, render_lint
        from ..writing import plan_outputs, write_outputs

        plan = plan_outputs(outputs, LINT_FORMATS, default=fmt, inputs=(model,))
        progress.status(f"loading model {model}")
        report = run_lint(model, fail_on=fail_on, unsafe=unsafe, custom_objects=custom_objects)
        if plan:
            renderers = {
                f: (lambda r, f=f: render_lint(r, f, all_layers=all_layers)) for f in LINT_FORMATS
            }
            for path in write_outputs(report, plan, renderers):
                progress.status(f"report written to {path}")
        else:
            click.echo(
                render_lint(report, fmt, width=terminal_width(), all_layers=all_layers), nl=False
            )
        if progress.enabled and (fmt != "text" or plan):
            err(f"bngap: {lint_headline(report)}")
        sys.exit(int(report.exit_status))
