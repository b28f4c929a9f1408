"""Tuning records: damaged lines, concurrent and killed writers, the cache, the fallback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tvmcomp.frontend.onnx_import import import_batches, load_onnx
from tvmcomp.pipeline import fuse
from tvmcomp.tune import RecordPaths, Records, task_status, tune_module
from tvmcomp.tune.records import RECORDS, WORKLOADS, append_record

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, x86_host, gemm_onnx, profile_with_db):
    """A gemm model, its fused module and a real database of a few tuned records."""
    d = tmp_path_factory.mktemp("records")
    onnx_path, w, b = gemm_onnx(d / "gemm.onnx")
    target = x86_host.tvm_target()
    model, info = load_onnx(onnx_path)
    fused = fuse(import_batches(model, info, [1]), target)
    db = d / "db"
    prof = profile_with_db(d / "none")
    rep = tune_module(fused, target, Records(RecordPaths.for_profile(prof, db)), budget_s=60,
                      max_trials_per_task=3, trials_per_iter=3, family="x86", progress=False)
    assert rep.trials >= 1 and rep.untuned == []
    return onnx_path, fused, target, db, prof


def _copy(db, dest):
    shutil.copytree(db, dest, ignore=shutil.ignore_patterns(".lock", "logs", "*.json.*"))
    return dest


def _load(prof, folder):
    return Records(RecordPaths.for_profile(prof, folder))


def _lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def _cpp_reads(folder) -> int:
    """MetaSchedule's own (C++) JSONDatabase opens the folder: the format stays compatible."""
    from tvm.s_tir import meta_schedule as ms

    return len(ms.database.JSONDatabase(work_dir=str(folder)).get_all_tuning_records())


def test_garbage_line_is_skipped_with_a_warning(tuned, tmp_path, capsys):
    _, fused, target, db, prof = tuned
    good = _load(prof, db).reports[0].records
    d = _copy(db, tmp_path / "db")
    with open(d / RECORDS, "ab") as f:
        f.write(b'{"not": "a record"}\n[0, [garbage\n')
    n = len(_lines(d / RECORDS))
    recs = _load(prof, d)
    err = capsys.readouterr().err
    assert f"{d / RECORDS}:{n - 1}: not a tuning record" in err
    assert f"{d / RECORDS}:{n}: not a tuning record" in err
    assert recs.reports[0].records == good and len(recs.reports[0].skipped) == 2
    (status,) = task_status(fused, target, recs)
    assert status.best_us is not None


def test_run_times_are_read_without_decoding_traces_and_match_a_full_decode():
    """Every committed record's index and mean run time, read from its line's ends, equal
    what decoding the whole line gives (the full decode is left for the few kept)."""
    from tvmcomp.tune.records import _index_and_secs, _mean

    lines = _lines(REPO / "tuning_logs" / "x86_avx2" / RECORDS)
    assert len(lines) > 1000
    for line in lines:
        idx, body = json.loads(line)
        assert _index_and_secs(line) == (idx, _mean(body[1]))


def test_record_damaged_inside_its_trace_is_skipped_when_it_is_decoded(tuned, tmp_path,
                                                                          capsys):
    _, fused, target, db, prof = tuned
    d = _copy(db, tmp_path / "db")
    good = _load(prof, d).reports[0].loaded
    best = _lines(d / RECORDS)[0]
    with open(d / RECORDS, "ab") as f:  # its run times intact, a trace that is not JSON
        f.write(best.replace(b'"GetSBlock"', b'"GetSBlock', 1) + b"\n")
    recs = _load(prof, d)
    err = capsys.readouterr().err
    assert f"{d / RECORDS}:{len(_lines(d / RECORDS))}: not a tuning record" in err
    assert recs.reports[0].loaded == good
    (status,) = task_status(fused, target, recs)
    assert status.best_us is not None


def test_damaged_workload_line_skips_its_records(tuned, tmp_path, capsys):
    _, fused, target, db, prof = tuned
    d = _copy(db, tmp_path / "db")
    wl = _lines(d / WORKLOADS)
    (d / WORKLOADS).write_bytes(b"".join(b"\xff" + line[5:] + b"\n" for line in wl))
    recs = _load(prof, d)
    err = capsys.readouterr().err
    assert f"{d / WORKLOADS}:1: not a workload" in err and "workload #0 is missing" in err
    assert recs.reports[0].records == 0
    assert task_status(fused, target, recs)[0].best_us is None


