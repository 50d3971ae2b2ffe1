#!/bin/bash
# The GPU table of docs/performance.md, in one call on a lent GPU machine (the `device` tool):
#
#   device: run(command="bash scripts/device_bench.sh", timeout_s=600)   # figures in $OUT/*.json, log in $OUT
#
# Both variants with random weights at the released widths (the arithmetic, hence the time, does not
# depend on the values), KITTI size 1248x384 and 640x480, 8 and 32 iterations, fp32/fp16/bf16 on the
# torch engine; onnxruntime (TensorRT, else CUDA execution provider) where onnxruntime-gpu is installed,
# at 640x480 and 8 iterations only (each ONNX export takes minutes on the CPU). Needs python3 with a CUDA
# PyTorch, numpy, OpenCV and PyYAML; runs the package from this tree (the machine has no package index, so
# no build of it either).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/sgru_device_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SGRU_ROS_CACHE="$OUT/cache" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  for variant in igev raft; do
    for precision in fp32 fp16 bf16; do
      "$PY" -m sgru_ros.cli bench --random-weights --variant "$variant" --device cuda --precision "$precision" \
        --size 384 1248 --size 480 640 --iters 8 32 --repeats 5 --warmup 2 \
        --json "$OUT/${variant}_${precision}_torch.json"
    done
    if "$PY" -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
      "$PY" -m sgru_ros.cli bench --random-weights --variant "$variant" --device cuda --engine onnxruntime \
        --size 480 640 --iters 8 --repeats 5 --warmup 2 --json "$OUT/${variant}_fp32_onnxruntime.json"
    else
      echo "onnxruntime-gpu not installed: no onnxruntime rows"
    fi
  done
} 2>&1 | tee "$OUT/device_bench.log"
rm -rf "$OUT/cache"
