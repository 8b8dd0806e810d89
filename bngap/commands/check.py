"""`bngap check`: measure, attribute and explain the train-vs-inference gap."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..console import ProgressDisplay, err, errors_handled
from ..errors import BngapError
from ..render import FORMATS
from .options import (
    EPILOG,
    RunFlags,
    all_layers_option,
    format_option,
    outputs_option,
    parse_effects,
    run_flags,
)
from .reporting import run_and_report

if TYPE_CHECKING:  # the pipeline is imported only when a check runs
    from ..pipeline import CheckOptions
    from ..results import Baseline, Report, Thresholds


@click.command("check", epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path(), metavar="DATA")
@format_option(
    FORMATS,
    "Report form on stdout: a terminal summary, JSON for scripts, Markdown for a bug "
    "report, a self-contained HTML page, or JUnit XML.",
)
@outputs_option(
    "Write the report to FILE (atomically) instead of stdout; repeat for several files. "
    "The format follows the extension: .json, .md, .html, .xml (JUnit), .txt; another "
    "extension gets --format."
)
@click.option(
    "--fail-above", type=float, help="Exit 1 when the output gap (relative L2) exceeds this value."
)
@click.option(
    "--fail-above-loss-delta",
    type=float,
    help="Exit 1 when inference loss minus training loss exceeds this (needs labels).",
)
@click.option(
    "--fail-above-accuracy-drop",
    type=float,
    help="Exit 1 when training accuracy minus inference accuracy exceeds this (needs labels).",
)
@click.option(
    "--warn-above",
    type=float,
    help="Verdict 'warn' (exit 0) when the output gap exceeds this value.",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    metavar="OLD.json",
    help="An earlier JSON report of the same model family: shown side by side with this run.",
)
@click.option(
    "--max-regression",
    type=float,
    help="With --baseline: exit 1 when the output gap grew by more than this (absolute).",
)
@click.option(
    "--no-github",
    is_flag=True,
    help="Under GitHub Actions (GITHUB_ACTIONS=true), do not add the job summary and annotations.",
)
@all_layers_option("List every layer and every BN layer, not only the flagged and top ones.")
@click.option(
    "--effects",
    default="auto",
    show_default=True,
    metavar="N|all|auto",
    callback=lambda ctx, param, value: parse_effects(value),
    help=(
        "Measure the output effect (only this layer in training mode) of the N mode-dependent "
        "layers with the largest own contribution; one extra training pass per layer and batch. "
        "auto: all of them when there are at most 8, else the strongest one."
    ),
)
@click.option(
    "--backends",
    metavar="all|LIST",
    help=(
        "Run the check on each Keras backend (all installed, or a comma list of tensorflow, jax, "
        "torch), each in a process of its own, and compare them side by side; the first is the "
        "reference."
    ),
)
@click.option(
    "--save-outputs", type=click.Path(dir_okay=False), hidden=True
)  # for --backends' processes
@run_flags
def check(
    model: str,
    data: tuple[str, ...],
    fmt: str,
    outputs: tuple[str, ...],
    fail_above: float | None,
    fail_above_loss_delta: float | None,
    fail_above_accuracy_drop: float | None,
    warn_above: float | None,
    baseline: str | None,
    max_regression: float | None,
    no_github: bool,
    all_layers: bool,
    effects: int | str | None,
    backends: str | None,
    save_outputs: str | None,
    flags: RunFlags,
) -> None:
    """Measure, attribute and explain the train-vs-inference gap.

    MODEL is a .keras or legacy .h5 file. DATA is an .npz (inputs under 'x',
    optional labels under 'y'), an .npy (inputs only), a folder of images
    (sub-folders as classes), a directory written by tf.data.Dataset.save,
    or several .npz/.npy shards (paths, or a quoted glob such as
    'shards/*.npz'), read in order as one data set. Large files are read
    batch by batch, never whole.

    The model file is never modified, and the model's variables are restored
    bit for bit after the training-mode passes.
    """
    progress = ProgressDisplay(enabled=not flags.quiet)
    with errors_handled(flags.show_traceback):
        from ..results import Thresholds
        from ..writing import plan_outputs

        gates = Thresholds(
            fail_above, fail_above_loss_delta, fail_above_accuracy_drop, warn_above, max_regression
        )
        _refuse_bad_gates(gates, baseline)
        opts = _check_options(flags, effects, gates, save_outputs)
        plan = plan_outputs(outputs, FORMATS, default=fmt, inputs=(model, *data, baseline))
        across = _parse_backends(backends)
        old = _read_baseline(baseline)
        report = run_and_report(
            model,
            data[0] if len(data) == 1 else list(data),
            opts,
            fmt=fmt,
            plan=plan,
            all_layers=all_layers,
            progress=progress,
            baseline=old,
            github=not no_github,
            across=across,
        )
        _warn_unapplied_gates(report, gates)
        sys.exit(int(report.exit_status))


def _refuse_bad_gates(gates: Thresholds, baseline: str | None) -> None:
    """Refuses a negative (or nan) threshold, and --max-regression without a
    baseline, before any work is done."""
    for name, value in (
        ("--fail-above", gates.output_gap),
        ("--fail-above-loss-delta", gates.loss_delta),
        ("--fail-above-accuracy-drop", gates.accuracy_drop),
        ("--warn-above", gates.warn_above),
        ("--max-regression", gates.max_regression),
    ):
        if value is not None and not value >= 0:  # also refuses nan, which nothing exceeds
            raise BngapError(f"{name} must be 0 or more. Received: {value}")
    if gates.max_regression is not None and baseline is None:
        raise BngapError("--max-regression needs --baseline OLD.json (the report to compare with)")


def _check_options(
    flags: RunFlags, effects: int | str | None, gates: Thresholds, save_outputs: str | None
) -> CheckOptions:
    from ..pipeline import CheckOptions

    return CheckOptions(
        batch_size=flags.batch_size,
        limit=flags.limit,
        seed=flags.seed,
        effects=effects,
        thresholds=gates,
        x_key=flags.x_key,
        y_key=flags.y_key,
        unsafe=flags.unsafe,
        custom_objects=flags.custom_objects,
        preprocess=flags.preprocess,
        backend=flags.backend,
        devices=flags.devices,
        save_outputs=save_outputs,
    )


def _parse_backends(backends: str | None) -> tuple[list[str], list[str]] | None:
    if backends is None:
        return None
    from ..crossbackend import parse_backends

    return parse_backends(backends)


def _read_baseline(baseline: str | None) -> Baseline | None:
    if baseline is None:
        return None
    from ..saved import read_baseline

    return read_baseline(baseline)


def _warn_unapplied_gates(report: Report, gates: Thresholds) -> None:
    """Says on stderr which loss or accuracy gates the report cannot judge
    (no labels, or no class output)."""
    if (gates.loss_delta is not None or gates.accuracy_drop is not None) and report.metrics is None:
        err("bngap: warning: loss/accuracy thresholds need labels; they were not applied")
    elif gates.accuracy_drop is not None and report.accuracy_drop is None:
        err(
            "bngap: warning: --fail-above-accuracy-drop needs a class output (no output "
            "has an accuracy); it was not applied"
        )
