"""The main job: LeNet-5 trained, pruned, built in every form for the host, verified and
benchmarked against its peers in one run."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .artifact import MANIFEST, code_fingerprint, sha256_file
from .compiler import BuildOptions, build
from .compress.errors import CompressError
from .data.mnist import default_mnist_dir, load_eval_set
from .defaults import (DEFAULT_BATCHES, DEFAULT_FINETUNE_EPOCHS, DEFAULT_LOWRANK_EPOCHS,
                       DEFAULT_LOWRANK_LR, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_TUNE_BUDGET_S)
from .errors import AccuracyDropError
from .frontend import export_onnx
from .frontend.onnx_import import CHECKPOINT_KEY
from .model import LeNet5, TrainConfig, evaluate_torch, load_checkpoint, save_checkpoint, train
from .passes.sizes import format_layer_sizes
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
                            metadata={CHECKPOINT_KEY: str(ckpt.resolve())})
    print(f"== export → {onnx_path}")
    return model, ckpt, onnx_path


BUILD_KEYS = "build_keys.json"  # in the run directory: each form's build_key, to reuse it
TVM_LOGS = "tvm_logs"  # in the run directory: TVM's own tuning logs (MetaSchedule's logs/)
FORMS = ("fp32", "lowrank", "int8", "sparse", "int8+sparse", "codebook", "sparse+codebook",
         "int8+codebook", "smallest")
LOWRANK_BUDGET_PT = 0.3  # the low-rank form's held-out accuracy budget (compress --lowrank-budget)
# the codebook forms, Deep Compression's bits: conv weights shared to 256 values, fc to 32;
# sparse+codebook shares the pruned model's (its order: prune, then share the survivors)
SHARE_BITS = {"conv": 8, "fc": 5}
# the pruned model (the sparse forms and pruned-then-shared ones): each layer pruned to its
# own sparsity, the convolutions as far as accuracy held, for speed (their direct sparse
# kernels' time falls with their non-zeros; 90 % global pruning left conv1 at 42 % and conv2
# at 79 %), with twice the default fine-tuning: batch 64 215 vs 309 µs (Zen 3, 2026-12-07,
# same run); on the 10k test set -0.03 pt and -0.34 pt with 24 epochs (two trainings),
# -0.18 pt with 48 (the second)
SPARSE_PRUNE = {"conv1": 0.7, "conv2": 0.9, "fc1": 0.95, "fc2": 0.9, "fc3": 0.7}
# the sparse form's gate times every layer with at least this fraction of zeros (build
# --sparse-threshold; default 0.7)
SPARSE_FORM_THRESHOLD = 0.4
# the smallest form: LeNet-5 pruned per layer to 95 % overall, with twice the default
# fine-tuning, shared to 32 values a layer, every layer decoded at load from its code stream
# (into the direct sparse kernel's arrays for a conv the sparse gate keeps sparse)
# (scripts/codebook_sizes.py: 50x smaller than fp32 at -0.14 pt on a Zen 3, 2026-12-07)
SMALLEST_PRUNE = {"conv1": 0.3, "conv2": 0.8, "fc1": 0.97, "fc2": 0.94, "fc3": 0.7}
SMALLEST_BITS = {"conv": 5, "fc": 5}


def prune_lenet5(out: Path, ckpt: Path, train_set, sparsity: float | dict | None = None,
                 epochs: int = 2 * DEFAULT_FINETUNE_EPOCHS):
    """Prune (magnitude, masked fine-tuning) or reuse ``out/lenet5_pruned.pt``; export
    ``out/lenet5_pruned.onnx``; returns (model, onnx path). ``sparsity``: per layer (default
    :data:`SPARSE_PRUNE`), or one float for global pruning."""
    from .compress import FineTune, MagnitudePruneConfig

    sparsity = SPARSE_PRUNE if sparsity is None else sparsity
    ft = FineTune(epochs=epochs)
    cfg = (MagnitudePruneConfig.of_layers(sparsity, finetune=ft) if isinstance(sparsity, dict)
           else MagnitudePruneConfig(sparsity, scope="global", finetune=ft))
    return _compressed_copy(out, ckpt, train_set, cfg, "pruned", "prune")


def share_lenet5(out: Path, ckpt: Path, train_set, suffix: str = "shared",
                 bits: dict | None = None):
    """Share the weights of ``ckpt`` (``bits``, default :data:`SHARE_BITS`; k-means, centroid
    fine-tuning; a pruned model's zeros stay zero) or reuse ``out/lenet5_<suffix>.pt``;
    export ``out/lenet5_<suffix>.onnx``; returns (model, onnx path)."""
    from .compress import KMeansShareConfig

    cfg = KMeansShareConfig(bits=dict(bits or SHARE_BITS))
    return _compressed_copy(out, ckpt, train_set, cfg, suffix, "share")


def lowrank_lenet5(out: Path, ckpt: Path, train_set, max_drop_pt: float = LOWRANK_BUDGET_PT,
                   plot: Path | None = None, epochs: int = DEFAULT_LOWRANK_EPOCHS):
    """Factorize ``ckpt``'s layers by truncated SVD under a held-out accuracy budget of
    ``max_drop_pt`` points (greedy, then ``epochs`` of fine-tuning) or reuse
    ``out/lenet5_lowrank.pt``; export ``out/lenet5_lowrank.onnx``; returns (model, onnx
    path)."""
    from .compress import FineTune, LowRankConfig

    cfg = LowRankConfig(max_accuracy_drop=max_drop_pt / 100.0,
                        plot=str(plot) if plot is not None else None,
                        finetune=FineTune(epochs=epochs, lr=DEFAULT_LOWRANK_LR))
    return _compressed_copy(out, ckpt, train_set, cfg, "lowrank", "low-rank")


def prune_lenet5_smallest(out: Path, ckpt: Path, train_set,
                          epochs: int = 2 * DEFAULT_FINETUNE_EPOCHS):
    """Prune each layer to its :data:`SMALLEST_PRUNE` sparsity (masked fine-tuning, ``epochs``)
    or reuse ``out/lenet5_pruned95.pt``; export it; returns (model, onnx path)."""
    from .compress import FineTune, MagnitudePruneConfig

    cfg = MagnitudePruneConfig.of_layers(SMALLEST_PRUNE, finetune=FineTune(epochs=epochs))
    return _compressed_copy(out, ckpt, train_set, cfg, "pruned95", "prune")


def prune_sensitivity_plot(out: Path, model, train_set) -> Path:
    """``out/prune_sensitivity.png``: each layer of ``model`` pruned alone (magnitude, one
    shot, no fine-tuning) at ``compress --method sensitivity``'s sparsities, accuracy on its
    held-out fifth of ``train_set``; starred, what that method would choose under its default
    budget. The report's per-layer sensitivity curve (the chain's own pruning is global)."""
    from .compress import SensitivityConfig
    from .compress import sensitivity as sens
    from .compress.masks import prunable
    from .data.mnist import split_holdout

    cfg = SensitivityConfig()
    _, val = split_holdout(train_set, cfg.val_fraction, seed=0)
    base, curves = sens.sweep(model, prunable(model), val, cfg.sparsities, cfg.block)
    chosen = sens.choose(base, curves, cfg.max_accuracy_drop)
    return sens.plot(base, curves, chosen, cfg.max_accuracy_drop, out / "prune_sensitivity.png")


def compressed_path(out: Path, suffix: str) -> Path:
    """Where the main job keeps LeNet-5's ``suffix`` copy ("pruned", "shared", ...)."""
    return out / f"lenet5_{suffix}.pt"


