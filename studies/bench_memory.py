"""Peak memory of train_original.py on a Caltech-sized split (generated, never committed).

    python studies/bench_memory.py                       # 100 classes: 3,000 train + 6,000 test JPEGs
    python studies/bench_memory.py --repo /tmp/old-checkout   # the same data through another checkout

It writes a folder dataset with Caltech-101's shape (100 classes, 30 training and 60 test images
per class, JPEGs around 300x200 like the real ones) once into --workdir, then runs
`train_original.py folder:<it> --image_size 224 --resize_size 256 --epochs 1` in a child process
and reports the child's peak resident memory (getrusage). The default arch is resnet_small, so the
figure is the data pipeline's: with the paper's ResNet-50 on a GPU its activations live in GPU
memory, not in this process's RSS; --arch resnet50 measures the CPU case, where one batch of 64
adds the activations of a ResNet-50 forward and backward.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import resource
import subprocess
import sys
import time
from pathlib import Path

from distdiff.config import REPO_ROOT
from distdiff.domains import COUNT, OneLineParser
from distdiff.fileio import atomic_write_json
from distdiff.options import run_cli
from embedded.rehearsal import fabricate_folder_dataset


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--workdir", default="bench/memory", help="where the generated split and the run go")
    parser.add_argument("--classes", type=COUNT, default=100, help="classes (Caltech-101 without its two dropped ones)")
    parser.add_argument("--train_per_class", type=COUNT, default=30, help="training images per class (the paper's 30)")
    parser.add_argument("--test_per_class", type=COUNT, default=60, help="test images per class (~6,000 in all)")
    parser.add_argument("--arch", default="resnet_small", help="classifier (see the docstring)")
    parser.add_argument("--batch_size", type=COUNT, default=64, help="training batch size (the paper's 64)")
    parser.add_argument("--extra", default="", empty_ok=True, help="more train_original.py flags, e.g. '--cache_mb 0'")
    parser.add_argument("--repo", default=str(REPO_ROOT), help="checkout whose train_original.py runs")
    parser.add_argument("--out", default="bench/memory.json", help="JSON report")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    work = Path(args.workdir).resolve()
    start = time.time()
    data = fabricate_folder_dataset(work / "data", args.classes, args.train_per_class, args.test_per_class)
    generated = time.time() - start
    run_root = work / f"runs_{int(time.time())}"
    cmd = [sys.executable, "train_original.py", f"folder:{data}", "--arch", args.arch, "--epochs", "1",
           "--image_size", "224", "--resize_size", "256", "--batch_size", str(args.batch_size),
           "--output", str(run_root), *args.extra.split()]
    env = dict(os.environ, PYTHONPATH=args.repo, TQDM_DISABLE="1")
    start = time.time()
    proc = subprocess.run(cmd, cwd=args.repo, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    if proc.returncode:
        sys.exit(f"error: train_original.py failed:\n{proc.stderr[-2000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
    report = {"peak_rss_mb": round(peak_mb), "seconds": round(seconds, 1), "arch": args.arch,
              "batch_size": args.batch_size, "train_images": args.classes * args.train_per_class,
              "test_images": args.classes * args.test_per_class, "extra": args.extra, "repo": args.repo,
              "generated_seconds": round(generated, 1)}
    atomic_write_json(args.out, report)
    print(f"train_original.py on {report['train_images']} train + {report['test_images']} test images at 224 px "
          f"({args.arch}, batch {args.batch_size}, 1 epoch, {args.extra or 'defaults'}): "
          f"peak RSS {report['peak_rss_mb']} MB, {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
