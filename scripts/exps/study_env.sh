# Sourced by the studies' one commands (energy_or_noise.sh, guidance_variants.sh) after they `cd` to
# the repository root: the venv, the training seeds inside each expansion (both rules were committed
# with 1 2 3), the parallel jobs, offline and passive OpenMP, and
#   sweep NAME [FLAGS]: one grid of configs/sweeps/, its training seeds and its figure;
#   keep_tables DATASET NAME DIR: that sweep's tables (per expansion seed, and over expansions with
#   the contrasts) copied into DIR/NAME/, to be committed (the sweep dir itself is ignored).
PY=.venv/bin/python
SEEDS=${SEEDS:-1 2 3}
JOBS=${JOBS:-2}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
bash scripts/setup.sh
sweep() {
  local name=$1; shift
  # shellcheck disable=SC2086
  $PY studies/sweep.py "configs/sweeps/$name.yaml" --seeds $SEEDS --jobs "$JOBS" --figure "figure/$name.png" "$@"
}
keep_tables() {
  local dir
  dir=$($PY -m distdiff.runs sweep --dataset "$1" --name "$2")
  mkdir -p "$3/$2"
  cp "$dir/sweep.csv" "$dir/sweep.md" "$dir/replicated.md" "$dir/replicated.json" "$3/$2/"
}
