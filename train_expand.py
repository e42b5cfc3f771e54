"""Stage 4: retrain from scratch on the original training set plus an expanded set, then test.

    python train_expand.py digits resnet_small 0.1 distdiff_x5 False 0     # seed README order
    python train_expand.py --dataset digits --exp sd_x5 --seed 2
    python train_expand.py --dataset digits --exp distdiff_x5 --equal_iterations   # control

The expanded ImageFolder defaults to checkpoint/<dataset>/expansions/<exp> (what
expand_distdiff.py writes); its class folders must match the dataset's, and before any heavy
work it is checked against its args.yaml and manifests: an expansion with shards still missing is
an error naming them (--allow_partial trains on what is there and records the fraction). The run goes to
checkpoint/<dataset>/<arch>_<pretrained|unpretrained>_<exp>_lr<lr>/seed<N>/ with the same files,
recipe, resume and metrics as train_original.py.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
from pathlib import Path

from distdiff.domains import OneLineParser
from distdiff.options import add_train_expand_flags, parse_train_args, run_cli
from distdiff.runs import expansion_dir
from distdiff.training import TrainConfig, train_classifier


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_train_expand_flags(parser)


def main(argv=None):
    args = parse_train_args(get_parser(), argv, "expand")
    if not args.dataset or not (args.exp or (args.expanded_dir and args.run_dir)):
        get_parser().error("a dataset and an experiment name are required (positional or --dataset/--exp); "
                           "the authors' form names the expanded set and the run dir instead "
                           "(--data_expanded_dir, --checkpoint)")
    expanded = args.expanded_dir or [expansion_dir(args.output, args.dataset, args.exp)]
    exp = ((args.exp or Path(expanded[0]).name) + (f"_first{args.expand_num}" if args.expand_num else "")
           + ("_eqiter" if args.equal_iterations else ""))
    return train_classifier(TrainConfig.from_args(args), exp=exp, expanded_dirs=expanded,
                            equal_iterations=args.equal_iterations, allow_partial=args.allow_partial,
                            expand_num=args.expand_num)


if __name__ == "__main__":
    run_cli(main)
