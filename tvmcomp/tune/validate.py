"""Check tuned schedules numerically before a build uses them.

MetaSchedule measures speed, never correctness, and some schedules in this TVM wheel compute
wrong results without any error (NOTES.md: tensorized int8 schedules, one batch-64 dense).
Before a build applies a task's best record we run the scheduled kernel and the unscheduled
one on the same random inputs and compare every buffer; a wrong record is skipped and the next
best is tried. Verdicts are cached in ``validated.json`` beside the database.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..targets import device_for
from .records import read_json, update_json

log = logging.getLogger(__name__)
CACHE = "validated.json"
TOP_K = 5


@dataclass
class ValidationReport:
    """Which records were checked, rejected or taken from the cache."""

    checked: int = 0
    cached: int = 0
    rejected: list[str] = field(default_factory=list)  # tasks with >= 1 wrong record
    no_valid_record: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # task -> profile of its record
    chosen: dict[str, object] = field(default_factory=dict)  # task -> its TuningRecord


def record_key(rec) -> str:
    from tvm_ffi import structural_hash

    h = hashlib.sha256()
    h.update(str(structural_hash(rec.workload.mod)).encode())
    h.update(str(rec.trace).encode())
    return h.hexdigest()[:32]


def _random_args(func, rng: np.random.Generator) -> list[np.ndarray]:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    args = []
    for info in ArgInfo.from_prim_func(func):
        shape = [int(d) for d in info.shape]
        dt = str(info.dtype)
        if dt.startswith("float"):
            a = rng.standard_normal(shape).astype(dt)
        elif dt == "bool":
            a = rng.integers(0, 2, shape).astype(bool)
        elif dt in ("int8", "uint8"):
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max + 1, shape).astype(dt)
        elif dt in ("int32", "int64"):
            # requantize multipliers and shifts, packed codes' shift amounts and masks: keep
            # them free of overflow and of shifts past the width, which LLVM leaves undefined
            # (the scheduled and the unscheduled kernel would then differ by chance)
            a = rng.integers(0, 31, shape).astype(dt)
        else:
            a = rng.integers(-1000, 1000, shape).astype(dt)
        args.append(a)
    return args


def _run(lib, arrays: list[np.ndarray], dev) -> list[np.ndarray]:
    import tvm

    tensors = [tvm.runtime.tensor(a.copy(), dev) for a in arrays]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


class RemoteCheck:
    """Checks run on a board over RPC: each kernel linked here (with the profile's cross
    compiler, if it has one) into a shared library the board's server loads.

    ``session``: an RPC session to the board (``tvmcomp.rpc.request_session``); ``label``:
    the board, as the build reports it (e.g. ``"RPC board 'arm_cortex_a72'"``).
    """

    def __init__(self, session, cross_compiler: str | None, label: str) -> None:
        self.session, self.cross_compiler, self.label = session, cross_compiler, label
        self._n = 0

    def run(self, ex, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tempfile

        import tvm
        from tvm.support import cc

        self._n += 1
        name = f"tvmcomp_check_{self._n}.so"
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / name)
            ex.export_library(path, fcompile=cc.cross_compiler(self.cross_compiler)
                              if self.cross_compiler else None)
            self.session.upload(path, target=name)
        lib = self.session.load_module(name)
        dev = self.session.cpu()
        tensors = [tvm.runtime.tensor(a.copy(), dev) for a in arrays]
        lib["main"](*tensors)
        return [t.numpy() for t in tensors]


def check_record(rec, target, seed: int = 0,
                 remote: RemoteCheck | None = None) -> tuple[bool, str]:
    """(ok, detail): the record's schedule vs the unscheduled kernel on random inputs, run
    here or, with ``remote``, on that board."""
    import tvm

    mod = rec.workload.mod
    sch = tvm.s_tir.Schedule(mod)
    rec.trace.apply_to_schedule(sch, remove_postproc=False)
    args = _random_args(mod["main"], np.random.default_rng(seed))
    if remote is None:
        dev = device_for(target.kind.name)

        def run(m):
            return _run(tvm.compile(m, target=target), args, dev)
    else:
        def run(m):
            return remote.run(tvm.compile(m, target=target), args)
    try:
        ref = run(mod)
        got = run(sch.mod)
    except Exception as e:  # noqa: BLE001 - a schedule that does not build or run is wrong too
        return False, f"failed to build/run: {str(e).strip().splitlines()[-1][:200]}"
    for r, g in zip(ref, got):
        if r.dtype.kind == "f":
            scale = max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
            err = float(np.max(np.abs(r.astype(np.float64) - g))) if r.size else 0.0
            if not np.isfinite(err) or err > 1e-4 * scale:
                return False, f"max |err| {err:.3g}"
        elif not np.array_equal(r, g):
            return False, f"{int(np.sum(r != g))} of {r.size} integers differ"
    return True, "exact" if all(r.dtype.kind != "f" for r in ref) else "close"


def validated_database(records, tasks, target, check: bool = True,
                       remote: RemoteCheck | None = None):
    """A MemoryDatabase holding, per task, its best record that passes :func:`check_record`.

    Candidates come from :meth:`Records.candidates`: this profile's own records first, then
    the fallback profiles' (only where no own record is correct). Verdicts are cached per
    machine in the tuning cache (``validated.json``, merged under the folder's lock).
    ``check=False`` (the host cannot run the target): each task's first candidate is taken
    unchecked, in the same order. ``remote``: the checks run on that board instead (its
    verdicts cached apart, under its label).
    """
    from tvm.s_tir import meta_schedule as ms

    cache_path = Path(records.paths.cache) / CACHE
    cache = read_json(cache_path)
    new: dict = {}
    mem = ms.database.MemoryDatabase()
    report = ValidationReport()
    for task in tasks:
        mod = task.dispatched[0]
        chosen = None
        candidates = records.candidates(mod, TOP_K)
        for source, rec in candidates:
            if not check:
                chosen = (source, rec)
                break
            key = record_key(rec) if remote is None else f"{remote.label}:{record_key(rec)}"
            verdict = cache.get(key)
            if isinstance(verdict, dict) and isinstance(verdict.get("ok"), bool):
                report.cached += 1
                ok = verdict["ok"]
            else:
                ok, detail = check_record(rec, target, remote=remote)
                new[key] = cache[key] = {"ok": ok, "detail": detail, "task": task.task_name}
                report.checked += 1
            if ok:
                chosen = (source, rec)
                break
            if task.task_name not in report.rejected:
                report.rejected.append(task.task_name)
        if chosen is None:
            if candidates:
                report.no_valid_record.append(task.task_name)
            continue
        source, rec = chosen
        report.sources[task.task_name] = source
        report.chosen[task.task_name] = rec
        wl = mem.commit_workload(mod)
        mem.commit_tuning_record(ms.database.TuningRecord(
            rec.trace, wl, rec.run_secs, rec.target, rec.args_info))
    if new:
        try:
            update_json(cache_path, new)
        except OSError as e:
            log.warning("could not write %s: %s", cache_path, e)
    return mem, report
