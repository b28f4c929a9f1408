#!/usr/bin/env bash
# Set up aarch64 cross-compilation and emulation on a Debian/Ubuntu x86-64 machine:
#   1. Debian packages: the aarch64 GNU toolchain and qemu user-mode (needs root or sudo);
#   2. the aarch64 TVM runtime (libtvm_runtime.so, libtvm_ffi.so + headers, and
#      libtvm_runtime_extra.so, which the RPC board server links for tuning measurements) from
#      the aarch64 wheels on PyPI, unpacked into build/aarch64/{lib,include} (ignored by git).
# Idempotent: each step is skipped when already done. Usage: scripts/setup_arm.sh [--no-apt]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SETUP_ARM_PYTHON:-.venv/bin/python}  # any Python with pip; only downloads wheels
[[ -x $PY ]] || PY=python3
TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.14.post0
DEST=build/aarch64

if [[ "${1:-}" != "--no-apt" ]]; then
  missing=()
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  if (( ${#missing[@]} )); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    echo "setup_arm: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
      gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static
  fi
fi

if [[ ! -f $DEST/lib/libtvm_runtime.so || ! -f $DEST/lib/libtvm_ffi.so \
      || ! -f $DEST/lib/libtvm_runtime_extra.so || ! -f $DEST/include/tvm/ffi/extra/module.h ]]; then
  echo "setup_arm: fetching the aarch64 TVM runtime ($TVM_VERSION) from PyPI into $DEST/"
  mkdir -p $DEST/wheels $DEST/lib $DEST/include
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 -d $DEST/wheels \
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION"
  "$PY" - "$DEST" <<'PYEOF'
import sys, zipfile
from pathlib import Path

dest = Path(sys.argv[1])
for whl in sorted((dest / "wheels").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name in ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_extra.so",
                        "tvm_ffi/lib/libtvm_ffi.so"):
                (dest / "lib" / Path(name).name).write_bytes(z.read(name))
            elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                out = dest / "include" / name[len("tvm_ffi/include/"):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(name))
PYEOF
  rm -rf $DEST/wheels
fi
echo "setup_arm: ok ($(aarch64-linux-gnu-gcc --version | head -1); $(qemu-aarch64-static --version | head -1); runtime in $DEST/lib)"
