#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch, the package (with its ROS 2 wheels and test tools).
# Idempotent: when everything is there it only checks. It reinstalls the package itself (no
# dependencies) when a file of it is newer than the last install (after a pull, an edit, new
# weights), or always with --refresh, so the installed copy matches this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
installed() {
  .venv/bin/python - <<'PY' >/dev/null 2>&1
import importlib.metadata as m
for dist in ("sgru_ros", "torch", "rclpy", "pytest", "scikit-image", "tqdm", "onnxruntime"):
    m.version(dist)
PY
}
STAMP=.venv/.sgru_ros_installed
stale() {  # a package file changed since the last install
  [ ! -f "$STAMP" ] || [ -n "$(find sgru_ros bin launch config resource setup.py setup.cfg package.xml \
    -type f -newer "$STAMP" -print -quit 2>/dev/null)" ]
}
if ! installed; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned: on this project's machines torch==2.13.0 is a CPU build already on disk.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q ".[ros,test,train,bag,onnx,fleet]"
elif [ "${1:-}" = "--refresh" ] || stale; then
  .venv/bin/python -m pip install -q --no-deps --force-reinstall .
fi
touch "$STAMP"
