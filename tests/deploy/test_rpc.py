"""TVM RPC on loopback: real tracker and server processes, benchmarking and RPC errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tvmcomp.errors import TvmcompError
from tvmcomp.rpc import free_port, launch, stop

pytestmark = pytest.mark.rpc
HOST = "127.0.0.1"  # loopback only
KEY = "x86_avx2"








@pytest.fixture(scope="module")
def server(tracker):
    from tvmcomp.rpc import parse_addr, server_keys, tracker_summary

    proc = launch("server", "--tracker", tracker, "--key", KEY, "--host", HOST, "--port",
                  str(free_port()), expect="RPC server")
    deadline = time.monotonic() + 30
    while KEY not in server_keys(tracker_summary(*parse_addr(tracker))):
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the RPC server never registered at the tracker")
        time.sleep(0.2)
    yield KEY
    stop(proc)


def test_bench_over_rpc_matches_local(lenet_artifact, tracker, server, mnist_idx):
    from tvmcomp import runtime
    from tvmcomp.bench import format_table
    from tvmcomp.data import normalize
    from tvmcomp.rpc import bench_rpc

    x = normalize(mnist_idx.raw[:16])
    res = bench_rpc(lenet_artifact.path, tracker, server, batches=(1, 8), repeat=5, inputs=x)
    assert set(res["results"]) == {"1", "8"}
    assert all(0 < r["artifact"] < 1e6 for r in res["results"].values())
    assert res["rpc"] == {"tracker": tracker, "key": KEY}
    local = runtime.load(lenet_artifact.path)(x)
    assert np.abs(res["outputs"] - local).max() <= 1e-5
    assert "| 1 |" in format_table(res)


def test_rpc_list(tracker, server):
    r = subprocess.run([sys.executable, "-m", "tvmcomp.rpc", "list", "--tracker", tracker],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"{KEY}\t1" in r.stdout


def test_silent_tracker_is_one_line_not_a_hang(run_tvmcomp, lenet_artifact, monkeypatch):
    """Something accepts connections at the tracker address and never answers: `bench` gives
    up after the timeout ($TVMCOMP_RPC_TIMEOUT, 1 s here) with one line instead of waiting
    forever; a timeout that is not a positive number is one line too."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    port = listener.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    try:
        monkeypatch.setenv("TVMCOMP_RPC_TIMEOUT", "1")
        t0 = time.monotonic()
        r = run_tvmcomp("bench", str(lenet_artifact.path), "--batch", "1", "--rpc-tracker",
                        f"{HOST}:{port}", timeout=120)
        assert time.monotonic() - t0 < 60
        assert r.returncode == 2 and "sent no answer in 1 s" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        from tvmcomp.errors import TvmcompError
        from tvmcomp.rpc import tracker_summary

        monkeypatch.setenv("TVMCOMP_RPC_TIMEOUT", "-3")
        with pytest.raises(TvmcompError, match="positive number of seconds, got '-3'"):
            tracker_summary(HOST, port)
    finally:
        listener.close()


def test_unreachable_tracker():
    from tvmcomp.rpc import request_session

    with pytest.raises(TvmcompError) as e:
        request_session(f"{HOST}:{free_port()}", KEY)
    msg = str(e.value)
    assert "cannot reach the RPC tracker" in msg and "tvmcomp rpc tracker" in msg
    assert "\n" not in msg


def test_unknown_key(tracker, server):
    from tvmcomp.rpc import request_session

    with pytest.raises(TvmcompError) as e:
        request_session(tracker, "no_such_board")
    msg = str(e.value)
    assert "no RPC server with key 'no_such_board'" in msg and f"{KEY} (1)" in msg
    assert "\n" not in msg


def test_bad_address():
    from tvmcomp.rpc import parse_addr

    for bad in ("localhost", "127.0.0.1:", ":9190", "127.0.0.1:99999", "h:p"):
        with pytest.raises(TvmcompError, match="HOST:PORT"):
            parse_addr(bad)


