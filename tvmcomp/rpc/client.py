"""TVM RPC client: tracker queries, sessions on a board by key, and running an artifact there.

``bench_rpc`` uploads ``model.so`` to a server found through the tracker by key and times each
batch entry point there with the VM's ``time_evaluator``; ``load_on_board`` is the upload and
load it shares with a build that verifies on the board; ``remote_runner`` describes the servers
that measure tuning trials (:mod:`tvmcomp.tune.remote`).
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from ..artifact import check_library, read_manifest
from ..errors import ArtifactError, TvmcompError
from ..targets import profile_from_dict

DEFAULT_HOST = "127.0.0.1"
TRACKER_PORT = 9190
SERVER_PORT = 9090
SERVER_ID_FUNC = "tvm.rpc.server.tvmcomp_server_id"  # see _register_server_id
RPC_TIMEOUT_ENV = "TVMCOMP_RPC_TIMEOUT"  # seconds a tracker may take to answer (default 5)
DEFAULT_RPC_TIMEOUT_S = 5.0


def parse_addr(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; raises :class:`TvmcompError` on malformed input."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TvmcompError(f"RPC address must be HOST:PORT (e.g. 127.0.0.1:{TRACKER_PORT}), "
                           f"got {text!r}")
    return host, int(port)


def rpc_timeout_s() -> float:
    """How long a tracker may take to connect and answer: ``$TVMCOMP_RPC_TIMEOUT`` seconds
    (e.g. for a board on a slow link), else 5; one line for anything but a positive number."""
    text = os.environ.get(RPC_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_RPC_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise TvmcompError(f"{RPC_TIMEOUT_ENV} must be a positive number of seconds, "
                           f"got {text!r}")
    return value


def tracker_summary(host: str, port: int, timeout_s: float | None = None) -> dict:
    """The tracker's summary (servers and queues); a one-line error if it cannot be reached
    or does not answer within ``timeout_s`` (default :func:`rpc_timeout_s`)."""
    from tvm import rpc

    timeout_s = rpc_timeout_s() if timeout_s is None else timeout_s

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
    from ..tune.remote import RemoteRunner

    host, port = parse_addr(tracker)
    keys = _servers(tracker_summary(host, port), host, port, key)
    return RemoteRunner(host, port, key, keys[key], SERVER_ID_FUNC)


def last_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__


def load_on_board(lib: Path, man, tracker: str, key: str):
    """``(vm, device, session)``: an artifact's ``model.so`` (``man``: its manifest) uploaded
    to the board registered as ``key`` and loaded there into a Relax VM (whose on-load
    function, if any, the caller runs: :func:`tvmcomp.runtime.run_on_load`); one line if the
    board cannot load it. The session lasts as long as the returned objects."""
    from tvm import relax

    prof = man.profile
    remote = request_session(tracker, key)
    remote_name = f"tvmcomp_{man.library_sha256[:12]}.so"
    remote.upload(str(lib), target=remote_name)
    try:
        rlib = remote.load_module(remote_name)
    except Exception as e:  # noqa: BLE001 - the remote raises bare TVM errors
        reason = last_line(e)
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

    from ..runtime import run_on_load

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
    run_on_load(vm, man)
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
