#!/usr/bin/env bash
# The whole DistDiff pipeline in one command. With no arguments it runs the embedded demo on
# 2 CPU cores: 3-shot digits, the tiny SD prior, 5x expansion with DistDiff and with plain img2img
# (the paper's "SD" row), retraining on each for 5 seeds, then the results table and figures.
#
#   bash single_exp.sh                                           # embedded digits demo
#   DATASET=caltech-101 ARCH=resnet50 GPUS="0 1 2 3" SEEDS="1 2 3" bash single_exp.sh
#
# Environment: DATASET (digits), ARCH (the dataset YAML's arch), LR (the training recipe's), RATIO (5),
# SEEDS ("1 2 3 4 5"; "1 2 3" with PRESET=authors), GPUS (empty: one process; "0 1 2 3": one
# expansion shard per GPU, and the training runs spread over the GPUs, each seeing its own as
# cuda:0), PRETRAINED (False), MODEL (the
# dataset YAML's model; e.g. CompVis/stable-diffusion-v1-4), JOBS (training runs at a time: 2, or
# with GPUS one per GPU; more than the GPUs puts several on one GPU), EQITER (1: also run the
# equal-iterations control), CHECKPOINT (output root, checkpoint), FIGURE_DIR (figure), PRESET
# (e.g. authors: --preset for the expansions, named distdiff_x5_authors / sd_x5_authors, and for
# every training run, whose dirs end in _preset-authors; the authors' parse_logs.py line at the
# end). Quick runs: EPOCHS, LIMIT (source images expanded), EXPAND_FLAGS (more
# expand_distdiff.py flags, e.g. "--num_steps 10 --guidance_step 4") and TRAIN_FLAGS (more
# train_original.py / train_expand.py flags, e.g. "--image_size 32 --resize_size 36").
# DATASET=folder:<path> runs on your own ImageFolder tree (docs/own_dataset.md).
# Every stage skips work that is already finished, so rerunning after a crash resumes.
set -euo pipefail
cd "$(dirname "$0")"
DATASET=${DATASET:-digits}
RATIO=${RATIO:-5}
PRESET=${PRESET:-}
SUFFIX=${PRESET:+_$PRESET}  # expansions made with a preset get their own names (distdiff_x5_authors)
SEEDS=${SEEDS:-$([ "$PRESET" = authors ] && echo "1 2 3" || echo "1 2 3 4 5")}  # the authors train seeds 1-3
GPUS=${GPUS:-}
N_GPUS=$(wc -w <<< "$GPUS")
JOBS=${JOBS:-$([ "$N_GPUS" -gt 0 ] && echo "$N_GPUS" || echo 2)}
EQITER=${EQITER:-1}
CHECKPOINT=${CHECKPOINT:-checkpoint}
FIGURE_DIR=${FIGURE_DIR:-figure}
PY=.venv/bin/python
case "$DATASET" in digits|digits10) export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} ;; esac  # embedded: no Hub; else as the user set it
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # jobs share the cores: OpenMP threads must not spin
# setup.sh installs without byte-compiling: each module compiles on first import, once, if Python may
# write bytecode (into .venv/pycache, not beside the repository's files).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$PWD/.venv/pycache}
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "1/8 environment"
bash scripts/setup.sh
# shellcheck disable=SC2086
[ -z "$GPUS" ] || $PY -m distdiff.devices $GPUS  # a GPUS index the driver does not list: one line, now
# The arch comes from configs/<dataset>.yaml unless ARCH is set (resnet50 for the paper's datasets).
# Run directories and the YAML are the library's business: `python -m distdiff.runs` answers.
ARCH=${ARCH:-$($PY -m distdiff.runs arch "$DATASET")}
LR=${LR:-$($PY -m distdiff.runs default lr)}  # the training recipe's (distdiff/recipe.py)
PRETRAINED=${PRETRAINED:-False}
RUN_ARGS=(--dataset "$DATASET" --arch "$ARCH" --lr "$LR" --pretrained "$PRETRAINED" --output "$CHECKPOINT")
TRAIN_ARGS=("$DATASET" --arch "$ARCH" --lr "$LR" --pretrained "$PRETRAINED" --output "$CHECKPOINT")
EXPAND_ARGS=(--dataset "$DATASET" --guide_arch "$ARCH" --expand_ratio "$RATIO" --checkpoint_root "$CHECKPOINT")
[ -n "${MODEL:-}" ] && EXPAND_ARGS+=(--model "$MODEL")
[ -n "$PRESET" ] && EXPAND_ARGS+=(--preset "$PRESET") && TRAIN_ARGS+=(--preset "$PRESET") && RUN_ARGS+=(--preset "$PRESET")
[ -n "${EPOCHS:-}" ] && TRAIN_ARGS+=(--epochs "$EPOCHS")
# shellcheck disable=SC2206
[ -n "${TRAIN_FLAGS:-}" ] && TRAIN_ARGS+=($TRAIN_FLAGS)
[ -n "${LIMIT:-}" ] && EXPAND_ARGS+=(--limit "$LIMIT")
# shellcheck disable=SC2206
[ -n "${EXPAND_FLAGS:-}" ] && EXPAND_ARGS+=($EXPAND_FLAGS)
[ -n "$GPUS" ] && TRAIN_ARGS+=(--device cuda) && EXPAND_ARGS+=(--device cuda)

