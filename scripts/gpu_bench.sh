#!/bin/bash
# The GPU checks and table (scripts/gpu_bench.py) on any machine with a CUDA GPU, in one call:
#
#   bash scripts/gpu_bench.sh OUT_DIR        # about 8 minutes; JSON files and gpu_bench.log in OUT_DIR
#
# Needs python3 with a CUDA PyTorch, numpy, OpenCV, PyYAML and scikit-image; runs the package from this
# tree (no install, no package index needed). PYTHON picks another interpreter; further arguments go to
# gpu_bench.py (--budget-s, --repeats, --sizes, --iters, --precisions).
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/gpu_bench.sh OUT_DIR [gpu_bench.py options]" >&2
  exit 2
fi
OUT=$1
shift
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SGRU_ROS_CACHE="$OUT/cache"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
  "${PYTHON:-python3}" scripts/gpu_bench.py "$OUT" "$@"
} 2>&1 | tee "$OUT/gpu_bench.log"
rc=${PIPESTATUS[0]}
rm -rf "$OUT/cache"
exit "$rc"
