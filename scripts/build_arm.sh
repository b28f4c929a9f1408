#!/usr/bin/env bash
# Cross-compile an ONNX CNN (default: LeNet-5) for an ARM Cortex-A profile, run it on the
# emulated board (qemu-aarch64-static, C++ deploy app) and check its outputs against an x86
# build of the same model on real MNIST images. Installs what it needs (scripts/setup_arm.sh).
#   scripts/build_arm.sh [MODEL.onnx]   (PROFILE=arm_cortex_a53, IMAGES=1000 to change)
source "$(dirname "$0")/_model.sh"
PROFILE=${PROFILE:-arm_cortex_a72}
scripts/setup_arm.sh
X86=$($PY -c 'from tvmcomp.targets import host_profile; print(host_profile().name)')
$TVMCOMP build "$MODEL" --profile "$PROFILE" --out "build/artifacts/$PROFILE" --tune-budget 0
$TVMCOMP build "$MODEL" --profile "$X86" --out "build/artifacts/$X86" --tune-budget 0
make -s -C examples/cpp_deploy ARCH=aarch64
$PY -m tvmcomp.deploy.compare "build/artifacts/$PROFILE" "build/artifacts/$X86" \
  --limit "${IMAGES:-1000}"
echo "copy build/cpp_deploy/aarch64/ and build/artifacts/$PROFILE/ to a board and run:"
echo "  ./tvmcomp_deploy $PROFILE t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
