#!/bin/bash
# The bundled model's training (docs/model_card.md), in stages, each resumable in pieces:
#
#   bash scripts/train_bundled.sh STAGE [TIME_BUDGET]
#   bash scripts/train_bundled.sh STAGE --init-path    # prints the weights the stage starts from (made if need be)
#
# Stage 1 (runs/bundled): 4000 steps of batch 4 from the first bundled model (1/8
# resolution, commit fe4e8af) moved to 1/4. Stage 2 (runs/bundled_stage2): 1200
# steps of batch 8 at half the peak learning rate from stage 1's best weights, on
# scenes stage 1 never saw (it used scenes 0-15999). Stage 3 (runs/bundled_stage3):
# 360 steps at lr 1e-4 from stage 2's best, each step at 8-20 GRU iterations, so
# that more iterations at run time stop hurting; its best.pth is the one whose worst
# bad-2 over 8, 16 and 32 iterations is lowest. Stage 4 (runs/bundled_stage4) is
# for GPU pieces (scripts/gpu_train.sh adds --cuda-graphs): 12000 steps of batch 16
# at lr 2e-4 from the stage-3 weights (commit 1bc9dd4), on fresh scenes, 8
# iterations per step, best.pth by the worst bad-2 over 8, 16 and 32 iterations.
# Stage "edges" (runs/bundled_edges; python -m sgru_ros.training.edges) trains the
# full-resolution edge refinement on the frozen stage-3 network, about 17 CPU
# minutes in one go (no time budget, not resumable; the network's outputs it
# caches are reused by a second call); its best.pth (network and refinement) is
# the bundled model. Stage "fast" (runs/bundled_fast; python -m sgru_ros.training.distill)
# distils the bundled compact model's encoders into ones half as wide (16, 24, 32):
# 2500 steps of batch 8, about an hour on two CPU cores, stopping at the first validation past
# TIME_BUDGET (the same call resumes); its
# best.pth is the bundled fast model.
# Each numbered call starts the stage's
# run if its folder holds no state, else resumes it, and stops cleanly before
# TIME_BUDGET (default 2h; seconds, or 90m, 2h) with the state saved. The one-cycle
# schedule is defined over the whole stage, so every piece continues the same
# curve. EXTRA_ARGS adds options that do not change the recipe (e.g. "--workers
# 12"); scripts/gpu_train.sh runs a piece on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?give the stage: 1 to 4, edges or fast}
BUDGET=${2:-2h}
PY=${PYTHON:-python3}
# Texture photographs beside scikit-image's: Debian's mate-backgrounds (apt-get install mate-backgrounds).
PHOTOS=/usr/share/backgrounds/mate/nature
# Validation (48 scenes from seed 1234 + 1000003) is the same in every stage.
if [ "$STAGE" = edges ]; then
  INIT=runs/init_stage4.pth  # the stage-3 weights, as stage 4 starts from them
  [ -f "$INIT" ] || { git show 1bc9dd4:sgru_ros/weights/sgru_raft_compact.pth > "$INIT.tmp" && mv "$INIT.tmp" "$INIT"; }
  # shellcheck disable=SC2086  # EXTRA_ARGS is a list of options
  exec "$PY" -m sgru_ros.training.edges --backbone "$INIT" --out runs/bundled_edges ${EXTRA_ARGS:-}
fi
if [ "$STAGE" = fast ]; then
  TEACHER=runs/teacher_fast.pth  # the bundled compact model (commit 72c838f) the fast one learns from
  mkdir -p runs
  [ -f "$TEACHER" ] || { git show 72c838f:sgru_ros/weights/sgru_raft_compact.pth > "$TEACHER.tmp" && mv "$TEACHER.tmp" "$TEACHER"; }
  # shellcheck disable=SC2086  # EXTRA_ARGS is a list of options
  exec "$PY" -m sgru_ros.training.distill --teacher "$TEACHER" --encoder-dims 16 24 32 --steps 2500 --batch-size 8 \
    --val-every 500 --out runs/bundled_fast --time-budget "$BUDGET" ${EXTRA_ARGS:-}
fi
COMMON=(--preset raft-compact --seed 1234 --photo-dir "$PHOTOS" --time-budget "$BUDGET" --no-progress)
case "$STAGE" in
  1)
    RUN=runs/bundled
    INIT=runs/init_raft_compact8.pth
    mkdir -p runs
    [ -f "$INIT" ] || { git show fe4e8af:sgru_ros/weights/sgru_raft_compact.pth > "$INIT.tmp" && mv "$INIT.tmp" "$INIT"; }
    RECIPE=(--steps 4000 --batch-size 4 --lr 4e-4 --val-every 75 --init "$INIT")
    ;;
  2)
    RUN=runs/bundled_stage2
    INIT=runs/bundled/best.pth
    [ -f "$INIT" ] || { echo "train_bundled: stage 2 starts from $INIT; run stage 1 first" >&2; exit 1; }
    RECIPE=(--steps 1200 --batch-size 8 --lr 2e-4 --val-every 100 --first-sample 16000 --init "$INIT")
    ;;
  3)
    RUN=runs/bundled_stage3
    INIT=runs/bundled_stage2/best.pth
    [ -f "$INIT" ] || { echo "train_bundled: stage 3 starts from $INIT; run stage 2 first" >&2; exit 1; }
    RECIPE=(--steps 360 --batch-size 4 --lr 1e-4 --val-every 45 --first-sample 25600 --init "$INIT"
            --train-iters 8 --train-iters-max 20 --val-multiples 1 2 4 --best-over-multiples)
    ;;
  4)
    RUN=runs/bundled_stage4
    INIT=runs/init_stage4.pth
    mkdir -p runs
    [ -f "$INIT" ] || { git show 1bc9dd4:sgru_ros/weights/sgru_raft_compact.pth > "$INIT.tmp" && mv "$INIT.tmp" "$INIT"; }
    RECIPE=(--steps 12000 --batch-size 16 --lr 2e-4 --val-every 500 --first-sample 27040 --init "$INIT"
            --val-multiples 1 2 4 --best-over-multiples)
    ;;
  *)
    echo "train_bundled: stage is 1 to 4, edges or fast, not $STAGE" >&2
    exit 2
    ;;
esac
if [ "$BUDGET" = --init-path ]; then
  echo "$INIT"
  exit 0
fi
RESUME=()
[ -f "$RUN/train_state.pt" ] && RESUME=(--resume)
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of options
exec "$PY" -m sgru_ros.cli train --out "$RUN" "${RESUME[@]}" "${COMMON[@]}" "${RECIPE[@]}" ${EXTRA_ARGS:-}
