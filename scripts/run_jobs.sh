# Sourced by single_exp.sh and scripts/exps/*.sh.
# run_jobs CMD...: run the given command lines (one per argument), at most $JOBS at a time; a
# new one starts as soon as any running one ends (wait -n), so short runs never idle a core.
# Returns non-zero if any command failed.
run_jobs() {
  local running=0 status=0
  for cmd in "$@"; do
    if [ "$running" -ge "$JOBS" ]; then wait -n || status=1; running=$((running - 1)); fi
    bash -c "$cmd" &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do wait -n || status=1; running=$((running - 1)); done
  return $status
}
