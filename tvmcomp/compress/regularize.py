"""Sparse regularizers added to the fine-tuning loss: L1 and block group lasso."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import L1, GroupLasso


def penalty(reg: L1 | GroupLasso | None, layers: dict[str, nn.Module]) -> torch.Tensor | float:
    """The regularization term for ``layers``' weights (0.0 without a regularizer)."""
    if reg is None:
        return 0.0
    if isinstance(reg, L1):
        return reg.strength * sum(m.weight.abs().sum() for m in layers.values())
    br, bc = reg.block
    total = 0.0
    for m in layers.values():
        w2 = m.weight.reshape(m.weight.shape[0], -1)
        r, c = w2.shape
        p = nn.functional.pad(w2, (0, (-c) % bc, 0, (-r) % br))
        blocks = p.reshape(p.shape[0] // br, br, p.shape[1] // bc, bc)
        norms = (blocks.pow(2).sum(dim=(1, 3)) + 1e-12).sqrt()
        total = total + norms.sum() * math.sqrt(br * bc)
    return reg.strength * total
