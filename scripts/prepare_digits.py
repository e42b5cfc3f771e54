"""Export scikit-learn's digits into data/digits/{train,train10,val,test,prior}/<digit>/*.png.

    python scripts/prepare_digits.py            # idempotent: existing splits are kept
"""
import argparse
from pathlib import Path

from distdiff.registry import REGISTRY
from distdiff.digits import export_digits
from distdiff.options import run_cli
from distdiff.runs import setup_logging


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default=str(REGISTRY["digits"].root), help="output directory")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    splits = export_digits(Path(args.root))
    for name, ids in splits.items():
        print(f"{name:8s} {len(ids):5d} images")
    return 0


if __name__ == "__main__":
    run_cli(main)
