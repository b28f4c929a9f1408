"""How each profile's board is reached: natively, emulated with qemu user-mode, or over TVM RPC.

One table keyed by target family. Every profile's board is also reachable over TVM RPC under
the key ``profile.name`` (``tvmcomp rpc server --key <profile>`` on the board).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import TvmcompError, reject_unknown
from ..targets import Profile
from .toolchain import find_tool

AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"  # from the Debian aarch64 cross packages


@dataclass(frozen=True)
class Board:
    """Where a profile's artifacts run: ``kind`` is native, qemu-user or cuda."""

    profile: str
    kind: str
    arch: str
    rpc_key: str
    emulator: tuple[str, ...] = ()  # command prefix that runs a board binary on this machine

    def runner(self) -> list[str]:
        """Command prefix running a binary built for the board here (tools checked first)."""
        if not self.emulator:
            return []
        find_tool(self.emulator[0])
        return list(self.emulator)

    def describe(self) -> str:
        how = {"native": "this machine", "cuda": "this machine's CUDA GPU",
               "qemu-user": f"emulated: {' '.join(self.emulator)}"}[self.kind]
        return f"{self.profile}: {how}; over RPC: key {self.rpc_key!r}"


def _x86(p: Profile) -> Board:
    return Board(p.name, "native", "x86_64", p.name)


def _arm(p: Profile) -> Board:
    triple = str(p.target.get("mtriple", ""))
    arch = triple.split("-")[0]
    if arch != "aarch64":
        raise TvmcompError(f"profile {p.name}: only aarch64 ARM boards are supported, "
                           f"got {triple!r}")
    cpu = str(p.target.get("mcpu", "max"))
    return Board(p.name, "qemu-user", arch, p.name,
                 ("qemu-aarch64-static", "-cpu", cpu, "-L", AARCH64_SYSROOT))


def _cuda(p: Profile) -> Board:
    return Board(p.name, "cuda", "x86_64", p.name)


BOARDS = {"x86": _x86, "arm": _arm, "cuda": _cuda}


def board_for(profile: Profile) -> Board:
    """The board a profile's artifacts run on: :data:`BOARDS`, then the profile's ``[board]``.

    A profile may override ``kind``, ``rpc_key`` or ``emulator`` in a ``[board]`` table (once
    ``targets.py`` accepts that key); other keys are rejected.
    """
    board = BOARDS[profile.family](profile)
    over = dict(getattr(profile, "board", None) or {})
    reject_unknown(over, ("kind", "rpc_key", "emulator"), "[board]",
                   source=profile.source or profile.name)
    if "emulator" in over:
        over["emulator"] = tuple(over["emulator"])
    return dataclasses.replace(board, **over)
