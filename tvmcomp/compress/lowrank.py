"""Low-rank factorization, PyTorch side: choose ranks (given, by energy, or under an accuracy
budget), split the layers by truncated SVD (:mod:`tvmcomp.model.lowrank`), fine-tune.

Composes with what follows it: the factors are ordinary Conv2d/Linear layers, so pruning,
weight sharing and int8 treat them like any other (``fc1.0``, ``fc1.1``). It does not follow
pruning or sharing: the factors of a pruned or shared layer are dense, unshared values, so
:func:`tvmcomp.compress.compress` refuses that order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Dataset, normalize
from ..data.mnist import split_holdout
from ..errors import TvmcompError
from ..model.lowrank import (LowRank, check_rank, factorize_layers, matrix, matrix_shape,
                             max_rank, params_and_macs)
from ..model.train import TrainConfig, evaluate_torch, train
from .config import LowRankConfig
from .errors import CompressConfigError, CompressError
from .masks import prunable
from .sensitivity import save_figure


def factorizable(model: nn.Module, layers=(), exclude=()) -> dict[str, nn.Module]:
    """``{name: module}`` of the Linear and ungrouped Conv2d layers to consider."""
    found = prunable(model, layers, exclude)  # checks the names
    out = {n: m for n, m in found.items()
           if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)}
    if layers:
        bad = sorted(set(layers) - set(out))
        if bad:
            raise CompressError(f"{bad[0]} cannot be factorized: only Linear and ungrouped "
                                f"Conv2d layers")
    return out


def break_even(m: nn.Module) -> int:
    """The largest rank at which the two factors hold fewer weights than ``m`` (0: none)."""
    rows, cols = matrix_shape(m)
    return (rows * cols - 1) // (rows + cols)


def energy_kept(m: nn.Module) -> np.ndarray:
    """``[k]``: the fraction of ``Σσ²`` of ``m``'s matrix that rank ``k + 1`` keeps."""
    s = np.linalg.svd(matrix(m), compute_uv=False)
    return np.cumsum(s ** 2) / float(np.sum(s ** 2))


