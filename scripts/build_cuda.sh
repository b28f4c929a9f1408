#!/usr/bin/env bash
# Build an ONNX CNN (default: LeNet-5) for a CUDA profile (DLight schedules, kernels compiled by
# nvcc into a fatbin inside model.so). Needs nvcc, no GPU; with a GPU present it also runs
# scripts/gpu_check.py.
#   scripts/build_cuda.sh [MODEL.onnx]   (PROFILE=cuda_sm90 for Hopper)
source "$(dirname "$0")/_model.sh"
PROFILE=${PROFILE:-cuda_sm80}
$TVMCOMP build "$MODEL" --profile "$PROFILE" --out "build/artifacts/$PROFILE" --tune-budget 0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  $PY scripts/gpu_check.py --model "$MODEL"
else
  echo "no CUDA GPU here: built build/artifacts/$PROFILE; run scripts/gpu_check.py on a GPU host"
fi
