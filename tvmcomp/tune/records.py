"""Tuning records: committed databases read-only, a per-user cache, locked whole-line appends.

A profile's records come from up to three places, read in this order:

1. the committed database ``tuning_logs/<profile>/`` (read-only to every build and tune, except
   ``tvmcomp tune --commit``);
2. the per-user cache ``$XDG_CACHE_HOME/tvmcomp/tuning/<profile>/`` (or ``--tuning-dir DIR``),
   where every build, run and tune writes what it measures, and schedule-check verdicts;
3. the committed databases of the profiles named in the profile's ``record_fallback``, applied
   only to tasks that have no record of this profile's own (schedules are target-independent
   TIR; every record is still checked numerically before use, see ``validate.py``).

The files are MetaSchedule's JSON-lines format (``database_workload.json``: one workload per
line, its line number is its index; ``database_tuning_record.json``: ``[index, record]`` per
line), so ``JSONDatabase`` can still read what we write. We read them ourselves: a line that
is not valid JSON, that TVM cannot decode, or that names a missing workload is skipped with one
warning naming the file and line. We append under an exclusive ``flock`` per database, each
record as one ``write`` of a whole line followed by ``fsync``; a writer killed mid-line leaves a
partial last line, which readers skip and the next writer cuts off before it appends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = ".lock"
TOP_K_BUILD = 5    # records kept per workload when building (validation tries them in order)
TOP_K_TUNE = 64    # when tuning: the search seeds its population from the best records
_MAX_WARNINGS = 5  # per file; then one line with the count


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/tvmcomp/tuning`` (``~/.cache/tvmcomp/tuning`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tvmcomp" / "tuning"


@dataclass(frozen=True)
class RecordPaths:
    """Where one profile's records are read from and where new ones are written.

    Parameters
    ----------
    profile : str
        The profile's name.
    committed : Path
        The committed database (``tuning_logs/<profile>``); read-only unless ``commit``.
    cache : Path
        The per-user cache; tuning writes here unless ``commit``, and verdicts always go here.
    commit : bool
        Write new records into ``committed`` (``tvmcomp tune --commit``).
    fallbacks : tuple of (name, Path)
        Other profiles' committed databases, for tasks with no record of this profile.
    logs : Path or None
        Where MetaSchedule writes its own per-task logs (its ``logs/`` folder); None: ``cache``.
    """

    profile: str
    committed: Path
    cache: Path
    commit: bool = False
    fallbacks: tuple[tuple[str, Path], ...] = ()
    logs: Path | None = None

    @classmethod
    def for_profile(cls, profile, tuning_dir: str | Path | None = None,
                    commit: bool = False, logs: str | Path | None = None) -> RecordPaths:
        """The paths of ``profile`` (a :class:`tvmcomp.targets.Profile`)."""
        from ..targets import load_profile

        cache = Path(tuning_dir) if tuning_dir else cache_root() / profile.name
        others = [load_profile(name) for name in profile.record_fallback]
        fallbacks = tuple((p.name, p.tuning_dir) for p in others if p.name != profile.name)
        return cls(profile.name, profile.tuning_dir, cache, commit, fallbacks,
                   Path(logs) if logs else None)

    @property
    def write_dir(self) -> Path:
        return self.committed if self.commit else self.cache

    @property
    def log_dir(self) -> Path:
        """The folder MetaSchedule's ``logs/`` goes in (never a committed database)."""
        return self.logs or self.cache

    @property
    def own(self) -> tuple[Path, ...]:
        """This profile's databases, in reading order (committed first)."""
        return (self.committed,) if self.committed == self.cache else (self.committed,
                                                                        self.cache)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on the database in ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lines(path: Path) -> list[bytes]:
    """The file's lines (a last line without its newline is kept: a reader reports it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _mean(run_secs) -> float:
    try:
        vals = [float(s) for s in run_secs]
    except (TypeError, ValueError):
        return float("inf")
    return sum(vals) / len(vals) if vals else float("inf")


@dataclass
class FileReport:
    """What reading one database folder gave."""

    folder: str
    workloads: int = 0
    records: int = 0        # records in the file (valid lines)
    loaded: int = 0         # records decoded into memory (the best top_k per workload)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"


# ``[index,[trace,[run secs],{target},args]]``: the index opens the line and the run times are
# the one list of numbers between the trace's closing brackets and the target object.
_HEAD = re.compile(rb"\[(\d+),\[")
_SECS = re.compile(rb"\]\],\[([-0-9.eE+, ]*)\],\{")


def _index_and_secs(line: bytes) -> tuple[int, float]:
    """A record line's workload index and mean run time, without decoding its trace (JSON-
    decoding all of a 4,680-record database took 1.1 s of every build; only the best few per
    workload are decoded). A line of another shape is decoded whole; that raises if it is not
    a record."""
    head, secs = _HEAD.match(line), _SECS.findall(line)
    if head and len(secs) == 1 and line.endswith(b"]]"):
        return int(head[1]), _mean(secs[0].split(b","))
    idx, body = json.loads(line)
    return int(idx), _mean(body[1])


def read_database(folder: Path, mem, top_k: int) -> FileReport:
    """Add the best ``top_k`` records per workload of ``folder`` to MemoryDatabase ``mem``.

    Bad lines and records of missing workloads are skipped with a warning; nothing raises.
    """
    from tvm.s_tir import meta_schedule as ms

    rep = FileReport(str(folder))
    workloads: dict[int, object] = {}
    wpath, rpath = folder / WORKLOADS, folder / RECORDS
    for i, line in enumerate(_lines(wpath)):
        try:
            workloads[i] = mem.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod)
        except Exception as e:  # noqa: BLE001 - JSON or TVM decoding error: skip the line
            rep.skipped.append(f"{wpath}:{i + 1}: not a workload ({_short(e)})")
    rep.workloads = len(workloads)
    best: dict[int, list] = {}
    for i, line in enumerate(_lines(rpath)):
        try:
            idx, secs = _index_and_secs(line)
        except Exception as e:  # noqa: BLE001
            rep.skipped.append(f"{rpath}:{i + 1}: not a tuning record ({_short(e)})")
            continue
        if idx not in workloads:
            rep.skipped.append(f"{rpath}:{i + 1}: its workload #{idx} is missing")
            continue
        rep.records += 1
        best.setdefault(idx, []).append((secs, i, line))
    for idx, cands in best.items():
        cands.sort(key=lambda c: (c[0], c[1]))
        for _, i, line in cands[:top_k]:
            try:
                body = json.loads(line)[1]
            except Exception as e:  # noqa: BLE001
                rep.skipped.append(f"{rpath}:{i + 1}: not a tuning record ({_short(e)})")
                continue
            try:
                mem.commit_tuning_record(ms.database.TuningRecord.from_json(body, workloads[idx]))
                rep.loaded += 1
            except Exception as e:  # noqa: BLE001
                rep.skipped.append(f"{rpath}:{i + 1}: TVM cannot decode it ({_short(e)})")
    for msg in rep.skipped[:_MAX_WARNINGS]:
        _warn(f"skipped a damaged tuning-database line: {msg}")
    if len(rep.skipped) > _MAX_WARNINGS:
        _warn(f"... and {len(rep.skipped) - _MAX_WARNINGS} more damaged lines in {folder}")
    return rep


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:120]


def _cut_partial_line(path: Path) -> None:
    """Remove a last line without its newline (left by a writer killed mid-line)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        keep = content.rfind(b"\n") + 1
        f.truncate(keep)
    _warn(f"{path}: cut off a partial last line ({size - keep} bytes) left by an "
          "interrupted writer")


