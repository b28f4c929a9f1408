#!/usr/bin/env python
"""Which fine-tuning settings should `tvmcomp compress --prune 0.9` default to? One run.

Trains (or reuses) the seeded LeNet-5 of ``scripts/bench_lenet5.py``, then prunes a copy to
90 % global magnitude sparsity with each fine-tuning setting of the grid (the path users run,
``tvmcomp.compress.compress``) and evaluates each on the MNIST test set. Writes a Markdown
report and its JSON.

    .venv/bin/python scripts/prune_defaults.py [--lr 1e-3,2e-3,5e-3] [--epochs 8,16]
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def main() -> int:
    from bench_lenet5 import script_parser

    ap = script_parser(__doc__)
    ap.add_argument("--lr", default="1e-3,2e-3,5e-3")
    ap.add_argument("--epochs", default="8,16")
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()

    from bench_lenet5 import machine
    from tvmcomp.compress import FineTune, MagnitudePruneConfig, compress
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.main_job import prepare_lenet5
    from tvmcomp.model import evaluate_torch, load_checkpoint

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, ev = load_eval_set(default_mnist_dir())
    model, ckpt, _ = prepare_lenet5(out, train_set)
    base = evaluate_torch(model, ev)
    default = FineTune()
    rows = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        for lr in (float(v) for v in args.lr.split(",")):
            ft = FineTune(epochs=epochs, lr=lr)
            cfg = MagnitudePruneConfig(args.sparsity, scope="global", finetune=ft)
            t0 = time.monotonic()
            path, _ = compress(ckpt, cfg, out / f"prune_e{epochs}_lr{lr:g}.pt", data=train_set,
                               progress=False)
            acc = evaluate_torch(load_checkpoint(path)[0], ev)
            rows.append({"epochs": epochs, "lr": lr, "accuracy": acc,
                         "delta_pt": 100 * (acc - base), "seconds": time.monotonic() - t0,
                         "default": (epochs, lr) == (default.epochs, default.lr)})
            print(f"epochs {epochs} lr {lr:g}: {acc:.4%} ({100 * (acc - base):+.2f} pt)",
                  flush=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "eval_set": ev.source, "sparsity": args.sparsity, "float_accuracy": base,
              "default": {"epochs": default.epochs, "lr": default.lr}, "runs": rows}
    name = f"{stamp:%Y-%m-%d_%H%M}_prune_defaults"
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Pruning LeNet-5 to {args.sparsity:.0%}: fine-tuning settings ({report['date']})",
             "", f"Machine: {report['machine']}. Float model {base:.2%} on {ev.source}. Global "
             "magnitude pruning with the polynomial ramp, masked fine-tuning on the 5,000 shipped "
             "training images; everything else at the FineTune defaults. Produced by "
             "`scripts/prune_defaults.py`.", "",
             "| fine-tune epochs | lr | accuracy | Δ vs float | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " (default)" if r["default"] else ""
        lines.append(f"| {r['epochs']} | {r['lr']:g}{mark} | {r['accuracy']:.2%} | "
                     f"{r['delta_pt']:+.2f} pt | {r['seconds']:.0f} |")
    md = "\n".join(lines) + "\n"
    (results / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {results / name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
