"""``build``: ONNX → Relax → our pipeline → tuned schedules → verified artifact."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .artifact import SCHEMA_VERSION, FileRef, Manifest, read_manifest, write_artifact
from .data import Dataset
from .deploy.cuda import cuda_codegen
from .deploy.toolchain import check_cross_compiler
from .defaults import (CODEBOOK_DECODE, DEFAULT_BATCHES, DEFAULT_MAX_ACCURACY_DROP,
                       DEFAULT_SPARSE_THRESHOLD, DEFAULT_TUNE_BUDGET_S)
from .errors import ArtifactError, TvmcompError
from .frontend.onnx_import import CHECKPOINT_KEY, entry_name, import_batches, load_onnx
from .kernels.decode import DECODE_FUNCTION
from .pipeline import (compile_lowered, fuse, kernel_table, make_pipeline,
                       pass_names, run_range, schedule_and_lower)
from .passes.sizes import format_memory, run_time_memory
from .plan import PLAN_FILE, BuildPlan, plan_lowrank, plan_sparse
from .quant import QuantConfig
from .targets import INT8_ACCUMULATE, Profile
from .tune import RecordPaths, Records
from .tune.apply import checked_database, ensure_tuned
from .verify import verify

QDQ_REFERENCE = "reference.qdq.onnx"
QUANT_CONFIG = "quant_config.json"


@dataclass(frozen=True)
class BuildOptions:
    """How to build: batch sizes compiled into the artifact, tuning budget, evaluation set."""

    batches: tuple[int, ...] | None = None  # None: the model's (its fixed batch, else 1 and 64)
    tune_budget_s: float = DEFAULT_TUNE_BUDGET_S
    eval_set: Dataset | None = None
    debug_dump: str | None = None
    progress: bool = True
    quant: QuantConfig | None = None
    calib_images: np.ndarray | None = None  # float32 [N, *input]; default: MNIST training set
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    sparse: bool = False               # SparseDense + the measured-latency gate
    sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD  # sparsity at which a layer is a candidate
    sparse_min_speedup: float = 1.0    # keep sparse only where dense / sparse kernel µs >= this
    tuning_dir: str | None = None      # the tuning cache (default $XDG_CACHE_HOME/tvmcomp/...)
    tuning_logs: str | None = None     # where TVM's own tuning logs go (default: the cache)
    int8_accumulate: str | None = None  # override the profile's choice ("int32" / "float32")
    codebook: bool = False             # CodebookDense: shared weights as indices + codebook
    # where a codebook layer left dense decodes its codes: "kernel" (in its kernel, every
    # call) or "load" (once, when the artifact is loaded; RAM then holds the dense weight)
    codebook_decode: str = "kernel"
    # (RPC tracker HOST:PORT, key): where a profile this machine cannot run checks its tuned
    # schedules (None: applied unchecked)
    board: tuple[str, str] | None = None


def _say(msg: str, on: bool = True) -> None:
    if on:
        print(msg, flush=True)


def constant_bytes(mod) -> tuple[int, int]:
    """(bytes, count) of the distinct tensor constants (weights) in a Relax module."""
    import tvm
    from tvm import relax

    seen: dict[str, int] = {}

    def visit(e):
        if isinstance(e, tvm.ir.Constant) and hasattr(e.value, "numpy"):
            arr = e.value.numpy()
            seen[hashlib.sha256(arr.tobytes() + str(arr.dtype).encode()).hexdigest()] = arr.nbytes

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(seen.values()), len(seen)


def export_function(profile: Profile):
    """``ex -> (path -> None)`` writing the shared library for the profile's family."""

    def export(ex):
        def write(path: str) -> None:
            if profile.cross_compiler:
                from tvm.support import cc

                ex.export_library(path, fcompile=cc.cross_compiler(profile.cross_compiler))
            else:
                ex.export_library(path)

        return write

    return export


def _output_shape(fused, batch: int) -> list:
    func = fused[entry_name(batch)]
    ty = func.ret_ty if hasattr(func, "ret_ty") else func.ret_struct_info
    shape = [int(d) for d in ty.shape]
    return ["N", *shape[1:]]


