"""Seeded training of LeNet-5 on the shipped MNIST images, with a progress bar."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data import Dataset, normalize
from ..errors import TvmcompError


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; ``shift`` is the random-translation augmentation in pixels."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.shift < 0:
            raise TvmcompError(f"invalid training config: {asdict(self)}")


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``shift`` pixels (zero-filled in normalised space)."""
    if shift == 0:
        return x
    n = x.shape[0]
    pad = nn.functional.pad(x, (shift,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[2:]
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w]
    return out


def train(model: nn.Module, data: Dataset, cfg: TrainConfig = TrainConfig(),
          progress: bool = True, desc: str = "train") -> nn.Module:
    """Train ``model`` in place with Adam and a cosine learning-rate schedule; returns it."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(normalize(data.images))
    y_all = torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(data) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i: i + cfg.batch_size]
            x = _augment(x_all[idx], cfg.shift, gen)
            y = y_all[idx]
            opt.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            total += len(idx)
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def evaluate_torch(model: nn.Module, data: Dataset, batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``data``."""
    model.eval()
    x_all = normalize(data.images)
    correct = 0
    for i in range(0, len(data), batch_size):
        logits = model(torch.from_numpy(x_all[i: i + batch_size]))
        correct += int((logits.argmax(1).numpy() == data.labels[i: i + batch_size]).sum())
    return correct / len(data)


def predict_numpy(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).argmax(axis=1)