def test_artifact_for_other_target_over_rpc(arm_artifact, tracker, server):
    """An aarch64 model.so sent to the x86 server: one clear line, not a remote traceback."""
    from tvmcomp.errors import ArtifactError
    from tvmcomp.rpc import bench_rpc

    with pytest.raises(ArtifactError) as e:
        bench_rpc(arm_artifact.path, tracker, server, batches=(1,))
    msg = str(e.value)
    assert "cannot load" in msg and "arm_cortex_a72" in msg and "aarch64" in msg
    assert "\n" not in msg


def test_server_without_tracker_fails_fast():
    r = subprocess.run([sys.executable, "-m", "tvmcomp.rpc", "server", "--tracker",
                        f"{HOST}:{free_port()}", "--key", KEY], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("tvmcomp rpc: error: cannot reach the RPC tracker")


def test_cli_bench_rpc(lenet_artifact, tracker, server, run_tvmcomp):
    r = run_tvmcomp("bench", str(lenet_artifact.path), "--batch", "1", "--json",
                    "--rpc-tracker", tracker, "--rpc-key", KEY)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["results"]["1"]["artifact"] > 0 and res["rpc"]["key"] == KEY
    r = run_tvmcomp("bench", str(lenet_artifact.path), "--batch", "1", "--rpc-tracker", tracker,
                    "--rpc-key", "nope")
    assert r.returncode == 2 and "no RPC server with key 'nope'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_build_on_board_bad_input_is_one_line(tracker, gemm_onnx, tmp_path, capsys):
    """`build --rpc-tracker/--rpc-key`: a key without a tracker, a malformed address and a
    key no server registered each end in one line, exit 2, with no artifact written."""
    from tvmcomp import cli

    path, _, _ = gemm_onnx(tmp_path / "g.onnx")
    out = tmp_path / "art"
    base = ["build", str(path), "--profile", "arm_cortex_a72", "--batch", "1",
            "--tune-budget", "0", "--out", str(out)]
    for extra, said in ((["--rpc-key", "k"], "--rpc-key needs --rpc-tracker HOST:PORT"),
                        (["--rpc-tracker", "nohost"], "HOST:PORT"),
                        (["--rpc-tracker", tracker, "--rpc-key", "nope"],
                         "no RPC server with key 'nope'")):
        capsys.readouterr()
        try:
            rc = cli.main(base + extra)
        except SystemExit as e:  # argparse's own errors
            rc = e.code
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and said in lines[0], lines
        assert lines[0].startswith("tvmcomp build: error: ") and not out.exists()


def _fleet(tracker, key: str, n: int):
    """``n`` RPC servers under ``key``, each pinned to one of this machine's cores."""
    from tvmcomp.rpc import launch_servers

    return launch_servers(tracker, key, n, HOST, timeout_s=30)


@pytest.mark.slow
def test_tune_over_rpc_spreads_trials_and_survives_a_dead_server(tracker, gemm_onnx, tmp_path):
    """`tvmcomp tune --rpc-tracker`: two servers under one key measure the trials; killing one
    mid-tuning costs its in-flight trial, not the run: the other measures the rest, and every
    record measured is kept."""
    import threading

    import psutil

    path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=64, n=32)
    procs = _fleet(tracker, "fleet", 2)
    cache = tmp_path / "cache"
    log = cache / "rpc_sessions.log"

    def kill_when_measuring():  # once both servers have measured, kill the first one
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and len({ln.split("\t")[0]
                                     for ln in log.read_text().splitlines()}) >= 2:
                for p in (*psutil.Process(procs[0].pid).children(recursive=True), procs[0]):
                    p.kill()  # the server runs in a worker process of its own: kill it too
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_measuring, daemon=True)
    killer.start()
    try:
        r = subprocess.run([sys.executable, "-m", "tvmcomp.cli", "tune", str(path), "--profile",
                            "x86_avx2", "--rpc-tracker", tracker, "--rpc-key", "fleet",
                            "--batch", "1", "--tune-budget", "120", "--trials-per-task", "6",
                            "--tuning-dir", str(cache)], capture_output=True, text=True,
                           timeout=300)
        killer.join()
        assert procs[0].poll() is not None          # it did die mid-run
        assert "fleet\t1" in subprocess.run(
            [sys.executable, "-m", "tvmcomp.rpc", "list", "--tracker", tracker],
            capture_output=True, text=True, timeout=60).stdout   # and left the tracker
        assert r.returncode == 0, r.stderr
        assert "measuring on 2 RPC servers registered as 'fleet'" in r.stdout
        line = next(ln for ln in r.stdout.splitlines()
                    if ln.startswith("measurements per RPC server: "))
        counts = [int(c.rsplit(" ", 1)[1])
                  for c in line.split(": ", 1)[1].split(";")[0].split(", ")]
        assert len(counts) == 2 and min(counts) >= 1 and sum(counts) <= 6, line
        assert "s of wall time on 2 servers (" in line and "measuring at once" in line, line
        records = (cache / "database_tuning_record.json").read_text().splitlines()
        assert len(records) >= sum(counts) - 1       # all but the in-flight trial kept
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)


