"""Error types and the one exit-code policy of the command line."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes, as promised in the public contract."""

    OK = 0
    GAP_ABOVE_THRESHOLD = 1
    BAD_INPUT = 2
    INTERNAL_ERROR = 3


class BngapError(Exception):
    """A problem with what the user gave us: exit code 2, one line, no traceback.

    The message is complete on its own: what is wrong, then what was received
    or what to do.
    """

    exit_status = ExitStatus.BAD_INPUT


class ModelLoadError(BngapError):
    """The model file cannot be opened as a Keras model."""


class DataError(BngapError):
    """The data file cannot be read, or does not fit the model."""


class ForwardPassError(BngapError):
    """The model raised while running on the user's data.

    Attributes:
        layer: path of the innermost layer that was running, if known.
    """

    def __init__(self, message: str, layer: str | None = None):
        super().__init__(message)
        self.layer = layer


def one_line(text: object, limit: int = 400) -> str:
    """Collapses a message onto one line and shortens it for a terminal."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
