"""Compression errors: one-line messages the CLI prints without a traceback."""

from ..errors import TvmcompError


class CompressError(TvmcompError):
    """The model cannot be compressed as asked (unknown layer, bad checkpoint)."""


class CompressConfigError(CompressError, ValueError):
    """A compression config value or file is invalid."""
