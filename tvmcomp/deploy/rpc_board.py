"""The C++ RPC board server (examples/rpc_board): built for a board, started on it.

``tvmcomp_rpc_board`` is a TVM RPC server that links only the TVM runtime and registers itself
at a TVM RPC tracker by key, like ``python -m tvm.exec.rpc_server``. Cross-compiled for aarch64
it runs on the emulated ARM board (``qemu-aarch64-static``) exactly as it would on a real one, so
``tvmcomp bench DIR --rpc-tracker HOST:PORT --rpc-key arm_cortex_a72`` runs the model on the
board. Build outputs go to ``build/rpc_board/<arch>/`` (binary + runtime libraries, rpath
``$ORIGIN``: copy that folder to a real board and run it there).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TvmcompError
from ..targets import REPO_ROOT
from .boards import Board
from .toolchain import make_example

SERVER_DIR = REPO_ROOT / "examples" / "rpc_board"
SERVER_NAME = "tvmcomp_rpc_board"


def server_path(arch: str, out_root: Path | None = None) -> Path:
    return (out_root or REPO_ROOT / "build" / "rpc_board") / arch / SERVER_NAME


def build_server(arch: str = "aarch64", out_root: Path | None = None) -> Path:
    """``make -C examples/rpc_board ARCH=<arch>``; the binary's path (up-to-date builds are free).

    Every missing piece is one line: the cross compiler names its Debian package, a missing
    aarch64 runtime says to run scripts/setup_arm.sh.
    """
    return make_example(SERVER_DIR, arch, server_path(arch, out_root).parent, SERVER_NAME,
                        "the RPC board server")


def server_command(board: Board, tracker: str, key: str | None = None,
                   host: str = "127.0.0.1", port: int = 9090, port_end: int | None = None,
                   binary: Path | None = None) -> list[str]:
    """The command line that runs the board server for ``board`` on this machine.

    For an emulated board (``kind == "qemu-user"``) that is the board's emulator prefix (qemu
    checked first, one line naming ``qemu-user-static`` when absent) + the cross-compiled
    server; a native board runs the server built for this machine.
    """
    if board.kind == "qemu-user":
        prefix = board.runner()  # checks qemu-aarch64-static before the build starts
        binary = binary or build_server(board.arch)
    elif board.kind in ("native", "cuda"):
        prefix = []
        binary = binary or build_server("x86_64")
    else:
        raise TvmcompError(f"board {board.profile!r}: no RPC board server for kind {board.kind}")
    cmd = [*prefix, str(binary), "--tracker", tracker, "--key", key or board.rpc_key,
           "--host", host, "--port", str(port)]
    if port_end:
        cmd += ["--port-end", str(port_end)]
    return cmd


EMULATED = "emulated"  # the origin an emulated board's server reports (see server_env)


def server_env(threads: int = 1, board: Board | None = None) -> dict[str, str]:
    """Environment for the board server: ``TVM_NUM_THREADS`` (emulation is slow; one thread
    keeps a shared host free); for an emulated board ``TVMCOMP_BOARD_ORIGIN``, which the
    server reports with its identity, so tuning records say they came from an emulator."""
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    if board is not None and board.kind == "qemu-user":
        env["TVMCOMP_BOARD_ORIGIN"] = f"{EMULATED} by {board.runner()[0].rsplit('/', 1)[-1]}"
    else:
        env.pop("TVMCOMP_BOARD_ORIGIN", None)
    return env
