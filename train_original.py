"""Stage 1: train a classifier on the original training set.

Its best checkpoint is the guide model for expansion, and its accuracy is the
original-only baseline.

    python train_original.py digits                                # embedded 3-shot benchmark
    python train_original.py caltech-101 resnet50 0.1 False 0       # seed README form
    python train_original.py --dataset caltech-101 --arch resnet50 --lr 0.1 --seed 2

Outputs go to checkpoint/<dataset>/<arch>_<pretrained|unpretrained>_lr<lr>/seed<N>/.
Rerunning resumes an interrupted run and skips a finished one.
"""
import argparse
import sys

from distdiff.options import TRAIN_OPTIONS, TRAIN_POSITIONALS, add_options
from distdiff.fileio import run_cli
from distdiff.runs import resolve_args
from distdiff.training import train_classifier


def main(args):
    train_classifier(args)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_options(parser, TRAIN_OPTIONS, TRAIN_POSITIONALS)


if __name__ == "__main__":
    run_cli(main, resolve_args(get_parser(), sys.argv[1:], section="train"))
