"""Host tools a target family needs (cross compilers, qemu, nvcc), each with its Debian package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import TvmcompError
from ..targets import REPO_ROOT, Profile

# tool → (Debian package that provides it, the project script that installs it)
TOOLS = {
    "aarch64-linux-gnu-gcc": ("gcc-aarch64-linux-gnu", "scripts/setup_arm.sh"),
    "aarch64-linux-gnu-g++": ("g++-aarch64-linux-gnu", "scripts/setup_arm.sh"),
    "qemu-aarch64-static": ("qemu-user-static", "scripts/setup_arm.sh"),
    "gcc": ("gcc", "apt-get install gcc"),
    "g++": ("g++", "apt-get install g++"),
    "nm": ("binutils", "apt-get install binutils"),
    "make": ("make", "apt-get install make"),
    "nvcc": ("nvidia-cuda-toolkit", "or the CUDA toolkit from developer.nvidia.com"),
}

# Where scripts/setup_arm.sh unpacks the aarch64 TVM runtime (from the aarch64 PyPI wheels).
AARCH64_ROOT = REPO_ROOT / "build" / "aarch64"


def find_tool(name: str) -> str:
    """Absolute path of ``name`` on PATH; a one-line error naming its Debian package if absent."""
    path = shutil.which(name)
    if path:
        return path
    pkg, how = TOOLS.get(name, (None, None))
    hint = f"install the Debian package {pkg} ({how})" if pkg else "install it"
    raise TvmcompError(f"{name} not found on PATH; {hint}")


def check_cross_compiler(profile: Profile) -> str | None:
    """The profile's cross compiler, checked to exist before a build spends time compiling."""
    if not profile.cross_compiler:
        return None
    return find_tool(profile.cross_compiler)


def runtime_dir(arch: str) -> Path:
    """Folder with ``lib/libtvm_runtime.so`` and ``include/`` for ``arch`` (aarch64 only)."""
    if arch != "aarch64":
        raise TvmcompError(f"no prebuilt TVM runtime for {arch}; only aarch64 is supported")
    root = Path(os.environ.get("TVMCOMP_AARCH64_ROOT", AARCH64_ROOT))
    for rel in ("lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "include/tvm/ffi/extra/module.h"):
        if not (root / rel).is_file():
            raise TvmcompError(
                f"aarch64 TVM runtime missing ({root / rel}); run scripts/setup_arm.sh"
            )
    return root


def make_example(example_dir: Path, arch: str, out: Path, binary: str, what: str) -> Path:
    """``make -C <example_dir> ARCH=<arch> OUT=<out>`` (examples/tvm_runtime.mk); ``out/binary``.

    Up-to-date builds are free. Every missing piece is one line: the compiler names its
    Debian package, a missing aarch64 runtime says to run scripts/setup_arm.sh, and a failed
    build ``"building <what> for <arch> failed: <last line>"``.
    """
    find_tool("make")
    find_tool("aarch64-linux-gnu-g++" if arch == "aarch64" else "g++")
    cmd = ["make", "-s", "-C", str(example_dir), f"ARCH={arch}", f"OUT={out}",
           f"PYTHON={sys.executable}"]
    if arch == "aarch64":  # clear error when scripts/setup_arm.sh has not run
        cmd.append(f"AARCH64_ROOT={runtime_dir(arch)}")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise TvmcompError(f"building {what} for {arch} failed: "
                           f"{last[-1] if last else res.returncode}")
    return out / binary
