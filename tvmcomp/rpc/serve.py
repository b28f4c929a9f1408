"""TVM RPC processes: TVM's tracker and server, and the C++ board server, in the foreground.

``tvmcomp rpc tracker`` / ``tvmcomp rpc server`` wrap ``tvm.rpc.tracker.Tracker`` and
``tvm.rpc.Server`` (Ctrl-C or SIGTERM stops them and their worker process). Both bind to
127.0.0.1 unless told otherwise: pass ``--host 0.0.0.0`` on a real board that the host reaches
over the network. ``tvmcomp rpc server --board PROFILE`` runs the C++ board server
(examples/rpc_board, see :mod:`tvmcomp.deploy.rpc_board`) on that profile's board instead: for
``arm_cortex_a72`` / ``arm_cortex_a53`` the aarch64 build under ``qemu-aarch64-static``, so a
session runs the model on the emulated board; the key defaults to the profile name.
``launch`` / ``stop`` run any of them as a background process (tests, scripts).
"""

from __future__ import annotations

import signal
import socket
import sys
import time

from ..errors import TvmcompError
from .client import (DEFAULT_HOST, SERVER_ID_FUNC, SERVER_PORT, TRACKER_PORT, last_line,
                     parse_addr, server_keys, tracker_summary)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now (for a local tracker or server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(*args: str, expect: str = "", timeout_s: float = 120.0, cpus: str | None = None):
    """Start ``python -m tvmcomp.rpc ARGS`` (a tracker or server) in the background.

    Returns the ``subprocess.Popen`` once the process printed its first line (it does when
    listening / registered) and that line contains ``expect``; otherwise kills it and raises
    :class:`TvmcompError` with its output. ``cpus`` (e.g. ``"1"``) pins it and its workers
    with ``taskset`` where that exists. Stop it with :func:`stop`.
    """
    return started(spawn(*args, cpus=cpus), args, expect, timeout_s)


def spawn(*args: str, cpus: str | None = None):
    """``python -m tvmcomp.rpc ARGS`` started in the background (see :func:`launch`)."""
    import shutil
    import subprocess

    pin = ["taskset", "-c", cpus] if cpus is not None and shutil.which("taskset") else []
    return subprocess.Popen([*pin, sys.executable, "-m", "tvmcomp.rpc", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def started(proc, args, expect: str = "", timeout_s: float = 120.0):
    """``proc`` (from :func:`spawn`) once its first line contains ``expect`` (see
    :func:`launch`)."""
    import threading

    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    line = first[0] if first else ""
    if not line or expect not in line:
        proc.kill()
        err = proc.communicate()[1] if not reader.is_alive() else ""
        raise TvmcompError(f"rpc {args[0] if args else ''} did not start: {line.strip()!r} "
                           f"{(err or '').strip()[-500:]}")
    return proc


def launch_servers(tracker: str, key: str, n: int, host: str = DEFAULT_HOST,
                   timeout_s: float = 60.0) -> list:
    """``n`` ``tvmcomp rpc server`` processes under ``key`` at ``tracker`` (a loopback fleet),
    each pinned to one of this machine's cores in turn, returned once all ``n`` are
    registered; if they are not within ``timeout_s``, stops them and raises
    :class:`TvmcompError`. Stop each with :func:`stop`."""
    import os

    thost, tport = parse_addr(tracker)
    ports: list[int] = []
    while len(ports) < n:  # distinct: none is bound before all are spawned
        if (p := free_port(host)) not in ports:
            ports.append(p)
    args = [("server", "--tracker", tracker, "--key", key, "--host", host, "--port", str(p))
            for p in ports]
    spawned = [spawn(*a, cpus=str(i % (os.cpu_count() or 1))) for i, a in enumerate(args)]
    procs = []  # all start at once (each imports TVM, twice: seconds), then are waited for
    try:
        for p, a in zip(spawned, args):
            procs.append(started(p, a, expect="RPC server", timeout_s=timeout_s))
    except TvmcompError:
        for p in spawned[len(procs):]:
            p.kill()
        for p in procs:
            stop(p)
        raise
    deadline = time.monotonic() + timeout_s
    while server_keys(tracker_summary(thost, tport)).get(key, 0) < n:
        if time.monotonic() > deadline:
            for p in procs:
                stop(p)
            raise TvmcompError(f"the {n} RPC servers under {key!r} never all registered at "
                               f"{tracker}")
        time.sleep(0.2)
    return procs


def stop(proc, timeout_s: float = 20.0) -> None:
    """SIGTERM a process from :func:`launch` (it stops its own workers), then kill if stuck."""
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_tracker(host: str = DEFAULT_HOST, port: int = TRACKER_PORT, port_end: int | None = None,
                  silent: bool = True) -> int:
    """Run TVM's RPC tracker in the foreground."""
    from tvm.rpc.tracker import Tracker

    def start():
        return Tracker(host, port=port, port_end=port_end or port + 1, silent=silent)

    return _serve_with_msg(start, lambda t: f"RPC tracker listening on {host}:{t.port}")


def serve_server(tracker: str, key: str, host: str = DEFAULT_HOST, port: int = SERVER_PORT,
                 port_end: int | None = None, silent: bool = True,
                 load_library: str | None = None) -> int:
    """Run TVM's RPC server in the foreground, registered at ``tracker`` under ``key``."""
    from tvm import rpc

    thost, tport = parse_addr(tracker)
    tracker_summary(thost, tport)  # fail fast with one line when the tracker is down

    def start():
        return rpc.Server(host, port, port_end or port + 10, key=key,
                          tracker_addr=(thost, tport), load_library=load_library, silent=silent,
                          server_init_callback=_register_server_id)

    return _serve_with_msg(
        start, lambda s: f"RPC server {key!r} on {host}:{s.port}, registered at {tracker}")


def _register_server_id() -> None:
    """In the server process (TVM runs it in a worker process of ours), before it serves:
    register ``SERVER_ID_FUNC``, which answers ``"<hostname>:<server pid>"`` in every session
    (sessions are forked from the server), so a client can tell which of several servers
    under one key it reached; and end with its parent, so a ``tvmcomp rpc server`` that is
    killed outright does not leave its server serving and registered."""
    import os

    import tvm_ffi

    _die_with_parent()
    who = f"{socket.gethostname()}:{os.getpid()}"
    tvm_ffi.register_global_func(SERVER_ID_FUNC, override=True)(lambda: who)


def serve_board(board_profile: str, tracker: str, key: str | None = None,
                host: str = DEFAULT_HOST, port: int = SERVER_PORT, port_end: int | None = None,
                threads: int = 1) -> int:
    """Run the C++ board server for ``board_profile``'s board in the foreground.

    An emulated board (ARM profiles) runs the cross-compiled server under qemu; a native one
    the x86-64 build. It prints one line once registered at ``tracker`` and serves until
    Ctrl-C / SIGTERM (forwarded to it); it also ends when this process dies.
    """
    import subprocess

    from ..deploy.boards import board_for
    from ..deploy.rpc_board import server_command, server_env
    from ..targets import load_profile

    board = board_for(load_profile(board_profile))
    thost, tport = parse_addr(tracker)
    tracker_summary(thost, tport)  # fail fast with one line when the tracker is down
    cmd = server_command(board, tracker, key, host, port, port_end)
    proc = subprocess.Popen(cmd, env=server_env(threads, board), preexec_fn=_die_with_parent)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        rc = proc.wait()
        return 2 if rc else 0  # the server printed its own one-line error
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()  # the server stops its session worker too
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve_with_msg(start, msg) -> int:
    """Start a TVM RPC process object, print ``msg(obj)``, run until Ctrl-C / SIGTERM, stop it."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        proc = start()
    except (OSError, RuntimeError) as e:
        raise TvmcompError(f"cannot start: {last_line(e)}") from None
    try:
        print(msg(proc), flush=True)
        while proc.proc is not None and proc.proc.is_alive():
            time.sleep(0.5)
        return 1  # the worker process died
    except KeyboardInterrupt:
        return 0
    finally:
        proc.terminate()
