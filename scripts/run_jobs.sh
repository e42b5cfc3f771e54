# Sourced by single_exp.sh and scripts/exps/*.sh.
# run_jobs CMD...: run the given command lines (one per argument), at most $JOBS at a time; a
# new one starts as soon as any running one ends, so short runs never idle a core or a GPU.
#
# With GPUS (e.g. "0 1 2 3") the JOBS places are spread over the GPUs (place p belongs to
# GPUS[p % n]) and each command runs with CUDA_VISIBLE_DEVICES set to its place's GPU, so its
# process sees that GPU as cuda:0. The first commands go round-robin (command j on GPUS[j % n]);
# a later one takes the place, and so the GPU, of a command that has ended. A GPU thus runs at
# most ceil(JOBS / n) commands at a time: one with JOBS equal to the number of GPUs.
# Every command gets DISTDIFF_TRAIN_JOBS, the number running side by side, so that
# `--cache_mb auto` divides the machine's memory among them.
#
# Returns non-zero if any command failed. Exit statuses come from `wait PID` at the end (bash
# keeps them for finished children): `wait -n` alone returns 127 for a job that ended before
# it was called, which made a run of fast commands look failed.
run_jobs() {
  local gpus=() place_pid=() pids=() status=0 places cmd pid place p running
  read -r -a gpus <<< "${GPUS:-}"
  places=${JOBS:-${#gpus[@]}}
  [ "$places" -ge 1 ] 2>/dev/null || places=1
  [ "$#" -ge "$places" ] || places=$#
  for cmd in "$@"; do
    place=""
    while [ -z "$place" ]; do
      running=" $(jobs -pr | tr '\n' ' ') "
      for ((p = 0; p < places; p++)); do
        if [ -z "${place_pid[p]:-}" ] || [[ "$running" != *" ${place_pid[p]} "* ]]; then place=$p; break; fi
      done
      [ -n "$place" ] || wait -n || true
    done
    if [ "${#gpus[@]}" -gt 0 ]; then
      CUDA_VISIBLE_DEVICES=${gpus[place % ${#gpus[@]}]} DISTDIFF_TRAIN_JOBS=$places bash -c "$cmd" &
    else
      DISTDIFF_TRAIN_JOBS=$places bash -c "$cmd" &
    fi
    place_pid[place]=$!
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
