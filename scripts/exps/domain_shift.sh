#!/usr/bin/env bash
# Domain shift on the embedded benchmark (docs/domain_shift.md): diffusion priors trained on
# shifted digit domains instead of the target's own distribution, then unguided img2img against
# DistDiff on the handwritten 3-shot digits, paired by seed, and the figure.
#
#   bash scripts/exps/domain_shift.sh                       # every shift, 5 seeds
#   SHIFTS="printed photo" SEEDS="1 2 3" bash scripts/exps/domain_shift.sh
#
# Every step skips finished work (priors, expansions, training runs, metrics), so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHIFTS=${SHIFTS:-printed inverted lowcontrast photo}
SEEDS=${SEEDS:-1 2 3 4 5}
GRID=${GRID:-configs/sweeps/digits_shift.yaml}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
bash scripts/setup.sh
$PY train_original.py digits --seed 1            # the guide (the demo's; skipped when complete)
$PY scripts/train_prior.py                       # the in-domain prior
for shift in $SHIFTS; do
  $PY scripts/train_prior.py --prior_data "$shift:prior=1"
  # The same prior judged in the shifted domain: its evaluator, prompts and val split.
  out=checkpoint/prior/digits_mix_${shift}1
  [ -f "$out/quality_$shift.json" ] || $PY scripts/eval_prior.py --model "$out" --dataset "$shift" \
      --evaluator_cache "checkpoint/prior/evaluator_$shift.pt" --output "$out/quality_$shift.json"
done
# shellcheck disable=SC2086
$PY scripts/sweep.py "$GRID" --seeds $SEEDS --jobs 2 --figure figure/domain_shift_cells.png
$PY parse_logs.py checkpoint/digits --multi --paired resnet_small_unpretrained_sweep_digits_shift_indomain_sd_lr0.1 \
    --include '*sweep_digits_shift_*'
$PY scripts/plot_shift.py checkpoint/digits/sweeps/digits_shift/sweep.csv --figure figure/domain_shift.png \
    --samples figure/domain_shift_samples.png
