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
echo "setup: installing requirements.txt into .venv (torch is large; this takes a minute or more once)"
# --no-compile: pip would byte-compile every file of every package (104 s of install became 62 s
# without it on 2 cores); Python compiles the modules a run imports on first use instead, about
# 15 s once, into .venv (scripts/test.sh and single_exp.sh make sure bytecode is written).
.venv/bin/python -m pip install --quiet --no-compile --upgrade pip setuptools
.venv/bin/python -m pip install --quiet --no-compile -r requirements.txt
# --no-deps: requirements.txt above is the dependency list; --no-build-isolation: no download
# of a build backend (setuptools is in .venv).
.venv/bin/python -m pip install --quiet --no-compile --no-deps --no-build-isolation -e .
# Compile, once, what every run imports, into .venv/pycache (where scripts/test.sh and single_exp.sh
# point Python): 19 s in one process, where the suite's first processes, started together, would
# each spend it. It is also the install's smoke test: an import that fails stops here.
echo "setup: compiling the modules the stages import"
env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$PWD/.venv/pycache}" .venv/bin/python -c "
import expand_distdiff, train_expand, train_original, parse_logs, distdiff.generation, distdiff.pipeline, embedded.prior
from diffusers import StableDiffusionImg2ImgPipeline
import matplotlib.pyplot, scipy.stats, sklearn.cluster"
echo "$want" > "$stamp"
echo "setup: done"
