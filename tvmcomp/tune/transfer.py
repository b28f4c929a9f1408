"""Schedules carried over from a kernel's dense twin, or from the same operator at another
shape.

A codebook kernel (``CodebookDense``) is its dense layer's kernel with a decode prologue:
``compute`` (indices to int32, and the unpacking of packed codes) and ``T_take`` (the
codebook lookup) write the weight that the dense kernel would have read as a parameter; the
blocks after it are the dense kernel's, loop for loop. So the best record of the dense twin
(same blocks, same loop extents), from this profile's records or its fallbacks', is a
schedule for the codebook kernel too: its trace is replayed on the codebook kernel with the
block names mapped, the lookup left at the root (decoded once per call, into the weight
buffer the twin's schedule reads) and the index conversion inlined into it, then the
target's post-processors run as after any trial.

The carried schedule is measured here like any trial and committed to the tuning database,
so tuning starts from it and replaces it only with a record measured faster; the build's
numerical check (:mod:`tvmcomp.tune.validate`) checks it like any other record.

A kernel with no record at all (a new model, a new batch) can still take the schedule of the
same operator at another shape: a record whose root blocks have the same names and loop
counts, only other extents (:func:`carry_across_shapes`). MetaSchedule's traces hold
shape-specific tile sizes, so the trace is replayed with each ``SamplePerfectTile`` decision
re-derived for the new loop extent (:func:`retile`: the inner factors kept where they divide
it, else the largest divisor below them, the rest outermost). The nearest few shapes are
tried, each measured, the fastest committed. Such a record is noted in
:data:`TRANSFERRED_FILE` beside the database, so a build with a budget still tunes that kernel
(starting from it) instead of taking it as tuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..kernels.codebook import DECODE_BLOCK  # the lookup: the last block of the prologue


def root_blocks(mod) -> list[tuple[str, tuple[int, ...]]]:
    """``[(block name, loop extents)]`` of the root's child blocks of ``mod``'s ``main``."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    out = []
    for b in sch.get_child_blocks(sch.get_sblock("root", func_name="main")):
        blk = sch.get(b)
        out.append((str(blk.name_hint), tuple(int(iv.dom.extent) for iv in blk.iter_vars)))
    return out


def split_decode(blocks):
    """(decode prologue, the rest) of a kernel's root blocks; None if it decodes nothing."""
    takes = [i for i, (name, _) in enumerate(blocks) if name.startswith(DECODE_BLOCK)]
    if not takes or takes[-1] == len(blocks) - 1:
        return None
    return blocks[:takes[-1] + 1], blocks[takes[-1] + 1:]


TRANSFERRED_FILE = "transferred.json"  # beside a database: its records carried across shapes
TRANSFER_TRIES = 3  # the nearest shapes whose schedules are replayed and measured, per kernel
# keep_fastest: the candidates measured fastest once that are measured again, against the
# unscheduled loops, in rounds that alternate between them (a shared machine's load changes
# between two candidates' measurements: measured once each, the fastest is a draw)
FINALISTS = 2
FINAL_ROUNDS = 3


def _shape_key(blocks) -> tuple:
    return tuple(extents for _, extents in blocks)


def _structure_key(blocks) -> tuple:
    """What two kernels that differ only in their shapes share: block names, loop counts."""
    return tuple((name, len(extents)) for name, extents in blocks)


def shape_distance(a, b) -> float:
    """How far apart two kernels' loop extents are (same structure): the sum of
    ``|log(a / b)|`` over every loop."""
    return sum(abs(math.log(x / y)) for ea, eb in zip(a, b) for x, y in zip(ea, eb))


def retile(old: list[int], extent: int) -> list[int]:
    """A ``SamplePerfectTile`` decision for a loop of ``extent``, from one for another
    extent: from the innermost factor outwards, each the largest divisor of what is left
    that is at most the old factor; the outermost takes the rest. Products stay exact."""
    new, left = [1] * len(old), extent
    for i in range(len(old) - 1, 0, -1):
        want = max(1, int(old[i]))
        f = max(d for d in range(1, min(want, left) + 1) if left % d == 0)
        new[i], left = f, left // f
    new[0] = left
    return new


