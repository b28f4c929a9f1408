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


def trials_per_server(session_log: str | Path) -> dict[str, int]:
    """``{server: measurement sessions}`` (in order of first use) from a runner's session
    log. Servers started by ``tvmcomp rpc server`` answer ``"<host>:<pid>"``; others (e.g.
    the C++ board server) are counted together as ``"?"``."""
    counts: dict[str, int] = {}
    try:
        lines = Path(session_log).read_text().splitlines()
    except OSError:
        return []
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
