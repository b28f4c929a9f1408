"""TVM RPC: run TVM's own tracker and server, and benchmark an artifact on a remote board.

``tvmcomp rpc tracker`` / ``tvmcomp rpc server`` wrap ``tvm.rpc.tracker.Tracker`` and
``tvm.rpc.Server`` in the foreground (Ctrl-C or SIGTERM stops them and their worker process);
``bench_rpc`` uploads ``model.so`` to a server found through the tracker by key and times each
batch entry point there with the VM's ``time_evaluator``. Both bind to 127.0.0.1 unless told
otherwise: pass ``--host 0.0.0.0`` on a real board that the host reaches over the network.

``tvmcomp rpc server --board PROFILE`` runs the C++ board server (examples/rpc_board, see
:mod:`tvmcomp.deploy.rpc_board`) on that profile's board instead: for ``arm_cortex_a72`` /
``arm_cortex_a53`` the aarch64 build under ``qemu-aarch64-static``, so a session runs the model
on the emulated board; the key defaults to the profile name.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

from .artifact import check_library, read_manifest
from .errors import ArtifactError, TvmcompError
from .targets import profile_from_dict

DEFAULT_HOST = "127.0.0.1"
TRACKER_PORT = 9190
SERVER_PORT = 9090
SERVER_ID_FUNC = "tvm.rpc.server.tvmcomp_server_id"  # see _register_server_id


def parse_addr(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; raises :class:`TvmcompError` on malformed input."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TvmcompError(f"RPC address must be HOST:PORT (e.g. 127.0.0.1:{TRACKER_PORT}), "
                           f"got {text!r}")
    return host, int(port)


def tracker_summary(host: str, port: int, timeout_s: float = 5.0) -> dict:
    """The tracker's summary (servers and queues); a one-line error if it cannot be reached."""
    from tvm import rpc

    where = f"{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise TvmcompError(f"cannot reach the RPC tracker at {where} ({reason}); start one with "
                           f"`tvmcomp rpc tracker --port {port}` or check --rpc-tracker") from None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # TVM's tracker client waits forever for an answer
    try:
        return rpc.connect_tracker(host, port).summary()
    except TimeoutError:
        raise TvmcompError(f"{where} accepted the connection but sent no answer in "
                           f"{timeout_s:g} s: not an RPC tracker, or a hung one") from None
    except (RuntimeError, OSError) as e:
        raise TvmcompError(f"{where} is not an RPC tracker ({str(e).strip()[:80]})") from None
    finally:
        socket.setdefaulttimeout(old)


def server_keys(summary: dict) -> dict[str, int]:
    """``{key: number of servers}`` registered at a tracker (from :func:`tracker_summary`)."""
    keys: dict[str, int] = {}
    for item in summary.get("server_info", []):
        key = str(item.get("key", "")).split(":", 1)[-1]
        keys[key] = keys.get(key, 0) + 1
    return keys


def request_session(tracker: str, key: str, session_timeout_s: float = 600.0,
                    wait_s: float = 120.0):
    """A remote session to a server registered as ``key``; clear errors for bad tracker/key.

    Waits up to ``wait_s`` for a busy server (one session at a time) to become free.
    """
    from tvm import rpc

    host, port = parse_addr(tracker)
    deadline = time.monotonic() + wait_s
    while True:
        summary = tracker_summary(host, port)
        keys = _servers(summary, host, port, key)
        if summary.get("queue_info", {}).get(key, {}).get("free", 1) > 0:
            break
        if time.monotonic() > deadline:
            raise TvmcompError(f"all {keys[key]} RPC server(s) with key {key!r} at {host}:{port} "
                               f"stayed busy for {wait_s:.0f} s; try again later")
        time.sleep(0.5)
    try:
        return rpc.connect_tracker(host, port).request(key, priority=1,
                                                       session_timeout=session_timeout_s)
    except (RuntimeError, OSError) as e:
        raise TvmcompError(f"RPC server {key!r} at {host}:{port} refused the session "
                           f"({str(e).strip().splitlines()[-1][:120]})") from None


def _servers(summary: dict, host: str, port: int, key: str) -> dict[str, int]:
    """:func:`server_keys` of ``summary``; one line if none is registered under ``key``."""
    keys = server_keys(summary)
    if key not in keys:
        have = ", ".join(f"{k} ({n})" for k, n in sorted(keys.items())) or "none"
        raise TvmcompError(
            f"no RPC server with key {key!r} is registered at {host}:{port} (registered: "
            f"{have}); start one with `tvmcomp rpc server --tracker {host}:{port} --key {key}`")
    return keys


