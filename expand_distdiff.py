"""Stages 2-3: hierarchical prototypes, then prototype-guided Stable Diffusion img2img.

    # embedded demo (digits, the tiny prior from scripts/train_prior.py)
    python expand_distdiff.py --dataset digits --expand_ratio 5
    # paper setting: SD-1.4, one of 4 shards (the seed README's launcher does this per GPU)
    python expand_distdiff.py --dataset caltech-101 --model CompVis/stable-diffusion-v1-4 \
        --guide_ckpt checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1/model_best.pth.tar \
        --expand_ratio 5 --split 0 --total_split 4 --device cuda --precision fp16
    python expand_distdiff.py --dataset digits --verify     # what is missing, which shards to rerun

Writes <out>/<class>/<stem>_expand_<k>.png (an ImageFolder), prototypes.npz, args.yaml,
log.txt and manifest_shard<i>.jsonl. Without --split/--total_split the shard comes from
RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT. Rerunning resumes; every image
depends only on (seed, source, copy), never on the shard count or a resume point.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import sys

from distdiff import expand_flags
from distdiff.expansion import run
from distdiff.options import run_cli


def main(argv=None):
    """Parse the flags (distdiff/expand_flags.py), then make this shard (distdiff.expansion.run)."""
    return run(expand_flags.parse(sys.argv[1:] if argv is None else argv, __doc__))


def get_parser():
    """The flags, each with its role (distdiff/expand_flags.py)."""
    return expand_flags.get_parser(__doc__)


if __name__ == "__main__":
    run_cli(main)
