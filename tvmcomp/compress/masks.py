"""Magnitude masks (per layer, global, block-structured) and the polynomial-decay schedule."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import CompressError


def prunable(model: nn.Module, layers=(), exclude=()) -> dict[str, nn.Module]:
    """``{name: module}`` of the Conv/Linear modules to prune; unknown names raise."""
    all_ = {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    for n in (*layers, *exclude):
        if n not in all_:
            raise CompressError(f"no prunable layer named {n!r}; layers: {', '.join(all_)}")
    chosen = {n: m for n, m in all_.items()
              if (not layers or n in layers) and n not in exclude}
    if not chosen:
        raise CompressError("no layers left to prune (check layers / exclude)")
    return chosen


def _view2d(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def block_scores(w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """L2 norm of each (rows, cols) block of the ``[out, rest]`` view (ragged edges padded)."""
    w2 = _view2d(w.detach().abs())
    br, bc = block
    if (br, bc) == (1, 1):
        return w2
    r, c = w2.shape
    pr, pc = (-r) % br, (-c) % bc
    p = nn.functional.pad(w2, (0, pc, 0, pr))
    blocks = p.reshape((r + pr) // br, br, (c + pc) // bc, bc)
    return blocks.pow(2).sum(dim=(1, 3)).sqrt()


def _expand(mask_b: torch.Tensor, block: tuple[int, int], w: torch.Tensor) -> torch.Tensor:
    br, bc = block
    m = mask_b.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    r, c = _view2d(w).shape
    return m[:r, :c].reshape(w.shape)


def _keep_top(scores: torch.Tensor, n_zero: int) -> torch.Tensor:
    """Mask (1 = keep) zeroing the ``n_zero`` smallest scores (ties broken by index)."""
    flat = scores.flatten()
    mask = torch.ones_like(flat)
    if n_zero > 0:
        idx = torch.argsort(flat, stable=True)[:n_zero]
        mask[idx] = 0
    return mask.reshape(scores.shape)


def magnitude_masks(layers: dict[str, nn.Module], sparsity: float | dict[str, float],
                    scope: str = "global", block=(1, 1)) -> dict[str, torch.Tensor]:
    """Masks zeroing the smallest weights: ``sparsity`` overall (global) or per layer.

    ``sparsity`` may be a ``{name: sparsity}`` dict (scope ``"layer"`` only). With blocks,
    whole blocks are zeroed and the achieved sparsity is the nearest whole number of blocks.
    """
    if isinstance(sparsity, dict) and scope != "layer":
        raise CompressError("per-layer sparsities need scope='layer'")
    scores = {n: block_scores(m.weight, block) for n, m in layers.items()}
    masks = {}
    if scope == "global":
        s = float(sparsity)
        flat = torch.cat([v.flatten() for v in scores.values()])
        n_zero = int(round(s * flat.numel()))
        keep = _keep_top(flat, n_zero)
        i = 0
        for n, v in scores.items():
            masks[n] = keep[i: i + v.numel()].reshape(v.shape)
            i += v.numel()
    else:
        for n, v in scores.items():
            s = float(sparsity[n]) if isinstance(sparsity, dict) else float(sparsity)
            masks[n] = _keep_top(v, int(round(s * v.numel())))
    return {n: _expand(masks[n], block, layers[n].weight) if block != (1, 1)
            else masks[n].reshape(layers[n].weight.shape) for n in layers}


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    for n, m in layers.items():
        m.weight.mul_(masks[n].to(m.weight.dtype))


def poly_sparsity(step: int, total: int, final: float, power: float = 3.0,
                  initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: ``final + (initial - final) · (1 - step/total)^power``."""
    if total <= 0:
        return final
    t = min(max(step / total, 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** power


def sparsity_report(model: nn.Module) -> dict:
    """Per-layer and overall sparsity of every Conv/Linear weight (biases listed apart)."""
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    per, zeros, total, bias_n = {}, 0, 0, 0
    for n, m in layers.items():
        w = m.weight.detach().numpy()
        z = int(np.sum(w == 0))
        per[n] = {"shape": list(w.shape), "weights": int(w.size), "zeros": z,
                  "sparsity": round(z / w.size, 6)}
        zeros += z
        total += w.size
        if m.bias is not None:
            bias_n += int(m.bias.numel())
    return {"layers": per, "weights": int(total), "zeros": int(zeros),
            "overall_sparsity": round(zeros / total, 6) if total else 0.0,
            "biases": bias_n,
            "overall_sparsity_with_biases": round(zeros / (total + bias_n), 6) if total else 0.0}