def build(onnx_path: str | Path, profile: Profile, out_dir: str | Path,
          opts: BuildOptions = BuildOptions()) -> tuple[Path, dict]:
    """Compile an ONNX CNN for ``profile`` into a verified artifact directory at ``out_dir``."""
    t0 = time.monotonic()
    out_path = Path(out_dir)
    if out_path.exists() and not (out_path / "manifest.json").is_file():
        raise ArtifactError(f"{out_path} exists and is not a tvmcomp artifact; refusing to "
                           "replace it")
    check_cross_compiler(profile)  # one line naming the Debian package, before any work
    _check_out_writable(out_path)
    model, info, qm, opts = prepare_model(onnx_path, opts)
    int8 = is_qdq(model)
    batches = sorted(set(opts.batches))
    target = profile.tvm_target()
    _say(f"build {Path(onnx_path).name} → {out_dir} | profile {profile.name} | batches "
         f"{batches} | target {profile.target}", opts.progress)
    records = Records(RecordPaths.for_profile(profile, opts.tuning_dir, logs=opts.tuning_logs))
    _say(records.describe(), opts.progress)
    # The plan: every graph rewrite decided and applied once, in pipeline order; the fused
    # module that comes out, and nothing else, is tuned, checked, compiled and described.
    plan, fused, forms = plan_and_fuse(model, info, profile, opts, records)
    sparse_info = forms["sparse"]
    # a profile this machine cannot run is tuned, checked and verified on the board, if given
    board = None if profile.runs_here() else opts.board
    tuning = ensure_tuned(fused, profile, records, budget_left(opts, forms),
                          opts.progress, _boards(board))
    before = tuned_before_gates(forms)
    if before["trials"] or before["used_s"]:  # one budget for the build: the gates' count
        tuning.update(budget_s=opts.tune_budget_s, trials=tuning["trials"] + before["trials"],
                      used_s=round(tuning["used_s"] + before["used_s"], 1))
    remote_check = _board_check(board, profile)
    db = checked_database(fused, profile, records, opts.progress, tuning, remote_check)
    remote_check = None  # ends the RPC session: a board's server takes one at a time
    lowered = schedule_and_lower(fused, target, db, opts.debug_dump)
    checked_on = tuning.get("checked_on")
    kernels = kernel_table(lowered, target, tuned=(
        ("tuned, checked" + (f" on {checked_on}" if checked_on != "build host" else ""))
        if tuning["schedules_checked"]
        else f"tuned, unchecked ({profile.name} cannot run on the build host)"))
    ruled = set(tuning.get("rule_based_untuned", ()))
    for k in set(tuning.get("transferred_untuned", ())) & set(kernels):
        if kernels[k].startswith("tuned"):  # measured, checked, but never searched for
            kernels[k] = kernels[k].replace("tuned", "rule-based schedule" if k in ruled
                                            else "schedule from another shape", 1)
    with cuda_codegen(profile):  # CUDA: nvcc fatbin, arch machine code + PTX; no-op otherwise
        ex = compile_lowered(lowered, target)
    weight_bytes, n_weights = constant_bytes(fused)
    sparse_kw = plan.sparse_args()
    on_load = DECODE_FUNCTION if any(gv.name_hint == DECODE_FUNCTION
                                     for gv in fused.functions) else None
    from .passes.codebook_dense import decoded_bytes

    at_load_bytes = decoded_bytes(fused)

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "tvmcomp_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_machine": platform.machine(),
        # no host paths: the source files by name, sha256 and a path relative to the artifact
        "model": {"name": info.name,
                  "source": FileRef.of(info.path, out_path, info.sha256).to_dict(),
                  "checkpoint": _checkpoint_ref(info.metadata, out_path),
                  "opset": info.opset, "op_types": list(info.op_types),
                  "metadata": {k: v for k, v in info.metadata.items() if k != CHECKPOINT_KEY}},
        "inputs": [{"name": info.input_name, "shape": ["N", *info.input_shape[1:]],
                    "dtype": info.input_dtype}],
        "outputs": [{"name": info.output_name, "shape": _output_shape(fused, batches[0]),
                     "dtype": "float32"}],
        "batches": batches,
        "entry_points": {str(b): entry_name(b) for b in batches},
        "profile": profile.to_dict(),
        # the CPU thread pool the kernels were tuned and timed with: runtime.load and the C++
        # helper (examples/cpp_deploy/tvmcomp_threads.h) size TVM's pool from it
        # on_load: called once after loading (layers decoded at load fill the tensor cache)
        "runtime": {"threads": profile.cores, "on_load": on_load},
        "target": profile.target,
        "tvm_version": _tvm_version(),
        "passes": pass_names(make_pipeline(target, db, sparse=sparse_kw,
                                           int8_acc=plan.int8_accumulate,
                                           codebook=plan.codebook,
                                           at_load=plan.codebook_at_load,
                                           lowrank_fold=plan.lowrank_fold)),
        "plan": PLAN_FILE,
        "kernels": kernels,
        "weight_bytes": weight_bytes,
        "weight_tensors": n_weights,
        "tuning": tuning,
        "precision": "int8" if int8 else "fp32",
        "quantization": ({**(qm.summary() if qm is not None
                             else {"source": "QDQ model given as input"}),
                          "accumulate": plan.int8_accumulate} if int8 else None),
        "lowrank": forms["lowrank"],
        "sparse": sparse_info,
        "codebook": forms["codebook"],
        # per conv/matmul layer: the form its weight took and the bytes it stores, by role
        "layers": forms["layers"],
        # RAM a call holds: weights + the VM's planned activations + kernel scratch
        "memory": run_time_memory(lowered, weight_bytes, at_load_bytes, on_load),
    }
    extra = {PLAN_FILE: plan.to_json().encode()}
    if int8:
        extra[QDQ_REFERENCE] = _without_host_paths(model).SerializeToString()
        manifest["reference_model"] = QDQ_REFERENCE
    if qm is not None:
        extra[QUANT_CONFIG] = (opts.quant.to_json() + "\n").encode()

    def check(lib_path: Path, written: Manifest) -> dict:
        ran_on = "build host"
        if profile.runs_here():
            model_run = _load_for_check(lib_path, written, profile)
        elif board is not None:  # on the board, over RPC
            from .rpc import load_on_board
            from .runtime import CompiledModel

            vm, dev, _session = load_on_board(lib_path, written, *board)
            model_run = CompiledModel(lib_path.parent, written, vm, dev)
            ran_on = _board_label(board)
        else:
            reason = f"{profile.name} cannot run on this machine"
            _say(f"WARNING: verification skipped: {reason} (--rpc-tracker HOST:PORT verifies "
                 "on a board)", opts.progress)
            return {"verification": {"passed": None, "skipped": reason}}
        kw = {}
        if int8:
            from .quant import run_qdq_reference

            kw = dict(reference_fn=lambda x: run_qdq_reference(model, x),
                      reference_name="onnxruntime QDQ (as written)", rel_tol=1e-2,
                      max_accuracy_drop=opts.max_accuracy_drop if qm is not None else None)
        res = verify(model_run, info.path, info.input_shape, info.input_dtype, opts.eval_set,
                     fixed_batch=None if info.dynamic_batch else info.input_shape[0], **kw)
        msg = (f"verified vs {res.reference} on {res.inputs}"
               + (f", run on {ran_on}" if ran_on != "build host" else "")
               + f": max |err| {res.max_abs_err:.2e}")
        if res.accuracy is not None:
            msg += f", accuracy {res.accuracy:.4%} (reference {res.reference_accuracy:.4%})"
        if res.float_accuracy is not None:
            msg += f", float {res.float_accuracy:.4%}"
        _say(msg, opts.progress)
        return {"verification": {**res.to_dict(), "ran_on": ran_on}}

    out = write_artifact(out_dir, export_function(profile)(ex), manifest, check, extra)
    manifest = read_manifest(out).data  # as written, checked by the reader's rules
    if sparse_info is not None:
        keep = plan.sparse.keep
        _say(f"sparse ({plan.sparse.decided_by}): {sum(keep.values())}/{len(keep)} candidate "
             "layers kept sparse; "
             f"constants {sparse_info['size']['bytes']['total']:,} B (dense "
             f"{sparse_info['dense_size']['bytes']['total']:,} B)", opts.progress)
    if forms["codebook"] is not None:
        cb = forms["codebook"]
        forms_n = {f: sum(L["form"] == f for L in cb["layers"]) for f in ("dense", "sparse")}
        forms_n["at load"] = sum("at load" in L["form"] for L in cb["layers"])
        into_sparse = sum(L["form"] == "sparse conv, at load" for L in cb["layers"])
        _say(f"codebook: {forms_n['dense']} dense and {forms_n['sparse']} sparse layers as "
             "uint8 codes + codebook"
             + (f", {forms_n['at load']} more decoded at load" if forms_n["at load"] else "")
             + (f" ({into_sparse} into a sparse conv's arrays)" if into_sparse else "")
             + ", "
             f"{cb['stored_bytes']:,} B (dense {cb['dense_bytes']:,} B)", opts.progress)
    layers = forms["layers"]
    stored = sum(r["stored_bytes"] for r in layers)
    _say(f"layer weights: {len(layers)} layers store {stored:,} B "
         f"(fp32 / stored {sum(r['fp32_bytes'] for r in layers) / max(1, stored):.1f}x; "
         f"forms: {', '.join(sorted({r['form'] for r in layers}))}); with biases and other "
         f"constants {weight_bytes:,} B", opts.progress)
    _say(format_memory(manifest["memory"]), opts.progress)
    _say(f"wrote {out} (model.so {manifest['library']['bytes']:,} B, weights "
         f"{weight_bytes:,} B) in {time.monotonic() - t0:.0f} s", opts.progress)
    return out, manifest


