#!/bin/bash
# The bundled model's run on a lent GPU machine (the `device` tool), in one call:
#
#   here:   bash scripts/device_train.sh pack [RUN_DIR]       # -> .device_carry/ (git-ignored)
#   device: run(command="bash scripts/device_train.sh train 8m", carry=[".device_carry"], timeout_s=600)
#   here:   bash scripts/device_train.sh unpack FILES_AT [RUN_DIR]
#
# pack copies the run's state and the texture photographs (the run's photo_dirs,
# which the GPU machine lacks) into .device_carry; train puts the photos where the
# run expects them, resumes the run with scripts/train_bundled.sh for the budget on
# the GPU (more data workers: sample i is the same whichever process makes it) and
# leaves the run folder in $OUT, the state split below the 16 MiB file limit;
# unpack joins it back into RUN_DIR (default runs/bundled).
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=/usr/share/backgrounds/mate/nature
CARRY=.device_carry
PART_SIZE=15M
case "${1:-}" in
  pack)
    RUN=${2:-runs/bundled}
    [ -f "$RUN/train_state.pt" ] || { echo "device_train: $RUN holds no train_state.pt" >&2; exit 1; }
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    rm -rf "$CARRY" && mkdir -p "$CARRY/run" "$CARRY/photos"
    cp "$RUN"/train_state.pt "$RUN"/*.csv "$RUN"/config.json "$CARRY/run/"
    cp "$PHOTOS"/* "$CARRY/photos/"
    du -sh "$CARRY"
    ;;
  train)
    BUDGET=${2:-8m}
    mkdir -p "$PHOTOS" && cp "$CARRY"/photos/* "$PHOTOS/"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    # train_bundled.sh resumes with the same recipe; only the workers differ.
    PYTHON=python3 EXTRA_ARGS="--workers 12" bash scripts/train_bundled.sh "$CARRY/run" "$BUDGET"
    mkdir -p "$OUT/run"
    cp "$CARRY"/run/*.csv "$CARRY"/run/config.json "$CARRY"/run/best.pth "$OUT/run/"
    split -b "$PART_SIZE" -d "$CARRY/run/train_state.pt" "$OUT/run/train_state.pt.part"
    ;;
  unpack)
    FROM=${2:?give the files_at folder of the device call}
    RUN=${3:-runs/bundled}
    mkdir -p "$RUN"
    cat "$FROM"/run/train_state.pt.part* > "$RUN/train_state.pt.new"
    "${PYTHON:-python3}" -c "import torch, sys; s = torch.load(sys.argv[1], weights_only=True); print('state at step', s['step'])" \
      "$RUN/train_state.pt.new"
    mv "$RUN/train_state.pt.new" "$RUN/train_state.pt"
    cp "$FROM"/run/*.csv "$FROM"/run/config.json "$FROM"/run/best.pth "$RUN/"
    ;;
  *)
    echo "usage: $0 pack [RUN_DIR] | train [BUDGET] | unpack FILES_AT [RUN_DIR]" >&2
    exit 2
    ;;
esac
