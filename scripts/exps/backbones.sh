#!/usr/bin/env bash
# Other backbones (the paper's Tab. 2): retrain original-only vs original + DistDiff x5 (one shared
# expansion, made with the resnet_small guide) for each architecture, then one table.
#
#   bash scripts/exps/backbones.sh
#   ARCHS=resnet50 SEEDS=1 EPOCHS=1 bash scripts/exps/backbones.sh          # quick check
#   ARCHS=clip_vit_b32 PRETRAINED=True bash scripts/exps/backbones.sh       # CLIP (Tab. 3): needs the weights
#
# Environment: DATASET (digits), ARCHS (resnet_small resnet50 resnext50 wideresnet50 mobilenetv2),
# EPOCHS (default 100 for resnet_small, 30 for the others: the big ImageNet networks are slow on a
# CPU), SEEDS ("1 2 3"), JOBS (2 runs at a time), LR (the training recipe's), PRETRAINED (False), EXP (distdiff_x5),
# EXPANDED (checkpoint/<dataset>/expansions/<exp>), CHECKPOINT (checkpoint/backbones: runs with
# reduced epochs stay apart from the main results, since epochs are not in a run dir's name),
# EXTRA (more training flags). On digits the images stay 32 px: the ImageNet stems reduce them to
# a 1x1 map at the last stage, which is the test of these backbones here, not a tuned setting.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
DATASET=${DATASET:-digits}
ARCHS=${ARCHS:-resnet_small resnet50 resnext50 wideresnet50 mobilenetv2}
SEEDS=${SEEDS:-1 2 3}
JOBS=${JOBS:-2}
LR=${LR:-$($PY -m distdiff.runs default lr)}  # the recipe's (distdiff/recipe.py)
PRETRAINED=${PRETRAINED:-False}
EXP=${EXP:-distdiff_x5}
EXPANDED=${EXPANDED:-$($PY -m distdiff.runs expansion --dataset "$DATASET" --exp "$EXP")}
CHECKPOINT=${CHECKPOINT:-checkpoint/backbones}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
[ -d "$EXPANDED" ] || { echo "error: expansion $EXPANDED not found; run bash single_exp.sh first" >&2; exit 1; }

# shellcheck source=scripts/run_jobs.sh
source scripts/run_jobs.sh  # run_jobs: $JOBS command lines at a time (the cwd is the repo root here)

cmds=()
for arch in $ARCHS; do
  epochs=${EPOCHS:-$([ "$arch" = resnet_small ] && echo 100 || echo 30)}
  args="$DATASET --arch $arch --lr $LR --pretrained $PRETRAINED --epochs $epochs --output $CHECKPOINT ${EXTRA:-}"
  for s in $SEEDS; do
    cmds+=("$PY train_original.py $args --seed $s")
    cmds+=("$PY train_expand.py $args --exp $EXP --expanded_dir $EXPANDED --seed $s")
  done
done
echo "backbones: ${#cmds[@]} training runs, $JOBS at a time"
run_jobs "${cmds[@]}"
# shellcheck disable=SC2086
$PY parse_logs.py "$CHECKPOINT/$DATASET" --multi --seeds $SEEDS
