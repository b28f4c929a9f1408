"""Weight sharing (Deep Compression's k-means codebooks), PyTorch side: config and handler."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data import Dataset, normalize
from ..model.train import _augment
from .config import KINDS, KMeansShareConfig
from .errors import CompressConfigError, CompressError
from .kmeans import SharedWeight, share_weight
from .masks import prunable


def share_model(model: nn.Module, cfg: KMeansShareConfig, data: Dataset,
                progress: bool = True) -> dict:
    """Share the configured layers' weights in place, fine-tune the centroids; a summary."""
    layers = prunable(model)
    unknown = sorted(k for k in cfg.bits if k not in KINDS and k not in layers)
    if unknown:
        raise CompressError(f"--share-bits names {unknown[0]!r}, which is no layer or kind; "
                            f"layers: {', '.join(layers)}; kinds: {', '.join(KINDS)}")
    shared: dict[str, SharedWeight] = {}
    for name, m in layers.items():
        b = cfg.bits_for(name, m)
        if b is None:
            continue
        w = m.weight.detach().cpu().numpy()
        shared[name] = share_weight(w, b, cfg.init, cfg.group_size, cfg.unique, cfg.seed,
                                    name=name)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(shared[name].dense()))
    if not shared:
        raise CompressError("--share-bits matched no layer")
    if cfg.epochs:
        _finetune_centroids(model, {n: layers[n] for n in shared}, shared, cfg, data, progress)
    if cfg.fp16:  # each cluster's value, so the values stay shared (two may merge)
        with torch.no_grad():
            for n in shared:
                layers[n].weight.copy_(layers[n].weight.half().float())
    return {"method": "kmeans_share", "layers": {n: _layer_summary(layers[n], s)
                                                 for n, s in shared.items()}}


def _cluster_ids(s: SharedWeight) -> torch.Tensor:
    """A global cluster id per weight element: group * 2**bits + index."""
    return torch.from_numpy((s.groups() * (2 ** s.bits) + s.index).astype(np.int64))


def _finetune_centroids(model, layers, shared, cfg, data, progress) -> None:
    """Train with each shared weight's gradient replaced by its cluster's summed gradient
    (Deep Compression): elements of a cluster move together, zeros stay zero."""
    ids = {n: _cluster_ids(s) for n, s in shared.items()}
    zeros = {n: torch.from_numpy(s.index == 0) if s.zero else None for n, s in shared.items()}
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x_all = torch.from_numpy(normalize(data.images))
    y_all = torch.from_numpy(data.labels)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    steps = cfg.epochs * ((len(data) + cfg.batch_size - 1) // cfg.batch_size)
    bar = tqdm(total=steps, desc="share+finetune", unit="step", disable=not progress,
               leave=False)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i: i + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(_augment(x_all[idx], 2, gen)), y_all[idx])
            loss.backward()
            for n, m in layers.items():
                g = m.weight.grad
                summed = torch.zeros(int(ids[n].max()) + 1).index_add_(
                    0, ids[n].ravel(), g.ravel())
                g.copy_(summed[ids[n]].reshape(g.shape))
                if zeros[n] is not None:
                    g[zeros[n]] = 0
            opt.step()
            bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()


def _layer_summary(m: nn.Module, s: SharedWeight) -> dict:
    w = m.weight.detach().cpu().numpy()
    per_group = [len(np.unique(w[g:g + s.group_size])) for g in range(0, w.shape[0],
                                                                        s.group_size)]
    return {"bits": s.bits, "groups": len(per_group), "group_size": s.group_size,
            "max_distinct_per_group": max(per_group), "zero_reserved": s.zero,
            "unique": s.unique, "sparsity": round(float(np.mean(w == 0)), 6),
            "values_dtype": "float16" if np.array_equal(w.astype(np.float16), w) else "float32",
            "weights": int(w.size)}
