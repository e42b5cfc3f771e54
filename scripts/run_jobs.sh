# Sourced by single_exp.sh and scripts/exps/*.sh.
# run_jobs CMD...: run the given command lines (one per argument), at most $JOBS at a time; a
# new one starts as soon as any running one ends (wait -n), so short runs never idle a core.
# Returns non-zero if any command failed. Exit statuses come from `wait PID` at the end (bash
# keeps them for finished children): `wait -n` alone returns 127 for a job that ended before
# it was called, which made a run of fast commands look failed.
run_jobs() {
  local pids=() status=0 cmd pid
  for cmd in "$@"; do
    while [ "$(jobs -pr | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    bash -c "$cmd" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
