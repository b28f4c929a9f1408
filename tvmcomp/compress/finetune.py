"""Iterative magnitude pruning with fine-tuning: polynomial schedule, masks enforced every step."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from ..data import Dataset, normalize
from ..model.train import _augment
from .config import FineTune, GroupLasso, L1
from .masks import apply_masks, magnitude_masks, poly_sparsity
from .regularize import penalty


def prune_finetune(model: nn.Module, layers: dict[str, nn.Module], data: Dataset,
                   sparsity: float | dict[str, float], scope: str, block: tuple[int, int],
                   ft: FineTune | None, reg: L1 | GroupLasso | None = None,
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """Prune ``layers`` of ``model`` in place to ``sparsity``; returns the final masks.

    Without ``ft`` (or with ``ft.epochs == 0``) the model is pruned once. Otherwise the
    sparsity follows :func:`poly_sparsity` over the first ``ft.ramp`` of the steps (re-pruned
    ``ft.prunes`` times, masks recomputed from the current magnitudes), then fine-tunes at the
    final sparsity; after every optimizer step the masks are re-applied and masked gradients
    are zeroed so pruned weights stay exactly zero.
    """
    if ft is None or ft.epochs == 0:
        masks = magnitude_masks(layers, sparsity, scope, block)
        apply_masks(layers, masks)
        return masks

    torch.manual_seed(ft.seed)
    gen = torch.Generator().manual_seed(ft.seed)
    x_all = torch.from_numpy(normalize(data.images))
    y_all = torch.from_numpy(data.labels)
    per_epoch = (len(data) + ft.batch_size - 1) // ft.batch_size
    total = ft.epochs * per_epoch
    ramp = max(1, int(round(ft.ramp * total)))
    prune_at = sorted({int(round(ramp * (k + 1) / ft.prunes)) for k in range(ft.prunes)})
    opt = torch.optim.Adam(model.parameters(), lr=ft.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    loss_fn = nn.CrossEntropyLoss()

    def target(step: int):
        f = poly_sparsity(step, ramp, 1.0, ft.power)  # fraction of the way to the final
        return {n: s * f for n, s in sparsity.items()} if isinstance(sparsity, dict) \
            else sparsity * f

    masks = magnitude_masks(layers, target(0), scope, block)
    step = 0
    model.train()
    bar = tqdm(total=total, desc="prune+finetune", unit="step", disable=not progress,
               leave=False)
    for _ in range(ft.epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), ft.batch_size):
            if step in prune_at:
                masks = magnitude_masks(layers, target(step), scope, block)
                apply_masks(layers, masks)
            idx = order[i: i + ft.batch_size]
            x = _augment(x_all[idx], ft.shift, gen)
            opt.zero_grad()
            loss = loss_fn(model(x), y_all[idx]) + penalty(reg, layers)
            loss.backward()
            for n, m in layers.items():
                m.weight.grad.mul_(masks[n])
            opt.step()
            sched.step()
            apply_masks(layers, masks)
            step += 1
            bar.update(1)
        bar.set_postfix(sparsity=f"{_mean_target(target(step)):.3f}", loss=f"{loss.item():.4f}")
    bar.close()
    masks = magnitude_masks(layers, sparsity, scope, block)  # exact final sparsity
    apply_masks(layers, masks)
    model.eval()
    return masks


def _mean_target(t) -> float:
    return sum(t.values()) / len(t) if isinstance(t, dict) else float(t)
