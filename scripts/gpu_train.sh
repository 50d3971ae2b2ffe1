#!/bin/bash
# A piece of the bundled model's training on a machine with a CUDA GPU, which may have no package index
# and none of this machine's files:
#
#   here:         bash scripts/gpu_train.sh pack STAGE                  # -> .device_carry/ (git-ignored)
#   GPU machine:  bash scripts/gpu_train.sh check OUT_DIR               # optional: steps/s per batch size, ~2 min
#   GPU machine:  bash scripts/gpu_train.sh train STAGE 8m OUT_DIR      # this tree with .device_carry/ copied along
#   here:         bash scripts/gpu_train.sh unpack STAGE OUT_DIR        # OUT_DIR brought back
#
# pack copies the runs the stage needs (its own state, if started, and the weights
# it starts from) and the texture photographs (the run's photo_dirs, which the GPU
# machine lacks) into .device_carry; check runs scripts/gpu_train_check.py (eager
# and CUDA-graph steps per batch size, data workers needed); train puts the carried
# files where the recipe expects them, resumes or starts the stage with
# scripts/train_bundled.sh for the budget (a data worker per core but two: scene i
# is the same whichever process makes it; stage 4 as CUDA graphs) and leaves the run
# folder in OUT_DIR, its state split into 15 MB parts (for transfers with a file-size
# limit); unpack joins it back.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=/usr/share/backgrounds/mate/nature
CARRY=.device_carry
PART_SIZE=15M
seconds() {  # a time budget as train_bundled.sh takes it (90, 90s, 8m, 2h) -> seconds
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
run_dir() {
  case "$1" in
    1) echo runs/bundled ;;
    2|3|4) echo "runs/bundled_stage$1" ;;
    *) echo "gpu_train: stage is 1 to 4, not $1" >&2; exit 2 ;;
  esac
}
case "${1:-}" in
  pack)
    RUN=$(run_dir "${2:?give the stage}")
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    rm -rf "$CARRY" && mkdir -p "$CARRY/photos"
    if [ -f "$RUN/train_state.pt" ]; then
      mkdir -p "$CARRY/$RUN"
      cp "$RUN"/train_state.pt "$RUN"/best.pth "$RUN"/*.csv "$RUN"/config.json "$CARRY/$RUN/"
    fi
    INIT=$(bash scripts/train_bundled.sh "$2" --init-path)  # the weights the stage starts from
    mkdir -p "$CARRY/$(dirname "$INIT")" && cp "$INIT" "$CARRY/$INIT"
    cp "$PHOTOS"/* "$CARRY/photos/"
    du -sh "$CARRY"
    ;;
  train)
    RUN=$(run_dir "${2:?give the stage}")
    BUDGET=${3:?give the time budget, e.g. 8m}
    [[ $BUDGET =~ ^[0-9]+[smh]?$ ]] || { echo "gpu_train: a time budget is whole seconds, minutes or hours: 240, 240s, 4m, 1h" >&2; exit 2; }
    OUT=${4:?give the output folder}
    [ -d "$PHOTOS" ] || { mkdir -p "$PHOTOS" && cp "$CARRY"/photos/* "$PHOTOS/"; }
    [ -d "$CARRY/runs" ] && { mkdir -p runs && cp -r "$CARRY"/runs/. runs/; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    # train_bundled.sh resumes or starts the stage with its recipe; only where it runs differs.
    export PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
    EXTRA="--workers $(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))"
    START=$SECONDS
    if [ "$2" -lt 4 ]; then
      EXTRA_ARGS="$EXTRA" bash scripts/train_bundled.sh "$2" "$BUDGET"
    elif ! EXTRA_ARGS="$EXTRA --cuda-graphs" bash scripts/train_bundled.sh "$2" "$BUDGET"; then
      # A failed graphed run (most likely its capture) must not cost the piece: the run resumes from its
      # last saved state, eagerly.
      LEFT=$(( $(seconds "$BUDGET") - (SECONDS - START) ))
      if [ "$LEFT" -gt 30 ]; then
        echo "gpu_train: the piece with --cuda-graphs failed (above); the $LEFT s left run without them" >&2
        EXTRA_ARGS="$EXTRA" bash scripts/train_bundled.sh "$2" "$LEFT" || echo "gpu_train: the run without them failed too" >&2
      else
        echo "gpu_train: the piece with --cuda-graphs failed (above), with no time left to go on without them" >&2
      fi
    fi
    mkdir -p "$OUT/run"
    cp "$RUN"/*.csv "$RUN"/config.json "$RUN"/best.pth "$OUT/run/"
    split -b "$PART_SIZE" -d "$RUN/train_state.pt" "$OUT/run/train_state.pt.part"
    ;;
  check)
    OUT=${2:?give the output folder}
    "${PYTHON:-python3}" scripts/gpu_train_check.py "$OUT" "${@:3}"
    ;;
  unpack)
    RUN=$(run_dir "${2:?give the stage}")
    FROM=${3:?give the output folder of the train step}
    mkdir -p "$RUN"
    cat "$FROM"/run/train_state.pt.part* > "$RUN/train_state.pt.new"
    "${PYTHON:-python3}" -c "import torch, sys; s = torch.load(sys.argv[1], map_location='cpu', weights_only=True); print('state at step', s['step'])" \
      "$RUN/train_state.pt.new"
    mv "$RUN/train_state.pt.new" "$RUN/train_state.pt"
    cp "$FROM"/run/*.csv "$FROM"/run/config.json "$FROM"/run/best.pth "$RUN/"
    chmod u+w "$RUN"/*  # copies brought back may be read-only
    ;;
  *)
    echo "usage: $0 pack STAGE | check OUT_DIR | train STAGE BUDGET OUT_DIR | unpack STAGE OUT_DIR" >&2
    exit 2
    ;;
esac
