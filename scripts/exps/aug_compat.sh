#!/usr/bin/env bash
# Transform-based augmentation with and without DistDiff (the paper's Tab. 1): original-only vs
# original + DistDiff x5, each trained with every --aug choice for seeds 1 2 3, then one table.
#
#   bash scripts/exps/aug_compat.sh                                  # digits, 7 augs x 2 sets x 3 seeds
#   AUGS="default mixup" SEEDS=1 EPOCHS=2 CHECKPOINT=/tmp/aug bash scripts/exps/aug_compat.sh   # quick check
#
# Environment: DATASET (digits), ARCH (resnet_small), LR (the training recipe's), EXP (distdiff_x5), EXPANDED (the
# expansion to train on: checkpoint/<dataset>/expansions/<exp>), AUGS (all seven), SEEDS ("1 2 3"),
# JOBS (2 runs at a time), EPOCHS (the config's 100), CHECKPOINT (run root, checkpoint), EXTRA (more
# training flags). The expansion must exist (bash single_exp.sh makes it). Finished runs are skipped,
# so the default-aug rows reuse single_exp.sh's runs; run dirs of the other augs end in _aug-<name>.
# Epochs are not part of a run dir's name: put reduced-epoch runs under another CHECKPOINT.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
DATASET=${DATASET:-digits}
ARCH=${ARCH:-resnet_small}
LR=${LR:-$($PY -m distdiff.runs default lr)}  # the recipe's (distdiff/recipe.py)
EXP=${EXP:-distdiff_x5}
CHECKPOINT=${CHECKPOINT:-checkpoint}
EXPANDED=${EXPANDED:-$($PY -m distdiff.runs expansion --dataset "$DATASET" --exp "$EXP")}
AUGS=${AUGS:-default autoaug randaug randerasing gridmask mixup cutmix}
SEEDS=${SEEDS:-1 2 3}
JOBS=${JOBS:-2}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
[ -d "$EXPANDED" ] || { echo "error: expansion $EXPANDED not found; run bash single_exp.sh first" >&2; exit 1; }
ARGS=("$DATASET" --arch "$ARCH" --lr "$LR" --output "$CHECKPOINT")
[ -n "${EPOCHS:-}" ] && ARGS+=(--epochs "$EPOCHS")

# shellcheck source=scripts/run_jobs.sh
source scripts/run_jobs.sh  # run_jobs: $JOBS command lines at a time (the cwd is the repo root here)

cmds=()
for aug in $AUGS; do
  for s in $SEEDS; do
    cmds+=("$PY train_original.py ${ARGS[*]} --aug $aug --seed $s ${EXTRA:-}")
    cmds+=("$PY train_expand.py ${ARGS[*]} --exp $EXP --expanded_dir $EXPANDED --aug $aug --seed $s ${EXTRA:-}")
  done
done
echo "aug_compat: ${#cmds[@]} training runs, $JOBS at a time"
run_jobs "${cmds[@]}"

# One row per (set, aug), named by the library; only the seeds asked for, so rows with extra
# seeds stay comparable.
include=()
for aug in $AUGS; do
  for exp in "" "$EXP"; do
    include+=(--include "$($PY -m distdiff.runs name --dataset "$DATASET" --arch "$ARCH" --lr "$LR" --aug "$aug" \
      ${exp:+--exp "$exp"})")
  done
done
# shellcheck disable=SC2086
$PY parse_logs.py "$CHECKPOINT/$DATASET" --multi --seeds $SEEDS "${include[@]}"
