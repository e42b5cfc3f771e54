#!/usr/bin/env bash
# Guidance variants, each against its own noise (docs/guidance_variants.md, committed with its
# rule before any run): V1 the step where it lands, V2 projected gradient descent from the latent
# itself, V3 the paper's step at 3 timesteps, V4 a classifier-guidance reference, with the none /
# noise / paper controls; 10 shots first, then 3 shots; 6 expansion seeds x training seeds 1-3.
#
#   bash scripts/exps/guidance_variants.sh      # everything (aim: 4 h on 2 CPU cores)
#
# A trim (the design's order, at 3 shots: v2, then v3 with noise3, then v1) removes those cells and
# their contrasts from configs/sweeps/guidance_variants_3shot.yaml, recorded under Amendments
# before any 3-shot result is read.
# The tables of both settings land in docs/guidance_variants/<grid>/ (committed with the answer).
# Last, `python -m studies.guidance_variants report` applies the committed rule to those tables.
# Every step skips finished work (the prior, guides, expansions, training runs, metrics): a rerun,
# after a kill or a crash, resumes where the last one stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/exps/study_env.sh
source scripts/exps/study_env.sh  # PY, SEEDS, JOBS, the venv and sweep NAME [FLAGS]
$PY scripts/train_prior.py                                  # the in-domain prior (the demo's)
$PY train_original.py digits10 --seed 1                     # the 10-shot guide
sweep guidance_variants_10shot
keep_tables digits10 guidance_variants_10shot docs/guidance_variants
$PY train_original.py digits --seed 1                       # the 3-shot guide (the demo's)
sweep guidance_variants_3shot
keep_tables digits guidance_variants_3shot docs/guidance_variants
$PY -m studies.guidance_variants report --figure figure/guidance_variants.png | tee checkpoint/guidance_variants.md
