"""The compilation pipeline: one explicit, ordered, printable list of Relax passes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from .defaults import DEFAULT_SPARSE_THRESHOLD
from .kernels import HAND_SCHEDULED
from .passes import CodebookDense, Int8Vnni, LowRankFold, QuantizeInt8, SparseDense
from .passes.gpu_default_schedule import GpuDefaultSchedule
from .passes.int8_vnni import target_int8_isa


@dataclass(frozen=True)
class Phase:
    """A named group of passes; ``tunable`` marks the point where tuning tasks are extracted.

    ``args`` maps a pass name to the arguments it was made with (for printing and manifests).
    """

    name: str
    passes: tuple
    tunable_after: bool = False
    args: tuple[tuple[str, str], ...] = ()


def _name(p) -> str:
    info = getattr(p, "info", None)
    return info.name if info is not None else type(p).__name__


def _sparse_args(sparse: dict) -> str:
    keep = sparse.get("keep") or {}
    kept = sum(bool(v) for v in keep.values())
    parts = [f"threshold={sparse.get('threshold', DEFAULT_SPARSE_THRESHOLD)}"]
    if keep:
        parts.append(f"keep={kept}/{len(keep)} layers sparse")
    if sparse.get("values", "float32") != "float32":
        parts.append(f"values={sparse['values']}")
    return ", ".join(parts)


def make_pipeline(target, database=None, sparse: dict | None = None,
                  int8_acc: str = "int32", codebook: bool = False,
                  at_load: tuple[str, ...] = (),
                  lowrank_fold: tuple[str, ...] = ()) -> list[Phase]:
    """The pipeline for ``target``; ``database`` (MetaSchedule) applies tuned schedules.

    ``sparse`` (``SparseDense`` keyword arguments: threshold, keep, values) turns on the
    sparse-conversion pass; None leaves dense layers dense. ``int8_acc``: how QuantizeInt8
    accumulates (``"int32"`` / ``"float32"``; the profile's ``int8_accumulate``).
    ``codebook`` turns on ``CodebookDense`` for the float layers left dense; ``at_load``: the
    names of those it decodes once at load instead of in their kernels. ``lowrank_fold``: the
    factorized layers (by their first factor's name) folded back into one layer.

    The IR after phase 3 is what ``tune`` extracts its tasks from, so build and tune see
    structurally identical PrimFuncs and tuning records are found at build.
    """
    with target:  # MetaScheduleApplyDatabase reads the current target when constructed
        return _phases(database, sparse, gpu="gpu" in list(target.keys),
                       int8_isa=target_int8_isa(target),
                       accumulate=int8_acc, codebook=codebook, at_load=at_load,
                       lowrank_fold=lowrank_fold)


def _phases(database, sparse: dict | None = None, gpu: bool = False,
            int8_isa: str | None = None,
            accumulate: str = "int32", codebook: bool = False,
            at_load: tuple[str, ...] = (), lowrank_fold: tuple[str, ...] = ()) -> list[Phase]:
    return [
        # 1. Quantize, first (before FoldConstant would fold dequantized weights back to
        #    float): QDQ patterns become int8 conv2d/matmul with integer requantization;
        #    float graphs pass through unchanged.
        Phase("quantize", (QuantizeInt8(accumulate),),
              args=(("QuantizeInt8", f"accumulate={accumulate}"),)),
        # 1b. Factorized layers (compress --lowrank) the build plan folds back into one
        #    layer (its gate measured the two kernels slower), before any per-layer decision
        #    is taken on layer names.
        Phase("lowrank", (LowRankFold(lowrank_fold) if lowrank_fold
                          else tvm.transform.Sequential([], name="LowRankFold(off)"),),
              args=(("LowRankFold", f"fold={','.join(lowrank_fold)}"),) if lowrank_fold
              else ()),
        # 2. Per-layer forms the build plan chose (before FoldConstant/LegalizeOps):
        #    SparseDense (with --sparse) turns the sparse constant matmuls it keeps (float, or
        #    QuantizeInt8's int8 ones) into sparse (SELL) call_tir kernels, and convolutions
        #    into direct sparse ones; Int8Vnni (on
        #    x86) turns the int8 layers left dense into our exact int8 kernels: all of them
        #    with AVX-512 VNNI, with AVX2 only (isa=avx2) those it sums exactly there
        #    (activations known to be >= 0, or weights >= -127); CodebookDense (with
        #    --codebook) keeps the weights of the float layers left dense that have at most
        #    256 distinct values as uint8 indices + a codebook, decoded in the kernel, and
        #    stores shared int8 weights (packed for our int8 kernels or not) and shared
        #    sparse convolutions' arrays as code streams decoded at load.
        Phase("layer_forms", (
            SparseDense(**sparse) if sparse is not None
            else tvm.transform.Sequential([], name="SparseDense(off)"),
            Int8Vnni(int8_isa) if int8_isa
            else tvm.transform.Sequential([], name="Int8Vnni(off)"),
            CodebookDense(at_load) if codebook
            else tvm.transform.Sequential([], name="CodebookDense(off)"),
        ), args=((("SparseDense", _sparse_args(sparse)),) if sparse is not None else ())
            + ((("Int8Vnni", f"isa={int8_isa}"),) if int8_isa and int8_isa != "avx512_vnni"
               else ())
            + ((("CodebookDense", f"at_load={','.join(at_load)}"),) if at_load else ())),
        # 3. Canonicalise: batch-norm/dropout to inference arithmetic, trivial bindings
        #    removed, constants folded while ops are still high level.
        Phase("canonicalize", (
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(),
        )),
        # 2. Library dispatch (sampling / sort-scan ops to their CPU kernels).
        Phase("dispatch", (
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
        )),
        # 3. Lower ops to TIR and fuse them into kernels (conv+bias+relu, matmul+bias, ...).
        Phase("legalize_fuse", (
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            # reshape kernels become the VM's builtin reshape here, before tasks are
            # extracted, so tuning never spends trials on kernels that never run
            relax.transform.RewriteDataflowReshape(),
        ), tunable_after=True),
        # 4. Schedule: replace each fused kernel with its best tuned schedule; on GPU targets
        #    DLight rules then schedule (thread-bind) every kernel left without one.
        Phase("schedule", (
            (relax.transform.MetaScheduleApplyDatabase(enable_warning=False),)
            if database is not None else ()
        ) + ((GpuDefaultSchedule(),) if gpu else ())),
        # 5. Lower the dataflow graph to VM code and plan memory statically.
        Phase("lower", (
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        )),
    ]


def _with_args(ph: Phase, p) -> str:
    name = _name(p)
    args = dict(ph.args).get(name)
    return f"{name}({args})" if args else name


def describe(phases: list[Phase]) -> list[str]:
    """``["1. quantize: QuantizeInt8(accumulate=int32)", ...]`` for printing."""
    return [
        f"{i}. {ph.name}: {', '.join(_with_args(ph, p) for p in ph.passes) or '(none)'}"
        for i, ph in enumerate(phases, 1)
    ]


def pass_names(phases: list[Phase]) -> list[str]:
    """``["quantize/QuantizeInt8(accumulate=int32)", ...]``: the manifest's pass list."""
    return [f"{ph.name}/{_with_args(ph, p)}" for ph in phases for p in ph.passes]


def run_phases(mod, phases: list[Phase], target, database=None,
               debug_dump: str | os.PathLike | None = None, first_index: int = 1):
    """Run ``phases`` in order under ``target`` (and ``database``); dump IR per phase if asked."""
    dump = Path(debug_dump) if debug_dump else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        if first_index == 1:
            (dump / "00_input.py").write_text(mod.script())
    with target, tvm.transform.PassContext(opt_level=3):
        with database if database is not None else _Null():
            for i, ph in enumerate(phases, first_index):
                mod = tvm.transform.Sequential(list(ph.passes), name=ph.name)(mod)
                if dump:
                    (dump / f"{i:02d}_{ph.name}.py").write_text(mod.script())
    return mod


def split_at_tunable(phases: list[Phase]) -> tuple[list[Phase], list[Phase]]:
    """(phases up to and including the tunable point, the rest)."""
    k = next(i for i, ph in enumerate(phases) if ph.tunable_after) + 1
    return phases[:k], phases[k:]


def run_range(mod, target, first: str, last: str, *, sparse: dict | None = None,
              int8_acc: str = "int32", codebook: bool = False, at_load: tuple[str, ...] = (),
              lowrank_fold: tuple[str, ...] = (), debug_dump=None):
    """Run the phases ``first`` .. ``last`` (by name, inclusive) of the pipeline on ``mod``.

    The build runs the pipeline in pieces, each piece once: ``quantize``; the plan's low-rank
    decisions are taken on its output; ``lowrank``; the plan's per-layer decisions are taken
    on that; ``layer_forms``; then ``canonicalize`` ..
    ``legalize_fuse`` (:func:`fuse`), whose output is what is tuned, checked and compiled.
    """
    phases = make_pipeline(target, sparse=sparse, int8_acc=int8_acc, codebook=codebook,
                           at_load=at_load, lowrank_fold=lowrank_fold)
    names = [ph.name for ph in phases]
    i, j = names.index(first), names.index(last)
    return run_phases(mod, phases[i:j + 1], target, debug_dump=debug_dump, first_index=i + 1)


def fuse(mod, target, debug_dump=None, sparse: dict | None = None,
         int8_acc: str = "int32", start: str = "quantize", codebook: bool = False,
         at_load: tuple[str, ...] = ()):
    """The module as tuning sees it: the phases from ``start`` up to the tunable point."""
    front, _ = split_at_tunable(make_pipeline(target, sparse=sparse, int8_acc=int8_acc))
    return run_range(mod, target, start, front[-1].name, sparse=sparse, int8_acc=int8_acc,
                     codebook=codebook, at_load=at_load, debug_dump=debug_dump)


def schedule_and_lower(fused, target, database=None, debug_dump=None):
    """Run the phases after the tunable point on ``fused``: the module the VM is built from."""
    front, back = split_at_tunable(make_pipeline(target, database))
    return run_phases(fused, back, target, database, debug_dump, first_index=len(front) + 1)


def compile_lowered(lowered, target):
    """A VM executable of a module from :func:`schedule_and_lower`."""
    with tvm.transform.PassContext(opt_level=3):
        return tvm.compile(lowered, target=target, relax_pipeline=None)


def compile_fused(fused, target, database=None, debug_dump=None):
    """Schedule, lower and build ``fused`` into a VM executable."""
    return compile_lowered(schedule_and_lower(fused, target, database, debug_dump), target)



def kernel_table(lowered, target, tuned: str = "tuned") -> dict[str, str]:
    """``{kernel: tuned | "DLight rules" | "hand-scheduled" | "untuned"}`` of every PrimFunc
    the lowered module's Relax functions call (what the VM in ``model.so`` runs).

    ``tuned`` (the label, e.g. whether the records were checked): MetaSchedule's database
    supplied its schedule (``tirx.is_scheduled``, set by ``MetaScheduleApplyDatabase``); on
    GPU targets, which have no tuning databases yet, the schedules come from DLight's rules;
    hand-scheduled: our TIR kernels (attribute :data:`HAND_SCHEDULED`); untuned: the default
    loop nest.
    """
    scheduled = "DLight rules" if "gpu" in list(target.keys) else tuned
    called: set[str] = set()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            called.add(e.op.name_hint)

    for f in lowered.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    out = {}
    for gv, f in lowered.functions.items():
        if not isinstance(f, tvm.tirx.PrimFunc) or gv.name_hint not in called:
            continue  # e.g. reshape kernels the VM replaced with its builtin
        attrs = f.attrs or {}
        if HAND_SCHEDULED in attrs:
            out[gv.name_hint] = "hand-scheduled"
        elif attrs.get("tirx.is_scheduled", False):
            out[gv.name_hint] = scheduled
        else:
            out[gv.name_hint] = "untuned"
    return dict(sorted(out.items()))


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
