"""Quantization errors: one-line messages the CLI prints without a traceback."""

from ..errors import TvmcompError


class QuantError(TvmcompError):
    """The model cannot be quantized as asked (bad weights, unsupported graph, overflow)."""


class CalibrationError(QuantError):
    """The calibration images are missing, too few, the wrong shape or not finite."""


class QuantConfigError(QuantError, ValueError):
    """A quantization config value or file is invalid."""