def test_partial_last_line_is_read_around_and_cut_by_the_next_writer(tuned, tmp_path, capsys):
    """What a writer killed in the middle of its write leaves behind."""
    _, fused, target, db, prof = tuned
    d = _copy(db, tmp_path / "db")
    full = (d / RECORDS).read_bytes()
    last = full.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    (d / RECORDS).write_bytes(full + last[: len(last) // 2])  # no newline: cut mid-record
    recs = _load(prof, d)
    assert "not a tuning record" in capsys.readouterr().err
    assert task_status(fused, target, recs)[0].best_us is not None
    before = recs.reports[0].records
    rec = recs.own.get_all_tuning_records()[0]
    append_record(d, rec)
    assert "cut off a partial last line" in capsys.readouterr().err
    assert (d / RECORDS).read_bytes() == full + (d / RECORDS).read_bytes()[len(full):]
    assert _load(prof, d).reports[0].records == before + 1
    assert capsys.readouterr().err == ""
    assert _cpp_reads(d) == before + 1


_APPENDER = """
import sys
from tvmcomp.tune import Records, RecordPaths
from tvmcomp.tune.intrin import load_tensor_intrinsics
from tvmcomp.tune.records import append_record
from pathlib import Path
load_tensor_intrinsics("x86")
src, dest, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
recs = Records(RecordPaths("test", src, src)).own  # the fixture's records alone
rec = min(recs.get_all_tuning_records(), key=lambda r: float(r.run_secs[0]))
print("ready", flush=True)
i = 0
while n < 0 or i < n:
    append_record(dest, rec)
    i += 1
"""


def _appender(src, dest, n):
    p = subprocess.Popen([sys.executable, "-c", _APPENDER, str(src), str(dest), str(n)],
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_concurrent_writers_keep_every_line_whole(tuned, tmp_path):
    _, fused, target, db, prof = tuned
    dest = tmp_path / "shared"
    procs = [_appender(db, dest, 150) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = _lines(dest / RECORDS)
    assert len(lines) == 300
    assert all(json.loads(line)[0] == 0 for line in lines)
    assert len(_lines(dest / WORKLOADS)) == 1  # the workload was written once, by one of them
    assert _load(prof, dest).reports[0].records == 300
    assert _cpp_reads(dest) == 300


def test_two_tunes_of_one_profile_at_once_keep_the_database_valid(tuned, tmp_path):
    """Two `tvmcomp tune` processes write the same tuning cache at the same time."""
    onnx_path = tuned[0]
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tvmcomp.cli", "tune", str(onnx_path), "--profile", "x86_avx2",
         "--batch", batch, "--tune-budget", "120", "--trials-per-task", "1",
         "--tuning-dir", str(cache)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for batch in ("2", "3")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    lines = _lines(cache / RECORDS)
    assert len(lines) >= 2  # both processes measured and appended
    assert len(_lines(cache / WORKLOADS)) == 2  # one workload each
    workloads = _lines(cache / WORKLOADS)
    assert all(0 <= json.loads(line)[0] < len(workloads) for line in lines)
    assert _cpp_reads(cache) == len(lines)  # every line whole and decodable


def test_writer_killed_while_appending_leaves_whole_lines(tuned, tmp_path, capsys):
    """SIGKILL lands anywhere in a writer's append loop (lock held or not). Each line is one
    write(2), so the file holds whole lines only, and the lock dies with the writer: the next
    writer appends at once. (A line cut mid-way, as another tool or a full disk could leave,
    is test_partial_last_line_is_read_around_and_cut_by_the_next_writer.)"""
    _, fused, target, db, prof = tuned
    dest = tmp_path / "killed"
    p = _appender(db, dest, -1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not (dest / RECORDS).is_file() or (dest / RECORDS).stat().st_size < 20 * 1000):
        time.sleep(0.05)
    time.sleep(0.01 * (os.getpid() % 7))  # land anywhere in the writer's loop
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    data = (dest / RECORDS).read_bytes()
    assert data.endswith(b"\n")  # no partial line
    recs = _load(prof, dest)
    assert capsys.readouterr().err == ""  # nothing skipped, nothing cut
    assert recs.reports[0].records == data.count(b"\n") >= 10
    assert task_status(fused, target, recs)[0].best_us is not None
    t0 = time.monotonic()
    append_record(dest, recs.own.get_all_tuning_records()[0])  # the next writer goes on
    assert time.monotonic() - t0 < 5  # the killed writer's lock is gone
    assert _cpp_reads(dest) == _load(prof, dest).reports[0].records == data.count(b"\n") + 1


def _write_profile(path, name_db, fallback=()):
    src = (REPO / "targets" / "x86_avx2.toml").read_text()
    fb = f"record_fallback = {json.dumps([str(f) for f in fallback])}\n" if fallback else ""
    path.write_text(f'tuning_db = "{name_db}"\n' + fb + src)
    return path


def test_fallback_records_are_used_checked_and_recorded(tuned, tmp_path, profile_with_db):
    """A profile with no records of its own builds with another profile's, and says so."""
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    onnx_path, fused, target, db, _ = tuned
    other = _write_profile(tmp_path / "other.toml", _copy(db, tmp_path / "other_db"))
    host = load_profile(str(_write_profile(tmp_path / "host.toml", tmp_path / "host_db",
                                           fallback=[other])))
    assert [t.source for t in task_status(fused, target, _load(host, tmp_path / "c"))] \
        == ["other"]
    _, man = build(onnx_path, host, tmp_path / "art",
                   BuildOptions(batches=(1,), tune_budget_s=30, progress=False,
                                tuning_dir=tmp_path / "cache"))
    t = man["tuning"]
    assert t["trials"] == 0 and t["stopped_by"] == "not needed"  # the fallback covered it
    assert t["tuned"] == 1 and list(t["record_source"].values()) == ["other"]
    assert t["schedules_checked"] is True
    assert not (tmp_path / "host_db").exists()
    # without the fallback the same build has nothing to apply
    _, man = build(onnx_path, profile_with_db(tmp_path / "host_db"), tmp_path / "art2",
                   BuildOptions(batches=(1,), tune_budget_s=0, progress=False,
                                tuning_dir=tmp_path / "cache"))
    assert man["tuning"]["tuned"] == 0 and man["tuning"]["record_source"] == {}


def test_cross_build_applies_fallback_records_unchecked_and_says_so(tuned, tmp_path, capsys,
                                                                    kernels_in_so):
    """A profile this host cannot run (an x86_avx512 build on an AVX2 machine): tasks covered
    only by the fallback's records ship with those schedules, marked unchecked."""
    import dataclasses

    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    onnx_path, _, _, db, _ = tuned
    other = _write_profile(tmp_path / "other.toml", _copy(db, tmp_path / "other_db"))
    host = load_profile(str(_write_profile(tmp_path / "host.toml", tmp_path / "host_db",
                                           fallback=[other])))
    cross = dataclasses.replace(host, requires_cpu_flags=(*host.requires_cpu_flags,
                                                          "no_such_cpu_flag"))
    assert not cross.runs_here()
    out, man = build(onnx_path, cross, tmp_path / "art",
                     BuildOptions(batches=(1,), tune_budget_s=30, tuning_dir=tmp_path / "c"))
    said = capsys.readouterr().out
    assert "checked before use" not in said and "applied unchecked" in said
    t = man["tuning"]
    assert t["schedules_checked"] is False and t["trials"] == 0
    assert t["tuned"] == 1 and list(t["record_source"].values()) == ["other"]
    assert set(man["kernels"]) == kernels_in_so(out)
    tuned_kernels = [k for k, v in man["kernels"].items() if v.startswith("tuned")]
    assert len(tuned_kernels) == 1
    assert man["kernels"][tuned_kernels[0]] == \
        f"tuned, unchecked ({cross.name} cannot run on the build host)"
    assert man["verification"]["passed"] is None


def test_build_with_a_damaged_committed_database_goes_on(tuned, tmp_path, run_tvmcomp):
    onnx_path, _, _, db, _ = tuned
    d = _copy(db, tmp_path / "db")
    with open(d / RECORDS, "ab") as f:
        f.write(b"\x00\x01 truncated garbage")
    prof = _write_profile(tmp_path / "p.toml", d)
    r = run_tvmcomp("build", str(onnx_path), "--profile", str(prof), "--out",
                    str(tmp_path / "art"), "--batch", "1", "--tune-budget", "0",
                    "--tuning-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert "skipped a damaged tuning-database line" in r.stderr and "Traceback" not in r.stderr
    man = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert man["tuning"]["tuned"] == 1
    assert (d / RECORDS).read_bytes().endswith(b"garbage")  # a build never writes it


def test_interrupted_tune_keeps_its_records_and_a_rerun_resumes(tuned, tmp_path, capsys):
    """SIGTERM in the middle of `tvmcomp tune`: exit 143 (128 + SIGTERM), measured records kept."""
    onnx_path = tuned[0]
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "tvmcomp.cli", "tune", str(onnx_path), "--profile",
            "x86_avx2", "--batch", "2,3", "--tune-budget", "120", "--trials-per-task", "2",
            "--tuning-dir", str(cache)]
    p = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        if (cache / RECORDS).is_file() and (cache / RECORDS).stat().st_size > 0:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "kept in" in err and "Traceback" not in err
    kept = len(_lines(cache / RECORDS))
    assert kept >= 1
    assert not (REPO / "tuning_logs" / "x86_avx2" / "logs").exists()
    # the rerun reads them and tunes only what is missing
    from tvmcomp import cli

    capsys.readouterr()
    assert cli.main(args[3:-6] + ["--tune-budget", "0", "--tuning-dir", str(cache)]) == 0
    assert f"({kept} records)" in capsys.readouterr().out


def test_tune_with_every_task_recorded_says_nothing_to_tune(tuned, tmp_path, capsys):
    from tvmcomp import cli

    onnx_path, _, _, db, _ = tuned
    cache = _copy(db, tmp_path / "cache")
    assert cli.main(["tune", str(onnx_path), "--profile", "x86_avx2", "--batch", "1",
                     "--tune-budget", "30", "--tuning-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "nothing to tune: every kernel already has a x86_avx2 record" in out
    assert "trials" not in out.split("nothing to tune")[1]


def test_tune_commit_promotes_the_best_checked_cache_record(tuned, tmp_path, capsys):
    """A maintainer's cache already holds the records: tune --commit has nothing to tune and
    still commits each task's best checked record, once."""
    from tvmcomp import cli
    from tvmcomp.compiler import BuildOptions, build
    from tvmcomp.targets import load_profile

    onnx_path, fused, target, db, _ = tuned
    cache = _copy(db, tmp_path / "cache")
    committed = tmp_path / "committed"
    prof_file = _write_profile(tmp_path / "maint.toml", committed)
    args = ["tune", str(onnx_path), "--profile", str(prof_file), "--batch", "1", "--commit",
            "--tuning-dir", str(cache), "--tune-budget", "30"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "nothing to tune" in out
    assert "1 best checked records added, 0 already there" in out
    lines = _lines(committed / RECORDS)
    assert len(lines) == 1 and len(_lines(committed / WORKLOADS)) == 1
    def mean_secs(line):  # [workload index, [trace, run_secs, target, args]]
        secs = [float(s) for s in json.loads(line)[1][1]]
        return sum(secs) / len(secs)

    assert mean_secs(lines[0]) == min(mean_secs(line) for line in _lines(cache / RECORDS))
    # again: nothing new
    assert cli.main(args) == 0
    assert "0 best checked records added, 1 already there" in capsys.readouterr().out
    assert len(_lines(committed / RECORDS)) == 1
    # a build with an empty cache applies the committed record
    prof = load_profile(str(prof_file))
    _, man = build(onnx_path, prof, tmp_path / "art",
                   BuildOptions(batches=(1,), tune_budget_s=0, progress=False,
                                tuning_dir=tmp_path / "empty"))
    assert man["tuning"]["tuned"] == 1
    assert list(man["tuning"]["record_source"].values()) == ["maint"]
