"""Export scikit-learn's digits into data/digits/{train,train10,val,test,prior}/<digit>/*.png.

    python scripts/prepare_digits.py            # idempotent: existing splits are kept
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distdiff.datasets import REGISTRY  # noqa: E402
from distdiff.digits import export_digits  # noqa: E402


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    splits = export_digits(Path(args.root))
    for name, ids in splits.items():
        print(f"{name:8s} {len(ids):5d} images")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default=str(REGISTRY["digits"].root), help="output directory")
    main(parser.parse_args())
