"""Tuning trials measured on boards: MetaSchedule's ``RPCRunner`` over a TVM RPC tracker.

Candidates are still built here (the profile's compiler); each measurement takes a session on
one of the servers registered at the tracker under the key, so ``n`` servers measure ``n``
candidates at once. The caller finds how many servers there are (``tvmcomp.rpc``), so this
module stays below the RPC client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .workers import without_torch


@dataclass(frozen=True)
class RemoteRunner:
    """Where trials are measured: ``servers`` RPC servers under ``key`` at ``host:port``."""

    host: str
    port: int
    key: str
    servers: int
    server_id_func: str = ""           # the remote function naming a server (tvmcomp.rpc)
    session_timeout_s: float = 120.0

    def tracker_gone(self) -> str | None:
        """None while the tracker accepts connections; else one line saying it is gone."""
        return _tracker_gone(self.host, self.port)

    def describe(self) -> str:
        return (f"measuring on {self.servers} RPC server{'s' if self.servers != 1 else ''} "
                f"registered as {self.key!r} at {self.host}:{self.port}")

    def runner(self, session_log: str | Path):
        """MetaSchedule's ``RPCRunner``: one worker per server; a server that dies costs its
        in-flight trial (reported as a failed run), not the search. Each measurement appends
        the server it reached and when its session began and ended to ``session_log`` (see
        :func:`board_use`)."""
        from tvm.s_tir import meta_schedule as ms

        Path(session_log).parent.mkdir(parents=True, exist_ok=True)
        Path(session_log).write_text("")
        with without_torch():  # it starts a worker at construction
            return ms.runner.RPCRunner(
                rpc_config=ms.runner.RPCConfig(
                    tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                    session_priority=1, session_timeout_sec=int(self.session_timeout_s)),
                evaluator_config=ms.runner.EvaluatorConfig(number=10, repeat=3, min_repeat_ms=20),
                f_create_session=_LoggedSession(str(session_log), self.server_id_func),
                f_cleanup=_LoggedCleanup(str(session_log)), max_workers=self.servers)


TRIALS_PER_SERVER_PER_BATCH = 8


def tune_on_boards(mod, target, records, remote: RemoteRunner, **tune_kw):
    """:func:`~tvmcomp.tune.tuner.tune_module` with the trials measured on ``remote``'s
    servers (``tune_kw``: its other options, e.g. the profile's ``cross_compiler``); the
    origin of the records it wrote is noted beside them (:func:`record_origin`). Returns
    ``(report, BoardUse)``."""
    from .tuner import tune_module

    sessions = records.paths.cache / "rpc_sessions.log"
    # the budget is checked between batches of candidates: keep a batch to a few trials per
    # server, or on a slow board (seconds a trial under qemu) one batch overruns it by minutes
    tune_kw.setdefault("trials_per_iter", TRIALS_PER_SERVER_PER_BATCH * remote.servers)
    rep = tune_module(mod, target, records, runner=remote.runner(sessions),
                      runner_gone=remote.tracker_gone, **tune_kw)
    use = board_use(sessions) if rep.trials else BoardUse({}, 0.0, 0.0)
    if rep.trials:
        tuned = {t.name for t in rep.tasks if t.best_us is not None}
        record_origin(records.paths.write_dir,
                      {n: k for n, k in rep.measured.items() if n in tuned}, remote, use.trials)
    return rep, use


@dataclass(frozen=True)
class BoardUse:
    """How a tuning run used the servers: measurement sessions per server (in order of first
    use; servers started by ``tvmcomp rpc server`` answer ``"<host>:<pid>"``, others, e.g. the
    C++ board server, count together as ``"?"``), the sessions' durations summed (what one
    server would have taken for them, back to back) and the wall time from the first session's
    start to the last one's end."""

    trials: dict[str, int]
    busy_s: float
    span_s: float

    def describe(self) -> str:
        n = len(self.trials)
        per = ", ".join(f"{who} {k}" for who, k in self.trials.items()) or "none"
        if not n:
            return f"measurements per RPC server: {per}"
        return (f"measurements per RPC server: {per}; their sessions took {self.busy_s:.1f} s "
                f"in all (one server, back to back), within {self.span_s:.1f} s of wall time "
                f"on {n} server{'s' if n != 1 else ''} "
                f"({self.busy_s / max(self.span_s, 1e-9):.2f} measuring at once on average)")