def _board_label(board: tuple[str, str]) -> str:
    return f"RPC board {board[1]!r}"


def _boards(board: tuple[str, str] | None):
    """The RPC servers registered as ``board`` = (tracker, key) that tune the kernels; None
    without a board."""
    if board is None:
        return None
    from .rpc import remote_runner

    return remote_runner(*board)


def _board_check(board: tuple[str, str] | None, profile: Profile):
    """A session to ``board`` = (tracker, key) where ``profile``'s tuned schedules are
    checked; None without a board."""
    if board is None:
        return None
    from .rpc import request_session
    from .tune.validate import RemoteCheck

    return RemoteCheck(request_session(*board), profile.cross_compiler, _board_label(board))


def model_batches(info) -> tuple[int, ...]:
    """The batches a model is built for by default: its fixed batch, else 1 and 64."""
    return DEFAULT_BATCHES if info.dynamic_batch else (int(info.input_shape[0]),)


def prepare_model(onnx_path: str | Path, opts: BuildOptions):
    """(ONNX model, its info, the QuantizedModel or None, opts with the batches resolved):
    the model ``opts`` asks to build."""
    import dataclasses

    model, info = load_onnx(onnx_path)
    if opts.batches is None:
        opts = dataclasses.replace(opts, batches=model_batches(info))
        if not info.dynamic_batch:
            _say(f"batch: {opts.batches[0]}, the model's fixed batch (export it with a dynamic "
                 "batch to build others)", opts.progress)
    for b in opts.batches:
        info.check_batch(b)
    if opts.quant is None:
        return model, info, None, opts
    if is_qdq(model):
        raise TvmcompError(f"{onnx_path} is already quantized (QDQ); build it without "
                           "--quantize to compile its int8 kernels")
    from .quant import quantize_onnx

    images = _calibration_images(info, opts.calib_images)
    q = opts.quant
    _say(f"quantize int8: {q.calibration.method} calibration on "
         f"{min(len(images), q.num_calib)} images, {q.activations} activations, "
         f"{q.weights.granularity} weights" + (f", float: {', '.join(q.skip)}" if q.skip
                                               else ""), opts.progress)
    qm = quantize_onnx(model, images, opts.quant)
    return qm.model, info, qm, opts


