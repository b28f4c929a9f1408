#!/usr/bin/env python
"""Schedules carried across shapes: LeNet-5 at batches the committed records do not hold.

Builds LeNet-5 (trained, or reused) with ``tvmcomp.compiler.build`` (the path users run) at
each ``--batches`` entry, from an empty tuning cache each time, four ways: no tuning and no
transfer (what a build did before: naive loops for every kernel without a record), no tuning
with transfer (each kernel takes the committed schedule of its operator at another shape,
tiles re-derived, kept only where it beats the naive loops), and ``--tune-budget`` seconds of
tuning from scratch and from the transferred schedules. Times the artifacts interleaved with
ONNX Runtime in the same run (``tvmcomp.bench.bench_artifacts``). Writes a Markdown report
and its JSON.

    .venv/bin/python scripts/bench_transfer.py [--batches 16] [--tune-budget 60] [--reduced]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

FORMS = (("naive", False, False), ("transferred", True, False),
         ("tuned", False, True), ("transferred+tuned", True, True))


def main() -> int:
    from bench_lenet5 import script_parser

    ap = script_parser(__doc__, "bench_transfer")
    ap.add_argument("--profile", default=None, help="default: the host's x86 profile")
    ap.add_argument("--batches", default="16",
                    help="comma-separated batches to build, each its own artifact (default 16)")
    ap.add_argument("--tune-budget", type=float, default=60.0,
                    help="seconds of tuning in the two tuned forms (default 60)")
    ap.add_argument("--reduced", action="store_true",
                    help="1 epoch, 5 s of tuning: a smoke test")
    args = ap.parse_args()

    from bench_lenet5 import lenet5_start, machine, save_results

    from tvmcomp.bench import bench_artifacts, format_table
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.tune import transfer as tr

    t0 = time.monotonic()
    out, profile, _, ev, _, _, onnx_path = lenet5_start(args)
    batches = tuple(int(b) for b in args.batches.split(","))
    budget = 5.0 if args.reduced else args.tune_budget
    real = tr.carry_across_shapes  # what every build calls (tr.carry_schedules)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "profile": profile.name, "batches": list(batches),
              "tune_budget_s": budget, "builds": {}, "latency_us": {}, "notes": []}
    for b in batches:
        arts = {}
        for form, transfer, tuned in FORMS:
            tr.carry_across_shapes = real if transfer else (lambda *a, **k: {})
            print(f"== batch {b}: {form}", flush=True)
            with tempfile.TemporaryDirectory() as cache:  # no record of this run's others
                s0 = time.monotonic()
                arts[form], man = build(onnx_path, profile, out / f"b{b}_{form}", BuildOptions(
                    batches=(b,), tune_budget_s=budget if tuned else 0.0, eval_set=ev,
                    tuning_dir=cache, progress=False))
            t = man["tuning"]
            report["builds"][f"{b}/{form}"] = {
                "seconds": round(time.monotonic() - s0, 1),
                "tuned": t["tuned"], "tasks": t["tasks"], "trials": t["trials"],
                "untuned": t["untuned"], "transferred": t.get("carried_across_shapes", {}),
                "accuracy": man["verification"].get("accuracy")}
        tr.carry_across_shapes = real
        res = bench_artifacts(arts, (b,), ("ort_fp32",))
        report["latency_us"][str(b)] = res["results"][str(b)]
        report["notes"] += res["notes"]
        report.setdefault("tables", {})[str(b)] = format_table(res)
    report["seconds"] = round(time.monotonic() - t0, 1)

    stamp = dt.datetime.fromisoformat(report["date"])
    name = f"{stamp:%Y-%m-%d_%H%M}_transfer_{profile.name}{'_reduced' if args.reduced else ''}"
    save_results(args.results_dir, name, report, _markdown(report))
    return 0


def _markdown(r: dict) -> str:
    lines = [f"# Schedules carried across shapes: LeNet-5 at new batches ({r['date']})", "",
             f"Machine: {r['machine']}. Profile {r['profile']}, committed records (batches 1 "
             f"and 64), an empty tuning cache for every build. Produced by "
             f"`scripts/bench_transfer.py` in {r['seconds']:.0f} s.", ""]
    for b in r["batches"]:
        lat = r["latency_us"][str(b)]
        ort = lat.get("ort_fp32")
        lines += [f"## Batch {b}", "",
                  "| build | tuning | kernels with a schedule (of) | build s | µs per call "
                  "| / ORT fp32 |", "|---|---|---|---|---|---|"]
        for form, _, tuned in FORMS:
            bd = r["builds"][f"{b}/{form}"]
            us = lat[form]
            have = bd["tasks"] - len(bd["untuned"])
            lines.append(f"| {form} | {r['tune_budget_s']:g} s, {bd['trials']} trials |"
                         if tuned else f"| {form} | none |")
            lines[-1] += (f" {have} ({bd['tasks']}) | {bd['seconds']:.0f} | {us:.1f} | "
                          + (f"{us / ort:.2f}× |" if ort else "– |"))
        moved = r["builds"][f"{b}/transferred"]["transferred"]
        lines += ["", "Transferred (no tuning): " + (", ".join(
            f"{k} {v['us']:.1f} µs from {v['from']}" for k, v in moved.items()) or "none"),
                  "", r["tables"][str(b)], ""]
    lines += ["Notes: " + ("; ".join(dict.fromkeys(r["notes"])) or "none"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
