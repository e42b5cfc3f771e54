#!/usr/bin/env bash
# Create .venv, install requirements-lock.txt (requirements.txt's resolution, pinned), then this
# repository itself in editable mode (so scripts/*.py import distdiff from anywhere), once. Reruns
# are a no-op while requirements.txt, the lock and pyproject.toml are unchanged (a hash stamp inside
# .venv records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
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
  "$PYTHON" -m venv --without-pip .venv
fi
# --no-compile: pip would byte-compile every file of every package (104 s of install became 62 s
# without it on 2 cores); Python compiles the modules a run imports on first use instead, about
# 20 s once, into .venv (below; scripts/test.sh and single_exp.sh make sure bytecode is written).
pip=(.venv/bin/python -m pip install --quiet --no-compile)
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # The newest pip and setuptools, put in by the interpreter's own pip (its --python option) in 3 s;
  # where it has none, venv's bundled copies, then upgraded: 7 s.
  "$PYTHON" -m pip --python .venv/bin/python install --quiet --no-compile --upgrade pip setuptools 2>/dev/null ||
    { .venv/bin/python -m ensurepip >/dev/null && "${pip[@]}" --upgrade pip setuptools; }
fi
echo "setup: installing requirements-lock.txt into .venv (torch is large; this takes a minute or more once)"
# The lock (scripts/lock_requirements.py) is requirements.txt resolved and split in two halves that
# take pip about as long: two pip processes without resolution install them side by side (29 s on
# 2 cores, where one resolving install took 55-59 s), and `pip check` proves the set whole. The lock applies on
# the platform that wrote it and while requirements.txt is the one it was resolved from; anywhere
# else, or if it fails, pip resolves requirements.txt.
platform=$(.venv/bin/python -c 'import platform, sys; print(f"{platform.system()} {platform.machine()}, Python {sys.version_info[0]}.{sys.version_info[1]}")')
lock_fits() {
  grep -qxF "# platform: $platform" requirements-lock.txt &&
    grep -qxF "# requirements.txt sha256: $(sha256sum requirements.txt | cut -d' ' -f1)" requirements-lock.txt
}
install_lock() {
  awk '/^# half 2/ {half = 2} /^[^#]/ {print > (half == 2 ? ".venv/lock-half2.txt" : ".venv/lock-half1.txt")}' \
    requirements-lock.txt
  "${pip[@]}" --no-deps -r .venv/lock-half1.txt & local first=$!
  "${pip[@]}" --no-deps -r .venv/lock-half2.txt & local second=$!
  local failed=0 report
  wait "$first" || failed=1
  wait "$second" || failed=1
  [ "$failed" = 0 ] || return 1
  report=$(.venv/bin/python -m pip check) || { echo "$report"; return 1; }
}
if ! lock_fits; then
  echo "setup: requirements-lock.txt is not for $platform and this requirements.txt; resolving requirements.txt"
  "${pip[@]}" -r requirements.txt
elif ! install_lock; then
  echo "setup: requirements-lock.txt did not install whole; resolving requirements.txt"
  "${pip[@]}" -r requirements.txt
fi
# --no-deps: the lock above is the dependency list; --no-build-isolation: no download of a build
# backend (setuptools is in .venv). Beside the compile below, which imports from this folder.
"${pip[@]}" --no-deps --no-build-isolation -e . & editable=$!
# Compile, once, what every run imports, into .venv/pycache (where scripts/test.sh and single_exp.sh
# point Python), where the suite's first processes, started together, would each spend it. The
# second core compiles what needs no torch: sympy (torch's import reaches it early), then scipy,
# scikit-learn and matplotlib (the stages' imports reach them last): 27-28 s became 22 s. (Adding
# diffusers and transformers there gave 19-26 s, no surer: the path through torch is the long one.)
# The imports are the install's smoke test too: one that fails stops here.
echo "setup: compiling the modules the stages import"
compile=(env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$PWD/.venv/pycache}" .venv/bin/python -c)
"${compile[@]}" "import sympy, scipy.stats, sklearn.cluster, matplotlib.pyplot" & beside=$!
"${compile[@]}" "
import expand_distdiff, train_expand, train_original, parse_logs, distdiff.generation, distdiff.pipeline, embedded.prior
from diffusers import StableDiffusionImg2ImgPipeline
import matplotlib.pyplot, scipy.stats, sklearn.cluster"
wait "$beside"
wait "$editable"
echo "$want" > "$stamp"
echo "setup: done"
