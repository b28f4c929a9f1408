"""Shared fixtures: a briefly trained LeNet-5 exported to ONNX, MNIST calibration/test images."""

from __future__ import annotations

import numpy as np
import pytest

from tvmcomp.data import load_train_5k, normalize
from tvmcomp.data.mnist import default_mnist_dir, load_idx, split_holdout


@pytest.fixture(scope="session")
def mnist_5k():
    return load_train_5k()


@pytest.fixture(scope="session")
def calib_images(mnist_5k) -> np.ndarray:
    return normalize(mnist_5k.images)


@pytest.fixture(scope="session")
def test_set(mnist_5k):
    """The official 10k test set when present, else a held-out split of the 5k images."""
    d = default_mnist_dir()
    if d is not None:
        return load_idx(d)
    return split_holdout(mnist_5k)[1]


@pytest.fixture(scope="session")
def lenet_onnx(tmp_path_factory, mnist_5k) -> str:
    """LeNet-5 trained for one epoch (~95% test accuracy, a few seconds), dynamic batch."""
    import torch

    from tvmcomp.frontend import export_onnx
    from tvmcomp.model import LeNet5, TrainConfig, train

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # modest CPU use; the machine is shared
    try:
        model = train(LeNet5(), mnist_5k, TrainConfig(epochs=1, lr=5e-3, batch_size=32, shift=0),
                      progress=False)
    finally:
        torch.set_num_threads(threads)
    return str(export_onnx(model, tmp_path_factory.mktemp("lenet") / "lenet.onnx"))


@pytest.fixture(scope="session")
def profile():
    """The profile whose int8 kernels the per-layer report compiles (x86 AVX2: float32
    accumulation)."""
    from tvmcomp.targets import load_profile

    return load_profile("x86_avx2")


@pytest.fixture(scope="session")
def target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2", "num-cores": 1})
