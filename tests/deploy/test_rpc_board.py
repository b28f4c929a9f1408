"""The C++ RPC board server (examples/rpc_board): on the emulated ARM board through a real tracker.

``tvmcomp rpc server --board arm_cortex_a72`` runs the aarch64 server under qemu-aarch64-static;
the model code runs on the emulated board. Skipped (with the reason) without the aarch64
toolchain, qemu or the aarch64 TVM runtime, like the other ARM tests.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tvmcomp.errors import TvmcompError
from tvmcomp.rpc import free_port, launch, stop

pytestmark = pytest.mark.rpc
HOST = "127.0.0.1"
ARM_KEY = "arm_cortex_a72"
N_RPC = 16  # real MNIST images sent over RPC per check








def _wait_registered(tracker: str, key: str, proc: subprocess.Popen) -> None:
    from tvmcomp.rpc import parse_addr, server_keys, tracker_summary

    deadline = time.monotonic() + 30
    while key not in server_keys(tracker_summary(*parse_addr(tracker))):
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"the board server {key!r} never registered at the tracker")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def arm_board(arm_toolchain, tracker):
    """The emulated Cortex-A72 board's C++ RPC server, registered at the tracker."""
    proc = launch("server", "--board", ARM_KEY, "--tracker", tracker, "--host", HOST, "--port",
                  str(free_port()), expect=f"RPC server '{ARM_KEY}'")
    _wait_registered(tracker, ARM_KEY, proc)
    yield ARM_KEY
    stop(proc)
    assert proc.returncode == 0


def _int8_build(lenet, tmp_path_factory, profile_name: str):
    """LeNet-5 int8 (batch 1, untuned, 64 calibration images, no verification gate)."""
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.quant import QuantConfig
    from tvmcomp.targets import load_profile

    d = tmp_path_factory.mktemp(f"{profile_name}_int8")
    prof = dataclasses.replace(load_profile(profile_name), tuning_db=str(d / "empty_db"))
    out, _ = build(lenet.onnx, prof, d / "artifact",
                   BuildOptions(batches=(1,), tune_budget_s=0, eval_set=None, progress=False,
                                quant=QuantConfig(num_calib=64)))
    return out


def test_bench_on_emulated_board_matches_x86(arm_artifact, lenet_artifact, tracker, arm_board,
                                             mnist_idx):
    """fp32: timed on the emulated aarch64 board; its outputs on real images match x86."""
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.rpc import bench_rpc

    x = normalize(mnist_idx.raw[:N_RPC])
    res = bench_rpc(arm_artifact.path, tracker, arm_board, batches=(1,), repeat=3,
                    min_repeat_ms=0, inputs=x, output_batch=8)
    assert res["profile"] == ARM_KEY and res["rpc"]["key"] == ARM_KEY
    assert 0 < res["results"]["1"]["artifact"] < 1e6
    ref = runtime.load(lenet_artifact.path)(x)
    assert res["outputs"].shape == ref.shape == (N_RPC, 10)
    assert np.abs(res["outputs"] - ref).max() <= 1e-4
    assert (res["outputs"].argmax(1) == ref.argmax(1)).all()


def test_int8_on_emulated_board_matches_x86(lenet, tmp_path_factory, tracker, arm_board,
                                            mnist_idx):
    """int8: the aarch64 build over RPC gives the x86 int8 build's predictions (and logits)."""
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.rpc import bench_rpc

    arm = _int8_build(lenet, tmp_path_factory, ARM_KEY)
    x86 = _int8_build(lenet, tmp_path_factory, "x86_avx2")
    x = normalize(mnist_idx.raw[:N_RPC])
    res = bench_rpc(arm, tracker, arm_board, batches=(1,), repeat=3, min_repeat_ms=0, inputs=x)
    ref = runtime.load(x86)(x)
    assert (res["outputs"].argmax(1) == ref.argmax(1)).all()
    assert np.abs(res["outputs"] - ref).max() <= 1e-4


def test_cli_bench_default_key_is_profile(arm_artifact, tracker, arm_board, run_tvmcomp):
    """``tvmcomp bench ARM_ART --rpc-tracker`` finds the emulated board by the profile name."""
    r = run_tvmcomp("bench", str(arm_artifact.path), "--batch", "1", "--json",
                    "--rpc-tracker", tracker)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rpc"]["key"] == ARM_KEY and res["results"]["1"]["artifact"] > 0


def test_x86_artifact_on_arm_board_is_one_line(lenet_artifact, tracker, arm_board):
    """An x86 model.so sent to the ARM board: one clear line, and the board keeps serving."""
    from tvmcomp.errors import ArtifactError
    from tvmcomp.rpc import bench_rpc, parse_addr, server_keys, tracker_summary

    with pytest.raises(ArtifactError) as e:
        bench_rpc(lenet_artifact.path, tracker, arm_board, batches=(1,))
    msg = str(e.value)
    assert "cannot load" in msg and "x86_avx2" in msg and "\n" not in msg
    deadline = time.monotonic() + 15  # offered again at the tracker after the failed session
    while True:
        summary = tracker_summary(*parse_addr(tracker))
        if summary["queue_info"].get(ARM_KEY, {}).get("free", 0) > 0:
            break
        assert time.monotonic() < deadline, summary
        time.sleep(0.2)
    assert server_keys(summary)[ARM_KEY] == 1


