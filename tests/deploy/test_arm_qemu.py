"""ARM: cross-compiled artifacts run on an emulated Cortex-A board and match the x86 artifact."""

from __future__ import annotations

import numpy as np
import pytest

EM_AARCH64 = 183  # ELF e_machine


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def test_artifact_is_aarch64(arm_artifact):
    assert _elf_machine(arm_artifact.path / "model.so") == EM_AARCH64
    man = arm_artifact.manifest
    assert man["profile"]["name"] == "arm_cortex_a72"
    assert man["profile"]["cross_compiler"] == "aarch64-linux-gnu-gcc"
    assert man["verification"]["passed"] is None  # cannot run here: the qemu run below does


def test_app_is_aarch64(arm_app):
    assert _elf_machine(arm_app) == EM_AARCH64


def test_emulated_board_matches_x86(arm_artifact, lenet_artifact, mnist_idx, arm_app):
    """Same real MNIST images: aarch64 (qemu, C++ app) vs x86 (Python runtime) logits."""
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.deploy import run_app

    arm = run_app(arm_artifact.path, mnist_idx.images, mnist_idx.labels, repeat=5, app=arm_app)
    ref = runtime.load(lenet_artifact.path)(normalize(mnist_idx.raw))
    assert arm.logits.shape == ref.shape == (mnist_idx.n, 10)
    assert np.abs(arm.logits - ref).max() <= 1e-4
    assert (arm.predictions == ref.argmax(1)).all()
    assert arm.accuracy == pytest.approx(float(np.mean(ref.argmax(1) == mnist_idx.y)))
    assert "runs on aarch64" in arm.stdout


def test_cortex_a53_on_emulated_a53(cross_build, lenet_artifact, mnist_idx, arm_app):
    """arm_cortex_a53 runs under ``qemu -cpu cortex-a53`` (batch 1 only, 50 images)."""
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.deploy import run_app
    from tvmcomp.deploy.cpp_app import manifest_board

    art = cross_build("arm_cortex_a53", batches=(1,))
    assert manifest_board(art.path).runner()[:3] == ["qemu-aarch64-static", "-cpu", "cortex-a53"]
    res = run_app(art.path, mnist_idx.images, limit=50, repeat=3, app=arm_app)
    ref = runtime.load(lenet_artifact.path)(normalize(mnist_idx.raw[:50]))
    assert np.abs(res.logits - ref).max() <= 1e-4


def test_python_runtime_refuses_arm_artifact(arm_artifact, run_tvmcomp):
    """Loading the aarch64 artifact on x86: one line naming the profile and the architecture."""
    from tvmcomp import runtime
    from tvmcomp.errors import ArtifactError

    with pytest.raises(ArtifactError) as e:
        runtime.load(arm_artifact.path)
    msg = str(e.value)
    assert "arm_cortex_a72" in msg and "aarch64" in msg and "\n" not in msg
    r = run_tvmcomp("eval", str(arm_artifact.path))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "arm_cortex_a72" in r.stderr
