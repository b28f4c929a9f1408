"""Sensitivity analysis: per-layer accuracy vs sparsity, the per-layer choice, and its plot."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..data import Dataset
from ..model.train import evaluate_torch
from .masks import apply_masks, magnitude_masks


def sweep(model: nn.Module, layers: dict[str, nn.Module], val: Dataset,
          sparsities: tuple[float, ...], block=(1, 1)) -> tuple[float, dict[str, dict]]:
    """(dense accuracy, ``{layer: {sparsity: accuracy}}``), each layer pruned alone, one shot."""
    base = evaluate_torch(model, val)
    curves: dict[str, dict] = {}
    for name in layers:
        curves[name] = {}
        for s in sparsities:
            m = copy.deepcopy(model)
            lay = {name: dict(m.named_modules())[name]}
            apply_masks(lay, magnitude_masks(lay, s, "layer", block))
            curves[name][s] = evaluate_torch(m, val)
    return base, curves


def choose(base: float, curves: dict[str, dict], max_drop: float) -> dict[str, float]:
    """Per layer, the largest swept sparsity up to which every drop is ``<= max_drop``.

    The first sparsity over budget ends the search (a noisy recovery above it is not
    trusted); a layer already over budget at the smallest swept sparsity gets 0.
    """
    out = {}
    for name, c in curves.items():
        out[name] = 0.0
        for s, acc in sorted(c.items()):
            if base - acc > max_drop + 1e-12:
                break
            out[name] = s
    return out


def format_table(base: float, curves: dict[str, dict], chosen: dict[str, float]) -> str:
    sps = sorted({s for c in curves.values() for s in c})
    head = "layer    " + " ".join(f"{s:>6.2f}" for s in sps) + "   chosen"
    rows = [f"dense accuracy {base:.4f}; accuracy with the layer pruned alone:", head]
    for name, c in curves.items():
        rows.append(f"{name:<8} " + " ".join(f"{c[s]:>6.4f}" for s in sps)
                    + f"   {chosen[name]:.2f}")
    return "\n".join(rows)


def plot(base: float, curves: dict[str, dict], chosen: dict[str, float], max_drop: float,
         path: str | Path) -> Path:
    """Accuracy vs sparsity, one line per layer, the budget and the chosen points; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, c in curves.items():
        xs = sorted(c)
        line, = ax.plot(xs, [100 * c[s] for s in xs], marker="o", ms=3, label=name)
        if chosen[name] in c:
            ax.plot([chosen[name]], [100 * c[chosen[name]]], marker="*", ms=12,
                    color=line.get_color())
    ax.axhline(100 * base, color="k", lw=0.8, ls="--", label="dense")
    ax.axhline(100 * (base - max_drop), color="r", lw=0.8, ls=":", label="budget")
    ax.set_xlabel("layer sparsity (pruned alone, no fine-tuning)")
    ax.set_ylabel("validation accuracy (%)")
    lo = min(min(c.values()) for c in curves.values())
    ax.set_ylim(max(0.0, 100 * lo - 1), 100 * base + 0.5)
    ax.set_title("Pruning sensitivity (★ = chosen)")
    return save_figure(fig, ax, path)


def save_figure(fig, ax, path: str | Path) -> Path:
    """Legend, grid, tight layout; ``fig`` written to ``path`` (a PNG) and closed."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
