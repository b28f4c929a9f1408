"""A first schedule, from rules, for kernels whose operator has no record anywhere.

A new model's kernels with no record of their own and none of the same operator at another
shape (:mod:`tvmcomp.tune.transfer`) would run their unscheduled loops: one thread, no
vectors, 10-25x slower than a tuned schedule for a convolution. Before any search, each such
kernel takes MetaSchedule's own design space for the target (its sketches: multi-level tiling
``SSRSRS`` for CPUs, parallelize / vectorize / unroll annotations) with every sampled decision
replaced by a rule keyed on the target's vector width (:func:`rule_decisions`):

- the vectorized loop (the block's last spatial loop, the contiguous one in the layouts TVM
  imports; as a second choice, where it differs, the spatial loop of largest extent that is
  a multiple of the vector lanes, e.g. the output channels of a 1x1 convolution over a
  5-wide image) gets an innermost tile of up to two vectors (``2 * lanes``, the largest
  divisor of its extent), another spatial loop a register tile of up to 4 rows (and, as a
  second candidate where that is 1, up to 6: a 5-wide image's 5 rows), the others none, so
  the outer tiles, fused and parallelized over the target's cores by the post-processor,
  keep the rest;
- each reduction loop an inner tile of up to 8;
- unrolling up to 64 steps where the sketch asks for it; compute locations as sampled.

Each sketch so decided (once per choice of vectorized loops), the sketch with its own sampled
decisions, and the kernel's unscheduled form are post-processed and measured like trials; the
fastest is committed to the tuning database only if it beats the unscheduled loops (small
kernels, such as a 10-wide matmul, often do better unscheduled). Such records are noted in
:data:`~tvmcomp.tune.transfer.TRANSFERRED_FILE` with the source :data:`RULES`, like a
schedule carried across shapes: a build with a budget still tunes the kernel, its search
seeded by the rule's schedule, and the build's numerical check checks it.

Measured (``scripts/bench_models.py``, batch 1, Zen 3, no records, ORT in the same run): the
model suite went from 6.7-46x ORT's time with plain loops to 0.68-3.1x, at 10-60 s of
measuring per build.

``TVMCOMP_RULE_SCHEDULES=0`` skips this step (the test suite does, except where it tests it).
"""

from __future__ import annotations

import os

RULES = "rules"  # the source noted for a rule-based record (TRANSFERRED_FILE's "from")
MAX_SKETCHES = 3  # design-space sketches tried per kernel (each one build and measurement)
REGISTER_ROWS = 4  # the register tile of the loop before the vectorized one
WIDE_REGISTER_ROWS = 6  # ... where no divisor up to REGISTER_ROWS but 1 (x 2 vectors: 12)
REDUCTION_TILE = 8
UNROLL = 64


def rules_enabled() -> bool:
    """Whether builds and tunes give kernels with no record a rule-based first schedule."""
    return os.environ.get("TVMCOMP_RULE_SCHEDULES", "1") != "0"


def vector_lanes(target, dtype_bits: int = 32) -> int:
    """32-bit lanes of the target's widest vector register, as LLVM knows its CPU: 16 with
    AVX-512, 8 with AVX2, else 4 (NEON, SSE)."""
    from tvm.target import codegen

    for feature, bits in (("avx512f", 512), ("avx2", 256)):
        try:
            if codegen.llvm_cpu_has_features(feature, target):
                return bits // dtype_bits
        except Exception:  # noqa: BLE001 - a target LLVM does not know: the narrow default
            break
    return 128 // dtype_bits


def _largest_divisor(extent: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(cap, extent)) + 1) if extent % d == 0)


def _register_rows(extent: int, wide: bool) -> int:
    """The register tile of the loop before the vectorized one: its largest divisor up to
    :data:`REGISTER_ROWS`; ``wide``: up to :data:`WIDE_REGISTER_ROWS` where that is 1 (a
    5-wide image's rows: 5, not 1)."""
    rows = _largest_divisor(extent, REGISTER_ROWS)
    return rows if rows > 1 or not wide else _largest_divisor(extent, WIDE_REGISTER_ROWS)


def vector_loops(trace, mod, lanes: int) -> list[dict]:
    """Choices of the loop each block vectorizes: ``{block name: loop index}`` maps, first the
    block's last spatial loop (the contiguous one in the layouts TVM imports), then, where it
    differs, the spatial loop of largest extent that is a multiple of ``lanes`` (the output
    channels of a 1x1 or depthwise convolution over a narrow image)."""
    from .transfer import root_blocks

    extents = dict(root_blocks(mod))
    names = _block_names(trace)
    spatial = {names[b]: ix for b, ix in _spatial_loops(trace).items() if b in names}
    last = {b: max(ix) for b, ix in spatial.items()}
    wide = {}
    for b, ix in spatial.items():
        ext = extents.get(b, ())
        fits = [i for i in ix if i < len(ext) and ext[i] % lanes == 0]
        wide[b] = max(fits, key=lambda i: (ext[i], i)) if fits else last[b]
    return [last] + ([wide] if wide != last else [])


def _block_names(trace) -> dict:
    return {inst.outputs[0]: str(inst.attrs[0]) for inst in trace.insts
            if inst.kind.name == "GetSBlock"}


def _loop_positions(trace) -> dict:
    """loop RV -> (its block RV, its index among the block's loops)."""
    position = {}
    for inst in trace.insts:
        if inst.kind.name == "GetLoops":
            for i, loop in enumerate(inst.outputs):
                position[loop] = (inst.inputs[0], i)
    return position


def _spatial_loops(trace) -> dict:
    """block RV -> the indices of its loops the sketch tiles as spatial (four tiles)."""
    position, spatial = _loop_positions(trace), {}
    for inst in trace.insts:
        if inst.kind.name == "SamplePerfectTile" and int(inst.attrs[0]) == 4:
            blk, i = position.get(inst.inputs[0], (None, -1))
            spatial.setdefault(blk, []).append(i)
    return spatial


