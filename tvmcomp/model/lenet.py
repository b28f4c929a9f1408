"""LeNet-5 and its checkpoint format (a plain dict, loadable with ``weights_only=True``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

CHECKPOINT_FORMAT = "tvmcomp.checkpoint/1"


class LeNet5(nn.Module):
    """conv 5×5×6 pad 2 → maxpool → conv 5×5×16 → maxpool → fc 400→120→84→10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


ARCHITECTURES = {"lenet5": LeNet5}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``{"format", "arch", "state_dict", "meta"}``; tensors and plain types only."""
    arch = next((k for k, v in ARCHITECTURES.items() if type(model) is v), None)
    if arch is None:
        raise ModelError(f"no checkpoint architecture name for {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": model.state_dict(),
         "meta": dict(meta or {})},
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a tvmcomp checkpoint (expected {CHECKPOINT_FORMAT})")
    arch = ckpt.get("arch")
    if arch not in ARCHITECTURES:
        raise ModelError(f"{path}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch]()
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit {arch}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, dict(ckpt.get("meta", {}))
