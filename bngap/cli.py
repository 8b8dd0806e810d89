"""The `bngap` command line: a thin layer over `bngap.pipeline`.

Heavy imports (TensorFlow) happen inside the commands, so `--help` and
`--version` answer at once. Status and progress go to stderr; the report goes
to stdout or `--output`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ._version import __version__
from .console import CommandGroup, ProgressDisplay, err, errors_handled, terminal_width, use_color
from .errors import BngapError, ExitStatus
from .render import FORMATS

EPILOG = """\b
Exit codes: 0 ran (verdict pass, or warn above --warn-above), 1 a fail gate
(--fail-above*, --max-regression) was exceeded, 2 bad input or usage, 3
internal failure.
"""


def _parse_effects(value: str) -> int | str | None:
    if value.lower() == "all":
        return None
    if value.lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a number, 'all' or 'auto'. Received: {value!r}"
        ) from None
    if n < 0:
        raise click.BadParameter(f"must be 0 or more. Received: {n}")
    return n


loading_options = [
    click.option(
        "--unsafe",
        is_flag=True,
        help="Allow loading models that contain Python code (Lambda layers). Only for files you trust.",
    ),
    click.option(
        "--custom-objects",
        "custom_objects",
        type=click.Path(dir_okay=False),
        help="A trusted Python file that defines the model's custom layers or functions.",
    ),
    click.option("--x-key", help="Key of the inputs in an .npz file (default: x)."),
    click.option("--y-key", help="Key of the labels in an .npz file (default: y, if present)."),
    click.option(
        "--batch-size",
        type=int,
        default=32,
        show_default=True,
        help="Batch size of the training-mode passes (BN statistics depend on it; fit() uses 32).",
    ),
    click.option("--limit", type=int, help="Use only the first N samples."),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed for dropout, noise and augmentation.",
    ),
    click.option("--preprocess", help="For image folders: caffe, tf, torch, or scale=FACTOR."),
    click.option(
        "--backend",
        type=click.Choice(["tensorflow", "jax", "torch"]),
        default=None,
        help="Keras backend to run the model on (default: KERAS_BACKEND if set, else tensorflow).",
    ),
    click.option(
        "--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."
    ),
    click.option("-q", "--quiet", is_flag=True, help="No status or progress lines on stderr."),
]


def _add(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


@click.group(
    cls=CommandGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "--version", prog_name="bngap")
def main():
    """bngap: why does my Keras model score well in fit() and badly in
    evaluate() on the same data?

    It runs your data through the model in training mode (as fit() does) and
    in inference mode (as evaluate() and predict() do), measures the gap,
    finds the layers that open it, audits every BatchNormalization layer's
    moving statistics against your data, and says what is wrong and how to
    fix it.

    \b
    Start with:   bngap demo
    Then:         bngap check model.keras data.npz
    """


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path(), metavar="DATA")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help=(
        "Report form on stdout: a terminal summary, JSON for scripts, Markdown for a bug "
        "report, a self-contained HTML page, or JUnit XML."
    ),
)
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=(
        "Write the report to FILE (atomically) instead of stdout; repeat for several files. "
        "The format follows the extension: .json, .md, .html, .xml (JUnit), .txt; another "
        "extension gets --format."
    ),
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
@click.option(
    "--all-layers",
    is_flag=True,
    help="List every layer and every BN layer, not only the flagged and top ones.",
)
@click.option(
    "--effects",
    default="auto",
    show_default=True,
    metavar="N|all|auto",
    callback=lambda ctx, param, value: _parse_effects(value),
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
@_add(loading_options)
def check(
    model,
    data,
    fmt,
    outputs,
    fail_above,
    fail_above_loss_delta,
    fail_above_accuracy_drop,
    warn_above,
    baseline,
    max_regression,
    no_github,
    all_layers,
    effects,
    backends,
    save_outputs,
    unsafe,
    custom_objects,
    x_key,
    y_key,
    batch_size,
    limit,
    seed,
    preprocess,
    backend,
    show_traceback,
    quiet,
):
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
    progress = ProgressDisplay(enabled=not quiet)
    data, shards = (data[0], ()) if len(data) == 1 else (list(data), data)
    with errors_handled(show_traceback):
        from .pipeline import CheckOptions
        from .render import FORMATS
        from .results import Thresholds
        from .writing import plan_outputs

        for name, value in (
            ("--fail-above", fail_above),
            ("--fail-above-loss-delta", fail_above_loss_delta),
            ("--fail-above-accuracy-drop", fail_above_accuracy_drop),
            ("--warn-above", warn_above),
            ("--max-regression", max_regression),
        ):
            if value is not None and not value >= 0:  # also refuses nan, which nothing exceeds
                raise BngapError(f"{name} must be 0 or more. Received: {value}")
        if max_regression is not None and baseline is None:
            raise BngapError(
                "--max-regression needs --baseline OLD.json (the report to compare with)"
            )
        opts = CheckOptions(
            batch_size=batch_size,
            limit=limit,
            seed=seed,
            effects=effects,
            thresholds=Thresholds(
                fail_above,
                fail_above_loss_delta,
                fail_above_accuracy_drop,
                warn_above,
                max_regression,
            ),
            x_key=x_key,
            y_key=y_key,
            unsafe=unsafe,
            custom_objects=custom_objects,
            preprocess=preprocess,
            backend=backend,
            save_outputs=save_outputs,
        )
        plan = plan_outputs(
            outputs, FORMATS, default=fmt, inputs=(model, *(shards or (data,)), baseline)
        )
        across = None
        if backends is not None:
            from .crossbackend import parse_backends

            across = parse_backends(backends)
        old = None
        if baseline is not None:
            from .saved import read_baseline

            old = read_baseline(baseline)
        report = _run_and_render(
            model,
            data,
            opts,
            fmt=fmt,
            plan=plan,
            all_layers=all_layers,
            progress=progress,
            baseline=old,
            github=not no_github,
            across=across,
        )
        if (
            fail_above_loss_delta is not None or fail_above_accuracy_drop is not None
        ) and report.metrics is None:
            err("bngap: warning: loss/accuracy thresholds need labels; they were not applied")
        elif fail_above_accuracy_drop is not None and report.accuracy_drop is None:
            err(
                "bngap: warning: --fail-above-accuracy-drop needs a class output (no output "
                "has an accuracy); it was not applied"
            )
        sys.exit(int(report.exit_status))


def _run_and_render(
    model,
    data,
    opts,
    *,
    fmt: str,
    plan,
    all_layers: bool,
    progress: ProgressDisplay,
    baseline=None,
    github: bool = False,
    across: tuple[list[str], list[str]] | None = None,
):
    """Runs a check (on each backend of `across`: (backends, notes)) and
    writes its report (stdout, or each planned file); returns the Report.
    Every output is rendered from the report's JSON form, so `bngap render
    r.json` reproduces any of them."""
    import dataclasses

    from .pipeline import check as run_check
    from .results import Report

    try:
        if across is not None:
            from .crossbackend import check_across

            report = check_across(
                model,
                data,
                opts,
                across[0],
                notes=across[1],
                progress=progress,
                status=progress.status,
            )
        else:
            report = run_check(model, data, options=opts, progress=progress, status=progress.status)
    finally:
        progress.close()
    # --all-layers is kept in the report, so that `bngap render` repeats it
    settings = {**report.settings, "all_layers": all_layers}
    report = Report.from_dict(
        dataclasses.replace(report, baseline=baseline, settings=settings).to_dict()
    )
    _deliver(report, fmt, plan, all_layers=all_layers, quiet=not progress.enabled)
    if progress.enabled and (fmt != "text" or plan):
        from .render.common import headline

        err(f"bngap: {headline(report)}")
    if github and os.environ.get("GITHUB_ACTIONS") == "true":
        _github_actions(report, stdout_free=bool(plan), all_layers=all_layers)
    return report


def _deliver(report, fmt: str, plan, *, all_layers: bool, quiet: bool) -> None:
    """The report to stdout in `fmt`, or to each (path, format) of `plan`."""
    from .render import file_renderers, render

    if not plan:
        click.echo(
            render(
                report,
                fmt,
                all_layers=all_layers,
                width=terminal_width(),
                color=fmt == "text" and use_color(sys.stdout),
            ),
            nl=False,
        )
        return
    from .writing import write_outputs

    for path in write_outputs(report, plan, file_renderers(all_layers=all_layers)):
        if not quiet:
            err(f"bngap: report written to {path}")


def _github_actions(report, *, stdout_free: bool, all_layers: bool) -> None:
    """Under GitHub Actions: the Markdown report appended to the job summary,
    and an annotation per failing or warning gate and finding (on stdout
    when the report went to files, else on stderr; the runner reads both)."""
    from .render import render
    from .render.github import annotations as github_annotations

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(render(report, "markdown", all_layers=all_layers) + "\n")
        except OSError as e:
            err(
                f"bngap: warning: cannot append to GITHUB_STEP_SUMMARY {summary}: {e.strerror or e}"
            )
    for line in github_annotations(report):
        click.echo(line, err=not stdout_free)


@main.command(epilog=EPILOG)
@click.argument("report_file", metavar="REPORT.json", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Form to render the saved report in (on stdout).",
)
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=(
        "Write to FILE instead of stdout; repeatable; the format follows the extension "
        "(.json, .md, .html, .xml, .txt)."
    ),
)
@click.option(
    "--all-layers",
    is_flag=True,
    help="List every layer and every BN layer (the default when the check was run with it).",
)
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."
)
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr.")
def render(report_file, fmt, outputs, all_layers, show_traceback, quiet):
    """Re-render a JSON report that `bngap check` saved.

    Fast and without TensorFlow: for a later CI step, or to turn a bug
    report's JSON into HTML. The output is the one the check itself would
    have written in that format.
    """
    with errors_handled(show_traceback):
        from .render import FORMATS
        from .saved import read_report
        from .writing import plan_outputs

        plan = plan_outputs(outputs, FORMATS, default=fmt, inputs=(report_file,))
        report = read_report(report_file)
        _deliver(
            report,
            fmt,
            plan,
            all_layers=all_layers or report.settings.get("all_layers") is True,
            quiet=quiet,
        )
        sys.exit(int(ExitStatus.OK))


@main.command(epilog=EPILOG)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for the demo's model.keras and data.npz (default: a new temporary folder).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="Report form.",
)
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."
)
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr.")
def demo(out, fmt, show_traceback, quiet):
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

        from .demo import write_demo
        from .pipeline import CheckOptions

        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="bngap-demo-"))
        progress.status(f"training the demo model in {folder} (a few seconds)")
        mpath, dpath = write_demo(folder)
        _run_and_render(
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


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path(), metavar="DATA")
@click.option(
    "-o",
    "--output",
    "outputs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=(
        "Where to write the fixed model (.keras or .h5); repeat with .json, .html or .txt "
        "files for reports of the fix."
    ),
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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "html"]),
    default="text",
    show_default=True,
    help="Result form (stdout).",
)
@_add(loading_options)
def fix(
    model,
    data,
    outputs,
    in_place,
    force,
    layer_patterns,
    skip_frozen,
    fmt,
    unsafe,
    custom_objects,
    x_key,
    y_key,
    batch_size,
    limit,
    seed,
    preprocess,
    backend,
    show_traceback,
    quiet,
):
    """Re-estimate BatchNormalization statistics on DATA, verify, save a copy.

    Every BN layer's moving mean and variance become the exact population
    statistics of its input on DATA (in inference mode, layer by layer, so
    each layer sees inputs normalised by the already re-estimated layers
    upstream). No other weight changes. The gap is measured before and after;
    the fixed model is written (atomically, never over MODEL unless
    --in-place) only if the gap shrinks, unless --force. Use a few hundred
    representative samples.
    """
    progress = ProgressDisplay(enabled=not quiet)
    paths, data = data, (data[0] if len(data) == 1 else list(data))
    with errors_handled(show_traceback):
        from .backend import select_backend
        from .recalibration import fix as run_fix
        from .writing import REPORT_EXTENSIONS, plan_outputs

        select_backend(backend)  # before Keras is imported
        # Report files are told from the fixed model by their extension.
        reports = [o for o in outputs if Path(o).suffix.lower() in REPORT_EXTENSIONS]
        models = [o for o in outputs if o not in reports]
        if len(models) > 1:
            raise BngapError(f"one fixed model at a time; -o was given {', '.join(models)}")
        output = models[0] if models else None
        plan = plan_outputs(reports, tuple(FIX_RENDERERS), inputs=(model, *paths, output))
        try:
            result = run_fix(
                model,
                data,
                output=output,
                in_place=in_place,
                force=force,
                layers=layer_patterns,
                include_frozen=not skip_frozen,
                batch_size=batch_size,
                limit=limit,
                unsafe=unsafe,
                custom_objects=custom_objects,
                x_key=x_key,
                y_key=y_key,
                seed=seed,
                preprocess=preprocess,
                progress=progress,
                status=progress.status,
            )
        finally:
            progress.close()
        if plan:
            from .writing import write_outputs

            for path in write_outputs(result, plan, FIX_RENDERERS):
                progress.status(f"report written to {path}")
        else:
            click.echo(FIX_RENDERERS[fmt](result), nl=False)
        sys.exit(int(ExitStatus.OK))


def _fix_json(result) -> str:
    from .render.fixing import render_fix_result

    return render_fix_result(result, "json")


def _fix_text(result) -> str:
    from .render.fixing import render_fix

    return render_fix(result)


def _fix_html(result) -> str:
    from .render.fixing import render_fix_html

    return render_fix_html(result)


FIX_RENDERERS = {"json": _fix_json, "text": _fix_text, "html": _fix_html}


@main.command(
    epilog="""\b
Exit codes: 0 no finding at the --fail-on severity, 1 at least one, 2 bad
input or usage, 3 internal failure.
"""
)
@click.argument("model", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="Report form.",
)
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help=(
        "Write the report to FILE (atomically) instead of stdout; repeatable. The format "
        "follows the extension: .json, .md, .txt; another extension gets --format."
    ),
)
@click.option(
    "--fail-on",
    type=click.Choice(["warn", "fail"]),
    default="fail",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
@click.option("--all-layers", is_flag=True, help="List every BN layer in the text report.")
@click.option(
    "--unsafe",
    is_flag=True,
    help="Allow loading models that contain Python code (Lambda layers). Only for files you trust.",
)
@click.option(
    "--custom-objects",
    "custom_objects",
    type=click.Path(dir_okay=False),
    help="A trusted Python file that defines the model's custom layers or functions.",
)
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."
)
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr.")
def lint(model, fmt, outputs, fail_on, all_layers, unsafe, custom_objects, show_traceback, quiet):
    """Check the model file for BatchNormalization defects, without data.

    Reads MODEL (safely, as check does) and reports never-updated
    statistics, momentum in PyTorch's convention or 1.0, bad variances, too
    small an epsilon, a BN axis that is not the channel axis, renorm without
    clipping, trainable BN layers in a frozen base, a call() without
    `training`, and layers that make a gap by design. Changes nothing.
    """
    progress = ProgressDisplay(enabled=not quiet)
    with errors_handled(show_traceback):
        from .linting import lint as run_lint
        from .render.lint import lint_headline, render_lint
        from .writing import plan_outputs, write_outputs

        formats = ("text", "json", "markdown")
        plan = plan_outputs(outputs, formats, default=fmt, inputs=(model,))
        progress.status(f"loading model {model}")
        report = run_lint(model, fail_on=fail_on, unsafe=unsafe, custom_objects=custom_objects)
        if plan:
            renderers = {
                f: (lambda r, f=f: render_lint(r, f, all_layers=all_layers)) for f in formats
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


if __name__ == "__main__":  # pragma: no cover
    main()
