"""Low-rank layers: a Linear or Conv2d split into two by truncated SVD.

A Linear ``W [out, in]`` of rank ``r`` becomes ``Linear(in → r, no bias)`` then
``Linear(r → out, bias)``. A Conv2d ``W [out, in, kh, kw]`` is factorized as its matrix
``[out, in·kh·kw]``: a ``kh×kw`` conv into ``r`` channels (the original stride, padding and
dilation, no bias), then a ``1×1`` conv to ``out`` channels with the bias (AIMET's "weight
SVD"). Either pays in parameters and MACs when ``r·(rows + cols) < rows·cols`` of that matrix.

Both factors get ``√σ`` of each singular value, so they start at the same scale for
fine-tuning. A checkpoint records the ranks (:func:`ranks_of`); loading rebuilds the two-layer
skeleton (:func:`apply_ranks`) before the weights are loaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import TvmcompError


class LowRank(nn.Sequential):
    """Two layers standing for one: ``[0]`` into ``rank`` features, ``[1]`` out (with the
    bias)."""

    @property
    def rank(self) -> int:
        return self[1].in_features if isinstance(self[1], nn.Linear) else self[1].in_channels


def matrix_shape(m: nn.Module) -> tuple[int, int]:
    """``(out, in·kh·kw)``: the shape of the matrix of ``m``'s weight that is factorized."""
    w = m.weight
    return int(w.shape[0]), int(w[0].numel())


def max_rank(m: nn.Module) -> int:
    """The rank of ``m``'s weight matrix at most: min(out, in·kh·kw)."""
    return min(matrix_shape(m))


def matrix(m: nn.Module) -> np.ndarray:
    """``m``'s weight as the matrix that is factorized, ``[out, in·kh·kw]`` (float64)."""
    w = m.weight.detach().cpu().double().numpy()
    return w.reshape(w.shape[0], -1)


def check_rank(name: str, m: nn.Module, rank) -> None:
    """A rank ``m`` can be factorized at: an integer in 1 .. max_rank(m) − 1."""
    top = max_rank(m)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < top:
        raise TvmcompError(f"rank of {name} must be an integer in 1..{top - 1} (its weight is "
                           f"{tuple(m.weight.shape)}: rank {top} or more is no factorization), "
                           f"got {rank!r}")


def _skeleton(m: nn.Module, rank: int) -> LowRank:
    """The two layers standing for ``m`` at ``rank`` (weights uninitialised)."""
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        return LowRank(nn.Linear(m.in_features, rank, bias=False),
                       nn.Linear(rank, m.out_features, bias=bias))
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        first = nn.Conv2d(m.in_channels, rank, m.kernel_size, stride=m.stride,
                          padding=m.padding, dilation=m.dilation, bias=False,
                          padding_mode=m.padding_mode)
        return LowRank(first, nn.Conv2d(rank, m.out_channels, 1, bias=bias))
    raise TvmcompError(f"cannot factorize a {type(m).__name__}"
                       + (" with groups > 1" if isinstance(m, nn.Conv2d) else "")
                       + ": only Linear and (ungrouped) Conv2d layers")


@torch.no_grad()
def factorize(m: nn.Module, rank: int) -> LowRank:
    """``m`` split at ``rank`` by truncated SVD (the best rank-``rank`` approximation of its
    matrix, Eckart–Young); the bias moves to the second layer unchanged."""
    lr = _skeleton(m, rank)
    u, s, vt = np.linalg.svd(matrix(m), full_matrices=False)
    root = np.sqrt(s[:rank])
    first = (root[:, None] * vt[:rank]).reshape(lr[0].weight.shape)
    second = (u[:, :rank] * root[None, :]).reshape(lr[1].weight.shape)
    lr[0].weight.copy_(torch.from_numpy(first).to(m.weight.dtype))
    lr[1].weight.copy_(torch.from_numpy(second).to(m.weight.dtype))
    if m.bias is not None:
        lr[1].bias.copy_(m.bias)
    return lr


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorize_layers(model: nn.Module, ranks: dict[str, int]) -> None:
    """Replace each named layer of ``model`` by its :func:`factorize` at its rank, in place."""
    for name, rank in ranks.items():
        m = model.get_submodule(name)
        check_rank(name, m, rank)
        _set(model, name, factorize(m, rank))


def ranks_of(model: nn.Module) -> dict[str, int]:
    """``{layer name: rank}`` of the factorized layers of ``model`` (a checkpoint's record)."""
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRank)}


def apply_ranks(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give ``model`` (as its architecture builds it) the two-layer skeleton of each
    factorized layer in ``ranks``, for a checkpoint's weights to load into."""
    for name, rank in ranks.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise TvmcompError(f"factorized layer {name!r} is not a layer of the model") from None
        check_rank(name, m, rank)
        _set(model, name, _skeleton(m, rank))


def params_and_macs(m: nn.Module, out_hw: int = 1) -> tuple[int, int]:
    """Weights and multiply-accumulates per image of a Linear/Conv2d/LowRank (``out_hw``: the
    output pixels of a conv, 1 for a Linear)."""
    if isinstance(m, LowRank):
        p0, c0 = params_and_macs(m[0], out_hw)
        p1, c1 = params_and_macs(m[1], out_hw)
        return p0 + p1, c0 + c1
    n = int(m.weight.numel())
    return n, n * out_hw