@dataclass
class Twin:
    """The best record of a dense kernel and its root block names."""

    us: float
    record: object
    source: str
    names: list[str]


def twin_index(records) -> dict[tuple, Twin]:
    """Every decode-free workload of ``records`` (own profile first, then fallbacks) by the
    loop extents of its root blocks, with its best record (own profile's if it has one)."""
    from .records import _mean

    index: dict[tuple, Twin] = {}
    blocks_of: dict = {}  # a database's records of one workload share its Workload object
    for source, db in records.sources():
        for rec in db.get_all_tuning_records():
            if not rec.run_secs:
                continue
            if rec.workload not in blocks_of:
                blocks_of[rec.workload] = root_blocks(rec.workload.mod)
            blocks = blocks_of[rec.workload]
            if split_decode(blocks) is not None:
                continue
            key = _shape_key(blocks)
            us = 1e6 * _mean(rec.run_secs)
            have = index.get(key)
            if have is None or (have.source == source and us < have.us):
                index[key] = Twin(us, rec, source, [n for n, _ in blocks])
    return index


def carried_schedule(mod, target, twin: Twin, decode, rest, tiles: bool = False):
    """``mod`` (a codebook kernel whose root blocks :func:`split_decode` splits into
    ``decode`` and ``rest``, the latter matching ``twin``'s; or any kernel, ``decode`` empty)
    scheduled with the twin's trace, its tile sizes re-derived for ``mod``'s loops with
    ``tiles`` (:func:`retile`): a :class:`tvm.s_tir.Schedule`, or None if it does not apply."""
    from tvm import s_tir
    from tvm.s_tir.schedule import Instruction, Trace

    rename = dict(zip(twin.names, (n for n, _ in rest)))
    old_trace = twin.record.trace
    insts, decisions = [], {}
    for inst in old_trace.insts:
        if inst.kind.name == "EnterPostproc":
            break
        new = inst
        if inst.kind.name == "GetSBlock":
            name = str(inst.attrs[0])
            new = Instruction(inst.kind, inst.inputs, [rename.get(name, name), inst.attrs[1]],
                              inst.outputs)
        if inst in old_trace.decisions:
            decisions[new] = old_trace.decisions[inst]
        insts.append(new)
    sch = s_tir.Schedule(mod)

    def new_tiles(inst, inputs, _attrs, decision):
        if inst.kind.name == "SamplePerfectTile":
            return retile([int(d) for d in decision], int(sch.get(inputs[0]).extent))
        return decision

    try:
        Trace(insts, decisions).apply_to_schedule(sch, remove_postproc=True,
                                                  decision_provider=new_tiles if tiles else None)
        for name, _ in decode[:-1]:  # index conversion / unpacking: into the lookup
            sch.compute_inline(sch.get_sblock(name, func_name="main"))
        # marked as post-processing, as after any trial: the search replays a record without
        # it and post-processes again
        sch.enter_postproc()
        if not apply_postprocs(sch, mod, target):
            return None
    except Exception:  # noqa: BLE001 - a trace that does not replay is simply not carried over
        return None
    return sch


def apply_postprocs(sch, mod, target) -> bool:
    """Run the target's MetaSchedule post-processors on ``sch`` (a schedule of ``mod``)."""
    from tvm.s_tir import meta_schedule as ms

    space = ms.space_generator.PostOrderApply(sch_rules=[], postprocs="llvm", mutator_probs={})
    ctx = ms.TuneContext(mod=mod, target=target, space_generator=space, task_name="postprocs")
    return all(post.apply(sch) for post in ctx.space_generator.postprocs)


def timer(sch, target, repeat: int = 3):
    """A function that measures the scheduled kernel and returns its seconds per call, as
    MetaSchedule's local runner measures a trial (random inputs, ``repeat`` repeats of
    ``number=10``, ``min_repeat_ms=20``; another count of repeats as its argument), each
    time it is called; None if it fails to build."""
    import numpy as np
    import tvm

    from ..targets import device_for
    from .validate import _random_args

    try:
        lib = tvm.compile(sch.mod, target=target).jit()
    except Exception:  # noqa: BLE001
        return None
    dev = device_for(target.kind.name)
    args = [tvm.runtime.tensor(a, dev)
            for a in _random_args(sch.mod["main"], np.random.default_rng(0))]

    def run(repeats: int = repeat) -> list[float]:
        ev = lib.time_evaluator(lib.entry_name, dev, number=10, repeat=repeats,
                                min_repeat_ms=20)
        return [float(s) for s in ev(*args).results]

    return run