def board_use(session_log: str | Path) -> BoardUse:
    """:class:`BoardUse` from a runner's session log: ``who<TAB>start`` when a session opens,
    ``who<TAB>start<TAB>end`` when it closes (a session whose worker was killed has no end:
    it counts as a measurement, without a duration)."""
    sessions: dict[tuple[str, str], float | None] = {}
    try:
        lines = Path(session_log).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        who, *times = line.strip().split("\t")
        if who:
            sessions.setdefault((who, times[0] if times else ""), None)
            if len(times) == 2:
                sessions[who, times[0]] = float(times[1])
    trials: dict[str, int] = {}
    for who, _ in sessions:
        trials[who] = trials.get(who, 0) + 1
    done = [(float(start), end) for (_, start), end in sessions.items() if end is not None]
    busy = sum(e - s for s, e in done)
    span = max(e for _, e in done) - min(s for s, _ in done) if done else 0.0
    return BoardUse(trials, busy, span)


_SESSION: dict = {}  # in a runner worker: the server and start of its current session


class _LoggedSession:
    """``f_create_session`` of the RPCRunner (runs in its worker processes): the default
    session through the tracker, failing at once if the tracker is gone; a line in the
    session log names the server it reached and when (:func:`board_use`)."""

    def __init__(self, log: str, server_id_func: str) -> None:
        self.log, self.server_id_func = log, server_id_func

    def __call__(self, rpc_config):
        import time

        _SESSION.clear()
        gone = _tracker_gone(rpc_config.tracker_host, rpc_config.tracker_port)
        if gone:  # fail the trial now: TVM's client retries a dead tracker for 60 s
            raise RuntimeError(gone)
        start = time.time()
        sess = rpc_config.connect_server()
        try:
            who = str(sess.get_function(self.server_id_func)())
        except Exception:  # noqa: BLE001 - a server without it (e.g. the C++ board server)
            who = "?"
        _SESSION.update(who=who, start=f"{start:.6f}")
        with open(self.log, "a") as f:
            f.write(f"{who}\t{_SESSION['start']}\n")
        return sess


class _LoggedCleanup:
    """``f_cleanup`` of the RPCRunner: the default clean-up, then the line that closes the
    session :class:`_LoggedSession` opened in the log (``who<TAB>start<TAB>end``)."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __call__(self, session, remote_path) -> None:
        import time

        from tvm.s_tir.meta_schedule.runner.rpc_runner import default_cleanup

        try:
            default_cleanup(session, remote_path)
        finally:
            if _SESSION:
                with open(self.log, "a") as f:
                    f.write(f"{_SESSION['who']}\t{_SESSION['start']}\t{time.time():.6f}\n")
                _SESSION.clear()


def _tracker_gone(host: str, port: int, timeout_s: float = 5.0) -> str | None:
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"the RPC tracker at {host}:{port} is gone ({e.strerror or type(e).__name__})"
    return None


ORIGIN_FILE = "measured_on.json"  # beside a database: where its RPC-measured records came from


def workload_key(mod) -> str:
    """The key of a tuning task's workload in :data:`ORIGIN_FILE` (its structural hash)."""
    from tvm_ffi import structural_hash

    return str(structural_hash(mod))


def record_origin(folder: Path, tasks: dict[str, str], remote: RemoteRunner,
                  per_server: dict[str, int]) -> None:
    """Note in ``folder``/:data:`ORIGIN_FILE` that the records of ``tasks`` (task name →
    :func:`workload_key`) written there by this run were measured over RPC by
    ``per_server``'s servers; a server that reported itself emulated marks them ``emulated``
    (MetaSchedule's record format has no field for where a record was measured)."""
    import datetime as dt

    from .records import update_json

    origin = {"rpc": f"{remote.key}@{remote.host}:{remote.port}", "servers": dict(per_server),
              "emulated": any("emulated" in who for who in per_server),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    update_json(Path(folder) / ORIGIN_FILE,
                {key: {**origin, "task": name} for name, key in tasks.items()})


def origins(folders, records: dict) -> dict[str, dict]:
    """``{task: origin}`` for the chosen ``records`` (``{task: TuningRecord}``) whose workload
    was measured over RPC, from the :data:`ORIGIN_FILE` of ``folders``."""
    from .records import read_json

    known: dict = {}
    for folder in folders:
        known.update(read_json(Path(folder) / ORIGIN_FILE))
    out = {}
    for task, rec in records.items():
        o = known.get(workload_key(rec.workload.mod))
        if isinstance(o, dict):
            out[task] = {k: o.get(k) for k in ("rpc", "servers", "emulated", "date")}
    return out
