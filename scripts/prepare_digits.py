"""Export scikit-learn's digits into data/digits/{train,train10,val,test,prior}/<digit>/*.png,
and, on request, the shifted domains (embedded/shifted.py) into data/<shift>/{prior,val,test}/.

    python scripts/prepare_digits.py                     # idempotent: existing splits are kept
    python scripts/prepare_digits.py --shifts printed photo
    python scripts/prepare_digits.py --shifts            # all shifted domains
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
from pathlib import Path

from distdiff.domains import OneLineParser
from distdiff.options import run_cli
from distdiff.registry import get_dataset
from distdiff.runs import setup_logging
from embedded.digits import export_digits
from embedded.shifted import SHIFTS, SPLITS, export_shift


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default=str(get_dataset("digits").root), help="output directory")
    parser.add_argument("--shifts", nargs="*", default=None, choices=SHIFTS, metavar="NAME",
                        help=f"also export these shifted domains beside it ({', '.join(SHIFTS)}); "
                             "--shifts alone exports all of them")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    splits = export_digits(Path(args.root))
    for name, ids in splits.items():
        print(f"{name:8s} {len(ids):5d} images")
    shifts = [] if args.shifts is None else (args.shifts or SHIFTS)
    for shift in shifts:
        root = Path(args.root).parent / shift
        export_shift(shift, root, Path(args.root))
        print(f"{shift}: " + ", ".join(f"{s} {sum(1 for _ in (root / s).rglob('*.png'))}" for s in SPLITS))
    return 0


if __name__ == "__main__":
    run_cli(main)
