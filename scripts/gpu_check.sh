#!/usr/bin/env bash
# The acceptance run for a new GPU machine, at most 8 minutes (steps and predicted times:
# studies/gpu_check.py, or bash scripts/gpu_check.sh --help). Needs only this repository and the
# pinned packages (INSTALL.md says how to carry them to a machine without an index); uses
# .venv/bin/python when there is one, else python3, and sets the import path itself.
#   bash scripts/gpu_check.sh                # every step; report in $OUT/gpu_check.json when OUT is set
#   bash scripts/gpu_check.sh --with_compile # also --compile in the speed-ups step (about a minute more)
#   bash scripts/gpu_check.sh --cpu_smoke    # the same steps with tiny shapes on the CPU
# Exit status: 0 only when every step passed, 1 when any failed, 2 when none failed but some were skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The embedded datasets register through this repository's entry point (pyproject.toml), so the
# checkout must be installed; editable and without dependencies, as scripts/setup.sh does.
if ! "$PY" -c 'import importlib.metadata as m; m.distribution("distdiff")' 2>/dev/null; then
  echo "gpu_check: installing this checkout (pip install --no-deps --no-build-isolation -e .)"
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PY" studies/gpu_check.py "$@"
