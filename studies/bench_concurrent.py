"""Two expansions started at once from a plain shell, against one alone, on the CPU.

    python studies/bench_concurrent.py                 # 30 sources x 4 copies per run
    python studies/bench_concurrent.py --limit 4       # shorter

Each run is `expand_distdiff.py` on the embedded digits with a tiny untrained pipeline and a
one-epoch guide (both built first, in a temporary folder), with torch's default thread count, so
two runs at once put twice as many threads as cores on the machine. Every run starts from an
environment without OMP_WAIT_POLICY, as from a plain shell: the stage scripts then set PASSIVE
themselves. The same pair with OMP_WAIT_POLICY=ACTIVE shows what spinning OpenMP threads cost.
Prints the wall times and the ratio (two at once / one alone; 2.0 is a fair share of the cores).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distdiff.domains import COUNT, OneLineParser
from distdiff.options import run_cli

REPO = Path(__file__).resolve().parent.parent


def plain_env(**extra):
    """The environment of a plain shell: no OMP_WAIT_POLICY, no thread caps, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return dict(env, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", **extra)


def timed(commands, env):
    """Start every command at once; the wall time until the last one ends (each must succeed)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    for cmd, proc in zip(commands, procs):
        if proc.wait():
            raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
    return time.perf_counter() - start


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--limit", type=COUNT, default=30, help="source images per run")
    parser.add_argument("--expand_ratio", type=COUNT, default=4, help="copies per source image")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    from distdiff.registry import ensure_prepared, get_dataset
    from embedded.prior import build_tiny_pipeline

    spec = get_dataset("digits")
    ensure_prepared(spec)
    with tempfile.TemporaryDirectory(prefix="distdiff-bench-concurrent-") as tmp:
        tmp = Path(tmp)
        pipe = build_tiny_pipeline(tmp / "pipe", [spec.prompt(str(d)) for d in range(10)])
        subprocess.run([sys.executable, "train_original.py", "--dataset", "digits", "--arch", "resnet_small",
                        "--epochs", "1", "--output", str(tmp / "ckpt")], cwd=REPO, env=plain_env(),
                       check=True, capture_output=True)
        guide = next((tmp / "ckpt").rglob("model_best.pth.tar"))

        def expand(name):
            return [sys.executable, "expand_distdiff.py", "--dataset", "digits", "--model", str(pipe),
                    "--guide_ckpt", str(guide), "--out", str(tmp / name), "--limit", str(args.limit),
                    "--expand_ratio", str(args.expand_ratio), "--num_steps", "10", "--guidance_step", "4"]

        rows = []
        for label, env in (("plain shell (the scripts set PASSIVE)", plain_env()),
                           ("OMP_WAIT_POLICY=ACTIVE", plain_env(OMP_WAIT_POLICY="ACTIVE"))):
            key = label.split()[0]
            one = timed([expand(f"{key}_alone")], env)
            two = timed([expand(f"{key}_a"), expand(f"{key}_b")], env)
            rows.append((label, one, two))
    print(f"{'environment':40s} {'one alone':>10s} {'two at once':>12s} {'ratio':>6s}")
    for label, one, two in rows:
        print(f"{label:40s} {one:9.1f}s {two:11.1f}s {two / one:6.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