def rule_decisions(trace, lanes: int, vector: dict, wide_rows: bool = False):
    """A ``decision_provider`` factory for replaying ``trace`` (a sketch's) on a schedule:
    ``provider(sch)`` returns the callback that decides each sampling instruction by the
    rules of the module docstring, each block vectorizing the loop ``vector`` names (one of
    :func:`vector_loops`); where that is not the block's last spatial loop, the last one
    takes the register tile (``wide_rows``: :func:`_register_rows`)."""
    names, position, spatial = _block_names(trace), _loop_positions(trace), _spatial_loops(trace)

    def provider(sch):
        def decide(inst, inputs, attrs, decision):
            kind = inst.kind.name
            if kind == "SamplePerfectTile":
                n, max_inner = int(attrs[0]), int(attrs[1])
                extent = int(sch.get(inputs[0]).extent)
                blk, i = position.get(inst.inputs[0], (None, -1))
                last = max(spatial.get(blk, [-1]))
                vec = vector.get(names.get(blk), last)
                rows = last if vec != last else max([j for j in spatial.get(blk, [])
                                                     if j < last] or [-1])
                cap = max_inner if max_inner > 0 else extent
                tiles = [1] * n
                if n == 4 and i == vec:
                    tiles[-1] = _largest_divisor(extent, min(cap, 2 * lanes))
                elif n == 4 and i == rows:
                    tiles[-2] = _register_rows(extent, wide_rows)
                elif n == 2:
                    tiles[-1] = _largest_divisor(extent, min(cap, REDUCTION_TILE))
                tiles[0] = extent
                for t in tiles[1:]:
                    tiles[0] //= t
                return tiles
            if kind == "SampleCategorical":
                values = [int(c) for c in attrs[0]]
                return values.index(UNROLL) if UNROLL in values else len(values) // 2
            return decision

        return decide

    return provider


def sketches(mod, target, task_name: str) -> list:
    """MetaSchedule's design space of kernel ``mod`` for ``target``: traces of its sketches,
    without their post-processing (at most :data:`MAX_SKETCHES`)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Trace

    from .intrin import load_tensor_intrinsics
    from .tuner import _register_default_custom_rules

    load_tensor_intrinsics()  # not every backend's intrinsics (~30 s): the caller's family's
    _register_default_custom_rules()  # pooling's annotation: default rules, without a warning
    space = ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm",
                                              mutator_probs="llvm")
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=space, task_name=task_name,
                         num_threads=1)
    out = []
    for sch in ctx.generate_design_space()[:MAX_SKETCHES]:
        insts = []
        for inst in sch.trace.insts:
            if inst.kind.name == "EnterPostproc":
                break
            insts.append(inst)
        out.append(Trace(insts, {i: d for i, d in sch.trace.decisions.items() if i in insts}))
    return out


def rule_schedule(mod, target, trace, lanes: int | None, vector: dict | None = None,
                  wide_rows: bool = False):
    """``mod`` scheduled by ``trace`` with the rules' decisions, vectorizing the loops
    ``vector`` names (default: each block's last spatial one; ``lanes`` None: the sketch's own
    sampled decisions instead; ``wide_rows``: :func:`rule_decisions`), post-processed: a
    :class:`tvm.s_tir.Schedule`, or None if it does not apply."""
    from tvm import s_tir

    from .transfer import apply_postprocs

    sch = s_tir.Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=None
                                if lanes is None else rule_decisions(trace, lanes,
                                                                     vector or {},
                                                                     wide_rows)(sch))
        sch.enter_postproc()
        return sch if apply_postprocs(sch, mod, target) else None
    except Exception:  # noqa: BLE001 - a sketch the rules cannot decide is simply not used
        return None


def _distinct(schedules):
    """``schedules`` (None where one did not apply) without repeats of one module."""
    from tvm_ffi import structural_hash

    seen = set()
    for sch in schedules:
        key = None if sch is None else structural_hash(sch.mod)
        if key is None or key not in seen:
            seen.add(key)
            yield sch


def rule_schedules(tasks, records, target, database, family: str | None = None
                   ) -> dict[str, dict]:
    """Commit to ``database`` a measured rule-based record for each kernel of ``tasks``
    (kernels with no record of their own or carried) where one beats its unscheduled loops;
    noted in ``TRANSFERRED_FILE`` in ``records``' write folder with source :data:`RULES`.
    ``{task: {"us", "from"}}``."""
    from .intrin import load_tensor_intrinsics
    from .records import _mean
    from .remote import workload_key
    from .transfer import keep_fastest, note_transferred

    if not tasks or not rules_enabled():
        return {}
    load_tensor_intrinsics(family)
    lanes = vector_lanes(target)
    out, notes = {}, {}
    for task in tasks:
        mod = task.dispatched[0]
        # per sketch: the rules' decisions for each choice of vectorized loops (with the
        # register tile of a prime-sized loop at 1 and wider), and its own; each distinct
        # schedule measured once
        kept = keep_fastest(database, mod, target, ((sch, None) for sch in _distinct(
            rule_schedule(mod, target, trace, how, vector, wide)
            for trace in sketches(mod, target, task.task_name)
            for how, vector, wide in [*((lanes, v, w) for v in vector_loops(trace, mod, lanes)
                                        for w in (False, True)), (None, None, False)])))
        if kept is None:
            continue
        out[task.task_name] = {"us": round(1e6 * _mean(kept[0]), 3), "from": RULES}
        notes[workload_key(mod)] = {"task": task.task_name, "from": RULES}
    note_transferred(records, notes)
    return out
