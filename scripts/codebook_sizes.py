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

import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# (name, pruning: global sparsity, per-layer sparsities or None, fine-tuning epochs, share
# bits or None, build options); the tvmcomp compress flags each stands for are in the report
SHARED = {"sparse": True, "codebook": True}
CONFIGS = [
    ("fp32", None, 0, None, {}),
    ("int8", None, 0, None, {"quant": True}),
    ("seed step 3: 10% pruned, 256 clusters", 0.1, 24, {"conv": 8, "fc": 8}, SHARED),
    ("90% pruned, conv 8 / fc 5 bits", 0.9, 24, {"conv": 8, "fc": 5}, SHARED),
    ("95% pruned, conv 5 / fc 5 bits", 0.95, 24, {"conv": 5, "fc": 5}, SHARED),
    ("95% pruned (48 epochs), conv 5 / fc 5 bits", 0.95, 48, {"conv": 5, "fc": 5}, SHARED),
    ("per layer, 94% pruned (36 epochs), conv 5 / fc 5 bits",
     {"conv1": 0.3, "conv2": 0.75, "fc1": 0.96, "fc2": 0.93, "fc3": 0.7}, 36,
     {"conv": 5, "fc": 5}, SHARED),
    ("per layer, 95% pruned (48 epochs), conv 5 / fc 5 bits",
     {"conv1": 0.3, "conv2": 0.8, "fc1": 0.97, "fc2": 0.94, "fc3": 0.7}, 48,
     {"conv": 5, "fc": 5}, SHARED),
    ("97% pruned (48 epochs), conv 5 / fc 4 bits", 0.97, 48, {"conv": 5, "fc": 4}, SHARED),
]
MAX_LOSS_PT = 0.3  # the headline: the smallest payload within this of fp32's accuracy


def flags(sparsity, epochs, bits) -> str:
    """The ``tvmcomp compress`` flags a configuration stands for."""
    out = []
    if sparsity is not None:
        what = (",".join(f"{k}={v:g}" for k, v in sparsity.items())
                if isinstance(sparsity, dict) else f"{sparsity:g}")
        out.append(f"--prune {what}" + (f" --epochs {epochs}" if epochs != 24 else ""))
    if bits:
        out.append("--share-bits " + ",".join(f"{k}={v}" for k, v in bits.items()))
    return " ".join(out)
# the seed article's LeNet-5: 1.5 MB fp32, 0.4 MB int8, 0.2 MB with int8 + 256-cluster sharing
# + 10 % pruning (its sizes of the saved model)
SEED = {"fp32": 1.5, "int8": 0.4, "seed step 3: 10% pruned, 256 clusters": 0.2}


