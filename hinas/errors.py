"""Exceptions that name the bad input and what would have been valid."""

from __future__ import annotations


class HinasError(Exception):
    """Base class for every error hinas raises on purpose."""


class ConfigError(HinasError, ValueError):
    """A setting is unknown, mistyped or out of range."""


class GenotypeError(HinasError, ValueError):
    """A genotype file or object is malformed; nothing is built from it."""


class RenderError(HinasError, RuntimeError):
    """Drawing failed, usually because Graphviz's `dot` is missing."""


class DataError(HinasError, ValueError):
    """An image or data set is missing, unreadable, too small or incomplete."""


class OutputError(HinasError, OSError):
    """The run directory cannot be written: read-only, full, or not a folder."""


class CheckpointError(HinasError, ValueError):
    """A checkpoint cannot be resumed: unreadable, hostile, foreign, or written with other settings or code."""


class ModelError(HinasError, ValueError):
    """A network returned something other than a finite image of the expected shape and dtype; nothing is scored or written."""


class NonFiniteError(HinasError, FloatingPointError):
    """A loss or gradient became NaN or infinite; raised before the optimiser could apply it."""


class CollapseError(HinasError, RuntimeError):
    """The search collapsed into skip connections before any genotype could be kept."""


class Interrupted(HinasError):
    """SIGINT or SIGTERM stopped a run after its checkpoint was written; ``signal`` is the signal number."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type's name): enough to say why, short enough for one line."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
