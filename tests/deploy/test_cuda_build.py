"""CUDA: LeNet-5 builds for cuda_sm80 / cuda_sm90 with DLight schedules (no GPU needed here)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _pipeline_schedules_gpu() -> bool:
    import tvm

    from tvmcomp.pipeline import make_pipeline, pass_names

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    return "schedule/GpuDefaultSchedule" in pass_names(make_pipeline(target))


pytestmark = pytest.mark.skipif(not _pipeline_schedules_gpu(),
                                reason="tvmcomp/pipeline.py lacks the GpuDefaultSchedule patch")


def _cuda_modules(mod):
    for m in mod.imports:
        if m.kind == "cuda":
            yield m
        yield from _cuda_modules(m)


@pytest.fixture(scope="module", params=["cuda_sm80", "cuda_sm90"])
def cuda_artifact(request, lenet, tmp_path_factory):
    import dataclasses

    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    d = tmp_path_factory.mktemp(request.param)
    prof = dataclasses.replace(load_profile(request.param), tuning_db=str(d / "empty_db"))
    out, manifest = build(lenet.onnx, prof, d / "artifact",
                          BuildOptions(batches=(1, 8), tune_budget_s=0, eval_set=None,
                                       progress=False))
    return out, manifest, prof


def test_cuda_artifact(cuda_artifact):
    out, manifest, prof = cuda_artifact
    assert manifest["profile"]["family"] == "cuda"
    assert manifest["target"]["arch"] == prof.target["arch"]
    assert "schedule/GpuDefaultSchedule" in manifest["passes"]
    lib = (out / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 62  # x86-64 host
    # the CUDA module (kernel source, compiled for the GPU when loaded there) is inside
    assert b"__global__" in lib and b"blockIdx" in lib
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


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_compile_with_nvcc(lenet, arch, tmp_path):
    """Every kernel gets a DLight schedule and the CUDA source compiles with nvcc for ``arch``."""
    import tvm

    from tvmcomp.frontend.onnx_import import import_batches, load_onnx
    from tvmcomp.pipeline import compile_fused, fuse

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    target = tvm.target.Target({"kind": "cuda", "arch": arch},
                               host={"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    model, info = load_onnx(lenet.onnx)
    ex = compile_fused(fuse(import_batches(model, info, [1]), target), target)
    (cuda,) = list(_cuda_modules(ex.mod))
    src = cuda.inspect_source("")
    assert src.count("__global__") >= 10  # conv, pool, dense kernels of LeNet-5
    cu = tmp_path / "kernels.cu"
    cu.write_text(src)
    res = subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o",
                          str(tmp_path / "kernels.fatbin"), str(cu)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "kernels.fatbin").stat().st_size > 1000