def _compressed_copy(out: Path, ckpt: Path, train_set, cfg, suffix: str, stage: str):
    """``compress`` ``ckpt`` with ``cfg`` into ``out/lenet5_<suffix>.pt``, or reuse it when it
    has the same config and source and was written after the source was (re)trained; export
    ``out/lenet5_<suffix>.onnx``; returns (model, onnx path)."""
    from .compress import compress, to_dict

    path = compressed_path(out, suffix)
    model = None
    if path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime:
        model, meta = load_checkpoint(path)
        same = (meta.get("compression", {}).get("config") == to_dict(cfg)
                and meta.get("compressed_from") == str(ckpt))
        model = model if same else None
    if model is None:
        print(f"== {stage}: {cfg}", flush=True)
        compress(ckpt, cfg, path, data=train_set)
        model, _ = load_checkpoint(path)
    else:
        print(f"== {stage}: reusing {path} (same config and source)")
    onnx_path = export_onnx(model, out / f"lenet5_{suffix}.onnx",
                            metadata={CHECKPOINT_KEY: str(path.resolve())})
    return model, onnx_path


def build_forms(out: Path, dense_onnx: Path, pruned_onnx: Path, profile: Profile, ev,
                batches=DEFAULT_BATCHES, tune_budget_s: float = DEFAULT_TUNE_BUDGET_S,
                tuning_dir: str | None = None,
                progress: bool = True, shared_onnx: Path | None = None,
                pruned_shared_onnx: Path | None = None, smallest_onnx: Path | None = None,
                lowrank_onnx: Path | None = None,
                max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                refused: dict | None = None) -> dict:
    """``{form: (artifact dir, manifest)}`` for every form `tvmcomp build` makes of LeNet-5:
    fp32, int8, sparse (the pruned model), int8+sparse, with ``shared_onnx`` codebook and with
    ``pruned_shared_onnx`` sparse+codebook (decoded in the kernels, a sparse conv's at load)
    and int8+codebook (the seed's last step: int8, pruned, shared; int8 codes decoded at
    load), with ``smallest_onnx`` smallest (every layer decoded once at load from its code
    stream: a conv the sparse gate keeps sparse into its direct sparse kernel's arrays),
    with ``lowrank_onnx`` lowrank (its gate keeps each factorization only where faster).
    The tuning budget is shared: each build gets what the builds before it left; lowrank
    builds last (its gate tunes the factorized kernels, which no committed record covers),
    and the result is in
    :data:`FORMS` order. An int8 form whose accuracy falls more than ``max_accuracy_drop``
    below the float model's is refused by the build's gate: it is left out, with the reason
    in ``refused`` (form -> message), and the other forms are built. A form whose
    :func:`build_key` is the one saved in ``out/build_keys.json`` by an earlier run is reused
    (its artifact, or its refusal), not built again."""
    from .quant import QuantConfig

    plans = {"fp32": (dense_onnx, {}), "int8": (dense_onnx, {"quant": QuantConfig()}),
             "sparse": (pruned_onnx, {"sparse": True,
                                      "sparse_threshold": SPARSE_FORM_THRESHOLD}),
             "int8+sparse": (pruned_onnx, {"quant": QuantConfig(), "sparse": True})}
    if shared_onnx is not None:
        plans["codebook"] = (shared_onnx, {"codebook": True})
    if pruned_shared_onnx is not None:
        plans["sparse+codebook"] = (pruned_shared_onnx, {"sparse": True, "codebook": True})
        plans["int8+codebook"] = (pruned_shared_onnx, {"quant": QuantConfig(), "codebook": True})
    if smallest_onnx is not None:
        plans["smallest"] = (smallest_onnx, {"codebook": True, "codebook_decode": "load",
                                             "sparse": True,
                                             "sparse_threshold": SPARSE_FORM_THRESHOLD})
    if lowrank_onnx is not None:
        plans["lowrank"] = (lowrank_onnx, {})
    keys_path = out / BUILD_KEYS
    keys = json.loads(keys_path.read_text()) if keys_path.is_file() else {}

    def save_key(form: str, entry: dict | None) -> None:  # at once: a failed build keeps none
        if entry is None:
            keys.pop(form, None)
        else:
            keys[form] = entry
        keys_path.write_text(json.dumps(keys, indent=1) + "\n")

    left, arts = tune_budget_s, {}
    for form, (onnx_path, kw) in plans.items():
        art = out / form.replace("+", "_")
        opts = BuildOptions(batches=tuple(batches), tune_budget_s=left, eval_set=ev,
                            tuning_dir=tuning_dir, tuning_logs=str(out / TVM_LOGS),
                            progress=progress, max_accuracy_drop=max_accuracy_drop, **kw)
        key = build_key(onnx_path, profile, opts)
        done = keys.get(form, {})
        why = done.get("refused")  # the accuracy gate's reason, when it refused the form
        if done.get("key") == key and (why or (art / MANIFEST).is_file()):
            print(f"== build {form}: reusing {art} (same model, options, code and committed "
                  "records)" + (f", refused: {why}" if why else ""), flush=True)
            built = None if why else (art, json.loads((art / MANIFEST).read_text()))
        else:
            save_key(form, None)
            print(f"== build {form} (tuning budget left {left:.0f} s)", flush=True)
            try:
                built, why = build(onnx_path, profile, art, opts), None
            except AccuracyDropError as e:  # (a wrong output is an error, and stops the job)
                print(f"== {form} refused, left out: {e}", flush=True)
                built, why = None, str(e)
            save_key(form, {"key": key, **({"refused": why} if why else {})})
        if why:
            if refused is not None:
                refused[form] = why
            continue
        arts[form] = built
        left = max(0.0, left - built[1]["tuning"]["used_s"])
    return {f: arts[f] for f in FORMS if f in arts}


