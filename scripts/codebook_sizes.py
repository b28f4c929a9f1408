#!/usr/bin/env python
"""How small does LeNet-5 get in the deployable artifact, and at what accuracy? One run.

Trains (or reuses) the seeded LeNet-5 of ``scripts/bench_lenet5.py``, compresses copies
(``tvmcomp.compress.compress``: pruning, then k-means sharing) and builds each with
``tvmcomp build`` (the path users run; no tuning: sizes and accuracy do not depend on it).
For every configuration: accuracy on the MNIST test set (the build's verification),
``model.so`` bytes and the weight payload (every constant the artifact stores), with the
per-layer table of the smallest. Also the seed article's three steps side by side with its
claims, as ratios to fp32. Writes Markdown, JSON and a PNG plot of accuracy vs payload.

    .venv/bin/python scripts/codebook_sizes.py [--profile x86_avx2] [--codebook-decode kernel]

``--codebook-decode load`` (the default) builds the shared models with every codebook layer
decoded at load (``tvmcomp build --codebook --codebook-decode load``: a bit-packed code
stream per layer, the smallest form); ``kernel`` builds them ``--sparse --codebook`` (codes
decoded in the kernels, every sparse candidate kept sparse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# (name, prune sparsity or None, share bits or None, build options)
CONFIGS = [
    ("fp32", None, None, {}),
    ("int8", None, None, {"quant": True}),
    ("seed step 3: 10% pruned, 256 clusters", 0.1, {"conv": 8, "fc": 8},
     {"sparse": True, "codebook": True}),
    ("90% pruned, conv 8 / fc 5 bits", 0.9, {"conv": 8, "fc": 5},
     {"sparse": True, "codebook": True}),
    ("95% pruned, conv 5 / fc 4 bits", 0.95, {"conv": 5, "fc": 4},
     {"sparse": True, "codebook": True}),
    ("95% pruned, conv 5 / fc 5 bits", 0.95, {"conv": 5, "fc": 5},
     {"sparse": True, "codebook": True}),
    ("96% pruned, conv 5 / fc 5 bits", 0.96, {"conv": 5, "fc": 5},
     {"sparse": True, "codebook": True}),
    ("97% pruned, conv 4 / fc 4 bits", 0.97, {"conv": 4, "fc": 4},
     {"sparse": True, "codebook": True}),
]
# the seed article's LeNet-5: 1.5 MB fp32, 0.4 MB int8, 0.2 MB with int8 + 256-cluster sharing
# + 10 % pruning (its sizes of the saved model)
SEED = {"fp32": 1.5, "int8": 0.4, "seed step 3: 10% pruned, 256 clusters": 0.2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "build" / "bench_lenet5"))
    ap.add_argument("--results-dir", default=str(REPO / "scripts" / "results"))
    ap.add_argument("--profile", default=None, help="target profile (default: host x86)")
    ap.add_argument("--codebook-decode", choices=("load", "kernel"), default="load",
                    help="where the shared models' codebook layers are decoded")
    args = ap.parse_args()

    from bench_lenet5 import machine
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.compress import FineTune, KMeansShareConfig, MagnitudePruneConfig, compress
    from tvmcomp.data.mnist import default_mnist_dir, load_eval_set
    from tvmcomp.frontend import export_onnx
    from tvmcomp.main_job import prepare_lenet5
    from tvmcomp.model import load_checkpoint
    from tvmcomp.passes.sizes import format_layer_sizes
    from tvmcomp.quant import QuantConfig
    from tvmcomp.targets import host_profile, load_profile

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(args.profile) if args.profile else host_profile()
    train_set, ev = load_eval_set(default_mnist_dir())
    _, ckpt, dense_onnx = prepare_lenet5(out, train_set)
    rows = []
    for name, sparsity, bits, kw in CONFIGS:
        onnx_path = dense_onnx
        if sparsity is not None or bits is not None:
            steps = []
            if sparsity is not None:
                steps.append(MagnitudePruneConfig(sparsity, scope="global", finetune=FineTune()))
            if bits is not None:
                steps.append(KMeansShareConfig(bits=dict(bits)))
            tag = f"p{sparsity or 0:g}_" + "_".join(f"{k}{v}" for k, v in (bits or {}).items())
            path, _ = compress(ckpt, steps, out / f"sizes_{tag}.pt", data=train_set,
                               progress=False)
            onnx_path = export_onnx(load_checkpoint(path)[0], out / f"sizes_{tag}.onnx")
        opts = dict(kw)
        if opts.pop("quant", False):
            opts["quant"] = QuantConfig()
        if opts.get("codebook") and args.codebook_decode == "load":
            opts.update(sparse=False, codebook_decode="load")
        print(f"== {name}", flush=True)
        art, man = build(onnx_path, profile, out / "sizes" / name.split(":")[0].replace(" ", "_")
                         .replace("%", "").replace(",", "").replace("/", ""),
                         BuildOptions(batches=(1, 64), tune_budget_s=0, eval_set=ev,
                                      progress=False, sparse_min_speedup=0.0, **opts))
        rows.append({"config": name, "accuracy": man["verification"]["accuracy"],
                     "so_bytes": man["library"]["bytes"], "weight_bytes": man["weight_bytes"],
                     "layers": man["layers"]})
        print(f"   accuracy {rows[-1]['accuracy']:.2%}, model.so {rows[-1]['so_bytes']:,} B, "
              f"weights {rows[-1]['weight_bytes']:,} B", flush=True)

    stamp = dt.datetime.now(dt.timezone.utc)
    fp32 = rows[0]
    report = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "profile": profile.name, "eval_set": ev.source,
              "codebook_decode": args.codebook_decode, "configs": rows}
    how = ("`--codebook --codebook-decode load` (every codebook layer stored as a bit-packed "
           "code stream, decoded once at load)" if args.codebook_decode == "load" else
           "`--sparse --codebook` (every sparse candidate kept sparse)")
    name = f"{stamp:%Y-%m-%d_%H%M}_codebook_sizes_{profile.name}"
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    png = results / f"{name}.png"
    _plot(rows, png)
    acc0 = fp32["accuracy"]
    lines = [f"# LeNet-5 in the artifact: size vs accuracy ({report['date']})", "",
             f"Machine: {report['machine']}; profile {profile.name}. Accuracy on {ev.source} "
             "(the build's verification). Pruning: global magnitude with the default masked "
             "fine-tuning; sharing: k-means (linear init, centroid fine-tuning) after pruning, "
             f"zeros kept; builds with {how}, no tuning. Payload: every constant `model.so` "
             "stores (codes, codebooks, sparse "
             "structure, biases); `model.so` also holds the code of two batch entries (1, 64). "
             "Produced by `scripts/codebook_sizes.py`.", "",
             "| configuration | accuracy | Δ vs fp32 | model.so B | payload B | "
             "fp32 / payload | fp32 / model.so |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['accuracy']:.2%} | "
                     f"{100 * (r['accuracy'] - acc0):+.2f} pt | {r['so_bytes']:,} | "
                     f"{r['weight_bytes']:,} | {fp32['weight_bytes'] / r['weight_bytes']:.1f}× | "
                     f"{fp32['so_bytes'] / r['so_bytes']:.2f}× |")
    lines += ["", "The seed article's three steps, as ratios to its fp32 model and to ours "
              "(it reports saved-model sizes; ours are the artifact's). Its step 3 stores int8 "
              "values; ours stores uint8 codes into a float32 codebook (int8 codebooks with the "
              "scales folded in are not built yet).", "",
              "| step | seed size | seed / fp32 | our payload / fp32 | our model.so / fp32 | "
              "our accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["config"] in SEED:
            lines.append(f"| {r['config']} | {SEED[r['config']]} MB | "
                         f"{SEED[r['config']] / SEED['fp32']:.3f} | "
                         f"{r['weight_bytes'] / fp32['weight_bytes']:.3f} | "
                         f"{r['so_bytes'] / fp32['so_bytes']:.3f} | {r['accuracy']:.2%} |")
    smallest = min(rows, key=lambda r: r["weight_bytes"])
    lines += ["", f"Per layer, {smallest['config']}:", "",
              format_layer_sizes(smallest["layers"], smallest["weight_bytes"]), "",
              f"![accuracy vs payload]({png.name})"]
    md = "\n".join(lines) + "\n"
    (results / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {results / name}.md, .json and .png")
    return 0


def _plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["weight_bytes"] / 1024, 100 * r["accuracy"], s=30)
        ax.annotate(r["config"].split(":")[0], (r["weight_bytes"] / 1024, 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    target = rows[0]["weight_bytes"] / 40 / 1024
    ax.axvline(target, color="grey", linestyle=":", linewidth=1)
    ax.annotate("40× smaller than fp32", (target, ax.get_ylim()[0]), textcoords="offset points",
                xytext=(3, 3), fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("weight payload in model.so (KiB, log scale)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("LeNet-5: accuracy vs artifact weight payload")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
