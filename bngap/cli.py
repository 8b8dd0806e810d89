"""The `bngap` command line: the click group; each command lives in `bngap.commands`.

Heavy imports (TensorFlow) happen inside the commands, so `--help` and
`--version` answer at once. Status and progress go to stderr; the report goes
to stdout or `--output`.
"""

from __future__ import annotations

import click

from ._version import __version__
from .commands.check import check
from .commands.demo import demo
from .commands.fix import fix
from .commands.lint import lint
from .commands.options import EPILOG
from .commands.render import render
from .console import CommandGroup


@click.group(
    cls=CommandGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "--version", prog_name="bngap")
def main() -> None:
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


for _command in (check, demo, fix, lint, render):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
