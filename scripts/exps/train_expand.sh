#!/bin/sh
# Retrain on original + expanded data for seeds 1 2 3, as in the seed README:
#   sh scripts/exps/train_expand.sh DATASET BACKBONE LR EXP PRETRAINED GPU
# Environment: SEEDS ("1 2 3"), PRESET (e.g. authors: their training recipe), EXTRA (more train_expand.py flags). Finished seeds are skipped.
set -e
DATASET=${1:?DATASET}; BACKBONE=${2:?BACKBONE}; LR=${3:-}; EXP=${4:?EXP}; PRETRAINED=${5:-False}; GPU=${6:-0}
cd "$(dirname "$0")/../.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
[ -n "$LR" ] || LR=$("$PY" -m distdiff.runs default lr)  # the recipe's (distdiff/recipe.py)
for SEED in ${SEEDS:-1 2 3}; do
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$GPU "$PY" train_expand.py "$DATASET" "$BACKBONE" "$LR" "$EXP" "$PRETRAINED" 0 --seed "$SEED" ${PRESET:+--preset "$PRESET"} $EXTRA
done
"$PY" parse_logs.py "$("$PY" -m distdiff.runs dir --dataset "$DATASET" --arch "$BACKBONE" --lr "$LR" --pretrained "$PRETRAINED" --exp "$EXP" ${PRESET:+--preset "$PRESET"})" --multi
