"""Our Relax passes, one per module."""

from .codebook_dense import CodebookDense
from .lowrank_fold import LowRankFold
from .quantize_int8 import QuantizeInt8
from .sparse_dense import SparseDense

__all__ = ["CodebookDense", "LowRankFold", "QuantizeInt8", "SparseDense"]
