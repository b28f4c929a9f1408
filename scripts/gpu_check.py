#!/usr/bin/env python
"""GPU check: LeNet-5 built for the cuda_sm80 and cuda_sm90 profiles, run on a CUDA GPU.

The artifacts are built with ``tvmcomp.compiler.build``, as ``tvmcomp build`` does: the CUDA
kernels are compiled at build time into a fatbin (machine code for the profile's arch plus its
PTX, which the driver JIT-compiles on a newer GPU), so the GPU host needs only TVM's runtime
libraries. There each artifact is verified against ONNX Runtime on the MNIST test set, its
logits are compared with an x86 CPU artifact of the same model, and batch 1 and 64 are timed
on the GPU.

    .venv/bin/python scripts/gpu_check.py --prepare .gpu [--model M.onnx | --epochs N]
        here (nvcc and gcc, no GPU): build the artifacts, copy the MNIST test set and stage a
        runtime-only TVM for the GPU host's Python into .gpu; .gpu/COMMAND.txt is the command
        to run there, in the repository root with .gpu beside it
    python3 scripts/gpu_check.py --run .gpu [--out DIR]
        on the GPU host: one JSON per profile into DIR ($OUT, else build/gpu_check)
    .venv/bin/python scripts/gpu_check.py [--model M.onnx | --epochs N] [--out DIR]
        both, on a GPU host with the full TVM and nvcc

Exit status: 0 all checks passed, 1 a check failed, 2 no usable CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CUDA_PROFILES = ("cuda_sm80", "cuda_sm90")
CPU_PROFILE = "x86_avx2"  # runs on any x86-64 GPU host (host_profile() may pick AVX-512)
MODEL = "model.onnx"
DEVICE_PYTHON = "3.12"
CUDART = "libcudart.so.13"  # needed by the apache-tvm wheel's libtvm_runtime_cuda.so
CPU_TOL = 1e-3  # of the CPU logits' largest magnitude (at least 1), as verify's rel_tol
COMMAND = ('set -o pipefail; export PYTHONPATH="$PWD/{d}/tvm_rt:$PWD/{d}/ffi" PYTHONUNBUFFERED=1 '
           'TVM_USE_RUNTIME_LIB=1 TVM_FFI_DISABLE_TORCH_C_DLPACK=1 '
           'LD_LIBRARY_PATH="${{LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}}/usr/local/nvidia/lib64"; '
           'nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader; '
           'python3 scripts/gpu_check.py --run {d} --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"\n')


def runs_as(code: list[str], cc: int) -> str | None:
    """How a GPU of compute capability ``cc`` (e.g. 90) runs ``code``; None when it cannot."""
    sass = [int(c[3:]) for c in code if c.startswith("sm_")]
    ptx = [int(c[8:]) for c in code if c.startswith("compute_")]
    if any(a // 10 == cc // 10 and a <= cc for a in sass):
        return f"sm_{max(a for a in sass if a // 10 == cc // 10 and a <= cc)} machine code"
    if any(a <= cc for a in ptx):
        return f"compute_{max(a for a in ptx if a <= cc)} PTX, JIT-compiled by the driver"
    if code == ["CUDA source"]:
        return "CUDA source, compiled by TVM's JIT callback when loaded"
    return None


def _model(path: Path, source: str | None, epochs: int) -> Path:
    """``source`` copied to ``path``, else LeNet-5 trained ``epochs`` (seeded; 0: untrained)."""
    if source is not None:
        shutil.copyfile(source, path)
        return path
    import torch

    from tvmcomp.data import load_train_5k
    from tvmcomp.frontend import export_onnx
    from tvmcomp.model import LeNet5, TrainConfig, train

    torch.manual_seed(0)
    net = LeNet5()
    if epochs:
        net = train(net, load_train_5k(), TrainConfig(epochs=epochs))
    return export_onnx(net.eval(), path)


def prepare(d: Path, model: str | None, epochs: int) -> dict:
    """Build the CPU and CUDA artifacts of one model into ``d/artifacts`` with ``tvmcomp``'s
    build, beside the model (``d/model.onnx``) and the MNIST test set (``d/mnist``)."""
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.data import load_idx
    from tvmcomp.data.mnist import default_mnist_dir
    from tvmcomp.deploy.cuda import gpu_code
    from tvmcomp.targets import load_profile

    mnist = default_mnist_dir()
    if mnist is None or not mnist.is_dir():
        raise SystemExit("gpu_check: error: no MNIST test set (set TVMCOMP_MNIST_DIR)")
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d / "mnist", ignore_errors=True)
    (d / "mnist").mkdir()
    for f in sorted(mnist.glob("t10k-*-ubyte*")):
        shutil.copyfile(f, d / "mnist" / f.name)
    onnx = _model(d / MODEL, model, epochs)
    opts = BuildOptions(batches=(1, 64), tune_budget_s=0, eval_set=load_idx(d / "mnist"),
                        progress=True)
    arts = d / "artifacts"
    shutil.rmtree(arts, ignore_errors=True)
    code = {}
    for name in (CPU_PROFILE, *CUDA_PROFILES):
        profile = load_profile(name)
        build(onnx, profile, arts / name, opts)
        lib = arts / name / "model.so"
        code[name] = {"bytes": lib.stat().st_size, "gpu_code": gpu_code(lib.read_bytes())}
        sm = profile.target.get("arch", "").removeprefix("sm_")
        if name in CUDA_PROFILES and {f"sm_{sm}", f"compute_{sm}"} - set(code[name]["gpu_code"]):
            raise SystemExit(f"gpu_check: error: {name}: model.so holds "
                             f"{', '.join(code[name]['gpu_code']) or 'no GPU code'}, not a "
                             f"fatbin with sm_{sm} and compute_{sm}")
    summary = {"model": str(onnx), "artifacts": code}
    (d / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ffi_wheel(cache: Path, python: str) -> Path:
    """The installed apache-tvm-ffi's wheel for CPython ``python``, downloaded into ``cache``."""
    from importlib.metadata import version

    ver = version("apache-tvm-ffi")
    pattern = f"apache_tvm_ffi-{ver}-cp{python.replace('.', '')}-*.whl"
    if not list(cache.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", python, "--implementation",
                        "cp", "--platform", "manylinux_2_28_x86_64", "-d", str(cache),
                        f"apache-tvm-ffi=={ver}"], check=True)
    return sorted(cache.glob(pattern))[-1]


