"""CUDA: LeNet-5 builds for cuda_sm80 / cuda_sm90, kernels compiled by nvcc to fatbins (no GPU)."""

from __future__ import annotations

import shutil

import pytest

from tvmcomp.errors import TvmcompError


def test_pipeline_schedules_gpu_kernels():
    """CUDA targets get DLight's rule-based schedules in the pipeline's schedule phase."""
    import tvm

    from tvmcomp.pipeline import make_pipeline, pass_names

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    assert "schedule/GpuDefaultSchedule" in pass_names(make_pipeline(target))


@pytest.fixture(scope="module", params=["cuda_sm80", "cuda_sm90"])
def cuda_artifact(request, lenet, tmp_path_factory):
    import dataclasses

    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed (CUDA builds compile their kernels with it)")
    d = tmp_path_factory.mktemp(request.param)
    prof = dataclasses.replace(load_profile(request.param), tuning_db=str(d / "empty_db"))
    out, manifest = build(lenet.onnx, prof, d / "artifact",
                          BuildOptions(batches=(1, 8), tune_budget_s=0, eval_set=None,
                                       progress=False))
    return out, manifest, prof


def test_cuda_artifact(cuda_artifact):
    from tvmcomp.deploy.cuda import gpu_code

    out, manifest, prof = cuda_artifact
    assert manifest["profile"]["family"] == "cuda"
    assert manifest["target"]["arch"] == prof.target["arch"]
    assert "schedule/GpuDefaultSchedule" in manifest["passes"]
    assert len(manifest["kernels"]) >= 10  # conv, pool, dense kernels of LeNet-5
    assert set(manifest["kernels"].values()) == {"DLight rules"}
    lib = (out / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 62  # x86-64 host
    # a fatbin: machine code for the profile's arch and its PTX (JIT-compiled on newer GPUs),
    # no CUDA source to compile when loaded
    sm = prof.target["arch"].removeprefix("sm_")
    assert sorted(gpu_code(lib)) == [f"compute_{sm}", f"sm_{sm}"]
    assert b"__global__" not in lib
    if prof.missing_cpu_flags():  # no GPU here: the build says so instead of failing
        assert manifest["verification"]["passed"] is None


def test_cuda_artifact_refused_without_gpu(cuda_artifact):
    from tvmcomp import runtime
    from tvmcomp.errors import ArtifactError

    out, _, prof = cuda_artifact
    if not prof.missing_cpu_flags():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ArtifactError, match=f"{prof.name}.*gpu:cuda"):
        runtime.load(out)


@pytest.fixture
def callback():
    """A stand-in CUDA compile callback (TVM's is restored after the test); ``callback()`` calls
    whichever callback is registered."""
    import tvm_ffi
    from tvm.support import nvcc  # noqa: F401 - registers TVM's callback

    from tvmcomp.deploy.cuda import JIT_CALLBACK

    old = tvm_ffi.get_global_func(JIT_CALLBACK)
    tvm_ffi.register_global_func(JIT_CALLBACK, lambda *_: b"sentinel", override=True)
    yield lambda: tvm_ffi.get_global_func(JIT_CALLBACK)("")
    tvm_ffi.register_global_func(JIT_CALLBACK, old, override=True)


def test_cuda_codegen_restores_callback(callback):
    from tvmcomp.deploy.cuda import cuda_codegen
    from tvmcomp.targets import load_profile

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    with pytest.raises(RuntimeError, match="inside"), cuda_codegen(load_profile("cuda_sm90")):
        raise RuntimeError("inside")
    assert callback() == b"sentinel"


def test_cuda_codegen_noop_for_cpu_profiles(callback, monkeypatch):
    from tvmcomp.deploy.cuda import cuda_codegen
    from tvmcomp.targets import load_profile

    monkeypatch.setenv("PATH", "/nonexistent")  # nvcc not asked for
    with cuda_codegen(load_profile("x86_avx2")):
        assert callback() == b"sentinel"


def test_cuda_codegen_without_nvcc_names_package(monkeypatch):
    from tvmcomp.deploy.cuda import cuda_codegen
    from tvmcomp.targets import load_profile

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TvmcompError) as e, cuda_codegen(load_profile("cuda_sm80")):
        pass
    msg = str(e.value)
    assert "\n" not in msg and "nvcc" in msg and "Debian package nvidia-cuda-toolkit" in msg
