#!/usr/bin/env python
"""LeNet-5 in every form `tvmcomp build` makes, against its peers, in one run.

Trains (or reuses) LeNet-5, prunes, shares and factorizes copies, builds every form of the
main job (``tvmcomp.main_job.FORMS``) with ``tvmcomp.compiler.build`` (the path users run:
the committed tuning records, the build plan, the sparse gate, verification on the 10k MNIST
test set), then times all of them with ONNX Runtime fp32 / int8 and PyTorch fp32 / int8 in one
interleaved run (``tvmcomp.bench.bench_artifacts``). Then it measures this machine's peak
(``tvmcomp.peak``: fp32 FMA and int8 (VNNI or AVX2) microbenchmarks) and times each form's
kernels alone at batch 64 (``tvmcomp.bench.kernel_profile``): µs, GOP/s and share of the peak
per conv / matmul kernel. Writes a Markdown report, its JSON and the profile's PNG.

    .venv/bin/python scripts/bench_lenet5.py [--tune-budget 0] [--reduced]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> str:
    from tvmcomp.main_job import _cpu_name
    from tvmcomp.targets import cpu_flags

    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{platform.machine()} {_cpu_name()}, flags: {' '.join(shown)}"


def script_parser(doc: str, out_name: str = "bench_lenet5") -> argparse.ArgumentParser:
    """The options every LeNet-5 results script takes: where it builds (``build/<out_name>``)
    and where it writes its report (``scripts/results``)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "build" / out_name))
    ap.add_argument("--results-dir", default=str(REPO / "scripts" / "results"))
    return ap


def save_results(results_dir: str, name: str, report: dict, md: str) -> None:
    """``<results_dir>/<name>.json`` (``report``) and ``.md`` (``md``, also printed)."""
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (results / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {results / name}.md and .json")


def lenet5_start(args, epochs: int = 20):
    """What a LeNet-5 results script starts from: ``(out dir, profile, train set, eval set,
    model, checkpoint, its ONNX)``, the model trained (or reused) in ``args.out_dir`` for
    ``epochs`` (1 with ``args.reduced``), the profile ``args.profile`` or the host's."""
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.main_job import prepare_lenet5
    from tvmcomp.targets import host_profile, load_profile

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile) if args.profile else host_profile()
    train_set, ev = load_eval_set(default_mnist_dir())
    model, ckpt, onnx_path = prepare_lenet5(out, train_set,
                                            epochs=1 if args.reduced else epochs)
    return out, profile, train_set, ev, model, ckpt, onnx_path


