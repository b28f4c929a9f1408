#!/usr/bin/env python
"""LeNet-5 factorized under an accuracy budget, built through the low-rank gate, against the
dense fp32 build, in one run.

Trains (or reuses) LeNet-5, factorizes its layers with ``compress --lowrank-budget`` (greedy
rank choice on held-out data, then fine-tuning), and builds both models with
``tvmcomp.compiler.build`` (the path users run: committed records, the build plan, the
low-rank gate after tuning both forms' kernels within the budget, verification on the 10k
MNIST test set). Then times both artifacts interleaved, and ONNX Runtime, in one run
(``tvmcomp.bench.bench_artifacts``). Then the rank sweep: every layer the rank choice tried,
factorized alone at ranks 4, 8, 16, 32, 64 (those that save weights) and at its chosen rank,
built the same way, its gate timing the two kernels against the whole layer. Writes a Markdown
report, its JSON and the plot of accuracy loss and latency against rank.

    .venv/bin/python scripts/bench_lowrank.py [--budget 0.3] [--tune-budget 600]
        [--sweep-tune 60] [--sweep-layers fc1,conv2] [--reduced]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def main() -> int:
    from bench_lenet5 import script_parser

    ap = script_parser(__doc__, "bench_lowrank")
    ap.add_argument("--profile", default=None, help="default: the host's x86 profile")
    ap.add_argument("--budget", type=float, default=0.3,
                    help="held-out accuracy budget of the rank choice, points (default 0.3)")
    ap.add_argument("--tune-budget", type=float, default=600.0,
                    help="seconds to tune the kernels without records (default 600)")
    ap.add_argument("--tuning-dir", default=None, help="tuning cache (default: the user's)")
    ap.add_argument("--sweep-tune", type=float, default=60.0,
                    help="seconds to tune each rank's new kernels in the sweep (default 60)")
    ap.add_argument("--sweep-layers", default=None,
                    help="comma-separated layers to sweep (default: every layer tried; "
                         "'none' skips the sweep)")
    ap.add_argument("--reduced", action="store_true",
                    help="1 epoch, no tuning, a sweep of one rank: a smoke test")
    args = ap.parse_args()

    from bench_lenet5 import lenet5_start, machine

    from tvmcomp.bench import bench_artifacts, format_table
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.main_job import compressed_path, lowrank_lenet5
    from tvmcomp.model import evaluate_torch, load_checkpoint

    t0 = time.monotonic()
    out, profile, train_set, ev, model, ckpt, onnx_dense = lenet5_start(args)
    acc_float = evaluate_torch(model, ev)
    plot = out / "lowrank_ranks.png"
    factorized, onnx_lowrank = lowrank_lenet5(out, ckpt, train_set, args.budget, plot)
    acc_lowrank = evaluate_torch(factorized, ev)
    summary = load_checkpoint(compressed_path(out, "lowrank"))[1]["compression"]
    budget = 0.0 if args.reduced else args.tune_budget
    arts, mans = {}, {}
    for form, onnx_path, tune_s in (("fp32", onnx_dense, 0.0), ("lowrank", onnx_lowrank, budget)):
        print(f"== build {form}", flush=True)
        arts[form], mans[form] = build(onnx_path, profile, out / form, BuildOptions(
            batches=(1, 64), tune_budget_s=tune_s, eval_set=ev, tuning_dir=args.tuning_dir))
    print("== bench (one run, interleaved)", flush=True)
    res = bench_artifacts(arts, (1, 64), ("ort_fp32",))
    sweep = rank_sweep(model, summary, out, profile, args)
    if sweep:
        plot_ranks(summary, sweep, args.budget, plot)

    stamp = dt.datetime.now(dt.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "profile": profile.name, "eval_set": ev.source, "budget_pt": args.budget,
              "tune_budget_s": budget, "float_accuracy": acc_float,
              "lowrank_accuracy": acc_lowrank, "compress": summary,
              "lowrank_build": mans["lowrank"]["lowrank"],
              "tuning": {f: {k: m["tuning"].get(k) for k in ("tuned", "tasks", "trials", "used_s")}
                         for f, m in mans.items()},
              "weight_bytes": {f: m["weight_bytes"] for f, m in mans.items()},
              "latency_us": res["results"], "notes": res["notes"], "sweep": sweep,
              "sweep_tune_s": 0.0 if args.reduced else args.sweep_tune,
              "seconds": round(time.monotonic() - t0, 1)}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    name = f"{stamp:%Y-%m-%d_%H%M}_lowrank_{profile.name}{'_reduced' if args.reduced else ''}"
    (results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    if plot.is_file():
        shutil.copyfile(plot, results / f"{name}.png")
    md = _markdown(report, format_table(res), f"{name}.png" if plot.is_file() else None)
    (results / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {results / name}.md and .json")
    return 0


SWEEP_GRID = (4, 8, 16, 32, 64)


def sweep_ranks(tried: list[int], chosen: int | None) -> list[int]:
    """The ranks a layer is timed at: those of :data:`SWEEP_GRID` the rank choice tried, and
    the chosen one (the largest tried when none of them is)."""
    rs = {r for r in tried if r in SWEEP_GRID} | ({chosen} if chosen else set())
    return sorted(rs or {max(tried)})


def rank_sweep(model, summary: dict, out: Path, profile, args) -> dict:
    """``{layer: {rank: its low-rank gate decision}}``: each layer the rank choice tried,
    factorized alone at each of its :func:`sweep_ranks` (no fine-tuning: the time does not
    depend on the values), built by ``tvmcomp.compiler.build``, whose gate times its two
    kernels against the whole layer (batch 1 + 64, interleaved repeats)."""
    import copy

    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.frontend import export_onnx
    from tvmcomp.model.lowrank import factorize_layers

    curves = summary.get("curves") or {}
    layers = list(curves) if args.sweep_layers is None else [
        n for n in args.sweep_layers.split(",") if n and n != "none"]
    chosen = {n: L["rank"] for n, L in summary["layers"].items()}
    out_sweep, res = out / "sweep", {}
    for name in layers:
        if name not in curves:
            raise SystemExit(f"--sweep-layers: {name} was not tried (tried: {', '.join(curves)})")
        ranks = sweep_ranks([int(r) for r in curves[name]], chosen.get(name))
        for r in ranks[-1:] if args.reduced else ranks:
            m = copy.deepcopy(model)
            factorize_layers(m, {name: r})
            onnx_path = export_onnx(m, out_sweep / f"{name}_r{r}.onnx")
            print(f"== sweep {name} rank {r}", flush=True)
            _, man = build(onnx_path, profile, out_sweep / f"{name}_r{r}", BuildOptions(
                batches=(1, 64), tune_budget_s=0.0 if args.reduced else args.sweep_tune,
                tuning_dir=args.tuning_dir, progress=False))
            gate = man["lowrank"]["gate"]
            if len(gate) != 1:
                raise SystemExit(f"{name} rank {r}: the build found {len(gate)} factorized "
                                 "layers, expected 1")
            res.setdefault(name, {})[r] = gate[0]
    return res


def plot_ranks(summary: dict, sweep: dict, budget_pt: float, path: Path) -> Path:
    """The compress plot (accuracy loss against rank) with the sweep's latency panel."""
    from tvmcomp.compress.lowrank import plot

    curves = {n: {int(r): a for r, a in c.items()} for n, c in summary["curves"].items()}
    latency = {n: {r: (d["factorized_us"], d["whole_us"]) for r, d in t.items()}
               for n, t in sweep.items()}
    return plot(summary["validation_accuracy_dense"], curves,
                {n: L["rank"] for n, L in summary["layers"].items()}, budget_pt / 100.0,
                path, latency)


