"""GPU check (run where a CUDA GPU is present): build LeNet-5 for this GPU's cuda_sm* profile,
verify it against ONNX Runtime on real MNIST images (the build does), compare its logits with
an x86 CPU build of the same model, and time batch 1 and 64 on the GPU.

    .venv/bin/python scripts/gpu_check.py [--model M.onnx] [--out DIR] [--images N]

Prints one JSON line and writes it to DIR/gpu_check.json (DIR: $OUT, else build/gpu_check).
Exit status: 0 all checks passed, 1 a check failed, 2 no usable GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="ONNX model (default: seeded random LeNet-5)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "build" / "gpu_check"))
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    if importlib.util.find_spec("cuda") is None:  # no cuda-bindings (NVRTC): JIT with nvcc
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")

    import numpy as np
    import tvm

    from tvmcomp import runtime
    from tvmcomp.bench import time_us
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.data import normalize
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.targets import host_profile, load_profile

    dev = tvm.cuda(0)
    if not dev.exist:
        print("gpu_check: error: no CUDA GPU visible to TVM", file=sys.stderr)
        return 2
    major = int(str(dev.compute_version).split(".")[0])
    name = "cuda_sm90" if major >= 9 else "cuda_sm80"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    model = args.model
    if model is None:
        import torch

        from tvmcomp.frontend import export_onnx
        from tvmcomp.model import LeNet5

        torch.manual_seed(0)
        model = str(export_onnx(LeNet5().eval(), work / "lenet5.onnx"))
    d = default_mnist_dir()
    _, ev = load_eval_set(d if d is not None and Path(d).is_dir() else None)
    x = normalize(ev.images[: args.images])
    res = {"device": f"{dev.device_name} (compute {dev.compute_version})", "profile": name,
           "model": model, "eval_set": ev.source, "images": len(x)}
    t0 = time.monotonic()
    opts = BuildOptions(batches=(1, 64), tune_budget_s=0, eval_set=ev, progress=True)
    gpu_prof = dataclasses.replace(load_profile(name), tuning_db=str(work / "db_gpu"))
    gpu_art, man = build(model, gpu_prof, work / name, opts)
    res["build_s"] = round(time.monotonic() - t0, 1)
    res["verification"] = man.get("verification")
    cpu_prof = dataclasses.replace(host_profile(), tuning_db=str(work / "db_cpu"))
    cpu_art, _ = build(model, cpu_prof, work / "cpu", dataclasses.replace(opts, eval_set=None))
    gpu, cpu = runtime.load(gpu_art), runtime.load(cpu_art)
    yg, yc = gpu(x), cpu(x)
    res["max_abs_diff_vs_cpu"] = float(np.abs(yg - yc).max())
    res["predictions_identical"] = int(np.sum(yg.argmax(1) == yc.argmax(1)))
    res["accuracy"] = float(np.mean(yg.argmax(1) == ev.labels[: len(x)]))
    for b in (1, 64):
        xt = tvm.runtime.tensor(x[:b], dev)
        f = gpu.entry(b)

        def call():
            f(xt)
            dev.sync()

        res[f"gpu_us_batch{b}"] = round(time_us(call), 2)
    ok = (res["verification"] or {}).get("passed") is not False \
        and res["max_abs_diff_vs_cpu"] <= 1e-3 and res["predictions_identical"] == len(x)
    res["passed"] = bool(ok)
    line = json.dumps(res)
    print(line)
    (out / "gpu_check.json").write_text(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
