"""The `bngap` command line: a thin layer over `bngap.pipeline`.

Heavy imports (TensorFlow) happen inside the commands, so `--help` and
`--version` answer at once. Status and progress go to stderr; the report goes
to stdout or `--output`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback as tb

import click

from ._version import __version__
from .errors import BngapError, ExitStatus, one_line

EPILOG = """\b
Exit codes: 0 ran (no threshold exceeded), 1 a --fail-above threshold was
exceeded, 2 bad input or usage, 3 internal failure.
"""


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _use_color(stream) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("CI"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def _terminal_width() -> int:
    try:
        return max(60, min(os.get_terminal_size(sys.stdout.fileno()).columns, 160))
    except (OSError, ValueError, AttributeError):
        return 100


@contextlib.contextmanager
def _errors_handled(show_traceback: bool):
    """The one place where exceptions become exit codes."""
    try:
        yield
    except BngapError as e:
        if show_traceback:
            tb.print_exc()
        _err(f"error: {one_line(e)}")
        sys.exit(int(e.exit_status))
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        _err("error: interrupted")
        sys.exit(130)
    except Exception as e:  # a bug in bngap (or Keras): say so, exit 3
        if show_traceback:
            tb.print_exc()
        _err(f"internal error: {type(e).__name__}: {one_line(e, 300)}"
             + ("" if show_traceback else " (rerun with --traceback for details)"))
        sys.exit(int(ExitStatus.INTERNAL_ERROR))


class _Progress:
    """A progress bar on a terminal, a few plain lines in a log."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.task = None
        self.last_pct = 0

    def status(self, line: str) -> None:
        if self.enabled:
            _err(f"bngap: {line}")

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or total <= 2:
            return
        if self.tty:
            if self.bar is None:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total} passes"),
                                    TimeRemainingColumn(), console=Console(stderr=True),
                                    transient=True)
                self.bar.start()
                self.task = self.bar.add_task(label, total=total)
            self.bar.update(self.task, completed=done, description=label)
        else:
            pct = int(100 * done / total)
            if pct // 25 > self.last_pct // 25:
                self.last_pct = pct
                _err(f"bngap: {label} ({done} of {total} passes)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _parse_effects(value: str) -> int | str | None:
    if value.lower() == "all":
        return None
    if value.lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number, 'all' or 'auto'. Received: {value!r}") from None
    if n < 0:
        raise click.BadParameter(f"must be 0 or more. Received: {n}")
    return n


def _emit(text: str, output: str | None, quiet: bool = False) -> None:
    if output:
        from .writing import write_atomic

        write_atomic(output, text)
        if not quiet:
            _err(f"bngap: report written to {output}")
    else:
        click.echo(text, nl=False)


def _check_output_path(output: str | None, *inputs: str) -> None:
    """Refuses, before any work, a report path that would replace an input
    or that cannot be written."""
    if not output:
        return
    from pathlib import Path

    out = Path(output).resolve()
    for given in inputs:
        if Path(given).resolve() == out:
            raise BngapError(f"--output {output} is one of the inputs; choose another file for the report")
    folder = out.parent
    if not folder.is_dir():
        raise BngapError(f"cannot write {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise BngapError(f"cannot write {output}: permission denied")


loading_options = [
    click.option("--unsafe", is_flag=True,
                 help="Allow loading models that contain Python code (Lambda layers). Only for files you trust."),
    click.option("--custom-objects", "custom_objects", type=click.Path(dir_okay=False),
                 help="A trusted Python file that defines the model's custom layers or functions."),
    click.option("--x-key", help="Key of the inputs in an .npz file (default: x)."),
    click.option("--y-key", help="Key of the labels in an .npz file (default: y, if present)."),
    click.option("--batch-size", type=int, default=32, show_default=True,
                 help="Batch size of the training-mode passes (BN statistics depend on it; fit() uses 32)."),
    click.option("--limit", type=int, help="Use only the first N samples."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for dropout, noise and augmentation."),
    click.option("--preprocess", help="For image folders: caffe, tf, torch, or scale=FACTOR."),
    click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."),
    click.option("-q", "--quiet", is_flag=True, help="No status or progress lines on stderr."),
]


def _add(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


class _Group(click.Group):
    """A click group whose usage errors are one line, `error: ...`, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare `bngap`: the help, not an error
            click.echo(e.ctx.get_help())
            sys.exit(int(ExitStatus.OK))
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _err(f"error: {one_line(e.format_message())}{where}")
            sys.exit(int(ExitStatus.BAD_INPUT))
        except click.ClickException as e:  # any other refusal of the command line is usage
            _err(f"error: {one_line(e.format_message())}")
            sys.exit(int(ExitStatus.BAD_INPUT))
        except click.Abort:
            _err("error: aborted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.argument("data", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="Report form: a terminal summary, JSON for scripts, or Markdown for a bug report.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to FILE (atomically) instead of stdout.")
@click.option("--fail-above", type=float, help="Exit 1 when the output gap (relative L2) exceeds this value.")
@click.option("--fail-above-loss-delta", type=float, help="Exit 1 when inference loss minus training loss exceeds this (needs labels).")
@click.option("--fail-above-accuracy-drop", type=float, help="Exit 1 when training accuracy minus inference accuracy exceeds this (needs labels).")
@click.option("--all-layers", is_flag=True, help="List every layer and every BN layer, not only the flagged and top ones.")
@click.option("--effects", default="auto", show_default=True, metavar="N|all|auto",
              callback=lambda ctx, param, value: _parse_effects(value),
              help="Measure the output effect (only this layer in training mode) of the N mode-dependent layers with the largest own contribution; one extra training pass per layer and batch. auto: all of them when there are at most 8, else the strongest one.")
@click.option("--backends", metavar="all|LIST",
              help="Run the check on each Keras backend (all installed, or a comma list of tensorflow, jax, torch), each in a process of its own, and compare them side by side; the first is the reference.")
@click.option("--save-outputs", type=click.Path(dir_okay=False), hidden=True)  # for --backends' processes
@_add(loading_options)
def check(model, data, fmt, output, fail_above, fail_above_loss_delta, fail_above_accuracy_drop,
          all_layers, effects, backends, save_outputs, unsafe, custom_objects, x_key, y_key, batch_size,
          limit, seed, preprocess, show_traceback, quiet):
    """Measure, attribute and explain the train-vs-inference gap.

    MODEL is a .keras or legacy .h5 file. DATA is an .npz (inputs under 'x',
    optional labels under 'y'), an .npy (inputs only) or a folder of images
    (sub-folders as classes).

    The model file is never modified, and the model's variables are restored
    bit for bit after the training-mode passes.
    """
    progress = _Progress(enabled=not quiet)
    with _errors_handled(show_traceback):
        from .pipeline import CheckOptions
        from .results import Thresholds

        for name, value in (("--fail-above", fail_above), ("--fail-above-loss-delta", fail_above_loss_delta),
                            ("--fail-above-accuracy-drop", fail_above_accuracy_drop)):
            if value is not None and not value >= 0:  # also refuses nan, which nothing exceeds
                raise BngapError(f"{name} must be 0 or more. Received: {value}")
        opts = CheckOptions(
            batch_size=batch_size, limit=limit, seed=seed, effects=effects,
            thresholds=Thresholds(fail_above, fail_above_loss_delta, fail_above_accuracy_drop),
            x_key=x_key, y_key=y_key, unsafe=unsafe, custom_objects=custom_objects,
            preprocess=preprocess, save_outputs=save_outputs,
        )
        _check_output_path(output, model, data)
        across = None
        if backends is not None:
            from .crossbackend import parse_backends

            across = parse_backends(backends)
        report = _run_and_render(model, data, opts, fmt=fmt, output=output,
                                 all_layers=all_layers, progress=progress, across=across)
        if (fail_above_loss_delta is not None or fail_above_accuracy_drop is not None) and report.metrics is None:
            _err("bngap: warning: loss/accuracy thresholds need labels; they were not applied")
        sys.exit(int(report.exit_status))


def _run_and_render(model, data, opts, *, fmt: str, output: str | None, all_layers: bool,
                    progress: "_Progress", across: tuple[list[str], list[str]] | None = None):
    """Runs a check (on each backend of `across`: (backends, notes)) and
    writes its report; returns the Report."""
    from .pipeline import check as run_check
    from .render import render

    try:
        if across is not None:
            from .crossbackend import check_across

            report = check_across(model, data, opts, across[0], notes=across[1], progress=progress,
                                  status=progress.status)
        else:
            report = run_check(model, data, options=opts, progress=progress, status=progress.status)
    finally:
        progress.close()
    text = render(report, fmt, all_layers=all_layers, width=_terminal_width() if not output else 100,
                  color=fmt == "text" and not output and _use_color(sys.stdout))
    _emit(text, output, quiet=not progress.enabled)
    if progress.enabled and fmt != "text":
        from .render.common import headline

        _err(f"bngap: {headline(report)}")
    return report


@main.command(epilog=EPILOG)
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the demo's model.keras and data.npz (default: a new temporary folder).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="Report form.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No status lines on stderr.")
def demo(out, fmt, show_traceback, quiet):
    """Build a small model with a real gap and check it.

    A CNN with BatchNormalization is trained for a few steps on 48 small
    images, reaching 100% accuracy in fit() and chance on the same images in
    evaluate(): the classic report. Its model and data are saved so that you
    can run `bngap check` on them yourself. Takes a few seconds.
    """
    progress = _Progress(enabled=not quiet)
    with _errors_handled(show_traceback):
        import tempfile
        from pathlib import Path

        from .demo import write_demo
        from .pipeline import CheckOptions

        folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="bngap-demo-"))
        progress.status(f"training the demo model in {folder} (a few seconds)")
        mpath, dpath = write_demo(folder)
        _run_and_render(str(mpath), str(dpath), CheckOptions(), fmt=fmt, output=None,
                        all_layers=False, progress=progress)
        if fmt == "text":
            click.echo(f"Demo files: {mpath} and {dpath}\n"
                       f"Run it yourself: bngap check {mpath} {dpath}")
        sys.exit(int(ExitStatus.OK))


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the fixed model (.keras or .h5).")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL itself (atomically).")
@click.option("--force", is_flag=True, help="Write even if the gap does not shrink, and replace an existing output.")
@click.option("--layers", "layer_patterns", metavar="PATTERN", help="Only these BN layers: comma-separated paths or globs, e.g. 'resnet50/conv5_*'.")
@click.option("--skip-frozen", is_flag=True, help="Leave frozen (trainable=False) BN layers alone.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Result form.")
@_add(loading_options)
def fix(model, data, output, in_place, force, layer_patterns, skip_frozen, fmt, unsafe, custom_objects,
        x_key, y_key, batch_size, limit, seed, preprocess, show_traceback, quiet):
    """Re-estimate BatchNormalization statistics on DATA, verify, save a copy.

    Every BN layer's moving mean and variance become the exact population
    statistics of its input on DATA (in inference mode, layer by layer, so
    each layer sees inputs normalised by the already re-estimated layers
    upstream). No other weight changes. The gap is measured before and after;
    the fixed model is written (atomically, never over MODEL unless
    --in-place) only if the gap shrinks, unless --force. Use a few hundred
    representative samples.
    """
    progress = _Progress(enabled=not quiet)
    with _errors_handled(show_traceback):
        from .recalibration import fix as run_fix

        try:
            result = run_fix(model, data, output=output, in_place=in_place, force=force,
                             layers=layer_patterns, include_frozen=not skip_frozen,
                             batch_size=batch_size, limit=limit, unsafe=unsafe,
                             custom_objects=custom_objects, x_key=x_key, y_key=y_key, seed=seed,
                             preprocess=preprocess, progress=progress, status=progress.status)
        finally:
            progress.close()
        if fmt == "json":
            import json

            click.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        else:
            from .render.fixing import render_fix

            click.echo(render_fix(result), nl=False)
        sys.exit(int(ExitStatus.OK))


def run() -> None:  # pragma: no cover - console entry point
    main()


if __name__ == "__main__":  # pragma: no cover
    main()
