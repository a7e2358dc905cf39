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