def main() -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--profile", default=None, help="default: the host's x86 profile")
    ap.add_argument("--tune-budget", type=float, default=0.0,
                    help="seconds of tuning, shared by the builds, for kernels without records "
                         "(default 0)")
    ap.add_argument("--prune", type=float, default=None,
                    help="global weight sparsity (default: the main job's per-layer sparsities)")
    ap.add_argument("--finetune-epochs", type=int, default=None,
                    help="default: the main job's (twice tvmcomp compress's default)")
    ap.add_argument("--reduced", action="store_true", help="1 epoch, for a smoke test")
    args = ap.parse_args()

    from tvmcomp.bench import bench_artifacts, format_table, kernel_profile
    from tvmcomp.passes.int8_vnni import target_int8_isa
    from tvmcomp.peak import measure_peaks
    from tvmcomp.report import plot_kernel_profile
    from tvmcomp.main_job import (FORMS, SMALLEST_BITS, build_forms, compressed_path,
                                  lowrank_lenet5, prune_lenet5, prune_lenet5_smallest,
                                  share_lenet5)
    from tvmcomp.model import evaluate_torch

    t0 = time.monotonic()
    out, profile, train_set, ev, model, ckpt, onnx_dense = lenet5_start(args)
    acc_float = evaluate_torch(model, ev)
    pruned, onnx_pruned = prune_lenet5(out, ckpt, train_set, args.prune,
                                       **({"epochs": 1} if args.reduced else
                                          {"epochs": args.finetune_epochs}
                                          if args.finetune_epochs else {}))
    acc_pruned = evaluate_torch(pruned, ev)
    from tvmcomp.compress import sparsity_report

    summary = {"sparsity": sparsity_report(pruned)}
    _, onnx_shared = share_lenet5(out, ckpt, train_set)
    _, onnx_pruned_shared = share_lenet5(out, compressed_path(out, "pruned"), train_set,
                                         "pruned_shared")
    prune_lenet5_smallest(out, ckpt, train_set, **({"epochs": 1} if args.reduced else {}))
    _, onnx_smallest = share_lenet5(out, compressed_path(out, "pruned95"), train_set, "smallest",
                                    SMALLEST_BITS)
    _, onnx_lowrank = lowrank_lenet5(out, ckpt, train_set,
                                     **({"epochs": 1} if args.reduced else {}))
    built = build_forms(out, onnx_dense, onnx_pruned, profile, ev, (1, 64),
                        tune_budget_s=args.tune_budget, lowrank_onnx=onnx_lowrank,
                        shared_onnx=onnx_shared,
                        pruned_shared_onnx=onnx_pruned_shared, smallest_onnx=onnx_smallest)
    arts = {f: a for f, (a, _) in built.items()}
    mans = {f: m for f, (_, m) in built.items()}
    print("== bench (one run, interleaved)", flush=True)
    res = bench_artifacts(arts, (1, 64), ("torch_fp32", "ort_fp32"))
    print("== this machine's peak; each form's kernels alone at batch 64", flush=True)
    peaks = measure_peaks(profile)
    kernels = {f: [[k, round(us, 3), *(ops or (None, None))]
                   for k, us, ops in kernel_profile(a, 64)] for f, a in arts.items()}

    stamp = dt.datetime.now(dt.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "profile": profile.name, "eval_set": ev.source, "tune_budget_s": args.tune_budget,
              "float_accuracy": acc_float, "pruned_accuracy": acc_pruned,
              "pruned_sparsity": summary["sparsity"]["overall_sparsity"],
              "latency_us": res["results"], "notes": res["notes"],
              "forms": {f: _form(mans[f]) for f in FORMS},
              "peak_gops": peaks, "int8_isa": target_int8_isa(profile.tvm_target()),
              "kernel_profile": {"batch": 64, "forms": kernels},
              "seconds": round(time.monotonic() - t0, 1)}
    name = f"{stamp:%Y-%m-%d_%H%M}_lenet5_{profile.name}{'_reduced' if args.reduced else ''}"
    plot_kernel_profile({"kernel_profile": {"batch": 64, "forms": {
        f: [row[:2] for row in rows] for f, rows in kernels.items()}}},
        Path(args.results_dir) / f"{name}_kernels.png")
    save_results(args.results_dir, name, report, _markdown(report, format_table(res)))
    return 0


def _kernel_lines(r: dict) -> list[str]:
    """Each form's conv / matmul kernels at batch 64: µs, rate, share of the peak."""
    peaks = r["peak_gops"]
    isa = {"avx512_vnni": "VNNI vpdpbusd", "avx2": "AVX2 vpmaddubsw + vpmaddwd"}.get(
        r.get("int8_isa") or "", "VNNI")
    int8 = f"{peaks['int8']:.0f} GOP/s ({isa})" if peaks["int8"] else "none measured"
    lines = [f"Kernels at batch {r['kernel_profile']['batch']}, each timed alone on its real "
             f"arguments. This machine's peak, measured in this run (one thread a core, 12 "
             f"independent accumulators): fp32 {peaks['fp32']:.0f} GFLOP/s (vector FMA), "
             f"int8 {int8}. Rates count the dense layer's operations (2 a multiply-add), so a "
             "sparse kernel's is its dense-equivalent rate and may pass 100 %. Other kernels "
             "(pools, pads, elementwise) are summed in the last column.", "",
             "| form | kernel | µs | GOP/s | % of peak | other kernels µs |",
             "|---|---|---|---|---|---|"]
    for f, rows in r["kernel_profile"]["forms"].items():
        other = sum(us for _, us, ops, _ in rows if ops is None)
        counted = [row for row in rows if row[2] is not None]
        for i, (k, us, ops, kind) in enumerate(counted):
            gops = ops / us / 1e3
            peak = peaks["int8" if kind == "int8" else "fp32"]
            share = f"{100 * gops / peak:.1f} %" if peak else "–"
            lines.append(f"| {f if i == 0 else ''} | `{k}` | {us:.2f} | {gops:.1f} | {share} | "
                         f"{f'{other:.2f}' if i == 0 else ''} |")
    return lines + [""]


