#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch, the package, the ROS 2 wheels and
# the test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, rclpy, sgru_ros, pytest" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned: on this project's machines torch==2.13.0 is a CPU build already on disk.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[ros,test]"
fi
