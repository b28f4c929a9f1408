#!/usr/bin/env python
"""Benchmark LeNet-5 fp32: tvmcomp artifact vs PyTorch, ONNX Runtime and TVM default, one run.

Trains (seeded), exports, builds with the committed tuning logs of the profile, verifies, and
times every runner at batch 1 and 64 in the same process. Writes a dated Markdown report to
``scripts/results/`` naming the machine. Usage::

    .venv/bin/python scripts/bench_lenet5_fp32.py [--profile x86_avx2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvmcomp.main_job import run_main_job
from tvmcomp.targets import host_profile, load_profile

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "bench_lenet5_fp32"))
    ap.add_argument("--tune-budget", type=float, default=0.0,
                    help="seconds of extra tuning if the committed logs lack tasks (default 0)")
    args = ap.parse_args()
    profile = load_profile(args.profile) if args.profile else host_profile()
    s = run_main_job(args.out_dir, profile, tune_budget_s=args.tune_budget)

    day = s["date"][:10]
    path = ROOT / "scripts" / "results" / f"{day}_lenet5_fp32_{profile.name}.md"
    lat = s["latency_us"]
    names = [n for n in ("artifact", "ort_fp32", "torch_fp32", "tvm_default") if n in lat["1"]]
    lines = [
        f"# LeNet-5 fp32 — tvmcomp vs peers ({profile.name})",
        "",
        f"- date: {s['date']}",
        f"- machine: {s['machine']}",
        f"- command: `.venv/bin/python scripts/bench_lenet5_fp32.py --profile {profile.name}`",
        f"- evaluation set: {s['eval_set']}",
        f"- tuning records read: {s['tuning']['records_read']} ({s['tuning']['tuned']}/"
        f"{s['tuning']['tasks']} kernels tuned)",
        "- timing: median of 15 repeats of ≥20 ms each, from Python, same process, same inputs",
        "",
        "| batch | " + " | ".join(f"{n} µs" for n in names) + " | ORT / artifact |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for b, row in lat.items():
        lines.append(f"| {b} | " + " | ".join(f"{row[n]:.1f}" for n in names)
                     + f" | {row['ort_fp32'] / row['artifact']:.2f}× |")
    acc = s["accuracy"]
    lines += [
        "",
        "| accuracy | torch fp32 | ORT fp32 | artifact |",
        "|---|---|---|---|",
        f"| top-1 | {acc['torch_fp32']:.2%} | {acc['ort_fp32']:.2%} | {acc['artifact']:.2%} |",
        "",
        f"model.so: {s['model_so_bytes']:,} B; embedded weights: {s['weight_bytes']:,} B; "
        f"max |logit err| vs ORT: {s['max_abs_err_vs_ort']:.2e}.",
        "",
        "Raw results:",
        "",
        "```json",
        json.dumps(s, indent=2),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
