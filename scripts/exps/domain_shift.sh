#!/usr/bin/env bash
# Domain shift on the embedded benchmark (docs/domain_shift.md): diffusion priors trained on
# shifted digit domains (0 % target) and, for the shifts that cost the unguided expansion
# accuracy, on 10 % target + 90 % shift; then unguided img2img against DistDiff and the settings
# that move an image further, on the handwritten 3-shot digits, paired by seed; the confirmation
# on fresh randomness; the figure.
#
#   bash scripts/exps/domain_shift.sh                       # everything, 5 seeds
#
# Every step skips finished work (priors, expansions, training runs, metrics), so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHIFTS="printed inverted lowcontrast photo"  # the priors configs/sweeps/digits_shift.yaml names
MIXED="inverted lowcontrast"                  # the shifts that qualified in step 1
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
bash scripts/setup.sh
$PY train_original.py digits --seed 1            # the guide (the demo's; skipped when complete)
$PY scripts/train_prior.py                       # the in-domain prior
prior() {  # prior MIXTURE SHIFT: train it, then judge it in the shifted domain too (its
  # evaluator, prompts and val split; the target's judgement is the prior's own quality.json)
  $PY scripts/train_prior.py --prior_data "$1"
  local out; out=$($PY -m embedded.mixture digits "$1")  # the folder train_prior.py made
  [ -f "$out/quality_$2.json" ] || $PY studies/eval_prior.py --model "$out" --dataset "$2" \
      --evaluator_cache "checkpoint/prior/evaluator_$2.pt" --output "$out/quality_$2.json"
}
for shift in $SHIFTS; do prior "$shift:prior=1" "$shift"; done
for shift in $MIXED; do prior "digits:prior=0.1,$shift:prior=0.9" "$shift"; done
$PY studies/sweep.py configs/sweeps/digits_shift.yaml --seeds 1 2 3 4 5 --jobs 2 \
    --figure figure/domain_shift_cells.png
$PY studies/sweep.py configs/sweeps/digits_shift_confirm.yaml --seeds 6 7 8 9 10 --jobs 2 \
    --figure figure/domain_shift_confirm_cells.png
control=$($PY -m distdiff.runs name --dataset digits --arch resnet_small --exp sweep_digits_shift_indomain_sd)
$PY parse_logs.py checkpoint/digits --multi --paired "$control" --include '*sweep_digits_shift_*'
$PY studies/plot_shift.py checkpoint/digits/sweeps/digits_shift/sweep.csv --figure figure/domain_shift.png \
    --samples figure/domain_shift_samples.png --select_priors inverted0 inverted10 lowcontrast0 lowcontrast10