def _form(man: dict) -> dict:
    v = man["verification"]
    t = man["tuning"]
    return {"accuracy": v.get("accuracy"), "reference_accuracy": v.get("reference_accuracy"),
            "float_accuracy": v.get("float_accuracy"), "so_bytes": man["library"]["bytes"],
            "weight_bytes": man["weight_bytes"], "kernels": man["kernels"],
            "tuned": t["tuned"], "tasks": t["tasks"], "record_source": t.get("record_source"),
            "hand_scheduled": len(t.get("hand_scheduled", [])),
            "tuned_kernel_us": t.get("tuned_kernel_us", {}),
            "gate": (man.get("sparse") or {}).get("gate", []),
            "accumulate": (man.get("quantization") or {}).get("accumulate")}


def _markdown(r: dict, table: str) -> str:
    from tvmcomp.defaults import gate_repeats
    from tvmcomp.main_job import tuned_kernels

    fp32 = r["forms"]["fp32"]
    lines = [f"# LeNet-5, every form, one run ({r['date']})", "",
             f"Machine: {r['machine']}. Profile {r['profile']}; tuning budget (shared) "
             f"{r['tune_budget_s']:.0f} s (committed records otherwise). Accuracy on "
             f"{r['eval_set']}; float model {r['float_accuracy']:.2%}, pruned "
             f"{r['pruned_accuracy']:.2%} at {r['pruned_sparsity']:.1%} weight sparsity. "
             f"Total {r['seconds']:.0f} s. Produced by `scripts/bench_lenet5.py`.", "",
             "| form | accuracy | Δ vs float | model.so B | weights B | weights vs fp32 | "
             "tuned kernels | batch 1 µs | batch 64 µs |", "|---|---|---|---|---|---|---|---|---|"]
    lat = r["latency_us"]
    for f, d in r["forms"].items():
        lines.append(
            f"| {f} | {d['accuracy']:.2%} | {100 * (d['accuracy'] - r['float_accuracy']):+.2f} pt "
            f"| {d['so_bytes']:,} | {d['weight_bytes']:,} | "
            f"{d['weight_bytes'] / fp32['weight_bytes']:.3f} | {tuned_kernels(d)} | "
            f"{lat['1'].get(f, float('nan')):.1f} | {lat['64'].get(f, float('nan')):.1f} |")
    lines += ["", "Latency, median µs per call from Python; our artifacts interleaved, each peer in "
              "a block of its own (ours / ORT is a "
              "time ratio: below 1 is faster than ONNX Runtime):", "", table, ""]
    for f in ("sparse", "int8+sparse"):
        gate = r["forms"][f]["gate"]
        if not gate:
            continue
        lines += [f"Sparse gate of the {f} build (each layer's kernels alone in the real model, "
                  f"median of {gate_repeats()} interleaved repeats):", "",
                  "| layer | batch | sparsity | dense kernels | dense µs | sparse kernels | "
                  "sparse µs | decision |", "|---|---|---|---|---|---|---|---|"]
        for d in gate:
            dec = "sparse" if d["keep_sparse"] else "dense"
            lines.append(f"| {d['key']} | {d['batch']} | {d['sparsity']:.3f} | "
                         f"{' + '.join(d['dense_kernels']) or '–'} | {d['dense_us']:.2f} | "
                         f"{' + '.join(d['sparse_kernels']) or '–'} | {d['sparse_us']:.2f} | "
                         f"{dec} |")
        lines.append("")
    # the gate's dense fc1 timing beside the same kernel's tuning record in the dense build
    int8 = r["forms"]["int8"]
    for d in r["forms"]["int8+sparse"]["gate"]:
        if d["key"].endswith("/matmul2") and d["dense_kernels"]:
            k = d["dense_kernels"][0]
            rec = int8["tuned_kernel_us"].get(k)
            lines.append(f"fc1 ({d['key']}), dense int8 kernel `{k}`: gate {d['dense_us']:.2f} µs "
                         f"vs its tuning record in the int8 build "
                         + (f"{rec:.2f} µs ({d['dense_us'] / rec:.2f}×)." if rec else
                            "(no record)."))
    if r.get("kernel_profile"):
        lines += ["", *_kernel_lines(r)]
    lines += ["", "Notes: " + ("; ".join(r["notes"]) or "none"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
