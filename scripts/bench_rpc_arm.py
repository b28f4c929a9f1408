#!/usr/bin/env python
"""LeNet-5 fp32 and int8 on the emulated ARM board over TVM RPC, checked against x86.

Builds LeNet-5 fp32 and int8 for ``arm_cortex_a72`` and for the host x86 profile (batches 1
and 64, ``--tune-budget 0``: ARM has no tuning database; x86 uses the committed one), starts a
TVM RPC tracker and the C++ board server on the emulated Cortex-A72 (``tvmcomp rpc server
--board arm_cortex_a72``: the aarch64 server under qemu-aarch64-static), then for each
precision

* times batch 1 on the board with ``tvmcomp bench ARM_ART --rpc-tracker ... --rpc-key ...``,
* runs the MNIST test images on the board over RPC (batch-64 entry point) and compares the
  predictions and logits with the x86 artifact run here,
* runs the same images on the board with the C++ deploy app (examples/cpp_deploy) and compares
  those too,

and writes a dated Markdown report to ``scripts/results/``. Usage::

    .venv/bin/python scripts/bench_rpc_arm.py [--model lenet5.onnx] [--images 10000]

Timings are under qemu user-mode emulation on the host, not real-board speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST, KEY, ARM = "127.0.0.1", "arm_cortex_a72", "arm_cortex_a72"
WORK = ROOT / "build" / "rpc_arm"
TVMCOMP = [sys.executable, "-m", "tvmcomp.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]






def _model(path: str | None) -> Path:
    """The ONNX LeNet-5: --model, else the one scripts/bench_lenet5_int8.py trained, else train."""
    if path:
        return Path(path)
    for cand in (WORK / "lenet5.onnx", ROOT / "runs" / "bench_lenet5_int8" / "lenet5.onnx"):
        if cand.is_file():
            return cand
    from tvmcomp.data import load_train_5k
    from tvmcomp.main_job import prepare_lenet5

    WORK.mkdir(parents=True, exist_ok=True)
    return prepare_lenet5(WORK, load_train_5k())[2]


def _build(model: Path, profile: str, precision: str, reuse: bool) -> Path:
    out = WORK / f"{profile}_{precision}"
    if reuse and (out / "manifest.json").is_file():
        return out
    cmd = [*TVMCOMP, "build", str(model), "--profile", profile, "--out", str(out),
           "--batch", "1,64", "--tune-budget", "0"]
    if precision == "int8":
        cmd += ["--quantize", "int8"]
    print("$ tvmcomp", " ".join(cmd[3:]), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"build failed: {res.stderr.strip()[-500:]}")
    return out


def _cli_bench(art: Path, tracker: str) -> float:
    """Batch-1 µs from the user-facing command ``tvmcomp bench ART --rpc-tracker --rpc-key``."""
    cmd = [*TVMCOMP, "bench", str(art), "--batch", "1", "--json", "--rpc-tracker", tracker,
           "--rpc-key", KEY]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"tvmcomp bench over RPC failed: {res.stderr.strip()[-500:]}")
    return float(json.loads(res.stdout)["results"]["1"]["artifact"])


def _local_us(art: Path, repeat: int) -> float:
    """Batch-1 µs of an x86 artifact here, same method (TVM time_evaluator, median)."""
    import tvm

    from tvmcomp import runtime

    m = runtime.load(art)
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(
        (1, *m.input_shape[1:])).astype(m.input_dtype), m.device)
    timer = m._vm.time_evaluator(m.manifest.entry_points[1], m.device, number=1,
                                 repeat=repeat, min_repeat_ms=50)
    return float(np.median(timer(x).results)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX LeNet-5 (default: see _model)")
    ap.add_argument("--images", type=int, default=10000, help="MNIST test images (default all)")
    ap.add_argument("--repeat", type=int, default=10, help="time_evaluator repeats (default 10)")
    ap.add_argument("--reuse", action="store_true", help="reuse artifacts in build/rpc_arm/")
    ap.add_argument("--no-app", action="store_true", help="skip the C++ deploy app runs")
    args = ap.parse_args()

    from tvmcomp import runtime
    from tvmcomp.data import normalize
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.deploy import runtime_dir
    from tvmcomp.deploy.compare import compare
    from tvmcomp.deploy.toolchain import find_tool
    from tvmcomp.main_job import _cpu_name
    from tvmcomp.rpc import bench_rpc, launch, parse_addr, server_keys, stop, tracker_summary
    from tvmcomp.targets import host_profile

    for tool in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64-static"):
        find_tool(tool)
    runtime_dir("aarch64")
    model = _model(args.model)
    WORK.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (WORK / "lenet5.onnx").resolve():
        shutil.copyfile(model, WORK / "lenet5.onnx")
        model = WORK / "lenet5.onnx"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    x86 = host_profile().name
    arts = {(p, q): _build(model, p, q, args.reuse) for p in (ARM, x86) for q in ("fp32", "int8")}

    d = default_mnist_dir()
    _, ev = load_eval_set(d if d is not None and Path(d).is_dir() else None)
    n = min(args.images, len(ev))
    x, y = normalize(ev.images[:n]), ev.labels[:n]

    rows = {}
    load_start = os.getloadavg()[0]
    tport = _port()
    tracker = f"{HOST}:{tport}"
    t0 = time.monotonic()
    tproc = launch("tracker", "--host", HOST, "--port", str(tport), expect="RPC tracker")
    sproc = None
    try:
        sproc = launch("server", "--board", ARM, "--key", KEY, "--tracker", tracker, "--host",
                       HOST, "--port", str(_port()), expect=f"RPC server '{KEY}'")
        deadline = time.monotonic() + 30
        while KEY not in server_keys(tracker_summary(*parse_addr(tracker))):
            if time.monotonic() > deadline:
                raise SystemExit("the board server never registered at the tracker")
            time.sleep(0.2)
        for q in ("fp32", "int8"):
            arm_art, x86_art = arts[(ARM, q)], arts[(x86, q)]
            print(f"== {q}: tvmcomp bench over RPC", flush=True)
            cli_us = _cli_bench(arm_art, tracker)
            print(f"== {q}: {n} images over RPC", flush=True)
            t = time.monotonic()
            remote = bench_rpc(arm_art, tracker, KEY, batches=(1,), repeat=args.repeat,
                               inputs=x, output_batch=64)
            rpc_wall = time.monotonic() - t
            ref = runtime.load(x86_art)(x)
            out = remote["outputs"]
            rows[q] = {
                "cli_b1_us": cli_us, "rpc_b1_us": remote["results"]["1"]["artifact"],
                "x86_b1_us": _local_us(x86_art, args.repeat), "rpc_wall_s": rpc_wall,
                "same_pred": int(np.sum(out.argmax(1) == ref.argmax(1))),
                "max_diff": float(np.abs(out - ref).max()),
                "acc_board": float(np.mean(out.argmax(1) == y)),
                "acc_x86": float(np.mean(ref.argmax(1) == y)),
                "manifest_sha": json.loads((arm_art / "manifest.json").read_text())
                ["library"]["sha256"][:12],
            }
            print(json.dumps(rows[q]), flush=True)
    finally:
        if sproc is not None:
            stop(sproc)
        stop(tproc)
    rpc_total = time.monotonic() - t0

    if not args.no_app:  # the same images through the C++ deploy app on the emulated board
        for q in ("fp32", "int8"):
            print(f"== {q}: C++ deploy app on the emulated board, {n} images", flush=True)
            c = compare(arts[(ARM, q)], arts[(x86, q)], limit=n)
            rows[q]["app"] = c
            print(json.dumps(c), flush=True)

    load_end = os.getloadavg()[0]
    now = dt.datetime.now(dt.timezone.utc)
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    lines = [
        "# LeNet-5 on the emulated ARM board over TVM RPC (arm_cortex_a72)", "",
        f"- date: {now.isoformat(timespec='seconds')}",
        f"- machine: 2-vCPU AMD EPYC Zen 3 VM ({_cpu_name()}), shared with another "
        "engineer's benchmarks",
        f"- board: emulated Cortex-A72, `{qemu}` user mode (`-cpu cortex-a72 -L "
        "/usr/aarch64-linux-gnu`), TVM_NUM_THREADS=1. **All ARM timings are under qemu "
        "emulation on the x86 host, not real-board speed.**",
        "- server: `tvmcomp rpc server --board arm_cortex_a72 --tracker HOST:PORT` = the C++ "
        "board server (examples/rpc_board) cross-compiled for aarch64, linked against the aarch64 "
        "libtvm_runtime.so, registered at a real TVM RPC tracker (`tvmcomp rpc tracker`) under "
        f"key `{KEY}`; one forked session worker per client",
        f"- model: {model.relative_to(ROOT)} (sha256 {sha[:16]}…), batches 1 and 64, "
        "`--tune-budget 0` (ARM: no tuning database, naive loops; x86: the committed "
        f"{x86} database)",
        "- timing: TVM `time_evaluator` (number=1, repeat="
        f"{args.repeat}, min_repeat_ms=50), median, batch 1; the 'tvmcomp bench' column is the "
        f"user-facing `tvmcomp bench ART --batch 1 --rpc-tracker {HOST}:PORT --rpc-key {KEY}`, "
        "the next one the same function in this process; x86 = the x86 artifact natively here",
        f"- predictions: the first {n} images of {ev.source}; board outputs over RPC with the "
        "batch-64 entry point vs the x86 artifact of the same precision run here",
        f"- wall time of the RPC part: {rpc_total:.0f} s; 1-min load average {load_start:.2f} "
        f"at the start, {load_end:.2f} at the end (2 vCPUs, shared: emulated timings vary "
        "between runs, compare only within one table)", "",
        "| precision | tvmcomp bench via tracker, b1 µs | bench_rpc b1 µs | x86 native b1 µs "
        "| identical predictions | max abs logit diff | board accuracy | x86 accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q, r in rows.items():
        lines.append(
            f"| {q} | {r['cli_b1_us']:.0f} | {r['rpc_b1_us']:.0f} | {r['x86_b1_us']:.1f} | "
            f"{r['same_pred']}/{n} | {r['max_diff']:.2e} | {r['acc_board']:.2%} | "
            f"{r['acc_x86']:.2%} |")
    if not args.no_app:
        lines += ["", "C++ deploy app (examples/cpp_deploy) on the same emulated board, same "
                  "images, vs the x86 artifact:", "",
                  "| precision | identical predictions | max abs logit diff | board accuracy "
                  "| app latency b1 µs (median, emulated) |", "|---|---|---|---|---|"]
        for q, r in rows.items():
            c = r["app"]
            lines.append(f"| {q} | {c['predictions_identical']}/{c['images']} | "
                         f"{c['max_abs_diff']:.2e} | {c['board_accuracy']:.2%} | "
                         f"{c['board_latency_us']:.0f} |")
    path = ROOT / "scripts" / "results" / f"{now.date().isoformat()}_rpc_arm_emulated.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