def measure(sch, target, repeat: int = 3) -> list[float] | None:
    """Seconds per call of the scheduled kernel, measured once (:func:`timer`); None if it
    fails to build."""
    t = timer(sch, target, repeat)
    return t() if t is not None else None


def carry_schedules(tasks, records, target, database, family: str | None = None):
    """What kernels with no record (``tasks``) start from, before any search: codebook
    kernels their dense twin's schedule (:func:`carry_over`), the others their operator's at
    another shape (:func:`carry_across_shapes`), both from one index of ``records``, and
    those still without one a schedule from rules
    (:func:`tvmcomp.tune.rules.rule_schedules`). Returns ``(carried, moved)``: the first
    function's result, and the other two's (``"from"``: a shape's source, or ``"rules"``)."""
    from .rules import rule_schedules

    if not tasks:
        return {}, {}
    index = twin_index(records)
    carried = carry_over(tasks, records, target, database, family, index)
    moved = carry_across_shapes([t for t in tasks if t.task_name not in carried], records,
                                target, database, family, index)
    moved.update(rule_schedules([t for t in tasks if t.task_name not in carried
                                 and t.task_name not in moved], records, target, database,
                                family))
    return carried, moved


def _commit(database, sch, mod, secs, target) -> None:
    """``sch`` (a schedule of kernel ``mod``, measured at ``secs``) as a record in
    ``database``."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, database.commit_workload(mod), secs, target,
        ArgInfo.from_prim_func(mod["main"])))


def keep_fastest(database, mod, target, candidates) -> tuple[list[float], object] | None:
    """Measure ``candidates`` (``(schedule of kernel mod or None, tag)`` pairs, made one at a
    time as they are measured) once each; measure the :data:`FINALISTS` fastest again with
    the kernel's unscheduled loops, :data:`FINAL_ROUNDS` rounds alternating between them, and
    commit the one with the lowest median to ``database`` if it beats the loops' median.
    Returns its ``(seconds per call of each measurement, tag)``, or None."""
    import numpy as np
    from tvm import s_tir

    from .records import _mean

    finalists = []  # the fastest so far (only their compiled kernels are kept)
    for sch, tag in candidates:
        t = timer(sch, target) if sch is not None else None
        secs = t() if t is not None else None
        if secs:
            finalists = sorted([*finalists, (sch, tag, t, [_mean(secs)])],
                               key=lambda f: f[3][0])[:FINALISTS]
    if not finalists:
        return None
    naive = timer(s_tir.Schedule(mod), target)  # what the kernel is without a record
    loops = []
    for _ in range(FINAL_ROUNDS):  # one repeat (>= 20 ms) each
        for _, _, t, samples in finalists:
            samples.append(_mean(t(1)))
        if naive is not None:
            loops.append(_mean(naive(1)))
    sch, tag, _, samples = min(finalists, key=lambda f: np.median(f[3]))
    if loops and np.median(samples) >= np.median(loops):
        return None
    _commit(database, sch, mod, samples, target)
    return samples, tag


def note_transferred(records, notes: dict) -> None:
    """Add ``notes`` (``{workload key: {"task", "from"}}``) to :data:`TRANSFERRED_FILE` in
    ``records``' write folder (where new records go)."""
    from .records import update_json

    if notes:
        update_json(Path(records.paths.write_dir) / TRANSFERRED_FILE, notes)


