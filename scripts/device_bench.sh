#!/bin/bash
# The GPU table of docs/performance.md, in one call on a lent GPU machine (the `device` tool):
#
#   device: run(command="bash scripts/device_bench.sh", timeout_s=600)   # figures in $OUT/*.json, log in $OUT
#
# Both variants with random weights at the released widths (the arithmetic, hence the time, does not
# depend on the values), KITTI size 1248x384 and 640x480, 8 and 32 iterations, fp32/fp16/bf16 on the
# torch engine; onnxruntime (TensorRT, else CUDA execution provider) where onnxruntime-gpu is installed,
# at 640x480 and 8 iterations only (each ONNX export takes minutes on the CPU). Needs python3 with a CUDA
# PyTorch; installs the package without dependencies.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/sgru_device_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SGRU_ROS_CACHE="$OUT/cache"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -m pip install -q --no-deps . || exit 1
  for variant in igev raft; do
    for precision in fp32 fp16 bf16; do
      "$PY" -m sgru_ros.cli bench --random-weights --variant "$variant" --device cuda --precision "$precision" \
        --size 384 1248 --size 480 640 --iters 8 32 --repeats 10 --warmup 3 \
        --json "$OUT/${variant}_${precision}_torch.json"
    done
    if "$PY" -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
      "$PY" -m sgru_ros.cli bench --random-weights --variant "$variant" --device cuda --engine onnxruntime \
        --size 480 640 --iters 8 --repeats 10 --warmup 2 --json "$OUT/${variant}_fp32_onnxruntime.json"
    else
      echo "onnxruntime-gpu not installed: no onnxruntime rows"
    fi
  done
} 2>&1 | tee "$OUT/device_bench.log"
rm -rf "$OUT/cache"
