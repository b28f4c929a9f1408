"""Shared fixtures: one quickly trained LeNet-5, its ONNX export and ONE built artifact.

Everything that compiles uses ``tune_budget_s=0`` and a profile whose tuning database is an
empty temp folder, so tests never tune, never read or write ``tuning_logs/`` (another process
may be tuning into it) and are deterministic.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = "x86_avx2"
BATCHES = (1, 8)


def isolated_profile(tuning_db: Path, name: str = PROFILE):
    """A shipped profile whose committed database is ``tuning_db`` (need not exist) and that
    falls back on no other profile's records."""
    from tvmcomp.targets import load_profile

    return dataclasses.replace(load_profile(name), tuning_db=str(tuning_db), record_fallback=())


def make_gemm_onnx(path: Path, k: int = 32, n: int = 16, batch="N", seed: int = 0):
    """A one-node ONNX model ``y = x @ W + B`` (x: [batch, k]); returns (path, W, B)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="gemm0")], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, w, b


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m tvmcomp.cli ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "tvmcomp.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# Helpers are handed out as fixtures: other test folders have their own conftest.py, so
# ``from conftest import ...`` would be ambiguous.
@pytest.fixture(scope="session")
def profile_with_db():
    """``profile_with_db(tuning_db)``: the x86_avx2 profile with its own tuning database."""
    return isolated_profile


@pytest.fixture(scope="session")
def gemm_onnx():
    """``gemm_onnx(path, k=32, n=16, batch="N", seed=0) -> (path, W, B)``."""
    return make_gemm_onnx


def share_levels(net, conv_levels: int, fc_levels: int):
    """``net`` (in place) with each weight rounded to the nearest of ``conv_levels`` (conv)
    or ``fc_levels`` (fc) evenly spaced values between its min and max: a shared model."""
    import torch

    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                levels = torch.linspace(float(p.min()), float(p.max()),
                                        conv_levels if p.dim() == 4 else fc_levels)
                p.copy_(levels[(p[..., None] - levels).abs().argmin(-1)])
    return net


@pytest.fixture(scope="session")
def share_weights():
    """``share_weights(net, conv_levels, fc_levels) -> net``: see :func:`share_levels`."""
    return share_levels


@pytest.fixture(scope="session")
def shared_lenet(tmp_path_factory, lenet):
    """The trained ``lenet`` with shared weights (conv 256 levels, fc 16): model and ONNX."""
    import copy

    from tvmcomp.frontend import export_onnx

    d = tmp_path_factory.mktemp("shared_lenet")
    net = share_levels(copy.deepcopy(lenet.model).eval(), 256, 16)
    return SimpleNamespace(model=net, onnx=export_onnx(net, d / "lenet5_shared.onnx"))


@pytest.fixture(scope="session")
def run_tvmcomp():
    """``run_tvmcomp(*args) -> CompletedProcess`` of ``python -m tvmcomp.cli ARGS``."""
    return run_cli


def so_kernels(art_dir: Path) -> set[str]:
    """The kernels the VM of ``art_dir/model.so`` calls (every entry point), from its code."""
    import re

    import tvm

    text = tvm.runtime.load_module(str(Path(art_dir) / "model.so"))["as_text"]()
    return {n for n in re.findall(r"call\s+(\S+)", text) if not n.startswith("vm.builtin.")}


@pytest.fixture(scope="session")
def kernels_in_so():
    """``kernels_in_so(artifact_dir) -> set``: kernel names the artifact's VM code calls."""
    return so_kernels


@pytest.fixture(scope="session")
def x86_host():
    """Skip unless this machine can run the x86_avx2 profile (AVX2 + FMA)."""
    from tvmcomp.targets import load_profile

    prof = load_profile(PROFILE)
    if not prof.runs_here():
        pytest.skip(f"this machine lacks {prof.missing_cpu_flags()} needed by {PROFILE}")
    return prof


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    from tvmcomp.data.mnist import default_mnist_dir

    d = default_mnist_dir()
    if d is None or not Path(d).is_dir():
        pytest.skip("MNIST 10k test set not found (set TVMCOMP_MNIST_DIR or put the IDX files "
                    "in ../shared/data/mnist)")
    return Path(d)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from tvmcomp.data import load_idx

    return load_idx(mnist_dir)


@pytest.fixture(scope="session")
def train_5k():
    from tvmcomp.data import load_train_5k

    return load_train_5k()


@pytest.fixture(scope="session")
def eval_set():
    """What the CLI evaluates on: the MNIST 10k test set if present, else the held-out split."""
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set

    d = default_mnist_dir()
    return load_eval_set(d if d is not None and Path(d).is_dir() else None)[1]


@pytest.fixture(scope="session")
def lenet(tmp_path_factory, train_5k):
    """LeNet-5 trained 1 epoch (seed 0): model, checkpoint and dynamic-batch ONNX export."""
    import torch

    from tvmcomp.frontend import export_onnx
    from tvmcomp.model import LeNet5, TrainConfig, save_checkpoint, train

    d = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    model = train(LeNet5(), train_5k, TrainConfig(epochs=1, seed=0), progress=False)
    ckpt = d / "lenet5.pt"
    save_checkpoint(model, ckpt, {"note": "test fixture"})
    onnx_path = export_onnx(model, d / "lenet5.onnx",
                            metadata={"tvmcomp.checkpoint": str(ckpt.resolve())})
    return SimpleNamespace(model=model, checkpoint=ckpt, onnx=onnx_path, dir=d)


@pytest.fixture(scope="session")
def lenet_artifact(tmp_path_factory, lenet, eval_set, x86_host):
    """The one LeNet-5 artifact (x86_avx2, batches 1 and 8, no tuning), verified on MNIST."""
    from tvmcomp.compiler import BuildOptions, build

    d = tmp_path_factory.mktemp("lenet_artifact")
    prof = isolated_profile(d / "empty_tuning_db")
    out, manifest = build(lenet.onnx, prof, d / "artifact",
                          BuildOptions(batches=BATCHES, tune_budget_s=0, eval_set=eval_set,
                                       progress=False))
    return SimpleNamespace(path=out, manifest=manifest, profile=prof, batches=BATCHES)


def pytest_configure(config):
    # The per-user tuning cache ($XDG_CACHE_HOME/tvmcomp/tuning) of every build, tune and CLI
    # subprocess of this session goes to a temp folder: the suite never reads or writes the
    # user's cache (nor, being read-only to builds, the committed tuning_logs/).
    cache = tempfile.mkdtemp(prefix="tvmcomp-test-cache.")
    config._tvmcomp_cache = cache
    os.environ["XDG_CACHE_HOME"] = cache
    # Kernels with no record anywhere run their plain loops here instead of first measuring
    # rule-based schedules (a few builds a kernel): most tests build with empty databases.
    # tests/test_rules.py turns the rules on where it tests them.
    os.environ["TVMCOMP_RULE_SCHEDULES"] = "0"
    # The measured gates time each layer's kernels in 5 interleaved rounds instead of 21:
    # the tests check what they decide from their timings, not how steady those are.
    os.environ["TVMCOMP_GATE_REPEATS"] = "5"
    # tvmcomp exports with the TorchScript exporter on purpose (dynamo=False)
    config.addinivalue_line(
        "filterwarnings", "ignore:You are using the legacy TorchScript-based ONNX export")
    config.addinivalue_line("filterwarnings", "ignore:The feature will be removed")


def pytest_unconfigure(config):
    cache = getattr(config, "_tvmcomp_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
