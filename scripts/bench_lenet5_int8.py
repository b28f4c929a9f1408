#!/usr/bin/env python
"""LeNet-5 int8 vs fp32 and peers: accuracy per calibration method, size, latency, one run.

Trains (seeded, or reuses) LeNet-5, builds the fp32 artifact and int8 artifacts for each
calibration method / scheme with the committed tuning logs, then times the fp32 artifact, the
default int8 artifact, PyTorch fp32 and eager int8, ONNX Runtime fp32 and int8 QDQ and TVM's
default build at batch 1 and 64 in the same process, and the default int8 model built with
int32 vs exact float32 accumulation (interleaved). Writes a dated Markdown report to
``scripts/results/``. Usage::

    .venv/bin/python scripts/bench_lenet5_int8.py [--profile x86_avx2] [--tune-budget 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

from tvmcomp.bench import BASELINES, bench_artifact
from tvmcomp.compiler import BuildOptions, build
from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
from tvmcomp.main_job import _cpu_name, prepare_lenet5
from tvmcomp.model import evaluate_torch
from tvmcomp.quant import Entropy, MinMax, PerChannel, Percentile, PerTensor, QuantConfig
from tvmcomp.targets import host_profile, load_profile

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = {  # name → config; the first is the default build the latency table uses
    "minmax, sym, per-channel": QuantConfig(),
    "percentile 99.99, sym, per-channel": QuantConfig(calibration=Percentile(99.99)),
    "entropy (KL), sym, per-channel": QuantConfig(calibration=Entropy()),
    "minmax, asym, per-channel": QuantConfig(activations="asymmetric"),
    "minmax, sym, per-tensor": QuantConfig(weights=PerTensor()),
    "entropy (KL), asym, per-tensor": QuantConfig(calibration=Entropy(), activations="asymmetric",
                                                  weights=PerTensor()),
}
assert isinstance(QuantConfig().calibration, MinMax) and isinstance(QuantConfig().weights,
                                                                    PerChannel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "bench_lenet5_int8"))
    ap.add_argument("--tune-budget", type=float, default=0.0)
    args = ap.parse_args()
    profile = load_profile(args.profile) if args.profile else host_profile()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, ev = load_eval_set(default_mnist_dir())
    model, _, onnx_path = prepare_lenet5(out, train_set)
    torch_acc = evaluate_torch(model, ev)
    opts = dict(batches=(1, 64), tune_budget_s=args.tune_budget, eval_set=ev)
    fp32_dir, fp32 = build(onnx_path, profile, out / "fp32", BuildOptions(**opts))
    rows, int8_dirs = [], {}
    for i, (name, cfg) in enumerate(SCHEMES.items()):
        d, man = build(onnx_path, profile, out / f"int8_{i}", BuildOptions(quant=cfg, **opts))
        v = man["verification"]
        rows.append((name, v["accuracy"], v["float_accuracy"], man["weight_bytes"],
                     man["library"]["bytes"], v["max_abs_err"]))
        int8_dirs[name] = d
    default_int8 = int8_dirs[next(iter(SCHEMES))]
    lat_fp32 = bench_artifact(fp32_dir, (1, 64), BASELINES, progress=False)["results"]
    lat_int8 = bench_artifact(default_int8, (1, 64), ("ort_int8_qdq", "torch_int8"),
                              progress=False)["results"]

    ab = _accumulate_ab(profile, default_int8 / "reference.qdq.onnx", onnx_path, ev)

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# LeNet-5 int8 vs fp32 and peers ({profile.name})", "",
        f"- date: {now}", f"- machine: {platform.machine()} {_cpu_name()}",
        f"- command: `.venv/bin/python scripts/bench_lenet5_int8.py --profile {profile.name}`",
        f"- evaluation set: {ev.source}; PyTorch fp32 accuracy {torch_acc:.2%}",
        "- calibration: 256 images drawn (seeded) from the 5k shipped training images", "",
        "## Accuracy per calibration method (TVM int8 artifacts)", "",
        "| scheme | int8 accuracy | float accuracy | Δ pt | weight bytes | model.so bytes |"
        " max abs err vs ORT QDQ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, acc, facc, wb, sob, err in rows:
        lines.append(f"| {name} | {acc:.2%} | {facc:.2%} | {(acc - facc) * 100:+.2f} | {wb:,} |"
                     f" {sob:,} | {err:.3g} |")
    lines += [
        f"| fp32 artifact | {fp32['verification']['accuracy']:.2%} | – | – |"
        f" {fp32['weight_bytes']:,} | {fp32['library']['bytes']:,} | – |", "",
        f"Weight bytes int8 / fp32: {rows[0][3] / fp32['weight_bytes']:.3f}.", "",
        "## Latency, median µs per call (same run)", "",
        "| batch | tvmcomp int8 | tvmcomp fp32 | ORT fp32 | ORT int8 QDQ | torch fp32 |"
        " torch int8 | TVM default fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in ("1", "64"):
        f, q = lat_fp32[b], lat_int8[b]
        cells = [q["artifact"], f["artifact"], f["ort_fp32"], q.get("ort_int8_qdq"),
                 f.get("torch_fp32"), q.get("torch_int8"), f["tvm_default"]]
        lines.append(f"| {b} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells)
                     + " |")
    man8 = json.loads((default_int8 / "manifest.json").read_text())
    lines += ["", f"int8 kernels tuned: {man8['tuning']['tuned']}/{man8['tuning']['tasks']}"
              f" (database {man8['tuning']['database']}); accumulation "
              f"{man8['quantization']['accumulate']}.", "",
              "## int8 accumulation: int32 vs exact float32 (same run, interleaved)", "",
              "The default int8 model built twice with the profile's tuned schedules, differing "
              "only in how QuantizeInt8 accumulates conv2d/matmul, beside the fp32 build "
              f"(median µs per call). Outputs of the two int8 builds on {ab['n']} test images "
              f"identical: **{ab['identical']}**.", "",
              "| batch | int8, int32 accumulation | int8, float32 accumulation | fp32 |",
              "|---|---|---|---|"]
    for b in ("1", "64"):
        t = ab["us"][b]
        lines.append(f"| {b} | {t['int32']:.1f} | {t['float32']:.1f} | {t['fp32']:.1f} |")
    lines += ["", "Raw: ```" + json.dumps({"fp32": lat_fp32, "int8": lat_int8,
                                           "accumulate_ab": ab}) + "```", ""]
    path = ROOT / "scripts" / "results" / f"{now[:10]}_lenet5_int8_{profile.name}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")


def _accumulate_ab(profile, qdq_path: Path, onnx_path: Path, ev, repeat: int = 21) -> dict:
    """Time the QDQ model built with int32 and with float32 accumulation, and the fp32 model."""
    import numpy as np
    import tvm
    from tvm import relax

    from tvmcomp.bench import evaluator, interleaved_us
    from tvmcomp.data import normalize
    from tvmcomp.frontend.onnx_import import import_batches, load_onnx
    from tvmcomp.pipeline import compile_fused, fuse
    from tvmcomp.tune import RecordPaths, Records

    target = profile.tvm_target()
    db = Records(RecordPaths.for_profile(profile)).own
    mods = {}
    for name, path, acc in (("int32", qdq_path, "int32"), ("float32", qdq_path, "float32"),
                            ("fp32", onnx_path, None)):
        model, info = load_onnx(path)
        mod = import_batches(model, info, [1, 64])
        mods[name] = compile_fused(fuse(mod, target, int8_acc=acc), target, db)
    dev = tvm.cpu()
    vms = {k: relax.VirtualMachine(ex, dev) for k, ex in mods.items()}
    x = tvm.runtime.tensor(normalize(ev.images[:64]), dev)
    outs = {k: vms[k]["main_b64"](x).numpy() for k in ("int32", "float32")}
    us = {}
    for b in (1, 64):
        xb = tvm.runtime.tensor(normalize(ev.images[:b]), dev)
        us[str(b)] = interleaved_us({k: evaluator(vm, f"main_b{b}", [xb])
                                     for k, vm in vms.items()}, repeat)
    return {"us": us, "n": 64, "identical": bool(np.array_equal(outs["int32"], outs["float32"]))}


if __name__ == "__main__":
    main()
