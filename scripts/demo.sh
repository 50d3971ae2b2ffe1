#!/usr/bin/env bash
# The main job on its embedded default: sample source (Middlebury Motorcycle) + stereo node with the
# bundled weights over real rclpy; writes sgru_demo/disparity_color.png, disparity.pfm and cloud.ply.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/sgru-stereo demo "$@"
