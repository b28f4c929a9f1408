"""Fixtures: a LeNet-5 trained for one epoch on a 1,000-image subset (a few seconds)."""

from __future__ import annotations

import pytest

from tvmcomp.data import Dataset, load_train_5k


@pytest.fixture(scope="session")
def small_train() -> Dataset:
    d = load_train_5k()
    return Dataset(d.images[:1000], d.labels[:1000], d.source + ", first 1000")


@pytest.fixture(scope="session")
def lenet_ckpt(tmp_path_factory, small_train) -> str:
    import torch

    from tvmcomp.model import LeNet5, TrainConfig, save_checkpoint, train

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    try:
        model = train(LeNet5(), small_train, TrainConfig(epochs=2, lr=5e-3, batch_size=32,
                                                          shift=0), progress=False)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    save_checkpoint(model, path)
    return str(path)
