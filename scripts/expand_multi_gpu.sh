#!/usr/bin/env bash
# All shards of one expansion on the GPUs of one node, one process per GPU:
#   GPUS="0 1 2 3" bash scripts/expand_multi_gpu.sh --dataset caltech-101 --expand_ratio 5 [flags...]
# Prototypes are built once first (--prepare_only); then shard i runs on the i-th GPU of GPUS.
# A failed shard fails the script; rerunning the same command resumes every shard.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
read -r -a gpus <<< "${GPUS:-0}"
n=${#gpus[@]}
"$PY" -m distdiff.devices "${gpus[@]}"  # an index the driver does not list: one line, before any shard
CUDA_VISIBLE_DEVICES=${gpus[0]} "$PY" expand_distdiff.py "$@" --prepare_only
pids=()
for i in "${!gpus[@]}"; do
  CUDA_VISIBLE_DEVICES=${gpus[$i]} "$PY" expand_distdiff.py "$@" --split "$i" --total_split "$n" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
"$PY" expand_distdiff.py "$@" --total_split "$n" --verify
exit $status