def remote_runner(tracker: str, key: str):
    """A :class:`~tvmcomp.tune.remote.RemoteRunner` measuring tuning trials on every server
    registered at ``tracker`` under ``key`` (one line if there is none)."""
    from .tune.remote import RemoteRunner

    host, port = parse_addr(tracker)
    keys = _servers(tracker_summary(host, port), host, port, key)
    return RemoteRunner(host, port, key, keys[key], SERVER_ID_FUNC)


def _last_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__


def load_on_board(lib: Path, man, tracker: str, key: str):
    """``(vm, device, session)``: an artifact's ``model.so`` (``man``: its manifest) uploaded
    to the board registered as ``key`` and loaded there into a Relax VM; one line if the
    board cannot load it. The session lasts as long as the returned objects."""
    from tvm import relax

    prof = man.profile
    remote = request_session(tracker, key)
    remote_name = f"tvmcomp_{man.library_sha256[:12]}.so"
    remote.upload(str(lib), target=remote_name)
    try:
        rlib = remote.load_module(remote_name)
    except Exception as e:  # noqa: BLE001 - the remote raises bare TVM errors
        reason = _last_line(e)
    else:
        reason = None
    if reason is not None:
        del remote  # end the session now: the server takes one session at a time
        triple = prof.get("target", {}).get("mtriple", "?")
        raise ArtifactError(
            f"RPC server {key!r} cannot load {lib} (built for profile {prof.get('name')!r}, "
            f"{triple}): {reason}")
    dev = profile_from_dict(prof).device(remote)
    return relax.VirtualMachine(rlib, dev), dev, remote


