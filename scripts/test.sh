#!/usr/bin/env bash
# Run the test suite in .venv (created first if missing). Extra arguments go to pytest.
#   bash scripts/test.sh            # everything (what CI runs)
#   bash scripts/test.sh -q         # the quick tier for the edit loop: -m "not slow"
# Exits non-zero on any failure and when no test was collected (pytest exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# Offline always; OpenMP threads sleep instead of spinning while subprocesses share the 2 cores.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
# Bytecode is written, once, into .venv/pycache (the repository stays free of __pycache__): setup.sh
# installs without compiling, so without it each of the suite's Python processes would compile
# torch's modules again.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="$PWD/.venv/pycache"
args=()
for arg in "$@"; do
  if [ "$arg" = "-q" ]; then args+=(-q -m "not slow"); else args+=("$arg"); fi
done
.venv/bin/python -m pytest "${args[@]}"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: no tests were collected; treating that as a failure" >&2
  exit 1
fi
exit "$status"