def energy_rank(m: nn.Module, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of ``Σσ²``."""
    return int(np.searchsorted(energy_kept(m), energy - 1e-12) + 1)


def output_pixels(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """``{layer: output pixels per image}`` of every Conv2d/Linear (1 for a Linear), from
    one forward pass of ``example``."""
    out, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, LowRank)):
            hooks.append(m.register_forward_hook(
                lambda mod, _i, y, name=name: out.__setitem__(
                    name, int(np.prod(y.shape[2:])) if y.dim() > 2 else 1)))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return out


def candidate_ranks(m: nn.Module) -> list[int]:
    """Ranks worth trying for ``m``: ones that save weights, on a roughly geometric grid."""
    top = break_even(m)
    grid = {r for r in (1, 2, 4, 8, 16, 32, 64, 128, 256) if r <= top}
    grid |= {max(1, round(top * f)) for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)}
    return sorted(r for r in grid if 1 <= r <= top)


def sweep(model: nn.Module, layers: dict[str, nn.Module], val: Dataset,
          ranks: dict[str, list[int]]) -> tuple[float, dict[str, dict[int, float]]]:
    """(whole accuracy, ``{layer: {rank: accuracy}}``): each layer factorized alone, no
    fine-tuning, on ``val``."""
    base = evaluate_torch(model, val)
    curves: dict[str, dict[int, float]] = {}
    for name in layers:
        curves[name] = {}
        for r in ranks[name]:
            m = copy.deepcopy(model)
            factorize_layers(m, {name: r})
            curves[name][r] = evaluate_torch(m, val)
    return base, curves


def greedy(model: nn.Module, layers: dict[str, nn.Module], val: Dataset, base: float,
           curves: dict[str, dict[int, float]], pixels: dict[str, int],
           budget: float) -> dict[str, int]:
    """AIMET-style: repeatedly take the rank step (a layer's next smaller candidate rank)
    that costs the least held-out accuracy per MAC saved, by the single-layer curves; keep it
    if the model with every kept step is within ``budget`` of ``base`` on ``val``, else stop
    stepping that layer."""
    chosen: dict[str, int] = {}
    open_ = {n for n in layers if curves[n]}

    def macs(n: str, r: int | None) -> int:
        rows, cols = matrix_shape(layers[n])
        return pixels[n] * (rows * cols if r is None else r * (rows + cols))

    def next_rank(n: str) -> int:
        cur = chosen.get(n)
        return max(r for r in curves[n] if cur is None or r < cur)

    def cost(n: str) -> tuple[float, str]:
        cur, nxt = chosen.get(n), next_rank(n)
        acc_cur = base if cur is None else curves[n][cur]
        return max(0.0, acc_cur - curves[n][nxt]) / (macs(n, cur) - macs(n, nxt)), n

    while open_:
        _, n = min(cost(n) for n in open_)
        step = next_rank(n)
        trial = {**chosen, n: step}
        m = copy.deepcopy(model)
        factorize_layers(m, trial)
        if base - evaluate_torch(m, val) <= budget + 1e-12:
            chosen = trial
            if step == min(curves[n]):
                open_.discard(n)
        else:
            open_.discard(n)
    return chosen


def choose_ranks(model: nn.Module, cfg: LowRankConfig, data: Dataset, pixels: dict[str, int],
                 progress: bool = True) -> tuple[dict[str, int], dict]:
    """(``{layer: rank}``, what the choice saw: curves, skipped layers); ``pixels``:
    :func:`output_pixels` of ``model``."""
    if cfg.ranks:
        layers = factorizable(model, tuple(cfg.ranks))
        for n, r in cfg.ranks.items():
            check_rank(n, layers[n], r)
        return dict(cfg.ranks), {}
    layers = factorizable(model, cfg.layers, cfg.exclude)
    if cfg.energy is not None:
        ranks, skipped = {}, {}
        for n, m in layers.items():
            r = energy_rank(m, cfg.energy)
            if r <= break_even(m):
                ranks[n] = r
            else:
                skipped[n] = f"rank {r} keeps {cfg.energy:g} of the energy but saves no weights"
        return ranks, {"skipped": skipped}
    _, val = split_holdout(data, cfg.val_fraction, seed=0)
    cands = {n: candidate_ranks(m) for n, m in layers.items()}
    base, curves = sweep(model, layers, val, cands)
    ranks = greedy(model, layers, val, base, curves, pixels, cfg.max_accuracy_drop)
    if progress:
        print(format_curves(base, curves, ranks), flush=True)
    return ranks, {"validation_accuracy_dense": base, "curves": curves}


def lowrank_model(model: nn.Module, cfg: LowRankConfig, data: Dataset,
                  progress: bool = True) -> dict:
    """Factorize ``model`` in place as ``cfg`` says, fine-tune it; a summary."""
    if any(isinstance(m, LowRank) for m in model.modules()):
        raise CompressError("the model already has factorized layers; factorize once, from "
                            "the unfactorized checkpoint")
    pixels = output_pixels(model, torch.from_numpy(normalize(data.images[:1])))
    try:
        ranks, seen = choose_ranks(model, cfg, data, pixels, progress)
    except TvmcompError as e:
        raise CompressConfigError(str(e)) from None
    order = [n for n, _ in model.named_modules()]
    ranks = dict(sorted(ranks.items(), key=lambda kv: order.index(kv[0])))  # model order
    if not ranks:
        raise CompressError("no layer was factorized: "
                            + ("; ".join(f"{n}: {why}" for n, why in seen["skipped"].items())
                               if seen.get("skipped") else "every rank step broke the budget"))
    before = {n: params_and_macs(model.get_submodule(n), pixels[n]) for n in ranks}
    kept = {n: float(energy_kept(model.get_submodule(n))[r - 1]) for n, r in ranks.items()}
    tops = {n: max_rank(model.get_submodule(n)) for n in ranks}
    factorize_layers(model, ranks)
    after = {n: params_and_macs(model.get_submodule(n), pixels[n]) for n in ranks}
    ft = cfg.finetune
    if ft is not None and ft.epochs:
        train(model, data, TrainConfig(epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr,
                                       shift=ft.shift, seed=ft.seed),
              progress=progress, desc="low-rank finetune")
    if cfg.plot and seen.get("curves"):
        plot(seen["validation_accuracy_dense"], seen["curves"], ranks,
             cfg.max_accuracy_drop, cfg.plot)
    if "curves" in seen:  # JSON keys
        seen["curves"] = {n: {str(r): a for r, a in c.items()} for n, c in seen["curves"].items()}
    return {"method": "lowrank", **seen,
            "layers": {n: {"rank": r, "max_rank": tops[n], "energy_kept": round(kept[n], 6),
                           "params": [before[n][0], after[n][0]],
                           "macs": [before[n][1], after[n][1]]}
                       for n, r in ranks.items()},
            "plot": cfg.plot if cfg.plot and seen.get("curves") else None}


def format_curves(base: float, curves: dict[str, dict[int, float]],
                  chosen: dict[str, int]) -> str:
    rows = [f"held-out accuracy {base:.4f} unfactorized; with the layer factorized alone:"]
    for n, c in curves.items():
        rows.append(f"{n:<8} " + "  ".join(f"r{r} {a:.4f}" for r, a in sorted(c.items()))
                    + f"   chosen: {chosen.get(n, 'whole')}")
    return "\n".join(rows)


def plot(base: float, curves: dict[str, dict[int, float]], chosen: dict[str, int],
         max_drop: float | None, path: str | Path,
         latency: dict[str, dict[int, tuple[float, float]]] | None = None) -> Path:
    """Held-out accuracy loss against rank, one line per layer tried, chosen ranks starred;
    with ``latency`` (``{layer: {rank: (two kernels µs, whole layer µs)}}``, measured on the
    target) a second panel below: the factorized kernels' time over the whole layer's, against
    rank. A PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if latency else 1
    fig, axes = plt.subplots(rows, 1, figsize=(7, 4.5 * rows), dpi=110, sharex=True,
                             squeeze=False)
    ax, colors = axes[0][0], {}
    for n, c in curves.items():
        rs = sorted(c)
        line, = ax.plot(rs, [100 * (base - c[r]) for r in rs], marker="o", ms=3, label=n)
        colors[n] = line.get_color()
        if n in chosen:
            ax.plot([chosen[n]], [100 * (base - c[chosen[n]])], marker="*", ms=12,
                    color=colors[n])
    if max_drop:
        ax.axhline(100 * max_drop, color="r", lw=0.8, ls=":", label="budget")
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=1.0)  # the budget's tenths of a point, and the cliff
    ax.set_ylabel("held-out accuracy loss (points)")
    ax.set_title("Low-rank sensitivity (★ = chosen)")
    if latency:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[1][0]
        for n, t in latency.items():
            rs = sorted(r for r in t if t[r][0] and t[r][1])
            ax.plot(rs, [t[r][0] / t[r][1] for r in rs], marker="o", ms=3, label=n,
                    color=colors.get(n))
            if n in chosen and chosen[n] in rs:
                two, one = t[chosen[n]]
                ax.plot([chosen[n]], [two / one], marker="*", ms=12, color=colors.get(n))
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="whole layer")
        ax.set_yscale("log")
        ax.set_ylabel("two kernels / whole layer (time)")
        ax.set_title("Measured on the target: batch 1 + 64, median of interleaved repeats")
    ax.set_xlabel("rank (layer factorized alone; accuracy before fine-tuning)")
    return save_figure(fig, ax, path)