def plan_and_fuse(model, info, profile: Profile, opts: BuildOptions, records: Records,
                  plan: BuildPlan | None = None):
    """(plan, fused module, ``{"sparse": info or None, "codebook": info or None, "layers":
    per-layer sizes}``): what
    ``build`` ships, and ``tune`` tunes.

    Runs ``quantize`` once, decides which factorized layers fold back into one and runs
    ``lowrank`` with that, takes the per-layer decisions on its output (or applies the saved
    ``plan``), runs ``layer_forms`` once with them, then ``canonicalize`` .. ``legalize_fuse``.
    The sparse gate tunes both forms' kernels before it decides; what that took is the
    sparse info's ``tuned_before_gate``, and the low-rank gate's likewise (their seconds come
    out of ``opts.tune_budget_s``: see :func:`budget_left`).
    """
    from .passes.sizes import layer_sizes
    from .passes.sparse_dense import find_layers, size_report

    target = profile.tvm_target()
    quant = opts.quant.to_dict() if opts.quant is not None else None
    batches = sorted(set(plan.batches if plan is not None else opts.batches))
    mod = import_batches(model, info, batches)
    acc = (plan.int8_accumulate if plan is not None
           else opts.int8_accumulate or profile.int8_accumulate)
    if acc not in INT8_ACCUMULATE:
        raise TvmcompError(f"int8 accumulation must be one of {', '.join(INT8_ACCUMULATE)}, "
                           f"got {acc!r}")
    quantized = run_range(mod, target, "quantize", "quantize", int8_acc=acc,
                          debug_dump=opts.debug_dump)
    gate_tuning, lowrank_tuning = {}, {}
    if plan is None:
        fold, lowrank_gate, lowrank_tuning = plan_lowrank(quantized, profile, records,
                                                          opts.progress, opts.tune_budget_s)
    else:
        plan.check_applies(profile.name, info.sha256, quant)
        fold, lowrank_gate = plan.lowrank_fold, plan.lowrank_gate
    # every later decision names the layers of the module with the folds applied
    quantized = run_range(quantized, target, "lowrank", "lowrank", lowrank_fold=fold,
                          debug_dump=opts.debug_dump)
    if plan is None:
        budget = max(0.0, opts.tune_budget_s - lowrank_tuning.get("used_s", 0.0))
        codebook = opts.codebook and _has_codebook_layers(quantized, info, opts.progress)
        at_load, decode_gate = (_decoded_at_load(quantized, opts, profile, records)
                                if codebook else ((), None))
        sparse, gate_tuning = (plan_sparse(quantized, profile, records, opts.sparse_threshold,
                                           opts.sparse_min_speedup, opts.progress,
                                           budget, codebook, at_load)
                               if opts.sparse else (None, {}))
        plan = BuildPlan(profile.name, tuple(batches), acc, sparse, info.sha256, quant,
                         codebook, at_load, decode_gate, fold, lowrank_gate)
    formed = run_range(quantized, target, "layer_forms", "layer_forms", int8_acc=acc,
                       sparse=plan.sparse_args(), codebook=plan.codebook,
                       at_load=plan.codebook_at_load, debug_dump=opts.debug_dump)
    info_sparse = None
    if plan.sparse is not None:
        sp = plan.sparse
        info_sparse = {
            "threshold": sp.threshold, "min_speedup": sp.min_speedup,
            "decided_by": sp.decided_by,
            "layers": [L.to_dict() for L in find_layers(quantized)],  # conv sparsity too
            "gate": sp.gate,
            "size": size_report(formed),
            "dense_size": size_report(quantized),
        }
        if gate_tuning:
            info_sparse["tuned_before_gate"] = gate_tuning
    fused = fuse(formed, target, debug_dump=opts.debug_dump, start="canonicalize", int8_acc=acc)
    forms = {"lowrank": _lowrank_info(plan, lowrank_tuning),
             "sparse": info_sparse,
             "codebook": ({**codebook_info(quantized, formed, plan.sparse_args(),
                                          plan.codebook_at_load),
                           **({"decode_gate": plan.codebook_gate} if plan.codebook_gate
                              else {})} if plan.codebook else None),
             "layers": layer_sizes(quantized, plan.sparse_args(), plan.codebook,
                                   plan.codebook_at_load)}
    return plan, fused, forms


