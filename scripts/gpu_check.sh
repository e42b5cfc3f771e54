#!/usr/bin/env bash
# What a GPU session checks, in minutes (all options: bash scripts/gpu_check.sh --help):
#   * the paper path's chain (stand-ins from distdiff/rehearsal.py, 512 px) in fp16 with
#     --channels_last and --compile, against an fp32 reference on the same GPU;
#   * 2 shards through torchrun --nproc_per_node 2 and, with 2+ GPUs, GPUS="0 1" through
#     scripts/expand_multi_gpu.sh: the same images as one process;
#   * images/s and peak CUDA memory of DistDiff at SD-1.4 scale (the real model when it is in the
#     Hugging Face cache, else SD-1.4's shape with random weights: scripts/bench_expand.py).
# On a machine without CUDA it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PY" scripts/gpu_check.py "$@"
