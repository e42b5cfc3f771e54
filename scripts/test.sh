#!/usr/bin/env bash
# Run the test suite in .venv (created first if missing). Extra arguments go to pytest.
# Exits non-zero on any failure and when no test was collected (pytest exit code 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: no tests were collected; treating that as a failure" >&2
  exit 1
fi
exit "$status"
