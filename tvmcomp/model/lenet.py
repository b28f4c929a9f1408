"""LeNet-5 and the checkpoint format (a plain dict, loadable with ``weights_only=True``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, TvmcompError
from .lowrank import apply_ranks, ranks_of
from .suite import SUITE

CHECKPOINT_FORMAT = "tvmcomp.checkpoint/1"


class LeNet5(nn.Module):
    """conv 5×5×6 pad 2 → maxpool → conv 5×5×16 → maxpool → fc 400→120→84→10, ReLU."""

    input_shape = (1, 1, 28, 28)  # as the model suite's CNNs declare theirs

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


# checkpoint architecture names: LeNet-5 and the model suite's CNNs (tvmcomp.model.suite)
ARCHITECTURES = {"lenet5": LeNet5, **SUITE}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``{"format", "arch", "state_dict", "meta"}``, and ``"lowrank"`` (``{layer:
    rank}``) for a model with factorized layers; tensors and plain types only."""
    arch = next((k for k, v in ARCHITECTURES.items() if type(model) is v), None)
    if arch is None:
        raise ModelError(f"no checkpoint architecture name for {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ckpt = {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": model.state_dict(),
            "meta": dict(meta or {})}
    ranks = ranks_of(model)
    if ranks:
        ckpt["lowrank"] = ranks
    torch.save(ckpt, tmp)
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
    state, meta = ckpt.get("state_dict"), ckpt.get("meta", {})
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelError(f"{path}: 'state_dict' must map parameter names to tensors")
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: 'meta' must be a mapping, got {type(meta).__name__}")
    model = ARCHITECTURES[arch]()
    ranks = ckpt.get("lowrank", {})
    if not isinstance(ranks, dict):
        raise ModelError(f"{path}: 'lowrank' must map layer names to ranks")
    try:
        apply_ranks(model, ranks)
    except TvmcompError as e:
        raise ModelError(f"{path}: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit {arch}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, dict(meta)


def torch_int8_lenet(model: LeNet5, calib: torch.Tensor, backend: str = "x86") -> nn.Module:
    """PyTorch's own eager int8 LeNet-5 (``torch.ao.quantization`` prepare/convert).

    A peer baseline for our int8 kernels: conv+ReLU and linear+ReLU fused, ``backend``'s default
    qconfig (per-channel weights, histogram observers), calibrated on ``calib``.
    """
    import copy

    from torch.ao import quantization as tq

    class _QLeNet5(nn.Module):
        def __init__(self, m: LeNet5):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.conv1, self.conv2, self.pool = m.conv1, m.conv2, m.pool
            self.fc1, self.fc2, self.fc3 = m.fc1, m.fc2, m.fc3
            self.r1, self.r2, self.r3, self.r4 = (nn.ReLU() for _ in range(4))

        def forward(self, x):
            x = self.pool(self.r1(self.conv1(self.quant(x))))
            x = self.pool(self.r2(self.conv2(x)))
            x = torch.flatten(x, 1)
            x = self.r4(self.fc2(self.r3(self.fc1(x))))
            return self.dequant(self.fc3(x))

    q = _QLeNet5(copy.deepcopy(model)).eval()
    torch.backends.quantized.engine = backend
    q.qconfig = tq.get_default_qconfig(backend)
    q = tq.fuse_modules(q, [["conv1", "r1"], ["conv2", "r2"], ["fc1", "r3"], ["fc2", "r4"]])
    tq.prepare(q, inplace=True)
    with torch.no_grad():
        q(calib)
    return tq.convert(q)
