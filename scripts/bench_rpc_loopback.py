#!/usr/bin/env python
"""Local vs over-RPC timing of one artifact, same run: real tracker + server on 127.0.0.1.

Starts ``tvmcomp rpc tracker`` and ``tvmcomp rpc server`` as processes on loopback, then times
the artifact's entry points with TVM's ``time_evaluator`` locally and on the RPC server (via
the tracker), and checks the remote outputs against local ones. Writes a dated Markdown
report to ``scripts/results/``. Usage::

    .venv/bin/python scripts/bench_rpc_loopback.py ARTIFACT_DIR [--batch 1,64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import time
from pathlib import Path

import numpy as np

from tvmcomp import runtime
from tvmcomp.main_job import _cpu_name
from tvmcomp.rpc import bench_rpc, launch, parse_addr, server_keys, stop, tracker_summary

ROOT = Path(__file__).resolve().parents[1]
HOST, KEY = "127.0.0.1", "x86_loopback"


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]






def local_time_evaluator(model, batch: int, repeat: int = 10, min_repeat_ms: int = 50) -> float:
    import tvm

    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(
        (batch, *model.input_shape[1:])).astype(model.input_dtype), model.device)
    name = model.manifest.entry_points[batch]
    timer = model._vm.time_evaluator(name, model.device, number=1, repeat=repeat,
                                     min_repeat_ms=min_repeat_ms)
    return float(np.median(timer(x).results)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--batch", default="1,64")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    model = runtime.load(args.artifact)
    tracker_port = _port()
    tracker = f"{HOST}:{tracker_port}"
    tproc = launch("tracker", "--host", HOST, "--port", str(tracker_port))
    sproc = launch("server", "--tracker", tracker, "--key", KEY, "--host", HOST, "--port",
                   str(_port()))
    try:
        deadline = time.monotonic() + 30
        while KEY not in server_keys(tracker_summary(*parse_addr(tracker))):
            if time.monotonic() > deadline:
                raise SystemExit("the RPC server never registered at the tracker")
            time.sleep(0.2)
        x = np.random.default_rng(1).standard_normal(
            (8, *model.input_shape[1:])).astype(model.input_dtype)
        local = {b: local_time_evaluator(model, b) for b in batches}
        remote = bench_rpc(args.artifact, tracker, KEY, batches, inputs=x)
        max_diff = float(np.max(np.abs(remote["outputs"] - model(x))))
    finally:
        stop(sproc)
        stop(tproc)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# RPC on loopback: local vs via tracker ({model.manifest.profile['name']})", "",
        f"- date: {now}", f"- machine: {_cpu_name()}",
        f"- artifact: {args.artifact} ({model.manifest.precision})",
        "- method: TVM time_evaluator (number=1, repeat=10, min_repeat_ms=50), median; "
        "local in this process, remote in the RPC server process reached via the tracker",
        f"- remote vs local outputs on 8 inputs: max |diff| {max_diff:.2e}", "",
        "| batch | local µs | via RPC tracker µs | ratio |", "|---|---|---|---|",
    ]
    for b in batches:
        r = remote["results"][str(b)]["artifact"]
        lines.append(f"| {b} | {local[b]:.1f} | {r:.1f} | {r / local[b]:.2f} |")
    path = ROOT / "scripts" / "results" / f"{now[:10]}_rpc_loopback.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