def _markdown(r: dict, table: str, png: str | None) -> str:
    from tvmcomp.defaults import gate_repeats

    c, g = r["compress"], r["lowrank_build"]
    lat = r["latency_us"]
    lines = [f"# LeNet-5, low-rank factorization through the build's gate ({r['date']})", "",
             f"Machine: {r['machine']}. Profile {r['profile']}. Accuracy on {r['eval_set']}. "
             f"Produced by `scripts/bench_lowrank.py` in {r['seconds']:.0f} s.", "",
             f"Compress: `--lowrank-budget {r['budget_pt']:g}` (held-out loss before "
             f"fine-tuning), then fine-tuned: float {r['float_accuracy']:.2%} → factorized "
             f"{r['lowrank_accuracy']:.2%} "
             f"({100 * (r['lowrank_accuracy'] - r['float_accuracy']):+.2f} pt).", "",
             "| layer | rank (of) | energy kept | weights | MACs/image |", "|---|---|---|---|---|"]
    for n, L in c["layers"].items():
        lines.append(f"| {n} | {L['rank']} ({L['max_rank']}) | {L['energy_kept']:.3f} | "
                     f"{L['params'][0]:,} → {L['params'][1]:,} | "
                     f"{L['macs'][0]:,} → {L['macs'][1]:,} |")
    lines += ["", f"Build gate ({g['decided_by']}; tuning of both forms' kernels first: "
              f"{(g.get('tuned_before_gate') or {}).get('trials', 0)} trials, "
              f"{(g.get('tuned_before_gate') or {}).get('used_s', 0)} s). Each layer's "
              "kernels alone in the real model, batch 1 + 64 summed, median of "
              f"{gate_repeats()} interleaved repeats:", "",
              "| layer (imported) | rank | MACs/image two / one | two kernels µs | one kernel µs "
              "| decision |", "|---|---|---|---|---|---|"]
    for d in g["gate"]:
        lines.append(f"| {d['layer']}+{d['second']} | {d['rank']} | {d['macs'][0]:,} / "
                     f"{d['macs'][1]:,} | {d['factorized_us']:.2f} | {d['whole_us']:.2f} | "
                     f"{'folded back' if d['folded'] else 'kept factorized'} |")
    fp, lr = lat["1"], lat["64"]
    lines += ["", "Whole model, median µs per call (artifacts interleaved; ONNX Runtime in a "
              "block of its own):", "", table, "",
              f"lowrank / fp32: batch 1 {fp['lowrank'] / fp['fp32']:.3f}×, batch 64 "
              f"{lr['lowrank'] / lr['fp32']:.3f}×. Weights {r['weight_bytes']['fp32']:,} B → "
              f"{r['weight_bytes']['lowrank']:,} B. Tuning: "
              + "; ".join(f"{f} {t['tuned']}/{t['tasks']} kernels tuned, {t['trials']} trials"
                          for f, t in r["tuning"].items()) + ".", ""]
    if r["sweep"]:
        c = r["compress"]
        base = c["validation_accuracy_dense"]
        lines += [f"Rank sweep: each layer factorized alone (not fine-tuned), built with "
                  f"{r['sweep_tune_s']:g} s of tuning for its new kernels, its two kernels "
                  "timed against the whole layer by the build's gate (batch 1 + 64 summed, "
                  f"median of {gate_repeats()} interleaved repeats):", "",
                  "| layer | rank | held-out loss (pt) | two kernels µs | whole layer µs | "
                  "two / whole | gate |", "|---|---|---|---|---|---|---|"]
        for n, t in r["sweep"].items():
            for rank, d in t.items():
                two, one = d["factorized_us"], d["whole_us"]
                ratio = f"{two / one:.2f}" if two and one else "—"
                star = " ★" if c["layers"].get(n, {}).get("rank") == int(rank) else ""
                loss = 100 * (base - c["curves"][n][str(rank)])
                lines.append(f"| {n} | {rank}{star} | {loss:.2f} | {_us(two)} | {_us(one)} | "
                             f"{ratio} | "
                             f"{'fold' if d['folded'] else 'keep'} |")
        lines.append("")
    if png:
        lines += [f"![accuracy loss and latency against rank]({png})", ""]
    lines += ["Notes: " + ("; ".join(r["notes"]) or "none"), ""]
    return "\n".join(lines)


def _us(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
