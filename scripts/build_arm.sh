#!/usr/bin/env bash
# Cross-compile an ONNX CNN (default: LeNet-5) for an ARM Cortex-A profile, run it on the
# emulated board (qemu-aarch64-static, C++ deploy app) and check its outputs against an x86
# build of the same model on real MNIST images. Installs what it needs (scripts/setup_arm.sh).
# With TUNE_BUDGET=SECONDS the ARM kernels are first tuned on the board over TVM RPC: a local
# tracker and the emulated board's RPC server (tvmcomp rpc server --board) are started, the
# trials measured there, and the build uses those records (timings under qemu are the
# emulator's, not a Cortex-A's: the build says so; on a real board, point --rpc-tracker at it).
#   scripts/build_arm.sh [MODEL.onnx]   (PROFILE=arm_cortex_a53, IMAGES=1000, TUNE_BUDGET=120)
source "$(dirname "$0")/_model.sh"
PROFILE=${PROFILE:-arm_cortex_a72}
scripts/setup_arm.sh
X86=$($PY -c 'from tvmcomp.targets import host_profile; print(host_profile().name)')
CHECK_ON_BOARD=()
if [[ ${TUNE_BUDGET:-0} != 0 ]]; then
  PORT=$($PY -c 'from tvmcomp.rpc import free_port; print(free_port())')
  $TVMCOMP rpc tracker --port "$PORT" & TRACKER=$!
  BOARD=""
  trap 'kill $BOARD $TRACKER 2>/dev/null || true' EXIT
  for _ in $(seq 60); do $TVMCOMP rpc list --tracker "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 1; done
  $TVMCOMP rpc server --board "$PROFILE" --tracker "127.0.0.1:$PORT" \
    --port "$($PY -c 'from tvmcomp.rpc import free_port; print(free_port())')" & BOARD=$!
  for _ in $(seq 60); do
    $TVMCOMP rpc list --tracker "127.0.0.1:$PORT" 2>/dev/null | grep -q "^$PROFILE" && break; sleep 1
  done
  $TVMCOMP tune "$MODEL" --profile "$PROFILE" --rpc-tracker "127.0.0.1:$PORT" \
    --tune-budget "$TUNE_BUDGET"
  CHECK_ON_BOARD=(--rpc-tracker "127.0.0.1:$PORT")  # the build checks the schedules there
fi
$TVMCOMP build "$MODEL" --profile "$PROFILE" --out "build/artifacts/$PROFILE" --tune-budget 0 \
  "${CHECK_ON_BOARD[@]}"
$TVMCOMP build "$MODEL" --profile "$X86" --out "build/artifacts/$X86" --tune-budget 0
make -s -C examples/cpp_deploy ARCH=aarch64
$PY -m tvmcomp.deploy.compare "build/artifacts/$PROFILE" "build/artifacts/$X86" \
  --limit "${IMAGES:-1000}"
echo "copy build/cpp_deploy/aarch64/ and build/artifacts/$PROFILE/ to a board and run:"
echo "  ./tvmcomp_deploy $PROFILE t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
