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

from tvmcomp.bench import BASELINES, bench_artifacts
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
        # every scheme is built and reported, also one the default 0.5 pt gate would refuse
        d, man = build(onnx_path, profile, out / f"int8_{i}",
                       BuildOptions(quant=cfg, max_accuracy_drop=1.0, **opts))
        v = man["verification"]
        rows.append((name, v["accuracy"], v["float_accuracy"], man["weight_bytes"],
                     man["library"]["bytes"], v["max_abs_err"]))
        int8_dirs[name] = d
    default_int8 = int8_dirs[next(iter(SCHEMES))]
    lat = bench_artifacts({"fp32": fp32_dir, "int8": default_int8}, (1, 64), BASELINES,
                          progress=False)["results"]
    ab = _accumulate_ab(profile, default_int8 / "reference.qdq.onnx", fp32_dir, out, ev, opts)

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
        refused = " (over the default 0.5 pt gate: `build` refuses it)" \
            if facc - acc > 0.005 else ""
        lines.append(f"| {name} | {acc:.2%} | {facc:.2%} | {(acc - facc) * 100:+.2f}{refused} |"
                     f" {wb:,} | {sob:,} | {err:.3g} |")
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
        r = lat[b]
        cells = [r["int8"], r["fp32"], r["ort_fp32"], r.get("ort_int8_qdq"),
                 r.get("torch_fp32"), r.get("torch_int8"), r["tvm_default"]]
        lines.append(f"| {b} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells)
                     + " |")
    man8 = json.loads((default_int8 / "manifest.json").read_text())
    lines += ["", f"int8 kernels tuned: {man8['tuning']['tuned']}/{man8['tuning']['tasks']}"
              f" (records read {man8['tuning']['records_read']}); accumulation "
              f"{man8['quantization']['accumulate']}.", "",
              "## int8 accumulation: int32 vs exact float32 (same run, interleaved)", "",
              "The default int8 model built twice with `tvmcomp build`, differing only in how "
              "QuantizeInt8 accumulates conv2d/matmul (BuildOptions.int8_accumulate), beside "
              "the fp32 build "
              f"(median µs per call). Outputs of the two int8 builds on {ab['n']} test images "
              f"identical: **{ab['identical']}**.", "",
              "| batch | int8, int32 accumulation | int8, float32 accumulation | fp32 |",
              "|---|---|---|---|"]
    for b in ("1", "64"):
        t = ab["us"][b]
        lines.append(f"| {b} | {t['int32']:.1f} | {t['float32']:.1f} | {t['fp32']:.1f} |")
    lines += ["", "Raw: ```" + json.dumps({"latency": lat, "accumulate_ab": ab}) + "```", ""]
    path = ROOT / "scripts" / "results" / f"{now[:10]}_lenet5_int8_{profile.name}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")


def _accumulate_ab(profile, qdq_path: Path, fp32_dir: Path, out: Path, ev, opts: dict) -> dict:
    """The QDQ model built with int32 and with float32 accumulation, timed beside fp32."""
    import numpy as np

    from tvmcomp import runtime
    from tvmcomp.data import normalize

    arts = {}
    for acc in ("int32", "float32"):
        arts[acc], _ = build(qdq_path, profile, out / f"int8_acc_{acc}",
                             BuildOptions(int8_accumulate=acc, **opts))
    arts["fp32"] = fp32_dir
    x = normalize(ev.images[:64])
    same = np.array_equal(runtime.load(arts["int32"])(x), runtime.load(arts["float32"])(x))
    us = bench_artifacts(arts, (1, 64), (), progress=False, repeat=21)["results"]
    return {"us": us, "n": len(x), "identical": bool(same)}


if __name__ == "__main__":
    main()
