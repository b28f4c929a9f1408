"""Tuning trials measured on boards: MetaSchedule's ``RPCRunner`` over a TVM RPC tracker.

Candidates are still built here (the profile's compiler); each measurement takes a session on
one of the servers registered at the tracker under the key, so ``n`` servers measure ``n``
candidates at once. The caller finds how many servers there are (``tvmcomp.rpc``), so this
module stays below the RPC client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteRunner:
    """Where trials are measured: ``servers`` RPC servers under ``key`` at ``host:port``."""

    host: str
    port: int
    key: str
    servers: int
    server_id_func: str = ""           # the remote function naming a server (tvmcomp.rpc)
    session_timeout_s: float = 120.0

    def describe(self) -> str:
        return (f"measuring on {self.servers} RPC server{'s' if self.servers != 1 else ''} "
                f"registered as {self.key!r} at {self.host}:{self.port}")

    def runner(self, session_log: str | Path):
        """MetaSchedule's ``RPCRunner``: one worker per server; a server that dies costs its
        in-flight trial (reported as a failed run), not the search. Each measurement's session
        appends the server it reached to ``session_log`` (see :func:`trials_per_server`)."""
        from tvm.s_tir import meta_schedule as ms

        Path(session_log).parent.mkdir(parents=True, exist_ok=True)
        Path(session_log).write_text("")
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                session_priority=1, session_timeout_sec=int(self.session_timeout_s)),
            evaluator_config=ms.runner.EvaluatorConfig(number=10, repeat=3, min_repeat_ms=20),
            f_create_session=_LoggedSession(str(session_log), self.server_id_func),
            max_workers=self.servers)


def tune_on_boards(mod, target, records, remote: RemoteRunner, **tune_kw):
    """:func:`~tvmcomp.tune.tuner.tune_module` with the trials measured on ``remote``'s
    servers (``tune_kw``: its other options, e.g. the profile's ``cross_compiler``); the
    origin of the records it wrote is noted beside them (:func:`record_origin`). Returns
    ``(report, {server: measurements})``."""
    from .tuner import tune_module

    sessions = records.paths.cache / "rpc_sessions.log"
    rep = tune_module(mod, target, records, runner=remote.runner(sessions), **tune_kw)
    per = trials_per_server(sessions) if rep.trials else {}
    if rep.trials:
        tuned = {t.name for t in rep.tasks if t.best_us is not None}
        record_origin(records.paths.write_dir,
                      {n: k for n, k in rep.measured.items() if n in tuned}, remote, per)
    return rep, per


def trials_per_server(session_log: str | Path) -> dict[str, int]:
    """``{server: measurement sessions}`` (in order of first use) from a runner's session
    log. Servers started by ``tvmcomp rpc server`` answer ``"<host>:<pid>"``; others (e.g.
    the C++ board server) are counted together as ``"?"``."""
    counts: dict[str, int] = {}
    try:
        lines = Path(session_log).read_text().splitlines()
    except OSError:
        return counts
    for line in lines:
        if line.strip():
            counts[line.strip()] = counts.get(line.strip(), 0) + 1
    return counts


class _LoggedSession:
    """``f_create_session`` of the RPCRunner (runs in its worker processes): the default
    session through the tracker, plus one line naming the server in the log."""

    def __init__(self, log: str, server_id_func: str) -> None:
        self.log, self.server_id_func = log, server_id_func

    def __call__(self, rpc_config):
        sess = rpc_config.connect_server()
        try:
            who = str(sess.get_function(self.server_id_func)())
        except Exception:  # noqa: BLE001 - a server without it (e.g. the C++ board server)
            who = "?"
        with open(self.log, "a") as f:
            f.write(who + "\n")
        return sess


ORIGIN_FILE = "measured_on.json"  # beside a database: where its RPC-measured records came from


def workload_key(mod) -> str:
    """The key of a tuning task's workload in :data:`ORIGIN_FILE` (its structural hash)."""
    from tvm_ffi import structural_hash

    return str(structural_hash(mod))


def record_origin(folder: Path, tasks: dict[str, str], remote: RemoteRunner,
                  per_server: dict[str, int]) -> None:
    """Note in ``folder``/:data:`ORIGIN_FILE` that the records of ``tasks`` (task name →
    :func:`workload_key`) written there by this run were measured over RPC by ``per_server``'s servers; a server
    that reported itself emulated marks them ``emulated`` (MetaSchedule's record format has
    no field for where a record was measured)."""
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