def build_key(onnx_path: Path, profile: Profile | None, opts: BuildOptions) -> str:
    """What a form's artifact depends on: the ONNX model, the profile, the build options, the
    evaluation images it was verified on and :func:`tvmcomp.artifact.code_fingerprint` (the
    code, profiles and committed records). Records the user's tuning cache gained since are
    not part of it: a reused artifact keeps the schedules it was built with."""
    ev = opts.eval_set
    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
               if f.name not in ("eval_set", "progress")}
    h = hashlib.sha256()
    for part in (code_fingerprint(), sha256_file(onnx_path), repr(profile),
                 repr(sorted(options.items()))):
        h.update(part.encode() + b"\0")
    if ev is not None:
        h.update(np.ascontiguousarray(ev.images).tobytes())
        h.update(np.ascontiguousarray(ev.labels).tobytes())
    return h.hexdigest()


def run_main_job(out_dir: str | Path, profile: Profile, mnist_dir: str | None = None,
                 epochs: int = 20, tune_budget_s: float = DEFAULT_TUNE_BUDGET_S,
                 batches=DEFAULT_BATCHES,
                 tuning_dir: str | None = None,
                 prune_epochs: int = 2 * DEFAULT_FINETUNE_EPOCHS,
                 smallest_prune_epochs: int = 2 * DEFAULT_FINETUNE_EPOCHS,
                 lowrank_epochs: int = DEFAULT_LOWRANK_EPOCHS,
                 lowrank_budget_pt: float = LOWRANK_BUDGET_PT,
                 max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP) -> dict:
    """Train LeNet-5, build every form, verify, benchmark against the peers, print a table.

    An int8 form refused by the accuracy gate (``max_accuracy_drop`` below float) is left out
    of the table, and a note says why; so is the lowrank form when no layer can be factorized
    within ``lowrank_budget_pt`` points of held-out accuracy.

    Saves ``results.json``, ``results.md``, and the plots and ``report.html`` of
    :mod:`tvmcomp.report`, in ``out_dir``.
    """
    from .bench import bench_artifacts, kernel_profile
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    stages: dict[str, float] = {}
    mnist_dir = mnist_dir or default_mnist_dir()
    train_set, ev = load_eval_set(mnist_dir)
    print(f"== tvmcomp run | profile {profile.name} ({profile.description})")
    print(f"   training set: {train_set.source}")
    print(f"   evaluation set: {ev.source}")
    print(f"   forms: {', '.join(FORMS)}; shared tuning budget {tune_budget_s:.0f} s")

    model, ckpt, onnx_path = prepare_lenet5(out, train_set, epochs)
    torch_acc = evaluate_torch(model, ev)
    print(f"   PyTorch accuracy {torch_acc:.4%} on {ev.source}")
    stages["train"] = time.monotonic() - t0
    pruned, pruned_onnx = prune_lenet5(out, ckpt, train_set, epochs=prune_epochs)
    prune_lenet5_smallest(out, ckpt, train_set, epochs=smallest_prune_epochs)
    prune_sensitivity_plot(out, model, train_set)
    stages["prune"] = time.monotonic() - t0 - sum(stages.values())
    shared, shared_onnx = share_lenet5(out, ckpt, train_set)
    pruned_shared, pruned_shared_onnx = share_lenet5(out, compressed_path(out, "pruned"), train_set,
                                                     "pruned_shared")
    smallest, smallest_onnx = share_lenet5(out, compressed_path(out, "pruned95"), train_set,
                                           "smallest", SMALLEST_BITS)
    stages["share"] = time.monotonic() - t0 - sum(stages.values())
    refused: dict[str, str] = {}
    try:
        factorized, lowrank_onnx = lowrank_lenet5(out, ckpt, train_set,
                                                  plot=out / "lowrank_ranks.png",
                                                  epochs=lowrank_epochs,
                                                  max_drop_pt=lowrank_budget_pt)
    except CompressError as e:  # e.g. no rank within the budget: no lowrank form, said
        print(f"== low-rank: left out: {e}", flush=True)
        factorized, lowrank_onnx, refused["lowrank"] = None, None, str(e)
    stages["lowrank"] = time.monotonic() - t0 - sum(stages.values())
    arts = build_forms(out, onnx_path, pruned_onnx, profile, ev, batches, tune_budget_s,
                       tuning_dir, shared_onnx=shared_onnx,
                       pruned_shared_onnx=pruned_shared_onnx, smallest_onnx=smallest_onnx,
                       lowrank_onnx=lowrank_onnx, max_accuracy_drop=max_accuracy_drop,
                       refused=refused)
    stages["build"] = time.monotonic() - t0 - sum(stages.values())
    print("== bench (same run: every form, then each peer)")
    res = bench_artifacts({f: a for f, (a, _) in arts.items()}, batches,
                          ("torch_fp32", "ort_fp32"))
    stages["bench"] = time.monotonic() - t0 - sum(stages.values())
    top = max(batches)
    print(f"== kernel profile (batch {top}: each kernel alone, on its arguments in the model)")
    kernels = {f: [[k, round(us, 3)] for k, us, _ in kernel_profile(a, top)]
               for f, (a, _) in arts.items()}
    stages["profile"] = time.monotonic() - t0 - sum(stages.values())
    fp32 = arts["fp32"][1]
    summary = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {_cpu_name()}",
        "profile": profile.name,
        "eval_set": ev.source,
        "lowrank_budget_pt": lowrank_budget_pt,
        "accuracy": {"torch_fp32": torch_acc,
                     "torch_pruned": evaluate_torch(pruned, ev),
                     "torch_shared": evaluate_torch(shared, ev),
                     "torch_pruned_shared": evaluate_torch(pruned_shared, ev),
                     "torch_smallest": evaluate_torch(smallest, ev),
                     **({"torch_lowrank": evaluate_torch(factorized, ev)}
                        if factorized is not None else {}),
                     "ort_fp32": fp32["verification"].get("reference_accuracy")},
        "forms": {f: {"accuracy": m["verification"].get("accuracy"),
                      "max_abs_err": m["verification"].get("max_abs_err"),
                      "model_so_bytes": m["library"]["bytes"],
                      "weight_bytes": m["weight_bytes"],
                      "layers": m["layers"],
                      "lowrank": m.get("lowrank"),
                      "tuning": {**{k: m["tuning"].get(k) for k in ("tasks", "tuned", "used_s")},
                                 "hand_scheduled": len(m["tuning"].get("hand_scheduled", []))},
                      "record_source": m["tuning"].get("record_source", {})}
                  for f, (_, m) in arts.items()},
        "latency_us": res["results"],
        "kernel_profile": {"batch": top, "forms": kernels},
        "notes": [*(f"{f} left out, refused by the "
                    f"{'low-rank stage' if f == 'lowrank' else 'build'}: {why}"
                    for f, why in refused.items()), *res["notes"]],
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = format_results(summary)
    (out / "results.md").write_text(table + "\n")
    print()
    print(table)
    written = write_report(summary, out)
    print(f"\nreport: {written['report']} (plots: "
          + ", ".join(p.name for k, p in written.items() if k != "report") + ")")
    return summary


