#!/bin/sh
# Train on the original data only (the guide and the baseline) for seeds 1 2 3:
#   sh scripts/exps/train_original.sh DATASET BACKBONE LR PRETRAINED GPU
# Environment: SEEDS ("1 2 3"), PRESET (e.g. authors: their training recipe), EXTRA (more train_original.py flags). Finished seeds are skipped.
set -e
DATASET=${1:?DATASET}; BACKBONE=${2:?BACKBONE}; LR=${3:-}; PRETRAINED=${4:-False}; GPU=${5:-0}
cd "$(dirname "$0")/../.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
[ -n "$LR" ] || LR=$("$PY" -m distdiff.runs default lr)  # the recipe's (distdiff/recipe.py)
for SEED in ${SEEDS:-1 2 3}; do
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$GPU "$PY" train_original.py "$DATASET" "$BACKBONE" "$LR" "$PRETRAINED" 0 --seed "$SEED" ${PRESET:+--preset "$PRESET"} $EXTRA
done
"$PY" parse_logs.py "$("$PY" -m distdiff.runs dir --dataset "$DATASET" --arch "$BACKBONE" --lr "$LR" --pretrained "$PRETRAINED" ${PRESET:+--preset "$PRESET"})" --multi
