"""The main job's report: plots (PNG) and one self-contained HTML page, from its results.

:func:`write_report` takes what ``tvmcomp run`` saves as ``results.json`` (every form's
accuracy, ``model.so`` and weight bytes, and the same run's latencies against the peers) and
writes, beside it:

- ``accuracy_vs_size.png``: accuracy against the weight payload (filled) and ``model.so``
  (hollow) of every form, log size axis;
- ``latency.png``: µs per call of every form and peer, one panel per batch, ORT fp32 marked;
- ``kernel_profile.png``: each form's kernels, timed alone at the largest batch, stacked;
- ``report.html``: the run's table, the plots above and those the run left beside them
  (:data:`EXTRA_PLOTS`: the per-layer pruning sensitivity and the low-rank rank choice),
  notes and stage times, the images embedded so the page travels alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

PEERS = ("ort_fp32", "ort_int8_qdq", "torch_fp32", "torch_int8")
EXTRA_PLOTS = (  # left beside the results by the run's stages, when they ran
    ("prune_sensitivity.png", "Pruning sensitivity: each layer pruned alone (magnitude, no "
     "fine-tuning), accuracy on a held-out fifth of the training images; ★ what tvmcomp compress "
     "--method sensitivity would choose under its default 0.5-point budget"),
    ("lowrank_ranks.png", "Low-rank: held-out accuracy loss against rank, per layer (the rank "
     "choice of the lowrank form)"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_size(s: dict, path: Path) -> Path:
    """Accuracy (%) against bytes, one labelled point per form: the weight payload filled,
    ``model.so`` hollow, joined by a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for i, (form, d) in enumerate(s["forms"].items()):
        color = f"C{i % 10}"
        acc = 100 * d["accuracy"]
        ax.plot([d["weight_bytes"], d["model_so_bytes"]], [acc, acc], color=color, lw=0.8,
                alpha=0.5)
        ax.plot(d["weight_bytes"], acc, "o", color=color, label=form)
        ax.plot(d["model_so_bytes"], acc, "o", mfc="none", color=color)
        ax.annotate(form, (d["weight_bytes"], acc), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.axhline(100 * s["accuracy"]["torch_fp32"], color="k", lw=0.8, ls=":",
               label="PyTorch fp32")
    ax.set_xscale("log")
    ax.set_xlabel("bytes (filled: weight payload; hollow: model.so)")
    ax.set_ylabel(f"accuracy, % ({s['eval_set'].split(',')[0]})")
    ax.set_title("Accuracy against artifact size")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_latency(s: dict, path: Path) -> Path:
    """Horizontal bars of µs per call, our forms then the peers, one panel per batch, with
    ONNX Runtime fp32's time as a dotted line."""
    plt = _plt()
    lat = s["latency_us"]
    rows = len(s["forms"]) + len(PEERS)
    fig, axes = plt.subplots(1, len(lat), figsize=(5 * len(lat), 0.35 * rows + 1.6),
                             dpi=110, squeeze=False)
    for ax, (batch, row) in zip(axes[0], lat.items()):
        names = [n for n in (*s["forms"], *PEERS) if n in row]
        vals = [row[n] for n in names]
        colors = ["C0" if n in s["forms"] else "0.55" for n in names]
        ax.barh(range(len(names)), vals, color=colors)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        for k, v in enumerate(vals):
            ax.text(v, k, f" {v:.1f}", va="center", fontsize=7)
        if "ort_fp32" in row:
            ax.axvline(row["ort_fp32"], color="r", lw=0.8, ls=":", label="ORT fp32")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("µs per call (median)")
        ax.set_title(f"batch {batch}")
        ax.set_xlim(0, 1.18 * max(vals))
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Latency, same run (ours: blue; peers: grey)")
    return _save(fig, path)


KERNEL_KINDS = (("sparse", ("sell_", "sparse_conv_")), ("conv", ("conv",)), ("pool", ("pool",)),
                ("dense", ("matmul", "dense")), ("other", ("",)))


def _kind(kernel: str) -> str:
    return next(k for k, keys in KERNEL_KINDS if any(key in kernel for key in keys))


def plot_kernel_profile(s: dict, path: Path) -> Path:
    """Per form, its kernels' times at the profiled batch, stacked in call order and coloured
    by kind (conv, pool, dense, sparse, other)."""
    plt = _plt()
    prof = s["kernel_profile"]
    forms = list(prof["forms"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(forms) + 1.8), dpi=110)
    colors = {k: f"C{i}" for i, (k, _) in enumerate(KERNEL_KINDS)}
    seen = set()
    for row, f in enumerate(forms):
        left = 0.0
        for kernel, us in prof["forms"][f]:
            kind = _kind(kernel)
            ax.barh(row, us, left=left, color=colors[kind], edgecolor="white", lw=0.5,
                    label=kind if kind not in seen else None)
            seen.add(kind)
            left += us
        ax.text(left, row, f" {left:.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(forms)), forms, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"µs per call at batch {prof['batch']}, each kernel timed alone "
                  "(VM instructions not included)")
    ax.set_title("Where the time goes: kernels per form, in call order")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def write_report(s: dict, out: Path) -> dict[str, Path]:
    """The plots and ``report.html`` for results ``s`` (``tvmcomp run``'s ``results.json``)
    in ``out``; ``{name: path}`` of what was written."""
    out = Path(out)
    plots = [(plot_accuracy_vs_size(s, out / "accuracy_vs_size.png"),
              "Accuracy against artifact size (weight payload and model.so)"),
             (plot_latency(s, out / "latency.png"), "Latency of every form against the peers")]
    if s.get("kernel_profile"):
        plots.append((plot_kernel_profile(s, out / "kernel_profile.png"),
                      "Per-kernel time profile of every form"))
    plots += [(out / name, caption) for name, caption in EXTRA_PLOTS if (out / name).is_file()]
    page = out / "report.html"
    page.write_text(render_html(s, plots))
    return {"report": page, **{p.stem: p for p, _ in plots}}


def results_table(s: dict) -> tuple[list[str], list[list[str]]]:
    """The run's table as text cells, (header, rows): per form its accuracy, Δ vs PyTorch
    fp32, ``model.so`` and weight bytes, weights / fp32, and per batch µs per call with the
    ratio to ORT fp32; then a row per peer timed. ``results.md`` and ``report.html`` both
    show it."""
    lat = s["latency_us"]
    batches = list(lat)
    acc0 = s["accuracy"]["torch_fp32"]
    fp32 = s["forms"]["fp32"]["weight_bytes"]
    head = ["form", "accuracy", "Δ vs float", "model.so B", "weights B", "weights / fp32",
            *[f"batch {b} µs (/ ORT)" for b in batches]]
    rows = []
    for f, d in s["forms"].items():
        cells = [f, f"{d['accuracy']:.2%}", f"{100 * (d['accuracy'] - acc0):+.2f} pt",
                 f"{d['model_so_bytes']:,}", f"{d['weight_bytes']:,}",
                 f"{d['weight_bytes'] / fp32:.3f}"]
        for b in batches:
            v, ort = lat[b].get(f), lat[b].get("ort_fp32")
            ratio = f" ({v / ort:.2f}×)" if v is not None and ort else ""
            cells.append("–" if v is None else f"{v:.1f}{ratio}")
        rows.append(cells)
    for peer in PEERS:
        if any(peer in lat[b] for b in batches):
            rows.append([peer, "", "", "", "", ""] + [
                f"{lat[b][peer]:.1f}" if peer in lat[b] else "–" for b in batches])
    return head, rows


def render_html(s: dict, plots: list[tuple[Path, str]]) -> str:
    """One self-contained page: the table, the plots (embedded PNGs), stage times, notes."""
    e = html.escape
    head, rows = results_table(s)
    acc0 = s["accuracy"]["torch_fp32"]
    table = ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
             + "</table>")
    figs = "".join(
        f"<figure><img alt='{e(cap)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(p).read_bytes()).decode()}'><figcaption>{e(cap)}</figcaption>"
        "</figure>" for p, cap in plots)
    stages = ", ".join(f"{e(k)} {v:.0f} s" for k, v in s["stage_seconds"].items())
    notes = "".join(f"<li>{e(n)}</li>" for n in s.get("notes", []))
    title = f"tvmcomp run: LeNet-5, every form ({s['profile']})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f2f2f2; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
.meta {{ color: #555; }}
</style></head><body>
<h1>{e(title)}</h1>
<p class="meta">{e(s['date'])} · {e(s['machine'])} · profile {e(s['profile'])} ·
accuracy on {e(s['eval_set'])} · PyTorch fp32 {acc0:.2%}</p>
<h2>Every form, one run</h2>
<p>Latency: median µs per call in the same run (our artifacts interleaved, each peer in a block
of its own). Weights: every byte <code>model.so</code> stores for the model's constants.</p>
{table}
<h2>Plots</h2>
{figs}
<h2>Time</h2>
<p>{stages}; total {s['seconds']:.0f} s.</p>
<h2>Notes</h2>
<ul>{notes}</ul>
</body></html>
"""
