#!/usr/bin/env bash
# Create .venv, install requirements.txt, then this repository itself in editable mode (so
# scripts/*.py import distdiff from anywhere), once. Reruns are a no-op while requirements.txt and
# pyproject.toml are unchanged (a hash stamp inside .venv records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# The install is about 6 GB (torch 2.14.1 exists only as a CUDA build here) and pip unpacks wheels
# beside it: say so before a half-written .venv, not as pip's OSError minutes in.
need_gb=8
free_gb=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "error: setup needs about $need_gb GB free for .venv; $(df -P . | awk 'NR == 2 {print $6}') has $free_gb GB" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing requirements.txt into .venv (torch is large; this takes a few minutes once)"
.venv/bin/python -m pip install --quiet --upgrade pip setuptools
.venv/bin/python -m pip install --quiet -r requirements.txt
# --no-deps: requirements.txt above is the dependency list; --no-build-isolation: no download
# of a build backend (setuptools is in .venv).
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "setup: done"
