"""PyTorch models and their training."""

from .lenet import LeNet5, load_checkpoint, save_checkpoint
from .train import TrainConfig, evaluate_torch, train

__all__ = [
    "LeNet5",
    "TrainConfig",
    "evaluate_torch",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