def test_tracker_gone_mid_tuning_is_one_line_and_keeps_the_records(gemm_onnx, tmp_path,
                                                                   capsys):
    """`tvmcomp tune --rpc-tracker`: the tracker killed once the first trial has its session
    ends the run at the end of that batch with one line (exit 2), not 60 s of retries a
    trial, and the trials measured before it stay in the database."""
    import threading

    import psutil

    from tvmcomp import cli

    path, _, _ = gemm_onnx(tmp_path / "g.onnx", k=64, n=32)
    port = free_port()
    own = launch("tracker", "--host", HOST, "--port", str(port), expect="RPC tracker listening")
    tracker = f"{HOST}:{port}"
    (server,) = _fleet(tracker, "lonely", 1)
    cache = tmp_path / "cache"
    log = cache / "rpc_sessions.log"

    def kill_tracker_when_measuring():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().strip():
                for p in (*psutil.Process(own.pid).children(recursive=True), own):
                    p.kill()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_tracker_when_measuring, daemon=True)
    killer.start()
    try:
        capsys.readouterr()
        started = time.monotonic()
        rc = cli.main(["tune", str(path), "--profile", "x86_avx2", "--rpc-tracker", tracker,
                       "--rpc-key", "lonely", "--batch", "1", "--tune-budget", "120",
                       "--trials-per-task", "2", "--tuning-dir", str(cache)])
        took = time.monotonic() - started
        killer.join()
        said = capsys.readouterr().err
        err = [ln for ln in said.splitlines() if ln.startswith("tvmcomp")]  # not the bar
        assert own.poll() is not None  # the tracker did die mid-run
        assert rc == 2 and len(err) == 1 and "Traceback" not in said, said
        assert err[0].startswith(f"tvmcomp tune: error: the RPC tracker at {tracker} is gone")
        assert "tuning stopped" in err[0] and took < 60, (err, took)
        records = [json.loads(ln) for ln in
                   (cache / "database_tuning_record.json").read_text().splitlines()]
        measured = [r for r in records  # [workload, [trace, run_secs, ...]]
                    if r[1][1] and max(float(s) for s in r[1][1]) < 1e9]
        assert measured and f"the {len(measured)} trials measured" in err[0], (err, records)
    finally:
        for p in (server, own):
            if p.poll() is None:
                stop(p)


def test_killed_server_leaves_the_tracker(tracker):
    """`tvmcomp rpc server` killed outright (SIGKILL): its server worker ends with it and the
    key disappears from the tracker (it used to keep serving, registered, as an orphan)."""
    from tvmcomp.rpc import parse_addr, server_keys, tracker_summary

    (proc,) = _fleet(tracker, "doomed", 1)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while "doomed" in server_keys(tracker_summary(*parse_addr(tracker))):
        assert time.monotonic() < deadline, "the killed server's worker is still registered"
        time.sleep(0.2)
