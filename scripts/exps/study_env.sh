# Sourced by the studies' one commands (energy_or_noise.sh, guidance_variants.sh) after they `cd` to
# the repository root: the venv, the training seeds inside each expansion (both rules were committed
# with 1 2 3), the parallel jobs, offline and passive OpenMP, and
#   sweep NAME [FLAGS]: one grid of configs/sweeps/, its training seeds and its figure.
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
