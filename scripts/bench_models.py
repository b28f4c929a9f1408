#!/usr/bin/env python
"""The model suite: embedded CNNs we build ourselves, against ONNX Runtime, in one run.

Each model of ``tvmcomp.model.suite`` (and LeNet-5), with seeded random weights, is saved as a
checkpoint and exported to ONNX, then built for batch 1 with ``tvmcomp.compiler.build`` (the
path users run) from an empty tuning cache and a profile with no committed records (as a
user's first build of a new model):

- ``plain loops``: no tuning, rule-based schedules off (``TVMCOMP_RULE_SCHEDULES=0``): what
  every kernel without a record ran before the rules;
- ``rules``: no tuning: each kernel the rule-based schedule (``tvmcomp.tune.rules``) where it
  beats the plain loops;
- ``tuned`` (with ``--budget S``): rules, then ``S`` seconds of tuning.

All of them, ONNX Runtime fp32, PyTorch fp32 and TVM's default pipeline are timed in one run
per model (``tvmcomp.bench.bench_artifacts``: ours interleaved, each peer in its own block).
Outputs are checked against ONNX Runtime on seeded inputs (max |ours - ORT| / max |ORT|).
Writes a Markdown table, its JSON and a PNG of each form's time relative to ORT.

    .venv/bin/python scripts/bench_models.py [--models resnet8,ds_cnn] [--budget 600]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_lenet5 import machine, save_results, script_parser  # noqa: E402

ERROR_INPUTS = 16


def model_classes() -> dict:
    from tvmcomp.model import LeNet5
    from tvmcomp.model.suite import SUITE

    return {**SUITE, "lenet5": LeNet5}


def export(name: str, cls, out: Path) -> Path:
    """The seeded model saved as a checkpoint and exported to ONNX (recording the checkpoint,
    so the bench times PyTorch too); returns the ONNX path."""
    from tvmcomp.frontend.onnx_export import export_onnx
    from tvmcomp.frontend.onnx_import import CHECKPOINT_KEY
    from tvmcomp.model import save_checkpoint
    from tvmcomp.model.suite import seeded

    model = seeded(cls)
    ckpt = out / f"{name}.pt"
    save_checkpoint(model, ckpt, {"note": "model suite, seeded random weights"})
    return export_onnx(model, out / f"{name}.onnx", input_shape=cls.input_shape,
                       metadata={CHECKPOINT_KEY: str(ckpt.resolve())})


def build_form(onnx_path: Path, profile, dest: Path, budget: float, rules: bool) -> dict:
    from tvmcomp.compiler import BuildOptions, build

    old = os.environ.get("TVMCOMP_RULE_SCHEDULES")
    os.environ["TVMCOMP_RULE_SCHEDULES"] = "1" if rules else "0"
    start = time.monotonic()
    try:
        _, man = build(str(onnx_path), profile, dest,
                       BuildOptions(batches=(1,), tune_budget_s=budget, progress=False,
                                    tuning_dir=str(dest.parent / f"{dest.name}_cache")))
    finally:
        if old is None:
            os.environ.pop("TVMCOMP_RULE_SCHEDULES", None)
        else:
            os.environ["TVMCOMP_RULE_SCHEDULES"] = old
    t = man["tuning"]
    return {"build_s": round(time.monotonic() - start, 1),
            "rule_based": len(t.get("rule_based_untuned", [])), "tasks": t["tasks"],
            "untuned": len(t["untuned"]), "tuning_s": t["used_s"], "trials": t["trials"]}


def max_rel_error(art: Path, onnx_path: Path, shape) -> float:
    import numpy as np

    from tvmcomp import runtime
    from tvmcomp.verify import ort_session

    x = np.random.default_rng(0).standard_normal((ERROR_INPUTS, *shape[1:])).astype("float32")
    sess = ort_session(str(onnx_path))
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ours = runtime.load(art)(x)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def plot(rows: list[dict], forms: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    width = 0.8 / len(forms)
    x = np.arange(len(rows))
    for i, form in enumerate(forms):
        ratios = [r["us"][form] / r["us"]["ort_fp32"] for r in rows]
        bars = ax.bar(x + (i - (len(forms) - 1) / 2) * width, ratios, width, label=form)
        ax.bar_label(bars, [f"{v:.1f}×" for v in ratios], fontsize=7, padding=1)
    ax.axhline(1.0, color="black", lw=0.8, ls=":", label="ONNX Runtime fp32")
    ax.axhline(3.0, color="grey", lw=0.8, ls="--", label="3× ORT")
    ax.set_yscale("log")
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel("time per call / ORT's (batch 1, log)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = script_parser(__doc__, "bench_models")
    ap.add_argument("--models", default=None, help="comma-separated (default: all)")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="seconds of tuning per model for the 'tuned' form (0: skip it)")
    ap.add_argument("--profile", default="x86_avx2")
    args = ap.parse_args()

    from tvmcomp.bench import BASELINES, bench_artifacts
    from tvmcomp.targets import load_profile

    classes = model_classes()
    names = args.models.split(",") if args.models else list(classes)
    unknown = [n for n in names if n not in classes]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(classes)}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # no committed records and no fallback: a user's first build of a new model
    profile = dataclasses.replace(load_profile(args.profile), tuning_db=str(out / "no_records"),
                                  record_fallback=())
    forms = {"plain loops": (0.0, False), "rules": (0.0, True)}
    if args.budget > 0:
        forms[f"tuned {args.budget:.0f} s"] = (args.budget, True)
    started = time.monotonic()
    rows = []
    for name in names:
        cls = classes[name]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        onnx_path = export(name, cls, d)
        arts, builds = {}, {}
        for form, (budget, rules) in forms.items():
            dest = d / form.split()[0]
            for stale in (dest, dest.parent / f"{dest.name}_cache"):
                if stale.exists():
                    shutil.rmtree(stale)
            print(f"== {name}: build {form}", flush=True)
            builds[form] = build_form(onnx_path, profile, dest, budget, rules)
            arts[form] = dest
        print(f"== {name}: bench", flush=True)
        res = bench_artifacts(arts, batches=(1,), baselines=BASELINES, progress=False)
        us = res["results"]["1"]
        rows.append({"model": name, "input": list(cls.input_shape), "us": us,
                     "builds": builds,
                     "max_rel_error": {f: max_rel_error(a, onnx_path, cls.input_shape)
                                       for f, a in arts.items()},
                     "notes": res["notes"][1:]})
    total = time.monotonic() - started
    stamp = dt.datetime.now(dt.timezone.utc)
    peers = [p for p in ("ort_fp32", "torch_fp32", "tvm_default") if p in rows[0]["us"]]
    head = (["model", "input"] + [f"{p} µs" for p in peers]
            + [f"{f} µs (× ORT)" for f in forms] + ["rule-based kernels", "max rel. error"])
    lines = [f"# The model suite, batch 1 ({stamp.isoformat(timespec='seconds')})", "",
             f"Machine: {machine()}. Profile {args.profile} with no committed records and an "
             "empty tuning cache per build; seeded random weights; ours timed interleaved, each "
             f"peer in its own block, one run per model. Total {total:.0f} s. Produced by "
             "`scripts/bench_models.py`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ort = r["us"]["ort_fp32"]
        cells = [r["model"], "×".join(map(str, r["input"][1:]))]
        cells += [f"{r['us'][p]:.1f}" for p in peers]
        cells += [f"{r['us'][f]:.1f} ({r['us'][f] / ort:.2f}×)" for f in forms]
        b = r["builds"]["rules"]
        cells += [f"{b['rule_based']}/{b['tasks']}",
                  f"{max(r['max_rel_error'].values()):.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Builds (s; tuning seconds and trials for a tuned form): "
              + "; ".join(f"{r['model']}: " + ", ".join(
                  f"{f} {b['build_s']:.0f}" + (f" ({b['tuning_s']:.0f} s, {b['trials']} trials)"
                                               if b["trials"] else "")
                  for f, b in r["builds"].items()) for r in rows), ""]
    name = f"{stamp:%Y-%m-%d_%H%M}_models_{args.profile}"
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    png = results / f"{name}.png"
    plot(rows, list(forms), png, f"Model suite, batch 1, {args.profile}: ours / ONNX Runtime "
         f"({stamp:%Y-%m-%d}, {machine().split(',')[0]})")
    lines.append(f"![ours / ORT per model]({png.name})")
    save_results(args.results_dir, name, {"machine": machine(), "profile": args.profile,
                                          "total_s": round(total, 1), "rows": rows},
                 "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