def test_native_board_server(lenet_artifact, tracker, mnist_idx):
    """The same C++ server built for x86-64 (``--board x86_avx2``) serves the x86 artifact."""
    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.rpc import bench_rpc

    if not shutil.which("g++"):
        pytest.skip("g++ not installed")
    key = "x86_board_test"
    proc = launch("server", "--board", "x86_avx2", "--key", key, "--tracker", tracker,
                  "--port", str(free_port()), expect=f"RPC server '{key}'")
    try:
        _wait_registered(tracker, key, proc)
        x = normalize(mnist_idx.raw[:N_RPC])
        res = bench_rpc(lenet_artifact.path, tracker, key, batches=(1, 8), repeat=3, inputs=x)
        assert set(res["results"]) == {"1", "8"}
        assert np.abs(res["outputs"] - runtime.load(lenet_artifact.path)(x)).max() <= 1e-5
    finally:
        stop(proc)


def test_board_server_needs_tracker():
    r = subprocess.run([sys.executable, "-m", "tvmcomp.rpc", "server", "--board", ARM_KEY,
                        "--tracker", f"{HOST}:{free_port()}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("tvmcomp rpc: error: cannot reach the RPC tracker")
    assert len(r.stderr.strip().splitlines()) == 1


def test_board_server_missing_qemu_names_package(monkeypatch):
    from tvmcomp.deploy import rpc_board, toolchain
    from tvmcomp.deploy.boards import board_for
    from tvmcomp.targets import load_profile

    real = shutil.which
    monkeypatch.setattr(toolchain.shutil, "which",
                        lambda n: None if n == "qemu-aarch64-static" else real(n))
    with pytest.raises(TvmcompError) as e:
        rpc_board.server_command(board_for(load_profile(ARM_KEY)), f"{HOST}:9190")
    assert "qemu-aarch64-static not found" in str(e.value)
    assert "qemu-user-static" in str(e.value) and "\n" not in str(e.value)


def test_board_server_missing_runtime_says_setup_arm(monkeypatch, tmp_path):
    from tvmcomp.deploy import rpc_board

    if shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("make") is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed (run scripts/setup_arm.sh)")
    monkeypatch.setenv("TVMCOMP_AARCH64_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(TvmcompError) as e:
        rpc_board.build_server("aarch64", out_root=tmp_path / "out")
    assert "aarch64 TVM runtime missing" in str(e.value)
    assert "scripts/setup_arm.sh" in str(e.value) and "\n" not in str(e.value)


def test_server_needs_key_or_board():
    r = subprocess.run([sys.executable, "-m", "tvmcomp.rpc", "server", "--tracker",
                        f"{HOST}:9190"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--key KEY (or --board PROFILE)" in r.stderr


def test_tune_on_emulated_board_over_rpc(tracker, arm_board, gemm_onnx, tmp_path, run_tvmcomp):
    """`tvmcomp tune --profile arm_cortex_a72 --rpc-tracker`: candidates cross-linked here,
    measured on the emulated board (its runtime provides random_fill_for_measure); the records
    say they came from an emulator, and a build that uses them says so in its manifest; with
    --rpc-tracker the build checks the schedule and verifies the artifact on the board."""
    path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=64, n=32)
    cache = tmp_path / "cache"
    r = run_tvmcomp("tune", str(path), "--profile", ARM_KEY, "--rpc-tracker", tracker,
                    "--batch", "1", "--tune-budget", "120", "--trials-per-task", "2",
                    "--tuning-dir", str(cache), timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"measuring on 1 RPC server registered as '{ARM_KEY}'" in r.stdout
    assert "(aarch64, emulated by qemu-aarch64-static) 2" in r.stdout
    records = (cache / "database_tuning_record.json").read_text().splitlines()
    run_secs = [json.loads(line)[1][1] for line in records]
    assert len(run_secs) == 2 and all(0 < s < 1 for t in run_secs for s in t)  # measured
    (origin,) = json.loads((cache / "measured_on.json").read_text()).values()
    assert origin["emulated"] is True and origin["task"] == "fused_matmul_add"
    r = run_tvmcomp("build", str(path), "--profile", ARM_KEY, "--batch", "1", "--tune-budget",
                    "0", "--tuning-dir", str(cache), "--out", str(tmp_path / "art"), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "1 on an emulated board, so their timings are the emulator's" in r.stdout
    man = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert man["kernels"] == {"fused_matmul_add": "tuned, unchecked (arm_cortex_a72 cannot run "
                                                  "on the build host)"}
    assert man["tuning"]["measured_over_rpc"]["fused_matmul_add"]["emulated"] is True
    # with the board: the tuned schedule is run there against the unscheduled kernel first
    r = run_tvmcomp("build", str(path), "--profile", ARM_KEY, "--batch", "1", "--tune-budget",
                    "0", "--tuning-dir", str(cache), "--out", str(tmp_path / "checked"),
                    "--rpc-tracker", tracker, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (f"checked tuned schedules against unscheduled kernels on RPC board '{ARM_KEY}': "
            "1 run, 0 cached verdicts, 0 rejected") in r.stdout
    man = json.loads((tmp_path / "checked" / "manifest.json").read_text())
    assert man["kernels"] == {"fused_matmul_add": f"tuned, checked on RPC board '{ARM_KEY}'"}
    t = man["tuning"]
    assert t["schedules_checked"] is True and t["checked_on"] == f"RPC board '{ARM_KEY}'"
    # and the artifact is verified there against ONNX Runtime here (skipped without a board)
    v = man["verification"]
    assert v["passed"] is True and v["ran_on"] == f"RPC board '{ARM_KEY}'", v
    assert f", run on RPC board '{ARM_KEY}': max |err|" in r.stdout
    unchecked = json.loads((tmp_path / "art" / "manifest.json").read_text())["verification"]
    assert unchecked["passed"] is None and "cannot run on this machine" in unchecked["skipped"]
    verdicts = json.loads((cache / "validated.json").read_text())
    assert [(k.split(":")[0], v["ok"], v["task"]) for k, v in verdicts.items()] == [
        (f"RPC board '{ARM_KEY}'", True, "fused_matmul_add")]
