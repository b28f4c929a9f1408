#!/usr/bin/env bash
# Build an ONNX CNN (default: LeNet-5, trained if missing) for this machine's x86 profile, then
# run it with the Python runtime (accuracy) and the native C++ deploy app.
#   scripts/build_x86.sh [MODEL.onnx]     (PROFILE=x86_avx2 to pick the profile)
source "$(dirname "$0")/_model.sh"
PROFILE=${PROFILE:-$($PY -c 'from tvmcomp.targets import host_profile; print(host_profile().name)')}
OUT=build/artifacts/$PROFILE
$TVMCOMP build "$MODEL" --profile "$PROFILE" --out "$OUT" --tune-budget "${TUNE_BUDGET:-0}"
$TVMCOMP eval "$OUT"
make -s -C examples/cpp_deploy ARCH=x86_64
$PY - "$OUT" <<'PYEOF'
import sys
from tvmcomp.deploy.compare import mnist_idx
from tvmcomp.deploy import run_app
img, lab, *_ = mnist_idx("build/mnist_idx")
print(run_app(sys.argv[1], img, lab, repeat=200).stdout, end="")
PYEOF
