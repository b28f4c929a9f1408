#!/usr/bin/env python
"""Does the sparse gate time the dense kernel that ships? One run, LeNet-5 int8+sparse fc1.

Builds the pruned LeNet-5 twice with ``tvmcomp.compiler.build`` (int8+sparse, whose gate
records its dense timing of each candidate layer in the manifest, and int8 dense, whose
``model.so`` ships the dense fc1 kernel), then, in this process, times fc1's dense kernel two
ways, interleaved (median of ``--repeat`` repetitions each): through the gate's own path (the
dense form built with the checked records a build applies) and the kernel inside the shipped
``model.so``, each with the layer's real constants. Writes a Markdown report and its JSON.

    .venv/bin/python scripts/gate_check.py [--tune-budget 0] [--repeat 21]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

LAYER = "matmul2"  # fc1 (400 -> 120)


def main() -> int:
    from bench_lenet5 import script_parser

    ap = script_parser(__doc__)
    ap.add_argument("--tune-budget", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()

    import numpy as np
    import tvm

    from bench_lenet5 import machine, save_results
    from tvmcomp.bench import interleaved_us
    from tvmcomp.compiler import BuildOptions, build, prepare_model
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.frontend.onnx_import import import_batches
    from tvmcomp.main_job import prepare_lenet5, prune_lenet5
    from tvmcomp.pipeline import run_range
    from tvmcomp.plan.sparse_gate import (_Built, _build, _candidates, _dense_calls, _timer,
                                          forms)
    from tvmcomp.quant import QuantConfig
    from tvmcomp.targets import host_profile
    from tvmcomp.tune import RecordPaths, Records
    from tvmcomp.tune.apply import checked_database

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = host_profile()
    train_set, ev = load_eval_set(default_mnist_dir())
    _, ckpt, _ = prepare_lenet5(out, train_set)
    _, pruned_onnx = prune_lenet5(out, ckpt, train_set)
    opts = BuildOptions(batches=(1, 64), tune_budget_s=args.tune_budget, eval_set=ev,
                        quant=QuantConfig(), sparse=True)
    art_s, man_s = build(pruned_onnx, profile, out / "gate_int8_sparse", opts)
    left = max(0.0, args.tune_budget - man_s["tuning"]["used_s"])
    dense_opts = dataclasses.replace(opts, sparse=False, tune_budget_s=left)
    art_d, man_d = build(pruned_onnx, profile, out / "gate_int8_dense", dense_opts)

    # fc1's dense kernel through the gate's path, and inside the shipped model.so
    target = profile.tvm_target()
    model, info, _, popts = prepare_model(pruned_onnx, dataclasses.replace(dense_opts,
                                                                           progress=False))
    quantized = run_range(import_batches(model, info, [1, 64]), target, "quantize", "quantize",
                          int8_acc=profile.int8_accumulate)
    dense_form, _ = forms(quantized, target, opts.sparse_threshold)
    records = Records(RecordPaths.for_profile(profile, None))
    gate_built = _build(dense_form, target, checked_database(dense_form, profile, records,
                                                             progress=False))
    shipped = _Built(None, SimpleNamespace(mod=tvm.runtime.load_module(str(art_d / "model.so"))),
                     man_d["kernels"], profile.device())
    _, timed, _ = _candidates(quantized, opts.sparse_threshold)
    gate_rec = {g["key"]: g for g in man_s["sparse"]["gate"]}
    rng = np.random.default_rng(0)
    timers, rows = {}, []
    for fname, m, d in timed:
        if not d.key.endswith("/" + LAYER):
            continue
        calls = _dense_calls(gate_built.fused[fname], m.w)
        names = [c.args[0].name_hint for c in calls]
        for c in calls:
            timers[("gate", d.key, c.args[0].name_hint)] = _timer(gate_built, c, rng)
            timers[("shipped", d.key, c.args[0].name_hint)] = _timer(shipped, c, rng)
        rows.append((d.key, m.batch, names))
    us = interleaved_us(timers, args.repeat)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "profile": profile.name, "repeat": args.repeat,
              "tune_budget_s": args.tune_budget, "layers": []}
    for key, batch, names in rows:
        g = gate_rec[key]
        report["layers"].append({
            "key": key, "batch": batch, "kernels": names,
            "gate_kernels_recorded": g["dense_kernels"], "dense_tuned": g["dense_tuned"],
            "shipped_status": [man_d["kernels"].get(n) for n in names],
            "gate_in_build_us": g["dense_us"],
            "gate_path_us": sum(us[("gate", key, n)] for n in names),
            "shipped_us": sum(us[("shipped", key, n)] for n in names),
            "sparse_us": g["sparse_us"], "keep_sparse": g["keep_sparse"]})
    stamp = dt.datetime.now(dt.timezone.utc)
    name = f"{stamp:%Y-%m-%d_%H%M}_gate_check_{profile.name}"
    save_results(args.results_dir, name, report, _markdown(report))
    return 0


def _markdown(r: dict) -> str:
    lines = [f"# Sparse gate vs the shipped dense kernel, LeNet-5 int8+sparse fc1 ({r['date']})",
             "", f"Machine: {r['machine']}. Profile {r['profile']}; tuning budget "
             f"{r['tune_budget_s']:.0f} s (committed records otherwise). Produced by "
             "`scripts/gate_check.py`: the gate's dense timing recorded by the int8+sparse "
             "build, and in this process, interleaved (median of "
             f"{r['repeat']} repetitions each), the dense kernel through the gate's path and "
             "the same kernel inside the int8 dense build's model.so, each with the layer's "
             "real constants.", "",
             "| layer | batch | dense kernel | shipped status | gate, in build µs | gate path µs "
             "| shipped model.so µs | shipped / gate path | sparse µs | gate decision |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for L in r["layers"]:
        ratio = L["shipped_us"] / L["gate_path_us"]
        lines.append(
            f"| {L['key']} | {L['batch']} | {' + '.join(L['kernels'])} | "
            f"{', '.join(map(str, L['shipped_status']))} | {L['gate_in_build_us']:.2f} | "
            f"{L['gate_path_us']:.2f} | {L['shipped_us']:.2f} | {ratio:.2f}× "
            f"({'within' if abs(ratio - 1) <= 0.15 else 'NOT within'} 15 %) | "
            f"{L['sparse_us']:.2f} | {'sparse' if L['keep_sparse'] else 'dense'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
