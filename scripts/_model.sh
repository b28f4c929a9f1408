# Sourced by scripts/build_*.sh: $MODEL = the ONNX model to build (argument 1, or a LeNet-5
# trained here with the seeded recipe and exported to build/models/lenet5.onnx).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x .venv/bin/tvmcomp ]] || make setup
TVMCOMP=.venv/bin/tvmcomp
PY=.venv/bin/python
MODEL=${1:-build/models/lenet5.onnx}
if [[ ! -f $MODEL ]]; then
  [[ -n ${1:-} ]] && { echo "error: $MODEL not found" >&2; exit 2; }
  mkdir -p build/models
  $TVMCOMP train --out build/models/lenet5.pt --epochs "${EPOCHS:-5}"
  $TVMCOMP export build/models/lenet5.pt --out "$MODEL"
fi
