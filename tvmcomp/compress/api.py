"""``compress(checkpoint, config) -> checkpoint``: one handler per pruning scheme."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from ..data import Dataset, load_train_5k
from ..data.mnist import split_holdout
from ..model import load_checkpoint, save_checkpoint
from . import sensitivity
from .config import (KMeansShareConfig, LowRankConfig, MagnitudePruneConfig, PruneConfig,
                     SensitivityConfig, to_dict)
from .errors import CompressConfigError, CompressError
from .finetune import prune_finetune
from .masks import prunable, sparsity_report


def prune_model(model: nn.Module, config: PruneConfig, data: Dataset | None = None,
                progress: bool = True) -> dict:
    """Prune ``model`` in place as ``config`` says; returns a summary (sparsity, choices)."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise CompressConfigError(f"not a compression config: {config!r}; use one of "
                                  f"{', '.join(c.__name__ for c in HANDLERS)}")
    data = data if data is not None else load_train_5k()
    t0 = time.monotonic()
    summary = handler(model, config, data, progress)
    summary["config"] = to_dict(config)
    summary["sparsity"] = sparsity_report(model)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    return summary


def _magnitude(model, cfg: MagnitudePruneConfig, data: Dataset, progress: bool) -> dict:
    layers = prunable(model, cfg.layers, cfg.exclude)
    unknown = sorted(set(cfg.per_layer) - set(layers))
    if unknown:
        raise CompressError(f"per_layer names {unknown[0]!r}, which is not a pruned layer; "
                            f"pruned layers: {', '.join(layers)}")
    prune_finetune(model, layers, data, cfg.sparsity_for(layers), cfg.scope, cfg.block,
                   cfg.finetune,
                   cfg.regularizer, progress)
    return {"method": "magnitude", "pruned_layers": list(layers)}


def _sensitivity(model, cfg: SensitivityConfig, data: Dataset, progress: bool) -> dict:
    layers = prunable(model, cfg.layers, cfg.exclude)
    train, val = split_holdout(data, cfg.val_fraction, seed=0)
    base, curves = sensitivity.sweep(model, layers, val, cfg.sparsities, cfg.block)
    chosen = sensitivity.choose(base, curves, cfg.max_accuracy_drop)
    if progress:
        print(sensitivity.format_table(base, curves, chosen), flush=True)
    if cfg.plot:
        sensitivity.plot(base, curves, chosen, cfg.max_accuracy_drop, cfg.plot)
    # fine-tune on all the data given: the sweep only used the split to rank layers
    prune_finetune(model, layers, data, chosen, "layer", cfg.block, cfg.finetune,
                   cfg.regularizer, progress)
    return {"method": "sensitivity", "pruned_layers": list(layers),
            "validation_accuracy_dense": base, "chosen_sparsity": chosen,
            "curves": {n: {f"{s:g}": a for s, a in c.items()} for n, c in curves.items()},
            "plot": cfg.plot}


def _lowrank(model, cfg: LowRankConfig, data: Dataset, progress: bool) -> dict:
    from .lowrank import lowrank_model

    return lowrank_model(model, cfg, data, progress)


def _share(model, cfg: KMeansShareConfig, data: Dataset, progress: bool) -> dict:
    from .share import share_model

    return share_model(model, cfg, data, progress)


HANDLERS = {MagnitudePruneConfig: _magnitude, SensitivityConfig: _sensitivity,
            KMeansShareConfig: _share, LowRankConfig: _lowrank}


def compress(checkpoint: str | os.PathLike, config: PruneConfig | list[PruneConfig],
             out: str | os.PathLike,
             data: Dataset | None = None, progress: bool = True,
             threads: int | None = 1) -> tuple[Path, dict]:
    """Load ``checkpoint``, prune it as ``config`` says, write the result to ``out``.

    Parameters
    ----------
    checkpoint, out : path
        tvmcomp checkpoints (:func:`tvmcomp.model.save_checkpoint`); the output's ``meta``
        holds the source, the config (versioned JSON) and the sparsity report.
    config : LowRankConfig | MagnitudePruneConfig | SensitivityConfig | KMeansShareConfig, or
        a list of them applied in order (factorize, prune, then share: zeros stay zero).
    data : Dataset, optional
        Fine-tuning / sensitivity data (default: the 5,000 shipped MNIST training images).
    threads : int, optional
        torch intra-op threads while compressing (restored after); None leaves it alone.

    Returns
    -------
    (path, summary)
    """
    model, meta = load_checkpoint(checkpoint)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    steps = list(config) if isinstance(config, (list, tuple)) else [config]
    if any(isinstance(c, LowRankConfig) for c in steps[1:]):
        raise CompressConfigError("low-rank factorization comes first: the factors of a "
                                  "pruned or shared layer are dense, unshared values")
    try:
        summaries = [prune_model(model, c, data, progress) for c in steps]
    finally:
        torch.set_num_threads(old)
    summary = summaries[0] if len(summaries) == 1 else {
        "steps": summaries, "sparsity": summaries[-1]["sparsity"]}
    meta = {**meta, "compressed_from": str(checkpoint), "compression": summary}
    save_checkpoint(model, out, meta)
    return Path(out), summary
