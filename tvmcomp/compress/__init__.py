"""Torch-side compression: magnitude / sensitivity pruning, sparse regularization, fine-tuning,
k-means weight sharing, low-rank factorization."""

from .api import HANDLERS, compress, prune_model
from .config import (
    FineTune,
    GroupLasso,
    KMeansShareConfig,
    L1,
    LowRankConfig,
    MagnitudePruneConfig,
    SensitivityConfig,
    from_dict,
    from_json,
    to_dict,
    to_json,
)
from .errors import CompressConfigError, CompressError
from .masks import magnitude_masks, poly_sparsity, sparsity_report

__all__ = [
    "HANDLERS", "CompressConfigError", "CompressError", "FineTune", "GroupLasso",
    "KMeansShareConfig", "L1", "LowRankConfig",
    "MagnitudePruneConfig", "SensitivityConfig", "compress", "from_dict", "from_json",
    "magnitude_masks", "poly_sparsity", "prune_model", "sparsity_report", "to_dict", "to_json",
]
