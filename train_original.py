"""Stage 1: train a classifier on the original training set.

Its checkpoint is the guide model for expansion, and its accuracy is the original-only baseline.

    python train_original.py digits                                # embedded 3-shot benchmark
    python train_original.py caltech-101 resnet50 0.1 False 0       # seed README form
    python train_original.py --dataset caltech-101 --arch resnet50 --lr 0.1 --seed 2

Outputs go to checkpoint/<dataset>/<arch>_<pretrained|unpretrained>_lr<lr>/seed<N>/.
Rerunning resumes an interrupted run and skips a finished one.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse

from distdiff.domains import INDEX, OneLineParser
from distdiff.options import add_train_flags, parse_train_args, run_cli
from distdiff.training import TrainConfig, train_classifier


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_flags(parser)
    parser.add_argument("--repeat", type=INDEX, default=0,
                        help="the authors' repeat baseline: the original split R+1 times per epoch, as many images "
                             "as an xR expansion and no new ones (run dir: repeat_x<R>; 0: the plain baseline)")
    return parser


def main(argv=None):
    args = parse_train_args(get_parser(), argv, "original")
    if not args.dataset:
        get_parser().error("a dataset is required (positional or --dataset)")
    return train_classifier(TrainConfig.from_args(args), exp=f"repeat_x{args.repeat}" if args.repeat else None,
                            repeat=args.repeat)


if __name__ == "__main__":
    run_cli(main)
