"""Profiles for real targets, their boards, and one-line errors for missing host tools."""

from __future__ import annotations

import pytest

from tvmcomp.errors import TvmcompError


@pytest.mark.parametrize("name", ["arm_cortex_a72", "arm_cortex_a53", "cuda_sm80", "cuda_sm90"])
def test_profiles_load_and_name_their_board(name):
    from tvmcomp.deploy import board_for
    from tvmcomp.targets import load_profile

    p = load_profile(name)
    assert not p.runs_here() or p.family == "cuda"
    b = board_for(p)
    assert b.rpc_key == name
    if p.family == "arm":
        assert p.cross_compiler == "aarch64-linux-gnu-gcc"
        assert b.kind == "qemu-user" and b.arch == "aarch64"
        assert b.emulator[:3] == ("qemu-aarch64-static", "-cpu", p.target["mcpu"])
    else:
        assert b.kind == "cuda"
    assert name in b.describe()


@pytest.mark.parametrize("tool,package", [
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    ("qemu-aarch64-static", "qemu-user-static"),
])
def test_missing_tool_names_debian_package(monkeypatch, tool, package):
    from tvmcomp.deploy import find_tool

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmcompError) as e:
        find_tool(tool)
    msg = str(e.value)
    assert "\n" not in msg and tool in msg and f"Debian package {package}" in msg


def test_missing_cross_compiler_before_build(monkeypatch):
    import dataclasses

    from tvmcomp.deploy import check_cross_compiler
    from tvmcomp.targets import load_profile

    p = load_profile("arm_cortex_a72")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmcompError, match="gcc-aarch64-linux-gnu"):
        check_cross_compiler(p)
    assert check_cross_compiler(dataclasses.replace(p, cross_compiler=None)) is None


def test_missing_qemu_for_emulated_board(monkeypatch):
    from tvmcomp.deploy import board_for
    from tvmcomp.targets import load_profile

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmcompError, match="qemu-user-static"):
        board_for(load_profile("arm_cortex_a53")).runner()


def test_missing_aarch64_runtime(monkeypatch, tmp_path):
    from tvmcomp.deploy import runtime_dir

    monkeypatch.setenv("TVMCOMP_AARCH64_ROOT", str(tmp_path))
    with pytest.raises(TvmcompError, match="scripts/setup_arm.sh"):
        runtime_dir("aarch64")


def test_build_without_cross_compiler(lenet, tmp_path, monkeypatch):
    """``build`` for an ARM profile without the toolchain: one line, before any compiling."""
    import dataclasses

    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    prof = dataclasses.replace(load_profile("arm_cortex_a72"), tuning_db=str(tmp_path / "db"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmcompError) as e:
        build(lenet.onnx, prof, tmp_path / "art", BuildOptions(batches=(1,), tune_budget_s=0,
                                                               eval_set=None, progress=False))
    assert "aarch64-linux-gnu-gcc not found" in str(e.value)
    assert "Debian package gcc-aarch64-linux-gnu" in str(e.value)
    assert not (tmp_path / "art").exists()


def test_board_overrides_from_profile():
    import dataclasses

    from tvmcomp.deploy import board_for
    from tvmcomp.targets import load_profile

    p = load_profile("arm_cortex_a72")
    fake = type("P", (), {**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)},
                          "board": {"rpc_key": "rpi4"}})()
    assert board_for(fake).rpc_key == "rpi4" and board_for(fake).kind == "qemu-user"
    fake.board = {"ssh": "pi@rpi4"}
    with pytest.raises(TvmcompError, match="unknown \\[board\\] key 'ssh'"):
        board_for(fake)


def test_disagreements_list_the_reference_margin():
    import numpy as np

    from tvmcomp.deploy.compare import disagreements

    ref = np.array([[0.0, 3.0, 2.5], [1.0, 0.0, 0.0], [0.2, 0.1, 0.9]], np.float32)
    board = ref.copy()
    board[0] = [0.0, 2.5, 3.0]  # a near-tie flipped
    assert disagreements(board, ref) == [
        {"image": 0, "board": 2, "reference": 1, "reference_margin": 0.5}]
    assert disagreements(ref, ref) == []
