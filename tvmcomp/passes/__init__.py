"""Our Relax passes, one per module."""

from .quantize_int8 import QuantizeInt8
from .sparse_dense import SparseDense

__all__ = ["QuantizeInt8", "SparseDense"]
