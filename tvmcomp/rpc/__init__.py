"""TVM RPC: the client (:mod:`.client`), the tracker and server processes (:mod:`.serve`) and
their command line (:mod:`.cli`)."""

from .client import (DEFAULT_HOST, SERVER_ID_FUNC, SERVER_PORT, TRACKER_PORT, bench_rpc,
                     load_on_board, parse_addr, remote_runner, request_session, server_keys,
                     tracker_summary)
from .serve import (free_port, launch, launch_servers, serve_board, serve_server, serve_tracker,
                    stop)

__all__ = ["DEFAULT_HOST", "SERVER_ID_FUNC", "SERVER_PORT", "TRACKER_PORT", "bench_rpc",
           "free_port", "launch", "launch_servers", "load_on_board", "parse_addr", "remote_runner",
           "request_session", "serve_board", "serve_server", "serve_tracker", "server_keys",
           "stop", "tracker_summary"]
