"""Our Relax passes, one per module."""

from .codebook_dense import CodebookDense
from .int8_vnni import Int8Vnni
from .lowrank_fold import LowRankFold
from .quantize_int8 import QuantizeInt8
from .sparse_dense import SparseDense

__all__ = ["CodebookDense", "Int8Vnni", "LowRankFold", "QuantizeInt8", "SparseDense"]