def carry_over(tasks, records, target, database, family: str | None = None,
               index: dict | None = None) -> dict[str, float]:
    """Commit to ``database`` a measured record, carried over from its dense twin, for each
    codebook kernel of ``tasks`` that has a twin in ``records`` (``index``: its
    :func:`twin_index`, if already made); ``{task: µs}``.
    ``family``: the profile's target family (whose tensor intrinsics replayed traces use)."""
    from .intrin import load_tensor_intrinsics
    from .records import _mean

    load_tensor_intrinsics(family)
    candidates = [(t, parts) for t in tasks
                  if (parts := split_decode(root_blocks(t.dispatched[0]))) is not None]
    if not candidates:
        return {}
    index = twin_index(records) if index is None else index
    out = {}
    for task, (decode, rest) in candidates:
        mod = task.dispatched[0]
        twin = index.get(_shape_key(rest))
        sch = carried_schedule(mod, target, twin, decode, rest) if twin is not None else None
        secs = measure(sch, target) if sch is not None else None
        if not secs:
            continue
        _commit(database, sch, mod, secs, target)
        out[task.task_name] = 1e6 * _mean(secs)
    return out


def carry_across_shapes(tasks, records, target, database, family: str | None = None,
                        index: dict | None = None) -> dict[str, dict]:
    """Commit to ``database`` a measured record for each kernel of ``tasks`` (kernels with no
    record) whose operator ``records`` holds at other shapes (``index``: its
    :func:`twin_index`, if already made): the :data:`TRANSFER_TRIES` nearest
    (:func:`shape_distance`) replayed with re-derived tiles, measured, the fastest kept if it
    beats the kernel's unscheduled loops. Noted in :data:`TRANSFERRED_FILE` in ``records``'
    write folder (where ``database`` appends); ``{task: {"us", "from"}}``."""
    from .intrin import load_tensor_intrinsics
    from .records import _mean
    from .remote import workload_key

    if not tasks:
        return {}
    load_tensor_intrinsics(family)
    by_structure: dict[tuple, list] = {}
    for extents, twin in (twin_index(records) if index is None else index).items():
        key = _structure_key(list(zip(twin.names, extents)))
        by_structure.setdefault(key, []).append((extents, twin))
    out, notes = {}, {}
    for task in tasks:
        mod = task.dispatched[0]
        blocks = root_blocks(mod)
        if split_decode(blocks) is not None:
            continue
        mine = _shape_key(blocks)
        near = sorted((c for c in by_structure.get(_structure_key(blocks), [])
                       if c[0] != mine), key=lambda c: shape_distance(c[0], mine))
        kept = keep_fastest(database, mod, target, (
            (carried_schedule(mod, target, twin, (), blocks, tiles=True), (extents, twin))
            for extents, twin in near[:TRANSFER_TRIES]))
        if kept is None:
            continue
        secs, (extents, twin) = kept
        src = f"{twin.source} {'x'.join(map(str, extents[_main_block(twin.names)]))}"
        out[task.task_name] = {"us": round(1e6 * _mean(secs), 3), "from": src}
        notes[workload_key(mod)] = {"task": task.task_name, "from": src}
    note_transferred(records, notes)
    return out


def _main_block(names: list[str]) -> int:
    """The index of a kernel's main block (the first that is not padding): what a transferred
    schedule's source is named by."""
    return next((i for i, n in enumerate(names) if not n.startswith("pad")), 0)


def describe_transferred(moved: dict[str, dict]) -> str:
    """What :func:`carry_across_shapes` and the rules did (one line each)."""
    from .rules import RULES

    shapes = {k: v for k, v in moved.items() if v["from"] != RULES}
    ruled = {k: v for k, v in moved.items() if v["from"] == RULES}
    lines = []
    if shapes:
        lines.append(f"{len(shapes)} kernels without a record take the schedule of the same "
                     "operator at another shape (tiles re-derived), measured: "
                     + ", ".join(f"{k} {v['us']:.1f} µs (from {v['from']})"
                                 for k, v in shapes.items()))
    if ruled:
        lines.append(f"{len(ruled)} kernels whose operator has no record anywhere take a "
                     "rule-based schedule (faster than their plain loops, measured): "
                     + ", ".join(f"{k} {v['us']:.1f} µs" for k, v in ruled.items()))
    return "\n".join(lines)


def describe_carried(carried: dict[str, float]) -> str:
    """One line for what :func:`carry_over` did."""
    return (f"{len(carried)} codebook kernels take their dense twin's tuned schedule (decoded "
            "once per call), measured: "
            + ", ".join(f"{k} {v:.1f} µs" for k, v in carried.items()))
