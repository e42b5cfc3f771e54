"""Stage 4: retrain from scratch on the original training set plus an expanded set, then test.

    python train_expand.py digits resnet_small 0.1 distdiff_x5 False 0     # seed README order
    python train_expand.py --dataset digits --exp sd_x5 --seed 2
    python train_expand.py --dataset digits --exp distdiff_x5 --equal_iterations   # control

The expanded ImageFolder defaults to checkpoint/<dataset>/expansions/<exp> (what
expand_distdiff.py writes); its class folders must match the dataset's. The run goes to
checkpoint/<dataset>/<arch>_<pretrained|unpretrained>_<exp>_lr<lr>/seed<N>/ with the same files,
recipe, resume and metrics as train_original.py.
"""
import argparse
import sys
from pathlib import Path

from distdiff.fileio import run_cli
from distdiff.options import TRAIN_OPTIONS, TRAIN_POSITIONALS, add_options
from distdiff.runs import dataset_dirname, resolve_args
from distdiff.training import train_classifier


def main(args):
    expanded = args.expanded_dir or Path(args.output) / dataset_dirname(args.dataset) / "expansions" / args.exp
    exp = args.exp + ("_eqiter" if args.equal_iterations else "")
    train_classifier(args, exp=exp, expanded_dirs=[Path(expanded)], equal_iterations=args.equal_iterations)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    positionals = TRAIN_POSITIONALS[:3] + [("exp", str)] + TRAIN_POSITIONALS[3:]
    add_options(parser, TRAIN_OPTIONS, positionals)
    parser.add_argument("--exp", default=None, help="expansion name, e.g. distdiff_x5 or sd_x5 (required)")
    parser.add_argument("--expanded_dir", "--expanded-dir", default=None,
                        help="expanded ImageFolder (default: <output>/<dataset>/expansions/<exp>)")
    parser.add_argument("--equal_iterations", "--equal-iterations", action="store_true",
                        help="scale epochs so the optimizer takes as many steps as on the original set")
    return parser


if __name__ == "__main__":
    args = resolve_args(get_parser(), sys.argv[1:], section="train")
    if not args.exp:
        sys.exit("error: an experiment name is required (positional EXP or --exp)")
    run_cli(main, args)