def _append_line(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload + b"\n")  # one write of the whole line
        os.fsync(fd)
    finally:
        os.close(fd)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def append_record(folder: Path, record) -> None:
    """Append ``record`` (and its workload, if new to the file) to the database in ``folder``."""
    wl_json = _dumps(record.workload.as_json())
    rec_json = record.as_json()
    with locked(folder):
        wpath, rpath = folder / WORKLOADS, folder / RECORDS
        _cut_partial_line(wpath)
        _cut_partial_line(rpath)
        lines = _lines(wpath)
        try:
            idx = lines.index(wl_json)
        except ValueError:
            idx = len(lines)
            _append_line(wpath, wl_json)
        _append_line(rpath, _dumps([idx, rec_json]))


def update_json(path: Path, entries: dict) -> None:
    """Merge ``entries`` into the JSON object in ``path`` under the folder's lock, atomically."""
    with locked(path.parent):
        data = read_json(path)
        data.update(entries)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` if it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Records:
    """One profile's records, as a build or a tune sees them (see the module docstring).

    Parameters
    ----------
    paths : RecordPaths
        Where to read and write.
    top_k : int
        Records kept in memory per workload and database (the best by mean run time).
    """

    def __init__(self, paths: RecordPaths, top_k: int = TOP_K_BUILD):
        from tvm.s_tir import meta_schedule as ms

        self.paths = paths
        self.own = ms.database.MemoryDatabase(module_equality="structural")
        self.reports = [read_database(d, self.own, top_k) for d in paths.own if d.is_dir()]
        self.fallback: dict = {}
        for name, folder in paths.fallbacks:
            if folder.is_dir():
                mem = ms.database.MemoryDatabase(module_equality="structural")
                self.reports.append(read_database(folder, mem, top_k))
                self.fallback[name] = mem

    def transferred(self) -> dict[str, str]:
        """``{workload key: source}`` of records in this profile's own databases that were
        carried across shapes (:func:`tvmcomp.tune.transfer.carry_across_shapes`; source: the
        shape's) or come from rules (:func:`tvmcomp.tune.rules.rule_schedules`; ``"rules"``),
        and not tuned since."""
        from .transfer import TRANSFERRED_FILE

        keys: dict[str, str] = {}
        for d in self.paths.own:
            keys.update({k: str(v.get("from", "")) if isinstance(v, dict) else "?"
                         for k, v in read_json(Path(d) / TRANSFERRED_FILE).items() if v})
        return keys

    def describe(self) -> str:
        """One line: where records were read from (with counts) and where new ones go."""
        counts = {r.folder: r.records for r in self.reports}
        own = ", ".join(f"{d} ({counts.get(str(d), 0)} records)" for d in self.paths.own)
        fb = "".join(f"; fallback {name}: {d} ({counts.get(str(d), 0)} records)"
                     for name, d in self.paths.fallbacks)
        return f"tuning records: {own}{fb}; new records go to {self.paths.write_dir}"

    def counts(self) -> dict[str, int]:
        """Records read per database, named by profile and kind, never by host path (for
        the manifest): ``{"<profile> committed": n, "<profile> user cache": n,
        "<other> committed (fallback)": n}``."""
        counts = {r.folder: r.records for r in self.reports}
        out = {f"{self.paths.profile} committed": counts.get(str(self.paths.committed), 0)}
        if self.paths.cache != self.paths.committed:
            out[f"{self.paths.profile} user cache"] = counts.get(str(self.paths.cache), 0)
        for name, d in self.paths.fallbacks:
            out[f"{name} committed (fallback)"] = counts.get(str(d), 0)
        return out

    def sources(self):
        """``(source name, database)`` pairs in the order records are taken from."""
        return [(self.paths.profile, self.own), *self.fallback.items()]

    def best(self, mod, target, task_name: str) -> tuple[float | None, str | None]:
        """(mean µs, source) of the best record for workload ``mod``; (None, None) if none."""
        for source, db in self.sources():
            if not db.has_workload(mod):
                continue
            rec = db.query_tuning_record(mod, target, task_name)
            if rec is not None and rec.run_secs:
                return 1e6 * _mean(rec.run_secs), source
        return None, None

    def candidates(self, mod, k: int) -> list[tuple[str, object]]:
        """The best ``k`` records of each source for ``mod``, own profile first."""
        out = []
        for source, db in self.sources():
            if db.has_workload(mod):
                out += [(source, r) for r in db.get_top_k(db.commit_workload(mod), k)]
        return out

    def lookup_database(self):
        """One read-only MetaSchedule database: own records first, then the fallbacks'."""
        if not self.fallback:
            return self.own
        from tvm.s_tir import meta_schedule as ms

        return ms.database.OrderedUnionDatabase(self.own, *self.fallback.values())

    def tuning_database(self):
        """A MetaSchedule database for tuning: reads this profile's records, appends new
        ones to ``paths.write_dir`` as they are measured."""
        return _appending_database(self.own, self.paths.write_dir)


def _appending_database(mem, folder: Path):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import PyDatabase

    @derived_object
    class AppendingDatabase(PyDatabase):
        def __init__(self):
            super().__init__()
            self.mem, self.folder = mem, folder

        def has_workload(self, mod):
            return self.mem.has_workload(mod)

        def commit_workload(self, mod):
            return self.mem.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.mem.commit_tuning_record(record)
            append_record(self.folder, record)

        def get_top_k(self, workload, top_k):
            return self.mem.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            return self.mem.get_all_tuning_records()

        def __len__(self):
            return len(self.mem)

    return AppendingDatabase()
