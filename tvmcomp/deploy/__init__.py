"""Deployment to real targets: toolchains, boards (native, qemu, RPC) and the C++ deploy app."""

from .boards import Board, board_for
from .cpp_app import AppRun, build_app, run_app
from .toolchain import check_cross_compiler, find_tool, runtime_dir

__all__ = ["AppRun", "Board", "board_for", "build_app", "check_cross_compiler", "find_tool",
           "run_app", "runtime_dir"]
