"""Write requirements-lock.txt: every package that requirements.txt resolves to, pinned, in two
halves that take pip about as long to install, which scripts/setup.sh installs in two parallel pip
processes without resolving (on 2 cores: 26-31 s, where one resolving install took 55-59 s).

    python scripts/lock_requirements.py          # after any change to requirements.txt (~2 minutes)

It installs requirements.txt into a temporary venv (pip resolves it there, as setup.sh's fallback
does), reads each installed distribution's version, bytes and files, and writes the lock with
requirements.txt's sha256 and the platform in its header. setup.sh takes the lock only where both
match, and checks the result with `pip check`; anywhere else it resolves requirements.txt.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # every entry point's first line (tests/test_layout.py); no torch here

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from distdiff import DistDiffError
from distdiff.domains import OneLineParser
from distdiff.fileio import atomic_write_text
from distdiff.options import run_cli

REPO = Path(__file__).resolve().parent.parent
# torch's CUDA runtime, which its metadata asks for on Linux only: the same marker here keeps the
# lock installable where torch comes without them (setup.sh still uses the lock only on the
# platform that wrote it).
LINUX_ONLY = ("nvidia-", "cuda-", "triton")
# What a fresh venv already holds, and pip freeze leaves out too: setup.sh upgrades these first.
BOOTSTRAP = {"pip", "setuptools", "wheel"}
# Printed by the venv's Python: its platform line, and {name: [version, installed bytes, files]}.
INVENTORY = """
import importlib.metadata as md, json, os, platform, sys
platform_line = f"{platform.system()} {platform.machine()}, Python {sys.version_info[0]}.{sys.version_info[1]}"
packages = {}
for dist in md.distributions():
    files = [dist.locate_file(f) for f in dist.files or []]
    size = sum(os.path.getsize(path) for path in files if os.path.isfile(path))
    packages[dist.metadata["Name"]] = [dist.version, size, len(files)]
print(json.dumps({"platform": platform_line, "packages": packages}))
"""


def install_cost(size, files):
    """pip's time to install a package, in bytes' worth: a file costs as much as 36 kB. Halves of
    equal bytes took 32.5 s (30,809 files) and 27.0 s (11,729 files) side by side on 2 cores, which
    fits 7.9 s per GB plus 0.29 s per thousand files."""
    return size + 36_000 * files


def halves(packages):
    """Two lists of names of about equal install cost: costliest first, each into the cheaper half.
    Returns (bytes, names) per half."""
    parts = [[0, 0, []], [0, 0, []]]
    for name in sorted(packages, key=lambda n: (-install_cost(*packages[n][1:]), n.lower())):
        cheaper = min(parts, key=lambda part: part[0])
        cheaper[0] += install_cost(*packages[name][1:])
        cheaper[1] += packages[name][1]
        cheaper[2].append(name)
    return [(size, sorted(names, key=str.lower)) for _, size, names in parts]


def pin(name, version):
    marker = ' ; platform_system == "Linux"' if name.lower().startswith(LINUX_ONLY) else ""
    return f"{name}=={version}{marker}"


def lock_text(packages, requirements_sha256, platform_line):
    """The lock file: a header setup.sh reads, then `# half 1` and `# half 2`, one pin a line."""
    packages = {name: value for name, value in packages.items() if name.lower() not in BOOTSTRAP}
    lines = ["# Every package requirements.txt resolves to, pinned. Written by scripts/lock_requirements.py; do not",
             "# edit: rerun it after changing requirements.txt. scripts/setup.sh installs the two halves in parallel",
             "# (no resolution), then runs `pip check`, where the platform and the sha256 below match; elsewhere it",
             "# resolves requirements.txt.",
             f"# platform: {platform_line}",
             f"# requirements.txt sha256: {requirements_sha256}"]
    for number, (size, names) in enumerate(halves(packages), 1):
        lines.append(f"# half {number}: {len(names)} packages, {size / 1e9:.2f} GB installed")
        lines += [pin(name, packages[name][0]) for name in names]
    return "\n".join(lines) + "\n"


def resolve(python, requirements):
    """(platform line, {name: [version, bytes, files]}) of requirements.txt installed into a fresh venv."""
    with tempfile.TemporaryDirectory(prefix="distdiff-lock-") as tmp:
        venv = Path(tmp) / "venv"
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile"]
        try:
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            subprocess.run([*pip, "--upgrade", "pip", "setuptools"], check=True)
            subprocess.run([*pip, "-r", str(requirements)], check=True)
            out = subprocess.run([str(venv / "bin" / "python"), "-c", INVENTORY], check=True,
                                 capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            raise DistDiffError(f"could not install {requirements.name} into a fresh venv with {python}: {err}") from None
    inventory = json.loads(out)
    return inventory["platform"], inventory["packages"]


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="python3", help="interpreter for the venv (setup.sh's PYTHON)")
    parser.add_argument("--out", default=str(REPO / "requirements-lock.txt"), help="the lock file to write")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    requirements = REPO / "requirements.txt"
    platform_line, packages = resolve(args.python, requirements)
    text = lock_text(packages, hashlib.sha256(requirements.read_bytes()).hexdigest(), platform_line)
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}: {sum(not line.startswith('#') for line in text.splitlines())} packages for {platform_line}")
    return 0


if __name__ == "__main__":
    run_cli(main)