stage "2/8 data and diffusion prior"
if [ "$DATASET" = digits ] || [ "$DATASET" = digits10 ]; then
  $PY scripts/prepare_digits.py                     # both keep what is already there
  [ -n "${MODEL:-}" ] || $PY scripts/train_prior.py
fi

# shellcheck source=scripts/run_jobs.sh
source scripts/run_jobs.sh  # run_jobs: $JOBS command lines at a time, over GPUS if set (the cwd is the repo root)

missing() {  # missing EXP...: "<exp> <seed>" per run without results.json ("-": original only)
  # shellcheck disable=SC2086
  $PY -m distdiff.runs missing "${RUN_ARGS[@]}" --exps "$@" --seeds $SEEDS
}

stage "3/8 guide classifier and original-only baseline (seeds: $SEEDS)"
cmds=()
while read -r _ s; do
  cmds+=("$PY train_original.py ${TRAIN_ARGS[*]} --seed $s")
  if [ "$s" = 1 ] && [ -z "$GPUS" ]; then  # seed 1 is the guide: on the CPU it trains first, alone
    run_jobs "${cmds[@]}"
    cmds=()
  fi  # with GPUS each run has a GPU of its own: the guide trains beside the other seeds
done < <(SEEDS="1 $SEEDS" missing -)  # the guide (seed 1) even when SEEDS leaves it out
[ "${#cmds[@]}" -eq 0 ] || run_jobs "${cmds[@]}"

expand() {  # expand EXP GUIDANCE: one process (it ends by checking every image), or one per GPU
  local exp=$1 guidance=$2
  local args=("${EXPAND_ARGS[@]}" --exp "$exp" --guidance "$guidance")
  if [ -n "$GPUS" ]; then
    GPUS="$GPUS" bash scripts/expand_multi_gpu.sh "${args[@]}"
  else
    $PY expand_distdiff.py "${args[@]}"
  fi
}

stage "4/8 prototypes + 5/8 DistDiff expansion and unguided img2img (the paper's SD row), x$RATIO"
gpu_present() {  # GPUS is set, or a GPU's device node is there and CUDA_VISIBLE_DEVICES does not hide it
  # (asking torch would start a Python for 2 s; a node without a usable GPU only costs the overlap)
  [ -n "$GPUS" ] && return 0
  case "${CUDA_VISIBLE_DEVICES-unset}" in ""|-1) return 1 ;; esac
  compgen -G "/dev/nvidia[0-9]*" > /dev/null || [ -e /dev/kfd ]
}
if gpu_present; then
  # One after the other: side by side, both pipelines would share one GPU's memory by accident
  # (and with GPUS each expansion already spans every GPU).
  expand "distdiff_x$RATIO$SUFFIX" transform
  expand "sd_x$RATIO$SUFFIX" none
else
  # On the CPU, two processes side by side: each one's start-up (imports, model loading) overlaps
  # the other's work.
  expand "distdiff_x$RATIO$SUFFIX" transform & guided=$!
  expand "sd_x$RATIO$SUFFIX" none & unguided=$!
  # Both are waited for, and either failure stops the chain here (a failing `wait` inside an &&
  # list would not trip set -e, and training would start without its expansion).
  failed=0
  wait "$guided" || failed=1
  wait "$unguided" || failed=1
  [ "$failed" = 0 ] || { echo "error: an expansion failed (its error line is above); rerun to resume" >&2; exit 1; }
fi

stage "6/8 retraining on original + expanded (seeds: $SEEDS)"
exps=("distdiff_x$RATIO$SUFFIX" "sd_x$RATIO$SUFFIX")
[ "$EQITER" = 1 ] && exps+=("distdiff_x$RATIO${SUFFIX}_eqiter" "sd_x$RATIO${SUFFIX}_eqiter")
cmds=()
while read -r run s; do  # an _eqiter run is the same expansion at equal optimizer steps
  exp=${run%_eqiter}
  if [ "$run" = "$exp" ]; then
    cmds+=("$PY train_expand.py ${TRAIN_ARGS[*]} --exp $exp --seed $s")
  else
    cmds+=("$PY train_expand.py ${TRAIN_ARGS[*]} --exp $exp --seed $s --equal_iterations")
  fi
done < <(missing "${exps[@]}")
[ "${#cmds[@]}" -eq 0 ] || run_jobs "${cmds[@]}"

stage "7/8 results (mean ± std over seeds; paired differences vs unguided SD)"
# The dataset's folder of runs (folder:<path> datasets get a folder named after the tree).
$PY parse_logs.py "$(dirname "$($PY -m distdiff.runs dir "${RUN_ARGS[@]}")")" --multi --paired "$($PY -m distdiff.runs name "${RUN_ARGS[@]}" --exp "sd_x$RATIO$SUFFIX")"
if [ "$PRESET" = authors ]; then  # and the line their parse_logs.py prints (best test epoch, ddof-0 std)
  $PY parse_logs.py "$($PY -m distdiff.runs dir "${RUN_ARGS[@]}" --exp "distdiff_x$RATIO$SUFFIX")" --multi --authors
fi

stage "8/8 figures"
$PY studies/plot_results.py --dataset "$DATASET" --arch "$ARCH" --lr "$LR" --ratio "$RATIO" --exp_suffix "$SUFFIX" \
  --checkpoint "$CHECKPOINT" --figure_dir "$FIGURE_DIR" $([ "$PRETRAINED" = True ] && echo --pretrained) \
  ${PRESET:+--preset "$PRESET"}
stage "done in $(( $(date +%s) - start ))s"
