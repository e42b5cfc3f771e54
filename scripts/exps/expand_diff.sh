#!/bin/sh
# One expansion shard, as in the seed README:  sh scripts/exps/expand_diff.sh RATIO SPLIT GPU &
#   RATIO  new images per source (5)      SPLIT  shard id in [0, TOTAL_SPLIT)      GPU  device index
# Environment: DATASET (caltech-101), TOTAL_SPLIT (4), GUIDANCE (transform), MODEL, GUIDE_CKPT, EXP,
# and EXTRA for any other expand_distdiff.py flags. All shards share prototypes.npz: the first
# to arrive builds it under a file lock, the others wait and read it.
set -e
RATIO=${1:-5}
SPLIT=${2:-0}
GPU=${3:-0}
cd "$(dirname "$0")/../.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
set -- --dataset "${DATASET:-caltech-101}" --expand_ratio "$RATIO" --split "$SPLIT" \
       --total_split "${TOTAL_SPLIT:-4}" --guidance "${GUIDANCE:-transform}" --gpu 0
[ -n "$MODEL" ] && set -- "$@" --model "$MODEL"
[ -n "$GUIDE_CKPT" ] && set -- "$@" --guide_ckpt "$GUIDE_CKPT"
[ -n "$EXP" ] && set -- "$@" --exp "$EXP"
# CUDA_VISIBLE_DEVICES makes the chosen GPU the process's cuda:0 (ignored on CPU-only machines).
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES=$GPU exec "$PY" expand_distdiff.py "$@" $EXTRA
