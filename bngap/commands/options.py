"""The options several commands share, declared once (`RunFlags` for check and fix)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import click

EPILOG = """\b
Exit codes: 0 ran (verdict pass, or warn above --warn-above), 1 a fail gate
(--fail-above*, --max-regression) was exceeded, 2 bad input or usage, 3
internal failure.
"""

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The options check and fix share: how to load the model and data, the
    passes' batch size, seed and backend, and the console (traceback, quiet)."""

    unsafe: bool
    custom_objects: str | None
    x_key: str | None
    y_key: str | None
    batch_size: int
    limit: int | None
    seed: int
    preprocess: str | None
    backend: str | None
    devices: int | None
    show_traceback: bool
    quiet: bool


def unsafe_option() -> Decorator:
    return click.option(
        "--unsafe",
        is_flag=True,
        help="Allow loading models that contain Python code (Lambda layers). Only for files you trust.",
    )


def custom_objects_option() -> Decorator:
    return click.option(
        "--custom-objects",
        "custom_objects",
        type=click.Path(dir_okay=False),
        help="A trusted Python file that defines the model's custom layers or functions.",
    )


def traceback_option() -> Decorator:
    return click.option(
        "--traceback", "show_traceback", is_flag=True, help="Show the full traceback on errors."
    )


def quiet_option(help: str = "No status lines on stderr.") -> Decorator:
    return click.option("-q", "--quiet", is_flag=True, help=help)


def format_option(choices: Sequence[str], help: str) -> Decorator:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default="text",
        show_default=True,
        help=help,
    )


def outputs_option(help: str, *names: str) -> Decorator:
    """A repeatable -o/--output FILE, passed as `outputs` (a tuple)."""
    return click.option(
        *(names or ("--output", "-o")),
        "outputs",
        multiple=True,
        type=click.Path(dir_okay=False),
        help=help,
    )


def all_layers_option(help: str) -> Decorator:
    return click.option("--all-layers", is_flag=True, help=help)


# In the order of RunFlags' fields, which is the order --help lists them in.
RUN_OPTIONS: list[Decorator] = [
    unsafe_option(),
    custom_objects_option(),
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
        "--devices",
        type=click.IntRange(min=1),
        default=None,
        help="Spread the batches over N devices, each batch whole on one (TensorFlow; default: "
        "every visible GPU/TPU, else one CPU).",
    ),
    traceback_option(),
    quiet_option("No status or progress lines on stderr."),
]


def run_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds RUN_OPTIONS after a command's own options and hands their values
    to it as one keyword argument, `flags` (a RunFlags)."""
    names = [f.name for f in dataclasses.fields(RunFlags)]

    @functools.wraps(command)
    def with_flags(**kwargs: Any) -> Any:
        flags = RunFlags(**{name: kwargs.pop(name) for name in names})
        return command(flags=flags, **kwargs)

    decorated: Callable[..., Any] = with_flags
    for option in reversed(RUN_OPTIONS):
        decorated = option(decorated)
    return decorated


def parse_effects(value: str) -> int | str | None:
    """--effects: a count, 'all' (None) or 'auto'."""
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
