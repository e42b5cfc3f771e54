#!/bin/sh
# One expansion shard, in the authors' argument order:
#   sh scripts/exps/expand_diff.sh EXPAND_NUM GPU SPLIT &
#   EXPAND_NUM  new images per source (5)    GPU  device index    SPLIT  shard id in [0, TOTAL_SPLIT)
# Environment: DATASET (caltech-101), TOTAL_SPLIT (4, as the authors' launcher), GUIDANCE (transform),
# MODEL, GUIDE_CKPT, EXP, PRESET (e.g. authors), and EXTRA for any other expand_distdiff.py flags.
# All shards share prototypes.npz: the first to arrive builds it under a file lock, the others
# wait and read it. Every image depends only on (seed, source, copy), so the shard count never
# changes the bytes, and rerunning a shard resumes it.
set -e
EXPAND_NUM=${1:-5}
GPU=${2:-0}
SPLIT=${3:-0}
cd "$(dirname "$0")/../.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # shards sharing CPU cores must not spin
set -- --dataset "${DATASET:-caltech-101}" --expand_ratio "$EXPAND_NUM" --split "$SPLIT" \
       --total_split "${TOTAL_SPLIT:-4}" --guidance "${GUIDANCE:-transform}" --gpu 0
[ -n "$MODEL" ] && set -- "$@" --model "$MODEL"
[ -n "$GUIDE_CKPT" ] && set -- "$@" --guide_ckpt "$GUIDE_CKPT"
[ -n "$EXP" ] && set -- "$@" --exp "$EXP"
[ -n "$PRESET" ] && set -- "$@" --preset "$PRESET"
# CUDA_VISIBLE_DEVICES makes the chosen GPU the process's cuda:0 (ignored on CPU-only machines).
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES=$GPU exec "$PY" expand_distdiff.py "$@" $EXTRA
