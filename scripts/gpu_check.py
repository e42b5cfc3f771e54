"""The GPU session's checklist behind scripts/gpu_check.sh (see its header).

    bash scripts/gpu_check.sh                      # everything, in a temporary work dir
    bash scripts/gpu_check.sh --workdir /tmp/gc --keep --tolerance 3

Every step is a real command of this repository, run with the stand-ins' data root
(DISTDIFF_DATA_ROOT) and Hugging Face cache, so nothing touches data/ or checkpoint/. The report
ends with one line per check: PASS, FAIL or SKIP, and the numbers behind it; the exit code is 1
if any check failed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SD14 = "CompVis/stable-diffusion-v1-4"


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where stand-ins and outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    parser.add_argument("--tolerance", type=float, default=3.0,
                        help="largest mean |difference| (8-bit levels) between fp16 and fp32 images that "
                             "counts as a match")
    parser.add_argument("--limit", type=int, default=4, help="source images expanded (5 copies each)")
    parser.add_argument("--skip_bench", "--skip-bench", action="store_true",
                        help="skip the SD-1.4-scale throughput and memory measurement")
    parser.add_argument("--bench_batch_sizes", "--bench-batch-sizes", type=int, nargs="+", default=[1, 4, 8],
                        help="batch sizes of the SD-1.4-scale measurement")
    return parser


def cuda_status():
    """(available, one-line description)."""
    import torch
    if not torch.cuda.is_available():
        return False, (f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, CUDA build "
                       f"{torch.version.cuda or 'none'}); nothing to check here")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return True, f"gpu_check: {len(names)} GPU(s): {', '.join(names)}; torch {torch.__version__}"


def run(cmd, env, log):
    """Run a command line; its output goes to `log`; returns (stdout, seconds)."""
    start = time.time()
    proc = subprocess.run(cmd, shell=True, cwd=REPO, env=env, capture_output=True, text=True)
    Path(log).write_text(f"$ {cmd}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed (exit {proc.returncode}); see {log}")
    return proc.stdout + proc.stderr, time.time() - start


def images(folder):
    """{relative path: uint8 array} of the PNGs under `folder`."""
    from PIL import Image
    return {str(p.relative_to(folder)): np.asarray(Image.open(p), np.int16) for p in sorted(Path(folder).rglob("*.png"))}


def compare(folder, reference):
    """(same file set, mean |diff|, max |diff|) in 8-bit levels."""
    a, b = images(folder), images(reference)
    if a.keys() != b.keys() or not a:
        return False, float("nan"), float("nan")
    diffs = [np.abs(a[k] - b[k]) for k in a]
    return True, float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))


def speed(log_text):
    """images/s and peak CUDA MB from an expansion's summary line."""
    rate = re.findall(r"([\d.]+) images/s", log_text)
    peak = re.findall(r"peak CUDA memory (\d+) MB", log_text)
    return (float(rate[-1]) if rate else float("nan")), (int(peak[-1]) if peak else -1)


def main(argv=None):
    args = get_parser().parse_args(argv)
    ok, line = cuda_status()
    print(line)
    if not ok:
        return 0
    import torch
    from distdiff.rehearsal import build_rehearsal

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    stand_ins = build_rehearsal(work / "stand_ins")
    env = dict(os.environ, DISTDIFF_DATA_ROOT=str(work / "data"), HF_HOME=str(stand_ins["hf_home"]),
               HF_HUB_CACHE=str(stand_ins["hf_hub_cache"]), HF_HUB_OFFLINE="1")
    py, ckpt = sys.executable, work / "checkpoint"
    expand = (f"{py} expand_distdiff.py --dataset caltech-101 --model {SD14} --checkpoint_root {ckpt} "
              f"--limit {args.limit} --device cuda")
    checks = []
    run(f"{py} scripts/prepare_data.py caltech-101 --source {stand_ins['downloads']} --shots 3", env, work / "prepare.log")
    run(f"{py} train_original.py caltech-101 resnet50 0.1 False 0 --epochs 1 --output {ckpt} --precision fp16",
        env, work / "train.log")
    ref_log, _ = run(f"{expand} --exp ref --precision fp32", env, work / "ref.log")
    fast_log, _ = run(f"{expand} --exp fast --precision fp16 --channels_last True --compile True", env,
                      work / "fast.log")
    out = ckpt / "caltech-101" / "expansions"
    same, mean, worst = compare(out / "fast", out / "ref")
    rate, peak = speed(fast_log)
    checks.append(("fp16 + channels_last + compile vs fp32", same and mean <= args.tolerance,
                   f"mean |diff| {mean:.2f}, max {worst:.0f} levels (tolerance {args.tolerance}); "
                   f"{rate:.2f} images/s, peak {peak} MB (fp32: {speed(ref_log)[0]:.2f} images/s, "
                   f"peak {speed(ref_log)[1]} MB)"))
    run(f"{py} -m torch.distributed.run --standalone --nproc_per_node 2 expand_distdiff.py --dataset caltech-101 "
        f"--model {SD14} --checkpoint_root {ckpt} --limit {args.limit} --exp torchrun --precision fp32",
        env, work / "torchrun.log")
    same, mean, worst = compare(out / "torchrun", out / "ref")
    checks.append(("torchrun --nproc_per_node 2 vs one process", same and worst <= 2,
                   f"max |diff| {worst:.0f} levels"))
    if torch.cuda.device_count() >= 2:
        run(f"GPUS='0 1' bash scripts/expand_multi_gpu.sh --dataset caltech-101 --model {SD14} "
            f"--checkpoint_root {ckpt} --limit {args.limit} --exp multi --precision fp32", env, work / "multi.log")
        same, mean, worst = compare(out / "multi", out / "ref")
        checks.append(('GPUS="0 1" expand_multi_gpu.sh vs one process', same and worst <= 2,
                       f"max |diff| {worst:.0f} levels"))
    else:
        checks.append(('GPUS="0 1" expand_multi_gpu.sh', None, "one GPU only"))
    if not args.skip_bench:
        from distdiff import DistDiffError
        from distdiff.pipeline import resolve_model
        try:
            resolve_model(SD14)  # the real weights, if this machine's own cache has them
            model = SD14
        except DistDiffError:
            model = "shape:sd14"
        bench_log, took = run(f"{py} scripts/bench_expand.py --model {model} --dataset caltech-101 "
                              f"--guide_ckpt {ckpt}/caltech-101/resnet50_unpretrained_lr0.1/seed1/model_best.pth.tar "
                              f"--device cuda --precision fp16 --batch_sizes {' '.join(map(str, args.bench_batch_sizes))} "
                              f"--out {work}/bench_sd14.json", dict(os.environ, DISTDIFF_DATA_ROOT=env["DISTDIFF_DATA_ROOT"]),
                              work / "bench.log")
        print(bench_log[bench_log.find("| batch"):])
        checks.append((f"SD-1.4-scale benchmark ({model})", True, f"{took:.0f} s; {work}/bench_sd14.json"))
    print()
    for name, passed, detail in checks:
        print(f"{'SKIP' if passed is None else 'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(passed is False for _, passed, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
