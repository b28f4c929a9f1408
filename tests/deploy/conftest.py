"""Fixtures for deployment tests: the ARM toolchain (skip without it), ARM artifacts, IDX files."""

from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

import pytest

ARM_TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64-static")
N_IMAGES = 200  # real MNIST images run on the emulated board (qemu is ~30x slower than native)


@pytest.fixture(scope="session")
def arm_toolchain():
    """Skip unless the aarch64 toolchain, qemu and the aarch64 TVM runtime are installed."""
    from tvmcomp.errors import TvmcompError

    missing = [t for t in ARM_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run scripts/setup_arm.sh)")
    from tvmcomp.deploy import runtime_dir

    try:
        return runtime_dir("aarch64")
    except TvmcompError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def mnist_idx(tmp_path_factory, eval_set):
    """The first N_IMAGES real MNIST evaluation images and labels as uncompressed IDX files."""
    from tvmcomp.deploy.cpp_app import write_idx

    d = tmp_path_factory.mktemp("idx")
    images, labels = write_idx(eval_set.images[:N_IMAGES], eval_set.labels[:N_IMAGES], d)
    return SimpleNamespace(images=images, labels=labels, n=N_IMAGES,
                           raw=eval_set.images[:N_IMAGES], y=eval_set.labels[:N_IMAGES])


def _build_cross(lenet, tmp_path_factory, profile_name: str, batches=(1, 8)):
    """LeNet-5 built for a cross-compiled profile with an empty tuning database."""
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    d = tmp_path_factory.mktemp(profile_name)
    prof = dataclasses.replace(load_profile(profile_name), tuning_db=str(d / "empty_db"))
    out, manifest = build(lenet.onnx, prof, d / "artifact",
                          BuildOptions(batches=batches, tune_budget_s=0, eval_set=None,
                                       progress=False))
    return SimpleNamespace(path=out, manifest=manifest, profile=prof)


@pytest.fixture(scope="session")
def arm_artifact(lenet, tmp_path_factory, arm_toolchain):
    """The fixture LeNet-5 cross-compiled for arm_cortex_a72 (batches 1 and 8, untuned)."""
    return _build_cross(lenet, tmp_path_factory, "arm_cortex_a72")


@pytest.fixture(scope="session")
def cross_build(lenet, tmp_path_factory):
    """``cross_build(profile_name, batches=(1, 8))``: the fixture LeNet-5 built for a profile."""
    return lambda name, batches=(1, 8): _build_cross(lenet, tmp_path_factory, name, batches)


@pytest.fixture(scope="session")
def x86_app():
    from tvmcomp.deploy import build_app

    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    return build_app("x86_64")


@pytest.fixture(scope="session")
def arm_app(arm_toolchain):
    from tvmcomp.deploy import build_app

    return build_app("aarch64")


@pytest.fixture(scope="module")
def tracker():
    """A real TVM RPC tracker (``tvmcomp rpc tracker``) on loopback, one per test module."""
    from tvmcomp.rpc import free_port, launch, stop

    port = free_port()
    proc = launch("tracker", "--host", "127.0.0.1", "--port", str(port),
                  expect="RPC tracker listening")
    yield f"127.0.0.1:{port}"
    stop(proc)