def main() -> int:
    from bench_lenet5 import script_parser

    ap = script_parser(__doc__)
    ap.add_argument("--profile", default=None, help="target profile (default: host x86)")
    ap.add_argument("--codebook-decode", choices=("load", "kernel"), default="load",
                    help="where the shared models' codebook layers are decoded")
    args = ap.parse_args()

    from bench_lenet5 import machine
    from tvmcomp.bench import bench_artifacts
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
    for name, sparsity, epochs, bits, kw in CONFIGS:
        onnx_path = dense_onnx
        if sparsity is not None or bits is not None:
            steps = []
            ft = FineTune(epochs=epochs)
            if isinstance(sparsity, dict):  # per layer: only the named ones
                steps.append(MagnitudePruneConfig.of_layers(sparsity, finetune=ft))
            elif sparsity is not None:
                steps.append(MagnitudePruneConfig(sparsity, scope="global", finetune=ft))
            if bits is not None:
                steps.append(KMeansShareConfig(bits=dict(bits)))
            tag = "_".join(f"{k}{v}" for k, v in [
                *(sparsity.items() if isinstance(sparsity, dict) else [("p", sparsity or 0)]),
                ("e", epochs), *(bits or {}).items()])
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
        rows.append({"config": name, "compress": flags(sparsity, epochs, bits),
                     "accuracy": man["verification"]["accuracy"],
                     "so_bytes": man["library"]["bytes"], "weight_bytes": man["weight_bytes"],
                     "layers": man["layers"], "artifact": str(art),
                     "ram": max(e["total"] for e in man["memory"]["entries"].values()),
                     "decoded_at_load": man["memory"].get("decoded_at_load", 0)})
        print(f"   accuracy {rows[-1]['accuracy']:.2%}, model.so {rows[-1]['so_bytes']:,} B, "
              f"weights {rows[-1]['weight_bytes']:,} B", flush=True)

    fp32 = rows[0]
    within = [r for r in rows[1:] if 100 * (fp32["accuracy"] - r["accuracy"]) <= MAX_LOSS_PT]
    head = min(within, key=lambda r: r["weight_bytes"]) if within else None
    speed = None
    if head is not None:  # its latency against the fp32 artifact's, interleaved, one run
        print(f"== bench: fp32 vs {head['config']} (interleaved)", flush=True)
        speed = bench_artifacts({"fp32": fp32["artifact"], "smallest": head["artifact"]},
                                batches=(1, 64), baselines=("ort_fp32",), progress=False)
    stamp = dt.datetime.now(dt.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
              "profile": profile.name, "eval_set": ev.source,
              "codebook_decode": args.codebook_decode, "configs": rows,
              "headline": head and head["config"], "bench": speed}
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
             "(the build's verification). Pruning: magnitude (global, or per layer as named) "
             "with masked fine-tuning (FineTune's defaults; the epochs as named); sharing: "
             "k-means (linear init, centroid fine-tuning, values rounded to float16) after "
             "pruning, "
             f"zeros kept; builds with {how}, no tuning. Payload: every constant `model.so` "
             "stores (codes, codebooks, sparse "
             "structure, biases); `model.so` also holds the code of two batch entries (1, 64). "
             "Produced by `scripts/codebook_sizes.py`.", "",
             "| configuration | `tvmcomp compress` | accuracy | Δ vs fp32 | model.so B | "
             "payload B | fp32 / payload | fp32 / model.so |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cmd = f"`{r['compress']}`" if r["compress"] else ""
        lines.append(f"| {r['config']} | {cmd} | "
                     f"{r['accuracy']:.2%} | "
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
    if head is None:
        lines += ["", f"No configuration is within {MAX_LOSS_PT} pt of fp32's accuracy."]
    else:
        res = speed["results"]
        lines += ["", f"The smallest payload within {MAX_LOSS_PT} pt of fp32: **{head['config']}**"
                  f", {head['weight_bytes']:,} B ({fp32['weight_bytes'] / head['weight_bytes']:.1f}"
                  f"× smaller than fp32), {100 * (head['accuracy'] - fp32['accuracy']):+.2f} pt. "
                  "Its latency against the fp32 artifact (same run, the two interleaved, median "
                  "of 15 repeats; ONNX Runtime fp32 in a block of its own) and the RAM a call "
                  "holds (weights, activations, kernel scratch and the weights decoded at load, "
                  "as the manifest counts it):", "",
                  "| batch | fp32 µs | smallest µs | smallest / fp32 | ORT fp32 µs |",
                  "|---|---|---|---|---|"]
        for b, row in res.items():
            lines.append(f"| {b} | {row['fp32']:.1f} | {row['smallest']:.1f} | "
                         f"{row['smallest'] / row['fp32']:.2f}× | {row['ort_fp32']:.1f} |")
        lines += ["", f"RAM per call, largest entry: fp32 {fp32['ram']:,} B; smallest "
                  f"{head['ram']:,} B, of which {head['decoded_at_load']:,} B decoded at load.",
                  "", f"Per layer, {head['config']}:", "",
                  format_layer_sizes(head["layers"], head["weight_bytes"])]
    smallest = min(rows, key=lambda r: r["weight_bytes"])
    if smallest is not head:
        lines += ["", f"Per layer, {smallest['config']} (the smallest payload):", "",
                  format_layer_sizes(smallest["layers"], smallest["weight_bytes"])]
    lines += ["", f"![accuracy vs payload]({png.name})"]
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
