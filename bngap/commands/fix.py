"""`bngap fix`: BN statistics re-estimated on data, verified, and saved in a copy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..console import ProgressDisplay, errors_handled
from ..errors import BngapError, ExitStatus
from .options import EPILOG, RunFlags, format_option, outputs_option, run_flags

if TYPE_CHECKING:  # recalibration (and Keras) are imported only when a fix runs
    from ..fixresult import FixResult
    from .reporting import Plan

FIX_FORMATS = ("json", "text", "html")  # what its reports can be, on stdout or in files


@click.command("fix", epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path(), metavar="DATA")
@outputs_option(
    "Where to write the fixed model (.keras or .h5); repeat with .json, .html or .txt "
    "files for reports of the fix.",
    "-o",
    "--output",
)
@click.option("--in-place", is_flag=True, help="Overwrite MODEL itself (atomically).")
@click.option(
    "--force",
    is_flag=True,
    help="Write even if the gap does not shrink, and replace an existing output.",
)
@click.option(
    "--layers",
    "layer_patterns",
    metavar="PATTERN",
    help="Only these BN layers: comma-separated paths or globs, e.g. 'resnet50/conv5_*'.",
)
@click.option("--skip-frozen", is_flag=True, help="Leave frozen (trainable=False) BN layers alone.")
@format_option(["text", "json", "html"], "Result form (stdout).")
@run_flags
def fix(
    model: str,
    data: tuple[str, ...],
    outputs: tuple[str, ...],
    in_place: bool,
    force: bool,
    layer_patterns: str | None,
    skip_frozen: bool,
    fmt: str,
    flags: RunFlags,
) -> None:
    """Re-estimate BatchNormalization statistics on DATA, verify, save a copy.

    Every BN layer's moving mean and variance become the exact population
    statistics of its input on DATA (in inference mode, layer by layer, so
    each layer sees inputs normalised by the already re-estimated layers
    upstream). No other weight changes. The gap is measured before and after;
    the fixed model is written (atomically, never over MODEL unless
    --in-place) only if the gap shrinks, unless --force. Use a few hundred
    representative samples.
    """
    progress = ProgressDisplay(enabled=not flags.quiet)
    with errors_handled(flags.show_traceback):
        from ..backend import select_backend
        from ..writing import plan_outputs

        select_backend(flags.backend)  # before Keras is imported
        output, reports = _split_outputs(outputs)
        plan = plan_outputs(reports, FIX_FORMATS, inputs=(model, *data, output))
        result = _run_fix(
            model,
            data[0] if len(data) == 1 else list(data),
            output=output,
            in_place=in_place,
            force=force,
            layers=layer_patterns,
            include_frozen=not skip_frozen,
            flags=flags,
            progress=progress,
        )
        _deliver_fix(result, fmt, plan, progress)
        sys.exit(int(ExitStatus.OK))


def _split_outputs(outputs: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """(the fixed model's file or None, the report files) of the -o options:
    report files are told from the model by their extension."""
    from ..writing import REPORT_EXTENSIONS

    reports = [o for o in outputs if Path(o).suffix.lower() in REPORT_EXTENSIONS]
    models = [o for o in outputs if o not in reports]
    if len(models) > 1:
        raise BngapError(f"one fixed model at a time; -o was given {', '.join(models)}")
    return (models[0] if models else None), reports


def _run_fix(
    model: str,
    data: Any,
    *,
    output: str | None,
    in_place: bool,
    force: bool,
    layers: str | None,
    include_frozen: bool,
    flags: RunFlags,
    progress: ProgressDisplay,
) -> FixResult:
    """recalibration.fix with the fix's own options and the run's flags; the
    progress display is closed however it ends."""
    from ..recalibration import fix as run_fix

    try:
        return run_fix(
            model,
            data,
            output=output,
            in_place=in_place,
            force=force,
            layers=layers,
            include_frozen=include_frozen,
            batch_size=flags.batch_size,
            limit=flags.limit,
            unsafe=flags.unsafe,
            custom_objects=flags.custom_objects,
            x_key=flags.x_key,
            y_key=flags.y_key,
            seed=flags.seed,
            preprocess=flags.preprocess,
            progress=progress,
            status=progress.status,
            devices=flags.devices,
        )
    finally:
        progress.close()


def _deliver_fix(result: FixResult, fmt: str, plan: Plan, progress: ProgressDisplay) -> None:
    """The fix's report to stdout in `fmt`, or to each planned file."""
    from ..render.fixing import fix_renderers

    renderers = fix_renderers()
    if not plan:
        click.echo(renderers[fmt](result), nl=False)
        return
    from ..writing import write_outputs

    for path in write_outputs(result, plan, renderers):
        progress.status(f"report written to {path}")