def _lowrank_info(plan: BuildPlan, tuning: dict) -> dict | None:
    """The manifest's ``lowrank`` section: each factorized layer's size, timings and
    whether it was folded back into one layer (None: the model has none)."""
    if not plan.lowrank_gate:
        return None
    measured = any(d.get("factorized_us") is not None for d in plan.lowrank_gate)
    return {"decided_by": "measured" if measured else "static rule",
            "folded": list(plan.lowrank_fold), "gate": plan.lowrank_gate,
            **({"tuned_before_gate": tuning} if tuning else {})}


def _has_codebook_layers(quantized, info, progress: bool) -> bool:
    """Whether ``--codebook`` has a layer to fold; if not, say so (the build goes on dense)."""
    from .passes.codebook_dense import MAX_CODES, codebook_layers

    if codebook_layers(quantized):
        return True
    _say(f"--codebook: no float matmul or conv2d layer of {Path(info.path).name} has at most "
         f"{MAX_CODES} distinct weight values, and no int8 one is stored smaller as codes (share "
         "its weights first: tvmcomp compress --share-bits); building it dense", progress)
    return False


def _decoded_at_load(quantized, opts: BuildOptions, profile: Profile,
                     records: Records) -> tuple[tuple[str, ...], list | None]:
    """The codebook layers ``opts.codebook_decode`` decodes at load (by layer name), and
    with ``auto`` the measured decisions (``plan_codebook_decode``)."""
    from .passes.codebook_dense import codebook_layers
    from .plan import plan_codebook_decode

    if opts.codebook_decode not in CODEBOOK_DECODE:
        raise TvmcompError(f"codebook decode must be one of {', '.join(CODEBOOK_DECODE)}, "
                           f"got {opts.codebook_decode!r}")
    if opts.codebook_decode == "kernel":
        return (), None
    layers = tuple(sorted({L.key.split("/", 1)[1] for L in codebook_layers(quantized)
                           if L.form == "dense"}))  # int8 layers: at load in every mode
    if opts.codebook_decode == "load":
        return layers, None
    return plan_codebook_decode(quantized, profile, records, layers, progress=opts.progress)


