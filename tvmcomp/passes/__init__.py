"""Our Relax passes, one per module."""

from .quantize_int8 import QuantizeInt8

__all__ = ["QuantizeInt8"]