def tuned_kernels(t: dict) -> str:
    """``"6/6 (+10 hand-scheduled)"``: a build's tuned kernels of those that take a schedule
    (``t``: the counts ``tuned``, ``tasks`` and ``hand_scheduled``)."""
    hand = t.get("hand_scheduled", 0)
    return f"{t['tuned']}/{t['tasks'] - hand}" + (f" (+{hand} hand-scheduled)" if hand else "")


def format_results(s: dict) -> str:
    """The main job's table in Markdown: one row per form, then the peers."""
    from .report import results_table

    head, rows = results_table(s)
    acc0 = s["accuracy"]["torch_fp32"]
    lines = [f"## LeNet-5, every form — profile {s['profile']}, {s['machine']}, {s['date']}",
             "", f"Accuracy on {s['eval_set']}; PyTorch fp32 {acc0:.2%}, pruned ("
             + ", ".join(f"{k} {v:.0%}" for k, v in SPARSE_PRUNE.items()) + ") "
             f"{s['accuracy']['torch_pruned']:.2%}, weights shared "
             f"({', '.join(f'{k} {v} bits' for k, v in SHARE_BITS.items())}) "
             f"{s['accuracy']['torch_shared']:.2%}, pruned then shared "
             f"{s['accuracy']['torch_pruned_shared']:.2%} (int8+codebook: that model in int8, "
             "per-channel scales, its int8 weights stored as codes into int8 codebooks where "
             "smaller, decoded at load); smallest: pruned per layer ("
             + ", ".join(f"{k} {v:.0%}" for k, v in SMALLEST_PRUNE.items()) + "), shared ("
             + ", ".join(f"{k} {v} bits" for k, v in SMALLEST_BITS.items()) + "), every layer "
             f"decoded at load, {s['accuracy'].get('torch_smallest', float('nan')):.2%}; "
             f"lowrank: {_lowrank_line(s)}. "
             "Latency: median µs per call, same run (ours interleaved, each peer in its own "
             "block).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    tuned = ", ".join(f"{f} {tuned_kernels(d['tuning'])}" for f, d in s["forms"].items())
    lines += ["", f"Tuned kernels: {tuned}. Stage seconds: "
              + ", ".join(f"{k} {v:.0f}" for k, v in s["stage_seconds"].items())
              + f"; total {s['seconds']:.0f} s."]
    lines += [f"note: {n}" for n in s["notes"]]
    smallest = min(s["forms"], key=lambda f: s["forms"][f]["weight_bytes"])
    lines += ["", f"Weights of the smallest form, {smallest}, layer by layer (bytes stored in "
              "model.so; batch entries share them):", "",
              format_layer_sizes(s["forms"][smallest]["layers"],
                                 s["forms"][smallest]["weight_bytes"])]
    lines += ["", "Not yet in the chain: int8 codebooks decoded inside the int8 kernels (they "
              "are decoded at load); codes below 5 bits (built packed, not in this job's "
              "bits); low-rank with pruning or sharing."]
    return "\n".join(lines)


def _lowrank_line(s: dict) -> str:
    """``factorized under a 0.3 pt held-out budget: conv1 rank 9 (kept: 343 vs 371 µs), ...``:
    what the lowrank form's gate did with each factorized layer."""
    lr = (s["forms"].get("lowrank") or {}).get("lowrank")
    acc = s["accuracy"].get("torch_lowrank")
    head = (f"factorized under a {s.get('lowrank_budget_pt', LOWRANK_BUDGET_PT):g} pt "
            "held-out budget")
    if acc is None:  # the low-rank stage found no rank within the budget
        return head + ": no layer within it, so no lowrank form (see the notes)"
    if not lr:
        return head + f" (no layer factorized), {acc:.2%}"
    return head + ": " + ", ".join(
        f"{d['layer']} rank {d['rank']} ("
        + ("folded back" if d["folded"] else "kept")
        + (f": {d['factorized_us']:.1f} vs {d['whole_us']:.1f} µs"
           if d.get("factorized_us") is not None else "") + ")" for d in lr["gate"]) + (
        f", {acc:.2%}")


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