def codebook_info(quantized, formed, sparse: dict | None = None,
                  at_load: tuple[str, ...] = ()) -> dict:
    """The manifest's codebook section: per layer (its batch entries share the stored
    arrays), its form (dense indices; decoded ``at load`` where named in ``at_load``, stored
    dense or ``at load, sparse``; or sparse codes where ``sparse``, SparseDense's arguments,
    made it sparse), the codebook length and the bytes dense and stored; the kernels that
    decode (dense codebook kernels and sparse kernels with codes)."""
    from .passes.codebook_dense import COMPOSITES, codebook_layers

    folded = {gv.name_hint for gv, f in formed.functions.items()
              if f.attrs is not None and f.attrs.get("Composite") in COMPOSITES
              or gv.name_hint.startswith("sell_dense_") and "_cb" in gv.name_hint}
    layers: dict = {}
    for L in codebook_layers(quantized, sparse, at_load):
        fn, name = L.key.split("/", 1)
        d = layers.setdefault(name, {**L.to_dict(), "key": name, "entries": []})
        d["entries"].append(fn)
    layers = list(layers.values())
    return {"layers": layers, "kernels": len(folded),
            "dense_bytes": sum(L["dense_bytes"] for L in layers),
            "stored_bytes": sum(L["stored_bytes"] for L in layers)}


def tuned_before_gates(forms: dict) -> dict:
    """``{"trials", "used_s"}`` the gates' tuning took (low-rank, sparse), summed."""
    runs = [(f or {}).get("tuned_before_gate") or {} for f in (forms["lowrank"],
                                                               forms["sparse"])]
    return {"trials": sum(r.get("trials", 0) for r in runs),
            "used_s": round(sum(r.get("used_s", 0.0) for r in runs), 1)}


def budget_left(opts: BuildOptions, forms: dict) -> float:
    """The tuning budget left after the gates' tuning."""
    return max(0.0, opts.tune_budget_s - tuned_before_gates(forms)["used_s"])


def _check_out_writable(out_path: Path) -> None:
    """``--out``'s folder can be created and written, checked before any compiling."""
    parent = out_path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create {parent} for --out ({e.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write into {parent} (--out {out_path}): permission denied")


def _checkpoint_ref(metadata: dict, out_path: Path) -> dict | None:
    """The PyTorch checkpoint the ONNX metadata names (``tvmcomp export`` writes it), as a
    :class:`FileRef`, if it is there."""
    ckpt = metadata.get(CHECKPOINT_KEY)
    if not ckpt or not Path(ckpt).is_file():
        return None
    return FileRef.of(ckpt, out_path).to_dict()


def _without_host_paths(model):
    """A copy of the ONNX model without the checkpoint path in its metadata."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [p for p in m.metadata_props if p.key != CHECKPOINT_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    return m


def is_qdq(model) -> bool:
    """Whether an ONNX model carries QuantizeLinear/DequantizeLinear nodes (int8 QDQ form)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _calibration_images(info, images) -> np.ndarray:
    if images is not None:
        return images
    if tuple(info.input_shape[1:]) == (1, 28, 28) and info.input_dtype == "float32":
        from .data import load_train_5k, normalize

        return normalize(load_train_5k().images)
    raise TvmcompError(
        f"{info.path}: input {list(info.input_shape)} is not MNIST-shaped; give calibration "
        "images with --calib-data FILE.npy (float32, shape [N, "
        f"{', '.join(map(str, info.input_shape[1:]))}])"
    )


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def _load_for_check(lib_path: Path, manifest: Manifest, profile: Profile):
    import tvm
    from tvm import relax

    from .runtime import CompiledModel

    dev = profile.device()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)
    return CompiledModel(lib_path.parent, manifest, vm, dev)


def as_batches(text: str) -> tuple[int, ...]:
    """Parse ``"1,64"`` → ``(1, 64)``; raises :class:`TvmcompError` on bad input."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TvmcompError(f"batch sizes must be integers like 1,64; got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise TvmcompError(f"batch sizes must be >= 1; got {text!r}")
    return vals


__all__ = ["BuildOptions", "build", "as_batches", "constant_bytes",
           "plan_and_fuse", "prepare_model"]
