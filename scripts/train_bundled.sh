#!/bin/bash
# The bundled model's training run (docs/model_card.md), resumable in pieces:
#
#   bash scripts/train_bundled.sh [RUN_DIR] [TIME_BUDGET] [LR]
#
# Starts RUN_DIR (default runs/bundled) if it holds no state, else resumes it;
# stops cleanly before TIME_BUDGET (default 2h; seconds or 90m, 2h) with the
# state saved. The one-cycle schedule is defined over the whole run (STEPS), so
# every piece continues the same curve. EXTRA_ARGS adds options that do not change
# the recipe (e.g. "--workers 12"); scripts/device_train.sh runs it on a lent GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/bundled}
BUDGET=${2:-2h}
LR=${3:-4e-4}
STEPS=4000
PY=${PYTHON:-python3}
# Texture photographs beside scikit-image's: Debian's mate-backgrounds (apt-get install mate-backgrounds).
PHOTOS=/usr/share/backgrounds/mate/nature
# The run starts from the first bundled model (1/8 resolution, commit fe4e8af), moved to 1/4.
INIT=runs/init_raft_compact8.pth
if [ -f "$RUN/train_state.pt" ]; then
  exec "$PY" -m sgru_ros.cli train --out "$RUN" --resume --time-budget "$BUDGET" --no-progress \
    --preset raft-compact --steps $STEPS --lr "$LR" --val-every 75 --seed 1234 --init "$INIT" --photo-dir "$PHOTOS" ${EXTRA_ARGS:-}
fi
mkdir -p runs
[ -f "$INIT" ] || git show fe4e8af:sgru_ros/weights/sgru_raft_compact.pth > "$INIT"
exec "$PY" -m sgru_ros.cli train --out "$RUN" --time-budget "$BUDGET" --no-progress \
  --preset raft-compact --steps $STEPS --lr "$LR" --val-every 75 --seed 1234 --init "$INIT" --photo-dir "$PHOTOS" ${EXTRA_ARGS:-}
