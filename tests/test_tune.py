"""MetaSchedule tuning on a one-kernel model, into a temp database (never tuning_logs/)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tvmcomp import runtime
from tvmcomp.compiler import BuildOptions, build
from tvmcomp.errors import TvmcompError
from tvmcomp.frontend.onnx_import import import_batches, load_onnx
from tvmcomp.pipeline import fuse, make_pipeline, run_phases
from tvmcomp.tune import RecordPaths, Records, task_status, tune_module, validate


def _scheduled(fused, target, db) -> dict:
    """{PrimFunc name: is it scheduled} after the pipeline's schedule phase."""
    phases = [ph for ph in make_pipeline(target, db) if ph.name == "schedule"]
    mod = run_phases(fused, phases, target, db)
    return {gv.name_hint: bool(f.attrs and f.attrs.get("tirx.is_scheduled", False))
            for gv, f in mod.functions.items() if gv.name_hint.startswith("fused_")}


def _records(profile, cache, commit=False) -> Records:
    return Records(RecordPaths.for_profile(profile, cache, commit=commit))


def test_tune_then_build_applies_record(tmp_path, x86_host, gemm_onnx, profile_with_db,
                                        monkeypatch):
    onnx_path, w, b = gemm_onnx(tmp_path / "gemm.onnx")
    target = x86_host.tvm_target()
    model, info = load_onnx(onnx_path)
    fused = fuse(import_batches(model, info, [1]), target)
    committed, work = tmp_path / "committed", tmp_path / "cache"
    prof = profile_with_db(committed)
    assert [t.best_us for t in task_status(fused, target, _records(prof, work))] == [None]

    rep = tune_module(fused, target, _records(prof, work), budget_s=20, max_trials_per_task=4,
                      trials_per_iter=4, family=x86_host.family, progress=False)
    assert rep.database == str(work)
    assert 1 <= rep.trials <= 4
    assert len(rep.tasks) == 1 and rep.untuned == []
    assert (work / "database_tuning_record.json").stat().st_size > 0
    assert not committed.exists()  # tuning never writes the committed database

    status = task_status(fused, target, _records(prof, work))
    assert len(status) == 1 and status[0].name == rep.tasks[0].name
    assert status[0].best_us is not None and status[0].best_us > 0
    assert status[0].source == prof.name

    # the pipeline's schedule phase swaps in the tuned kernel only with the database
    db = _records(prof, work).own
    assert set(_scheduled(fused, target, db).values()) == {True}
    assert set(_scheduled(fused, target, None).values()) == {False}

    # a second call with only_missing tunes nothing
    again = tune_module(fused, target, _records(prof, work), budget_s=20, max_trials_per_task=4,
                        trials_per_iter=4, family=x86_host.family, progress=False)
    assert again.trials == 0 and again.stopped_by == "nothing to tune"

    out, man = build(onnx_path, prof, tmp_path / "art",
                     BuildOptions(batches=(1,), tune_budget_s=0, progress=False, tuning_dir=work))
    t = man["tuning"]
    assert t["records_read"] == {"x86_avx2 committed": 0, "x86_avx2 user cache": rep.trials}
    assert t["record_source"] == {status[0].name: prof.name}
    assert t["tasks"] == 1 and t["tuned"] == 1 and t["untuned"] == []
    assert t["stopped_by"] == "not needed"
    assert t["tuned_kernel_us"] == {status[0].name: round(status[0].best_us, 3)}
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(out)(x), x @ w + b, rtol=1e-5, atol=1e-5)

    # the tuned schedule was run against the unscheduled kernel before use, verdict cached
    assert t["schedules_checked"] is True and t["schedules_rejected"] == []
    verdicts = json.loads((work / "validated.json").read_text())
    assert [v["ok"] for v in verdicts.values()] == [True]
    assert [v["task"] for v in verdicts.values()] == [status[0].name]

    # a record whose schedule computes wrong results is not used: the kernel runs untuned
    (work / "validated.json").unlink()
    monkeypatch.setattr(validate, "check_record", lambda rec, target, **kw: (False, "forced"))
    out, man = build(onnx_path, prof, tmp_path / "art2",
                     BuildOptions(batches=(1,), tune_budget_s=0, progress=False, tuning_dir=work))
    t = man["tuning"]
    assert t["schedules_rejected"] == [status[0].name]
    assert t["tuned"] == 0 and t["untuned"] == [status[0].name]
    np.testing.assert_allclose(runtime.load(out)(x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_check_record_detects_wrong_output(tmp_path, x86_host, monkeypatch):
    """check_record compares every buffer: a perturbed output of the scheduled run fails."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def add_one(a: T.Buffer((T.int64(16),), "float32"), b: T.Buffer((T.int64(16),), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(T.int64(16)):
            with T.sblock("b"):
                vi = T.axis.spatial(T.int64(16), i)
                b[vi] = a[vi] + T.float32(1)

    mod = tvm.IRModule({"main": add_one})
    sch = tvm.s_tir.Schedule(mod)
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.split(loop, [None, 4])
    rec = SimpleNamespace(workload=SimpleNamespace(mod=mod), trace=sch.trace)
    target = x86_host.tvm_target()
    assert validate.check_record(rec, target) == (True, "close")

    calls = []
    real_run = validate._run

    def perturbed(lib, arrays, dev):
        out = real_run(lib, arrays, dev)
        calls.append(1)
        if len(calls) == 2:  # the scheduled kernel's run
            out[-1] = out[-1] + 1e-2
        return out

    monkeypatch.setattr(validate, "_run", perturbed)
    ok, detail = validate.check_record(rec, target)
    assert not ok and "max |err|" in detail


def test_budget_zero_tunes_nothing(tmp_path, x86_host, gemm_onnx, profile_with_db):
    onnx_path, _, _ = gemm_onnx(tmp_path / "gemm.onnx")
    target = x86_host.tvm_target()
    model, info = load_onnx(onnx_path)
    fused = fuse(import_batches(model, info, [1, 2]), target)
    prof = profile_with_db(tmp_path / "committed")  # not tuning_logs/: its records change
    rep = tune_module(fused, target, _records(prof, tmp_path / "db"), budget_s=0,
                      progress=False)
    assert rep.stopped_by == "no budget" and rep.trials == 0
    assert len(rep.tasks) == 2 and len(rep.untuned) == 2


def test_a_signal_whose_exception_is_swallowed_still_stops_tuning(tmp_path, x86_host,
                                                                  gemm_onnx, profile_with_db,
                                                                  monkeypatch, capsys):
    """SIGTERM while tuning whose exception lands where Python ignores exceptions (as it did
    in an import lock's callback, and the run went on to exit 0): tuning still ends as
    interrupted, with the measured trials kept."""
    import os
    import signal
    import time

    import tvm.s_tir.meta_schedule as ms

    from tvmcomp.errors import Interrupted

    def swallowing(**kw):  # the signal arrives, its exception is lost, tuning "finishes"
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except Interrupted:
            pass

    monkeypatch.setattr(ms.tune, "tune_tasks", swallowing)
    onnx_path, _, _ = gemm_onnx(tmp_path / "gemm.onnx")
    target = x86_host.tvm_target()
    model, info = load_onnx(onnx_path)
    fused = fuse(import_batches(model, info, [1]), target)
    with pytest.raises(Interrupted):
        tune_module(fused, target, _records(profile_with_db(tmp_path / "c"), tmp_path / "db"),
                    budget_s=20, max_trials_per_task=1, progress=False)
    assert "interrupted: the 0 trials measured in this run are kept in" in capsys.readouterr().err


def test_unfused_module_has_no_tasks(tmp_path, x86_host, gemm_onnx, profile_with_db):
    onnx_path, _, _ = gemm_onnx(tmp_path / "gemm.onnx")
    model, info = load_onnx(onnx_path)
    with pytest.raises(TvmcompError, match="no TIR tasks"):
        tune_module(import_batches(model, info, [1]), x86_host.tvm_target(),
                    _records(profile_with_db(tmp_path / "committed"), tmp_path / "db"),
                    budget_s=0, progress=False)



def _decisions(trace) -> list:
    """The sampled tile sizes and categorical choices of a trace, in order."""
    return [[int(v) for v in d] if hasattr(d, "__len__") else int(d)
            for d in (trace.decisions[i] for i in trace.insts if i in trace.decisions)]


def test_codebook_kernel_starts_from_its_dense_twins_schedule(tmp_path, x86_host, gemm_onnx,
                                                              profile_with_db):
    """A codebook kernel with no record of its own is scheduled with the best record of its
    dense twin (same loops after the decode): the twin's sampled decisions replayed, the
    lookup decoded once at the root, measured and committed before its own search; the
    schedule computes what the unscheduled kernel does. A kernel without a twin gets none."""
    import onnx
    import tvm
    from onnx import numpy_helper
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from tvmcomp.passes import CodebookDense
    from tvmcomp.tune.records import append_record
    from tvmcomp.tune.transfer import apply_postprocs, carry_over, root_blocks
    from tvmcomp.tune.tuner import extract_tasks

    target = x86_host.tvm_target()
    prof, db = profile_with_db(tmp_path / "committed"), tmp_path / "db"
    dense_path, w, _ = gemm_onnx(tmp_path / "dense.onnx", k=64, n=24)
    dense = fuse(import_batches(*load_onnx(dense_path), [4]), target)
    [dense_task] = extract_tasks(dense, target)
    # the twin's record: a tiled schedule, as if tuned
    sch = s_tir.Schedule(dense_task.dispatched[0])
    i, j, k = sch.get_loops(sch.get_sblock("matmul", func_name="main"))
    sch.reorder(*sch.split(j, sch.sample_perfect_tile(j, n=2, decision=[2, 12])), k)
    sch.parallel(i)
    db.mkdir()
    append_record(db, ms.database.TuningRecord(
        sch.trace, ms.database.Workload(dense_task.dispatched[0]), [2e-6], target,
        ms.arg_info.ArgInfo.from_prim_func(dense_task.dispatched[0]["main"])))
    [(_, dense_best)] = _records(prof, db).candidates(dense_task.dispatched[0], 1)

    levels = np.linspace(-1, 1, 16).astype(np.float32)
    m = onnx.load(str(dense_path))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        levels[np.random.default_rng(1).integers(0, 16, w.shape)], "W"))
    onnx.save(m, str(tmp_path / "shared.onnx"))
    fused = fuse(CodebookDense()(import_batches(*load_onnx(tmp_path / "shared.onnx"), [4, 5])),
                 target)
    tasks = extract_tasks(fused, target)
    records = _records(prof, db)
    assert len(tasks) == 2 and not any(records.candidates(t.dispatched[0], 1) for t in tasks)

    mem = ms.database.MemoryDatabase()
    carried = carry_over(tasks, records, target, mem)
    [name] = carried  # batch 4's kernel has a dense twin, batch 5's has none
    [rec] = mem.get_all_tuning_records()
    assert carried[name] > 0 and rec.run_secs
    assert _decisions(rec.trace) == _decisions(dense_best.trace)
    sch = s_tir.Schedule(rec.workload.mod)
    rec.trace.apply_to_schedule(sch, remove_postproc=False)
    assert [n for n, _ in root_blocks(sch.mod)][0] == "T_take"  # decoded once, at the root
    # as the search replays a record (and mutates its decisions): without its post-processing,
    # then post-processed again; so the carried trace marks where post-processing starts,
    # after the twin's instructions and the inlining of the index conversion
    kinds = [i.kind.name for i in rec.trace.insts]
    twin_kinds = [i.kind.name for i in dense_best.trace.insts]
    assert "EnterPostproc" in kinds
    mine = kinds[:kinds.index("EnterPostproc")]
    assert mine[:len(twin_kinds)] == twin_kinds
    assert set(mine[len(twin_kinds):]) == {"GetSBlock", "ComputeInline"}
    again = s_tir.Schedule(rec.workload.mod)
    rec.trace.apply_to_schedule(again, remove_postproc=True)
    again.enter_postproc()
    assert apply_postprocs(again, rec.workload.mod, target)
    tvm.ir.assert_structural_equal(again.mod, sch.mod)
    ok, detail = validate.check_record(rec, target)
    assert ok, detail

    # tuning the codebook kernels starts by carrying the schedule over, even with no budget
    rep = tune_module(fused, target, _records(prof, db), budget_s=0, progress=False)
    assert list(rep.carried) == [name] and rep.trials == 0
    assert [t.name for t in rep.tasks if t.best_us is not None] == [name]


def test_build_tunes_a_profile_it_cannot_run_on_the_boards(tmp_path, gemm_onnx, profile_with_db,
                                                           monkeypatch):
    """ensure_tuned, for a profile this machine cannot run, given boards and a budget: the
    kernels without records are tuned there (tune_on_boards, with the profile's cross
    compiler); without boards it only warns."""
    import dataclasses

    from tvmcomp.targets import load_profile
    from tvmcomp.tune import apply, remote
    from tvmcomp.tune.tuner import TuneReport

    arm = dataclasses.replace(load_profile("arm_cortex_a72"),
                              tuning_db=str(tmp_path / "committed"), record_fallback=())
    path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    fused = fuse(import_batches(*load_onnx(path), [1]), arm.tvm_target())
    calls = []

    def fake(mod, target, records, boards, **kw):
        calls.append((boards, kw))
        return TuneReport(database="db", budget_s=kw["budget_s"], used_s=3.0, trials=2,
                          tasks=task_status(mod, target, records)), \
            remote.BoardUse({"board-1": 2}, 1.5, 1.0)

    monkeypatch.setattr(remote, "tune_on_boards", fake)
    monkeypatch.setattr(type(arm), "runs_here", lambda self: False)
    boards = remote.RemoteRunner("127.0.0.1", 9190, "arm_cortex_a72", 1)
    info = apply.ensure_tuned(fused, arm, _records(arm, tmp_path / "db"), 30, False, boards)
    [(got, kw)] = calls
    assert got is boards and kw["cross_compiler"] == arm.cross_compiler == "aarch64-linux-gnu-gcc"
    assert kw["budget_s"] == 30 and kw["only_missing"] is True
    assert info["trials"] == 2 and info["trials_per_server"] == {"board-1": 2}
    assert info["board_busy_s"] == 1.5 and info["board_wall_s"] == 1.0
    info = apply.ensure_tuned(fused, arm, _records(arm, tmp_path / "db"), 30, False)
    assert len(calls) == 1 and info["stopped_by"] == "cannot measure arm_cortex_a72 here"


def test_board_use_sums_sessions_and_spans_the_wall(tmp_path):
    """The session log of a fleet: measurements per server, their durations summed (one
    server taking them back to back) and the wall time they spanned; a session that never
    closed (its worker killed) still counts, without a duration."""
    from tvmcomp.tune.remote import board_use

    log = tmp_path / "rpc_sessions.log"
    log.write_text("a:1\t100.0\nb:2\t100.5\na:1\t100.0\t101.0\nb:2\t100.5\t101.5\n"
                   "a:1\t101.0\na:1\t101.0\t102.0\n?\t103.0\n\n")
    use = board_use(log)
    assert use.trials == {"a:1": 2, "b:2": 1, "?": 1}
    assert use.busy_s == pytest.approx(3.0) and use.span_s == pytest.approx(2.0)
    assert ("3.0 s in all (one server, back to back), within 2.0 s of wall time on 3 servers "
            "(1.50 measuring at once" in use.describe())
    assert board_use(tmp_path / "none.log") == type(use)({}, 0.0, 0.0)


def test_workers_start_without_torch(monkeypatch):
    """A process started inside without_torch (as MetaSchedule's workers are) imports TVM's
    FFI (which tries PyTorch first) without PyTorch, though it is installed; the user's
    PYTHONPATH is kept and restored."""
    import importlib.util
    import os
    import subprocess
    import sys

    from tvmcomp.tune.workers import NO_TORCH, without_torch

    probe = [sys.executable, "-c", "import sys, tvm_ffi; print(sys.modules.get('torch'))"]
    monkeypatch.setenv("PYTHONPATH", "/users/own/path")
    with without_torch():
        assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(NO_TORCH), "/users/own/path"]
        inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    assert os.environ["PYTHONPATH"] == "/users/own/path"
    assert importlib.util.find_spec("torch") is not None  # installed, yet:
    assert inside.strip() == "None"


@pytest.mark.parametrize("old, extent, new", [
    ([2, 12], 24, [2, 12]),      # same extent: unchanged
    ([8, 8], 4, [1, 4]),         # smaller: the inner factor shrinks to a divisor
    ([8, 8], 48, [6, 8]),        # larger: the outer factor takes the rest
    ([4, 1, 16], 48, [3, 1, 16]),
    ([1, 7], 10, [2, 5]),        # 7 does not divide 10: the largest divisor below it
    ([16, 1], 13, [13, 1]),
])
def test_retile_rederives_tile_sizes_for_another_extent(old, extent, new):
    from tvmcomp.tune.transfer import retile

    assert retile(old, extent) == new
    assert int(np.prod(new)) == extent


def _tiled_gemm_record(task, target, i_tiles, j_tiles, secs):
    """A record for ``task`` (one matmul): both loops split by sampled tiles, the inner column
    loop vectorized, as if tuned (one thread, so it beats the unscheduled loops even on a busy
    machine)."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    sch = s_tir.Schedule(mod)
    i, j, k = sch.get_loops(sch.get_sblock("matmul", func_name="main"))
    i0, i1 = sch.split(i, sch.sample_perfect_tile(i, n=2, decision=i_tiles))
    j0, j1 = sch.split(j, sch.sample_perfect_tile(j, n=2, decision=j_tiles))
    sch.reorder(i0, j0, i1, k, j1)
    sch.vectorize(j1)
    return ms.database.TuningRecord(sch.trace, ms.database.Workload(mod), [secs], target,
                                    ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def test_kernel_without_record_takes_its_operators_schedule_at_another_shape(
        tmp_path, x86_host, gemm_onnx, profile_with_db, monkeypatch, capfd):
    """A new batch of a tuned matmul: the record of the other batch is replayed with its row
    tiles re-derived, measured, kept (it beats the unscheduled loops), noted as transferred,
    and computes what the unscheduled kernel does; a tune with a budget then tunes it (from
    it) and clears the note. A transfer slower than the unscheduled loops is not kept."""
    from tvmcomp.tune import transfer
    from tvmcomp.tune.records import append_record
    from tvmcomp.tune.tuner import extract_tasks

    target = x86_host.tvm_target()
    prof, cache = profile_with_db(tmp_path / "committed"), tmp_path / "cache"
    onnx_path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=256, n=64)
    model, info = load_onnx(onnx_path)
    [tuned] = extract_tasks(fuse(import_batches(model, info, [64]), target), target)
    (tmp_path / "committed").mkdir()
    append_record(tmp_path / "committed", _tiled_gemm_record(tuned, target, [8, 8], [8, 8],
                                                             1e-5))
    fused = fuse(import_batches(model, info, [48]), target)
    [task] = extract_tasks(fused, target)
    records = _records(prof, cache)
    assert [t.best_us for t in task_status(fused, target, records)] == [None]

    moved = transfer.carry_across_shapes([task], records, target, records.tuning_database())
    assert list(moved) == [task.task_name] and moved[task.task_name]["from"].endswith("64x64x256")
    records = _records(prof, cache)
    [rec] = [r for _, r in records.candidates(task.dispatched[0], 5)]
    assert _decisions(rec.trace) == [[6, 8], [8, 8]]  # rows 48 = 6 x 8; columns as before
    ok, detail = validate.check_record(rec, target)
    assert ok, detail
    [st] = task_status(fused, target, records)
    assert st.best_us is not None and st.transferred

    rep = tune_module(fused, target, records, budget_s=60, max_trials_per_task=2,
                      trials_per_iter=2, family=x86_host.family, progress=False)
    assert task.task_name in rep.measured and rep.trials >= 1
    assert not _records(prof, cache).transferred()
    # MetaSchedule's INFO lines (where its logs go, its workers) stay off the terminal
    cap = capfd.readouterr()
    assert "[INFO]" not in cap.err + cap.out, cap.err + cap.out

    # slower than its unscheduled loops: not kept
    monkeypatch.setattr(transfer, "timer", lambda sch, _t, repeat=3: (
        lambda *_: [1e-3] if sch.trace.insts else [1e-6]))
    fresh = _records(prof, tmp_path / "cache2")
    assert transfer.carry_across_shapes([task], fresh, target, fresh.tuning_database()) == {}


def test_build_without_budget_transfers_schedules_to_a_new_batch(lenet, tmp_path, x86_host,
                                                                  monkeypatch):
    """LeNet-5 at a batch the committed x86_avx2 records do not hold, no tuning: kernels take
    the schedules of the same operators at the committed batches instead of running naive
    loops; the manifest says which, and from what shape, and the build is verified. (The
    nearest shape only, to keep the test short.)"""
    from tvmcomp.tune import transfer

    monkeypatch.setattr(transfer, "TRANSFER_TRIES", 1)
    _, man = build(lenet.onnx, x86_host, tmp_path / "art",
                   BuildOptions(batches=(4,), tune_budget_s=0, progress=False,
                                tuning_dir=tmp_path / "cache"))
    t = man["tuning"]
    moved = t["carried_across_shapes"]
    assert moved and set(moved) == set(t["transferred_untuned"])
    assert all(v["from"].startswith("x86_avx2 ") and v["us"] > 0 for v in moved.values())
    assert not set(moved) & set(t["untuned"]) and t["tuned"] == 0
    assert {k for k, v in man["kernels"].items()
            if v.startswith("schedule from another shape")} == set(moved)
    assert man["verification"]["passed"]


def test_trial_cap_grows_with_the_budget():
    """The default per-task cap: MetaSchedule's 64 for a small budget, more where 64 a task
    would stop the search long before the budget (DS-CNN's 5 tasks had used 166 of 600 s)."""
    from tvmcomp.tune.tuner import trials_per_task

    assert trials_per_task(300, 10) == 64
    assert trials_per_task(600, 5) == 240
    assert trials_per_task(0, 0) == 64
