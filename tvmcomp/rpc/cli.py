"""``tvmcomp rpc tracker|server|list``, and the ``--rpc-tracker`` options of bench, tune, build."""

from __future__ import annotations

import argparse
import sys

from ..errors import TvmcompError
from .client import (DEFAULT_HOST, SERVER_PORT, TRACKER_PORT, parse_addr, server_keys,
                     tracker_summary)
from .serve import serve_board, serve_server, serve_tracker


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
    ap = argparse.ArgumentParser(prog="tvmcomp")
    add_parsers(ap.add_subparsers(dest="command", metavar="rpc"))
    args = ap.parse_args(["rpc", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.fn(args)
    except TvmcompError as e:
        print(f"tvmcomp rpc: error: {e}", file=sys.stderr)
        return 2

