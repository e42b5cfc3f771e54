#!/usr/bin/env bash
# Energy or noise? (docs/energy_or_noise.md): the gradient of the distribution-aware energy
# against the random clamped perturbation it rides on, with the expansion as the unit of
# replication. Settings in order: 3 shots (radius 0.2 and 1.0); the headroom check at 10 shots;
# guidance at 10 shots (radius 0.2) where the check passes; then the report and the figure.
#
#   bash scripts/exps/energy_or_noise.sh               # everything (design budget: 4 h on 2 CPU cores)
#   SEEDS="1 2" bash scripts/exps/energy_or_noise.sh   # other training seeds inside each expansion
#
# Every step skips finished work (priors, guides, expansions, training runs, metrics): a rerun,
# after a kill or a crash, resumes where the last one stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/exps/study_env.sh
source scripts/exps/study_env.sh  # PY, SEEDS, JOBS, the venv and sweep NAME [FLAGS]
# shellcheck source=scripts/run_jobs.sh
source scripts/run_jobs.sh
$PY scripts/train_prior.py                                  # the in-domain prior (the demo's)
$PY train_original.py digits --seed 1                       # the 3-shot guide (the demo's)
sweep energy_noise_3shot
# Headroom at 10 shots: original-only runs (seed 1 is also the 10-shot guide) and the two
# shifted priors (0 % target; the domain-shift study's, when it has run).
cmds=()
for s in $SEEDS; do cmds+=("$PY train_original.py digits10 --seed $s"); done
run_jobs "${cmds[@]}"
$PY train_original.py digits10 --seed 1                     # the guide, whatever SEEDS holds
$PY scripts/train_prior.py --prior_data inverted:prior=1
$PY scripts/train_prior.py --prior_data lowcontrast:prior=1
sweep energy_noise_10shot --cells none_indomain none_inverted0 none_lowcontrast0
# Guidance at 10 shots only where the headroom gate passes (the rule in docs/energy_or_noise.md).
headroom=$($PY -m distdiff.runs sweep --dataset digits10 --name energy_noise_10shot)/replicated.json
cells=()
for prior in indomain inverted0 lowcontrast0; do
  if $PY -m studies.energy_noise headroom "$headroom" "$prior"; then
    cells+=("noise_$prior" "both_$prior")  # gradient-only trimmed at 10 shots (the config says why)
  fi
done
[ "${#cells[@]}" -eq 0 ] || sweep energy_noise_10shot --cells "${cells[@]}"
# Both grids' tables (per expansion seed, and over expansions) beside the doc, to be committed.
keep_tables digits energy_noise_3shot docs/energy_or_noise
keep_tables digits10 energy_noise_10shot docs/energy_or_noise
$PY -m studies.energy_noise report --figure figure/energy_or_noise.png | tee checkpoint/energy_or_noise.md
