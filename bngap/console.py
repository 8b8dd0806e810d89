"""The command line's plumbing: status and progress on stderr, the
terminal's width and colour, and the one place where exceptions and usage
errors become exit codes (`error: ...` on one line)."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback as tb
from typing import TYPE_CHECKING

import click

from .errors import BngapError, ExitStatus, one_line

if TYPE_CHECKING:  # rich's progress bar is imported only when one is shown
    from rich.progress import Progress, TaskID


def err(msg: str) -> None:
    click.echo(msg, err=True)


def use_color(stream) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("CI"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def terminal_width() -> int:
    try:
        return max(60, min(os.get_terminal_size(sys.stdout.fileno()).columns, 160))
    except (OSError, ValueError, AttributeError):
        return 100


@contextlib.contextmanager
def errors_handled(show_traceback: bool):
    """The one place where exceptions become exit codes."""
    try:
        yield
    except BngapError as e:
        if show_traceback:
            tb.print_exc()
        err(f"error: {one_line(e)}")
        sys.exit(int(e.exit_status))
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        err("error: interrupted")
        sys.exit(130)
    except Exception as e:  # a bug in bngap (or Keras): say so, exit 3
        if show_traceback:
            tb.print_exc()
        err(
            f"internal error: {type(e).__name__}: {one_line(e, 300)}"
            + ("" if show_traceback else " (rerun with --traceback for details)")
        )
        sys.exit(int(ExitStatus.INTERNAL_ERROR))


class ProgressDisplay:
    """A progress bar on a terminal, a few plain lines in a log."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_pct = 0

    def status(self, line: str) -> None:
        if self.enabled:
            err(f"bngap: {line}")

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or total <= 2:
            return
        if self.tty:
            if self.bar is None:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total} passes"),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task(label, total=total)
            assert self.task is not None  # set together with the bar
            self.bar.update(self.task, completed=done, description=label)
        else:
            pct = int(100 * done / total)
            if pct // 25 > self.last_pct // 25:
                self.last_pct = pct
                err(f"bngap: {label} ({done} of {total} passes)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class CommandGroup(click.Group):
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
            err(f"error: {one_line(e.format_message())}{where}")
            sys.exit(int(ExitStatus.BAD_INPUT))
        except click.ClickException as e:  # any other refusal of the command line is usage
            err(f"error: {one_line(e.format_message())}")
            sys.exit(int(ExitStatus.BAD_INPUT))
        except click.Abort:
            err("error: aborted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)
