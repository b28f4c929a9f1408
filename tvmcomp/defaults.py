"""Defaults shared by the CLI and the API (no heavy imports here: the CLI's --help uses them)."""

import os

DEFAULT_BATCHES = (1, 64)
DEFAULT_TUNE_BUDGET_S = 300.0
DEFAULT_MAX_ACCURACY_DROP = 0.005  # int8 vs float, as a fraction (0.5 pt)
DEFAULT_SPARSE_THRESHOLD = 0.7    # weight sparsity from which a layer is a sparse candidate
# pruning's fine-tuning (compress.FineTune); chosen by scripts/prune_defaults.py
DEFAULT_FINETUNE_EPOCHS = 24
DEFAULT_FINETUNE_LR = 5e-3
# fine-tuning after low-rank factorization (compress.LowRankConfig): the factors start at the
# layer's best approximation, so fewer epochs at a gentler rate than pruning's
DEFAULT_LOWRANK_EPOCHS = 8
DEFAULT_LOWRANK_LR = 1e-3

# Where a codebook layer left dense decodes its codes (build --codebook-decode): in its
# kernel on every call, once when the artifact is loaded, or per layer, measured ("auto":
# at load where the kernels that decode are slower than the float kernel by more than the
# margin)
CODEBOOK_DECODE = ("kernel", "load", "auto")
CODEBOOK_LOAD_MARGIN = 0.05


def gate_repeats() -> int:
    """Interleaved rounds in which a measured gate (sparse, codebook decode, low-rank fold)
    times each layer's kernels: 21, or ``$TVMCOMP_GATE_REPEATS`` (the test suite takes 5)."""
    return int(os.environ.get("TVMCOMP_GATE_REPEATS", "21"))
