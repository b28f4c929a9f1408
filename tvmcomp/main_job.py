"""The main job: LeNet-5 trained, exported, built for the host, verified and benchmarked."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

from .bench import BASELINES, bench_artifact, format_table
from .compiler import BuildOptions, build
from .data.mnist import default_mnist_dir, load_eval_set
from .frontend import export_onnx
from .model import LeNet5, TrainConfig, evaluate_torch, load_checkpoint, save_checkpoint, train
from .targets import Profile


def prepare_lenet5(out: Path, train_set, epochs: int = 20):
    """Train (seeded) or reuse ``out/lenet5.pt``, export ``out/lenet5.onnx``; returns both."""
    ckpt = out / "lenet5.pt"
    cfg = TrainConfig(epochs=epochs)
    reuse = False
    if ckpt.is_file():
        model, meta = load_checkpoint(ckpt)
        reuse = (meta.get("train_config") == cfg.__dict__
                 and meta.get("train_set") == train_set.source)
    if not reuse:
        print(f"== train LeNet-5: {cfg}")
        model = train(LeNet5(), train_set, cfg)
        save_checkpoint(model, ckpt, {"train_config": cfg.__dict__, "train_set": train_set.source})
    else:
        print(f"== train: reusing {ckpt} (same config and training set)")
    onnx_path = export_onnx(model, out / "lenet5.onnx",
                            metadata={"tvmcomp.checkpoint": str(ckpt.resolve())})
    print(f"== export → {onnx_path}")
    return model, ckpt, onnx_path


def run_main_job(out_dir: str | Path, profile: Profile, mnist_dir: str | None = None,
                 epochs: int = 20, tune_budget_s: float = 300.0, batches=(1, 64),
                 tuning_dir: str | None = None) -> dict:
    """Run everything end to end and print (and save) a results table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    mnist_dir = mnist_dir or default_mnist_dir()
    train_set, ev = load_eval_set(mnist_dir)
    print(f"== tvmcomp run | profile {profile.name} ({profile.description})")
    print(f"   training set: {train_set.source}")
    print(f"   evaluation set: {ev.source}")

    model, ckpt, onnx_path = prepare_lenet5(out, train_set, epochs)
    torch_acc = evaluate_torch(model, ev)
    print(f"   PyTorch accuracy {torch_acc:.4%} on {ev.source}")
    print("== build")
    art, manifest = build(onnx_path, profile, out / "artifact",
                          BuildOptions(batches=tuple(batches), tune_budget_s=tune_budget_s,
                                       eval_set=ev, tuning_dir=tuning_dir))
    ver = manifest["verification"]
    print("== bench (same run: artifact and float baselines)")
    res = bench_artifact(art, batches, BASELINES)
    summary = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {_cpu_name()}",
        "profile": profile.name,
        "eval_set": ev.source,
        "accuracy": {"torch_fp32": torch_acc, "ort_fp32": ver.get("reference_accuracy"),
                     "artifact": ver.get("accuracy")},
        "max_abs_err_vs_ort": ver.get("max_abs_err"),
        "model_so_bytes": manifest["library"]["bytes"],
        "weight_bytes": manifest["weight_bytes"],
        "tuning": {**{k: manifest["tuning"].get(k) for k in ("database", "cache", "tasks", "tuned",
                                                             "used_s")},
                   "record_source": manifest["tuning"].get("record_source", {})},
        "latency_us": res["results"],
        "notes": res["notes"],
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, res)
    return summary


def _cpu_name() -> str:
    """e.g. ``AMD EPYC (family 25 model 1, 2 CPUs)`` from /proc/cpuinfo."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    name = info.get("model name", platform.processor() or "unknown CPU")
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, " \
           f"{os.cpu_count()} CPUs)"


def _print_summary(s: dict, res: dict) -> None:
    acc = s["accuracy"]
    print()
    print(f"## Results — LeNet-5, profile {s['profile']}, {s['machine']}, {s['date']}")
    print()
    print(f"Accuracy on {s['eval_set']}:")
    print()
    print("| model | accuracy |")
    print("|---|---|")
    for name in ("torch_fp32", "ort_fp32", "artifact"):
        if acc.get(name) is not None:
            print(f"| {name} | {acc[name]:.2%} |")
    print()
    srcs = list(s["tuning"]["record_source"].values())
    origin = ", ".join(f"{srcs.count(p)} from {p}" + ("" if p == s["profile"] else " (fallback)")
                       for p in sorted(set(srcs)))
    print(f"Max |logit error| vs ONNX Runtime: {s['max_abs_err_vs_ort']:.2e}. model.so "
          f"{s['model_so_bytes']:,} B, weights {s['weight_bytes']:,} B. Tuned kernels "
          f"{s['tuning']['tuned']}/{s['tuning']['tasks']}" + (f" ({origin})" if origin else "")
          + ".")
    print()
    print("Latency, median µs per call (same run):")
    print()
    print(format_table(res))
    for n in s["notes"]:
        print(f"note: {n}")
    print(f"\n(total {s['seconds']:.0f} s; results saved as JSON beside the artifact)")
