"""Schedules carried over from a kernel's dense twin.

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
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _shape_key(blocks) -> tuple:
    return tuple(extents for _, extents in blocks)


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


def carried_schedule(mod, target, twin: Twin, decode, rest):
    """``mod`` (a codebook kernel whose root blocks :func:`split_decode` splits into
    ``decode`` and ``rest``, the latter matching ``twin``'s) scheduled with the twin's trace:
    a :class:`tvm.s_tir.Schedule`, or None if it does not apply."""
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
    try:
        Trace(insts, decisions).apply_to_schedule(sch, remove_postproc=True)
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


def measure(sch, target, repeat: int = 3) -> list[float] | None:
    """Seconds per call of the scheduled kernel, as MetaSchedule's local runner measures a
    trial (random inputs, ``number=10``, ``min_repeat_ms=20``); None if it fails to build."""
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
    ev = lib.time_evaluator(lib.entry_name, dev, number=10, repeat=repeat, min_repeat_ms=20)
    return [float(s) for s in ev(*args).results]


def carry_over(tasks, records, target, database, family: str | None = None) -> dict[str, float]:
    """Commit to ``database`` a measured record, carried over from its dense twin, for each
    codebook kernel of ``tasks`` that has a twin in ``records``; ``{task: µs}``.
    ``family``: the profile's target family (whose tensor intrinsics replayed traces use)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from .intrin import load_tensor_intrinsics

    from .records import _mean

    load_tensor_intrinsics(family)
    candidates = [(t, parts) for t in tasks
                  if (parts := split_decode(root_blocks(t.dispatched[0]))) is not None]
    if not candidates:
        return {}
    index = twin_index(records)
    out = {}
    for task, (decode, rest) in candidates:
        mod = task.dispatched[0]
        twin = index.get(_shape_key(rest))
        sch = carried_schedule(mod, target, twin, decode, rest) if twin is not None else None
        secs = measure(sch, target) if sch is not None else None
        if not secs:
            continue
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), secs, target,
            ArgInfo.from_prim_func(mod["main"])))
        out[task.task_name] = 1e6 * _mean(secs)
    return out


def describe_carried(carried: dict[str, float]) -> str:
    """One line for what :func:`carry_over` did."""
    return (f"{len(carried)} codebook kernels take their dense twin's tuned schedule (decoded "
            "once per call), measured: "
            + ", ".join(f"{k} {v:.1f} µs" for k, v in carried.items()))