def bench_rpc(art_dir: str | Path, tracker: str, key: str, batches=(1,), repeat: int = 10,
              min_repeat_ms: int = 50, inputs: np.ndarray | None = None,
              output_batch: int | None = None) -> dict:
    """Time an artifact's entry points on the remote board registered as ``key``.

    Returns the same shape as :func:`tvmcomp.bench.bench_artifact` (``{"unit": "us",
    "results": {"<batch>": {"artifact": median_us}}, ...}``); with ``inputs`` (a batch of
    input arrays) the remote outputs on them come back under ``"outputs"``, computed with the
    ``output_batch`` entry point (default: the smallest compiled batch).
    """
    import tvm

    art_dir = Path(art_dir)
    man = read_manifest(art_dir)
    lib = check_library(art_dir, man)
    entries = man.entry_points
    if output_batch is not None and int(output_batch) not in entries:
        raise TvmcompError(f"{art_dir}: no entry point for batch {output_batch}; compiled: "
                           f"{sorted(entries)}")
    for b in batches:
        if b not in entries:
            raise TvmcompError(f"{art_dir}: no entry point for batch {b}; compiled: "
                               f"{sorted(entries)}")
    prof = man.profile
    vm, dev, remote = load_on_board(lib, man, tracker, key)
    shape = [int(d) for d in man.inputs[0].shape[1:]]
    dtype = man.inputs[0].dtype
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    for b in batches:
        x = tvm.runtime.tensor(rng.standard_normal((b, *shape)).astype(dtype), dev)
        timer = vm.time_evaluator(entries[b], dev, number=1, repeat=repeat,
                                  min_repeat_ms=min_repeat_ms)
        results[str(b)] = {"artifact": float(np.median(timer(x).results)) * 1e6}
    out = {"unit": "us", "results": results, "artifact": str(art_dir),
           "profile": prof.get("name"), "rpc": {"tracker": tracker, "key": key},
           "notes": [f"timed on RPC server {key!r} via tracker {tracker}; no baselines"]}
    if inputs is not None:
        b = int(output_batch) if output_batch is not None else min(entries)
        outs = []
        for i in range(0, len(inputs), b):
            chunk = np.zeros((b, *shape), dtype=dtype)
            part = inputs[i: i + b]
            chunk[: len(part)] = part
            outs.append(vm[entries[b]](tvm.runtime.tensor(chunk, dev)).numpy()[: len(part)])
        out["outputs"] = np.concatenate(outs)
    return out


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
    import shutil
    import subprocess
    import threading

    pin = ["taskset", "-c", cpus] if cpus is not None and shutil.which("taskset") else []
    proc = subprocess.Popen([*pin, sys.executable, "-m", "tvmcomp.rpc", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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

    from .deploy.boards import board_for
    from .deploy.rpc_board import server_command, server_env
    from .targets import load_profile

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
        raise TvmcompError(f"cannot start: {_last_line(e)}") from None
    try:
        print(msg(proc), flush=True)
        while proc.proc is not None and proc.proc.is_alive():
            time.sleep(0.5)
        return 1  # the worker process died
    except KeyboardInterrupt:
        return 0
    finally:
        proc.terminate()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return int(text)


def _addr(text: str) -> str:
    try:
        parse_addr(text)
    except TvmcompError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_parsers(sub) -> None:
    """Add ``rpc tracker|server|list`` to an argparse subparsers object (tvmcomp's CLI)."""
    p = sub.add_parser("rpc", help="TVM RPC tracker and server (loopback unless --host)")
    rsub = p.add_subparsers(dest="rpc_command", metavar="{tracker,server,list}")
    rsub.required = True
    t = rsub.add_parser("tracker", help="run TVM's RPC tracker in the foreground")
    t.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    t.add_argument("--port", type=_port, default=TRACKER_PORT)
    t.add_argument("--verbose", action="store_true")
    t.set_defaults(fn=lambda a: serve_tracker(a.host, a.port, silent=not a.verbose))
    s = rsub.add_parser("server", help="run an RPC server registered at a tracker by key: TVM's "
                        "Python server, or with --board the C++ server on that profile's board")
    s.add_argument("--tracker", type=_addr, required=True, metavar="HOST:PORT")
    s.add_argument("--key", default=None,
                   help="device key, e.g. the profile name (required without --board; default "
                        "with --board: the profile name)")
    s.add_argument("--board", default=None, metavar="PROFILE",
                   help="run the C++ board server on this profile's board, e.g. arm_cortex_a72 "
                        "(the emulated aarch64 board under qemu-aarch64-static)")
    s.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    s.add_argument("--port", type=_port, default=SERVER_PORT)
    s.add_argument("--threads", type=_threads, default=1,
                   help="TVM_NUM_THREADS for the --board server (default 1)")
    s.add_argument("--load-library", default=None, help="extra library the server preloads")
    s.add_argument("--verbose", action="store_true")
    s.set_defaults(fn=_cmd_server)
    q = rsub.add_parser("list", help="servers registered at a tracker")
    q.add_argument("--tracker", type=_addr, default=f"{DEFAULT_HOST}:{TRACKER_PORT}",
                   metavar="HOST:PORT")
    q.set_defaults(fn=_cmd_list)


def add_bench_args(p: argparse.ArgumentParser,
                   what: str = "time the artifact on a remote board",
                   key_default: str = "the artifact's profile name") -> None:
    """``--rpc-tracker HOST:PORT --rpc-key KEY`` for ``tvmcomp bench`` (and ``tune``)."""
    p.add_argument("--rpc-tracker", type=_addr, default=None, metavar="HOST:PORT",
                   help=f"{what} found through this RPC tracker")
    p.add_argument("--rpc-key", default=None, metavar="KEY",
                   help=f"the remote board's RPC key (default: {key_default})")


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive thread count, got {text!r}")
    return int(text)


def _cmd_server(args) -> int:
    if args.board:
        if args.load_library:
            raise TvmcompError("--load-library is not supported with --board")
        return serve_board(args.board, args.tracker, args.key, args.host, args.port,
                           threads=args.threads)
    if not args.key:
        raise TvmcompError("rpc server needs --key KEY (or --board PROFILE)")
    return serve_server(args.tracker, args.key, args.host, args.port, silent=not args.verbose,
                        load_library=args.load_library)


def _cmd_list(args) -> int:
    keys = server_keys(tracker_summary(*parse_addr(args.tracker)))
    for k, n in sorted(keys.items()):
        print(f"{k}\t{n}")
    if not keys:
        print(f"no servers registered at {args.tracker}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tvmcomp.rpc {tracker,server,list} ...`` (what ``tvmcomp rpc`` runs)."""
    ap = argparse.ArgumentParser(prog="tvmcomp rpc")
    add_parsers(ap.add_subparsers(dest="command", metavar="rpc"))
    args = ap.parse_args(["rpc", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.fn(args)
    except TvmcompError as e:
        print(f"tvmcomp rpc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
