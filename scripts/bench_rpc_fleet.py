#!/usr/bin/env python
"""Tuning over RPC on loopback: one server against a fleet of two, same run, same trials.

Starts ``tvmcomp rpc tracker`` on 127.0.0.1, then for N = 1 and N = 2 registers N
``tvmcomp rpc server`` processes under one key, each pinned to its own core (``taskset``), and
runs ``tvmcomp tune MODEL --profile x86_avx2 --rpc-tracker … --rpc-key …`` with a fresh tuning
cache and the same trial cap, every task tuned (``--all``: the committed records would
otherwise leave nothing to tune): the path users run. It records each run's wall time and the
tune command's own summary (measurements per server, the sessions' summed durations, their
wall time). On 2 shared cores the candidates' builds and the servers share the same CPUs,
so the point is the mechanism, not a speed-up; a real fleet brings its own CPUs. Writes a
dated Markdown report to ``scripts/results/``. Usage::

    .venv/bin/python scripts/bench_rpc_fleet.py [MODEL.onnx] [--trials 32]

Without a model it exports an (untrained) LeNet-5: tuning does not depend on the weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tvmcomp.main_job import _cpu_name
from tvmcomp.rpc import free_port, launch, launch_servers, stop

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _lenet_onnx(path: Path) -> Path:
    import torch

    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.model.lenet import LeNet5

    torch.manual_seed(0)
    return export_onnx(LeNet5(), path)


def tune(model: Path, tracker: str, key: str, trials: int, work: Path) -> dict:
    cmd = [sys.executable, "-m", "tvmcomp.cli", "tune", str(model), "--profile", "x86_avx2",
           "--rpc-tracker", tracker, "--rpc-key", key, "--batch", "1", "--tune-budget", "900",
           "--trials-per-task", str(trials), "--all", "--tuning-dir", str(work)]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    if r.returncode != 0 or "measurements per RPC server" not in r.stdout:
        raise SystemExit(f"tune failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    said = [ln for ln in r.stdout.splitlines()
            if ln.startswith(("measurements per RPC server", "used ", "measuring on"))]
    return {"wall_s": wall, "said": said}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--trials", type=int, default=32, help="trial cap per task (default 32)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet_"))
    model = Path(args.model) if args.model else _lenet_onnx(work / "lenet5.onnx")
    port = free_port()
    tracker = f"{HOST}:{port}"
    tproc = launch("tracker", "--host", HOST, "--port", str(port), expect="RPC tracker")
    runs = {}
    try:
        for n in (1, 2):
            procs = launch_servers(tracker, f"fleet{n}", n)
            try:
                runs[n] = tune(model, tracker, f"fleet{n}", args.trials, work / f"cache{n}")
            finally:
                for p in procs:
                    stop(p)
    finally:
        stop(tproc)
    now = dt.datetime.now(dt.timezone.utc)
    lines = [f"# Tuning over RPC on loopback: 1 server vs a fleet of 2 ({now:%Y-%m-%d %H:%M} UTC)",
             "", f"- machine: {_cpu_name()}, {os.cpu_count()} CPUs",
             f"- model: {model.name if args.model else 'LeNet-5 (untrained export)'}; profile "
             f"x86_avx2, batch 1, ≤{args.trials} trials per task, a fresh tuning cache per run; "
             "servers pinned one per core (`taskset`)",
             "- produced by `scripts/bench_rpc_fleet.py` (runs `tvmcomp tune --rpc-tracker`)", "",
             "| servers | wall time of `tvmcomp tune` | what it printed |", "|---|---|---|"]
    for n, r in runs.items():
        lines.append(f"| {n} | {r['wall_s']:.1f} s | {'<br>'.join(r['said'])} |")
    out = ROOT / "scripts" / "results" / f"{now:%Y-%m-%d_%H%M}_rpc_fleet.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