def stage_runtime(d: Path, wheel: Path) -> None:
    """Stage a runtime-only TVM for the GPU host: the installed ``tvm`` package less
    ``libtvm_compiler.so`` and C++ sources (``d/tvm_rt``), CUDA's runtime library beside
    ``libtvm_runtime_cuda.so``, and ``tvm_ffi`` from ``wheel`` less its C++ sources (``d/ffi``)."""
    import tvm

    src = Path(tvm.__file__).parent
    skip_top = {"3rdparty", "src", "include", "web"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        top = skip_top if Path(folder) == src else set()
        return [n for n in names if n in top or n in ("__pycache__", "libtvm_compiler.so")]

    for sub in ("tvm_rt", "ffi"):
        shutil.rmtree(d / sub, ignore_errors=True)
    shutil.copytree(src, d / "tvm_rt" / "tvm", ignore=ignore)
    maps = Path("/proc/self/maps").read_text().split()
    cudart = next((p for p in maps if p.endswith("/" + CUDART)), None)
    if cudart is None:
        raise SystemExit(f"gpu_check: error: {CUDART} is not loaded (CUDA 13 runtime missing?)")
    shutil.copyfile(cudart, d / "tvm_rt" / "tvm" / "lib" / CUDART)
    skip = ("include/", "src/", "3rdparty/", "cython/", "stub/", "share/", "CMakeLists.txt")
    with zipfile.ZipFile(wheel) as z:
        for m in z.infolist():
            if m.filename.startswith("tvm_ffi/") and not m.filename[8:].startswith(skip):
                z.extract(m, d / "ffi")


def _error(e: Exception) -> str:
    """One line for a (TVM) exception: its message's first and last lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(e).__name__}: {text}"[:600]


def _emit(out: Path, name: str, res: dict) -> None:
    line = json.dumps(res)
    print(line)
    (out / f"{name}.json").write_text(line + "\n")


def run(d: Path, out: Path) -> int:
    """Check and time every artifact in ``d/artifacts`` on this machine's GPU."""
    import numpy as np
    import tvm

    from tvmcomp import runtime
    from tvmcomp.bench import time_us
    from tvmcomp.data import load_idx, normalize
    from tvmcomp.deploy.cuda import gpu_code, load_cuda_runtime
    from tvmcomp.verify import verify

    out.mkdir(parents=True, exist_ok=True)
    ev = load_idx(d / "mnist")
    x = normalize(ev.images)
    onnx = str(d / MODEL)

    def check(m, dev) -> dict:
        """Verification against ONNX Runtime on the test set, and µs per call on ``dev``."""
        res = {"verification": verify(m, onnx, m.input_shape, m.input_dtype, ev,
                                      raise_on_fail=False).to_dict()}
        for b in (1, 64):
            f, xt = m.entry(b), tvm.runtime.tensor(x[:b], dev)
            res[f"us_batch{b}"] = round(time_us(lambda: (f(xt), dev.sync())), 2)
        return res

    base = {"tvm": f"{tvm.__version__}{' runtime-only' if tvm.base._RUNTIME_ONLY else ''}",
            "eval_set": ev.source, "images": len(x), "cpu": {"profile": CPU_PROFILE}}
    try:  # the GPU checks go on without it
        cpu = runtime.load(d / "artifacts" / CPU_PROFILE)
        yc = cpu(x)
        base["cpu"].update(check(cpu, tvm.cpu(0)))
        base["cpu"]["passed"] = bool(base["cpu"]["verification"]["passed"])
    except Exception as e:  # noqa: BLE001 - report it in the JSON
        yc, base["cpu"]["passed"], base["cpu"]["error"] = None, False, _error(e)
    why = load_cuda_runtime()
    dev = tvm.cuda(0)
    if why is None and not dev.exist:
        why = "TVM's CUDA runtime finds no device"
    if why is not None:
        _emit(out, "gpu_check", {**base, "passed": False, "error": f"no usable CUDA GPU: {why}"})
        print(f"gpu_check: error: no usable CUDA GPU: {why}", file=sys.stderr)
        return 2
    cc = int(str(dev.compute_version).replace(".", ""))
    base["device"] = f"{dev.device_name} (compute {dev.compute_version})"
    ok = base["cpu"]["passed"]
    for name in CUDA_PROFILES:
        art = d / "artifacts" / name
        code = gpu_code((art / "model.so").read_bytes())
        how = runs_as(code, cc)
        res = {"profile": name, **base, "gpu_code": code, "runs_as": how or (
            f"nothing: no machine code for sm_{cc // 10}x and no PTX for compute_{cc} or older")}
        try:
            m = runtime.load(art)
            y = m(x)
            res.update(check(m, dev))
            res["passed"] = bool(res["verification"]["passed"])
            if yc is not None:
                res["max_abs_diff_vs_cpu"] = float(np.abs(y - yc).max())
                res["argmax_differs_vs_cpu"] = int(np.sum(y.argmax(1) != yc.argmax(1)))
                res["passed"] &= res["max_abs_diff_vs_cpu"] <= CPU_TOL * max(
                    1.0, float(np.abs(yc).max()))
        except Exception as e:  # noqa: BLE001 - report it in the JSON and go on
            res["passed"], res["error"] = False, _error(e)
        ok = ok and res["passed"]
        _emit(out, f"gpu_check_{name}", res)
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--prepare", metavar="DIR", help="build and stage into DIR (here)")
    mode.add_argument("--run", metavar="DIR", help="check the artifacts of DIR (on the GPU)")
    ap.add_argument("--model", default=None, help="ONNX model (default: LeNet-5, trained here)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (0: seeded random)")
    ap.add_argument("--python", default=DEVICE_PYTHON, help="the GPU host's python3 version")
    ap.add_argument("--wheels", default=str(REPO / "build" / "wheels"),
                    help="where the apache-tvm-ffi wheel for that Python is kept")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "build" / "gpu_check"))
    args = ap.parse_args()
    if args.run:
        return run(Path(args.run), Path(args.out))
    if args.prepare is None:  # both, on a GPU host with the full TVM
        with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
            prepare(Path(tmp), args.model, args.epochs)
            return run(Path(tmp), Path(args.out))
    d = Path(args.prepare).resolve()
    summary = prepare(d, args.model, args.epochs)
    stage_runtime(d, _ffi_wheel(Path(args.wheels), args.python))
    rel = os.path.relpath(d, REPO)
    if rel.startswith(".."):
        print(f"gpu_check: warning: {d} is outside the repository; the GPU host's command "
              "expects it inside", file=sys.stderr)
    (d / "COMMAND.txt").write_text(COMMAND.format(d=rel))
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    for name, a in summary["artifacts"].items():
        print(f"{name}: model.so {a['bytes']:,} B, GPU code {', '.join(a['gpu_code']) or '-'}")
    print(f"staged {d} ({size / 2**20:.1f} MiB); on the GPU host, in the repository root: "
          f"{(d / 'COMMAND.txt').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
