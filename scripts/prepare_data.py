"""Convert a torchvision dataset into data/<name>/{train,val,test}/<class>/<id>.jpg|png.

    python scripts/prepare_data.py caltech-101 --download     # fetch with torchvision, then convert
    python scripts/prepare_data.py dtd --source ~/torchvision  # convert an existing torchvision root
    python scripts/prepare_data.py caltech-101 --source ~/caltech_split   # an already split train/ + test/

The split conventions (val splits, dropped classes) are in distdiff/prepare.py and INSTALL.md.
The tree appears whole or not at all; a complete tree (one with prepare.json) is left alone.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
import json
from pathlib import Path

from distdiff import DistDiffError
from distdiff.domains import COUNT, INDEX, OneLineParser, with_domain
from distdiff.options import run_cli
from distdiff.prepare import SOURCES, is_complete, prepare
from distdiff.registry import DATA_ROOT, get_dataset, registered

DOWNLOAD_ROOT = DATA_ROOT / "raw"


def source_root(name, source, download):
    """Where torchvision finds (or, with --download, puts) the raw files."""
    layout = SOURCES[name].layout
    if source:
        root = Path(source).expanduser()
        if not download and not root.is_dir():
            raise DistDiffError(f"--source {root} does not exist; pass --download to fetch {name}, "
                                f"or --source DIR containing {layout}")
        return root
    if not download:
        raise DistDiffError(f"no source for {name}: pass --download to fetch it with torchvision, or "
                            f"--source DIR (an existing torchvision root containing {layout})")
    return DOWNLOAD_ROOT


def not_convertible(name):
    """Why `name` has nothing to convert here, and what to run instead."""
    if name in registered() or name.startswith("folder:"):
        return f"{name} is not converted from torchvision (to prepare it: {get_dataset(name).prepare_hint})"
    return f"unknown dataset {name!r}; choose from {', '.join(sorted(SOURCES))}"


def report_existing(root, seed):
    """Say that the tree is kept, and warn when it was drawn with another seed."""
    print(f"{root} is already prepared (prepare.json exists); nothing to do")
    info = json.loads((Path(root) / "prepare.json").read_text())
    drawn = any(split.get("draw") for split in info.get("splits", {}).values())
    if drawn and info.get("seed") != seed:
        print(f"note: it was drawn with --seed {info.get('seed')}, not {seed}; delete {root} to draw again")


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    # No argparse `choices`: main() answers `digits` or a typo with a hint, in one line.
    parser.add_argument("name", help=f"dataset to prepare: {', '.join(sorted(SOURCES))}")
    parser.add_argument("--download", action="store_true",
                        help=f"let torchvision download the raw files (into --source, default {DOWNLOAD_ROOT})")
    parser.add_argument("--source", default=None,
                        help="an existing torchvision root holding the raw files, or a folder already split into "
                             "ImageFolders train/ and test/ (val/ if any; e.g. the authors' Caltech-101), kept as it is")
    parser.add_argument("--seed", default=0, **with_domain(dict(type=INDEX, help="seed of the per-class draws")))
    parser.add_argument("--shots", default=None, **with_domain(dict(
        type=COUNT, help="training images per class of the few-shot datasets (caltech-101: 30, "
                                  "cifar100-subset: 100)")))
    parser.add_argument("--keep_faces_easy", "--keep-faces-easy", action="store_true",
                        help="caltech-101: keep Faces_easy (101 classes); the default drops it like the "
                             "authors' code, since its images are near-duplicates of Faces")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.name not in SOURCES:
        raise DistDiffError(not_convertible(args.name))
    root = get_dataset(args.name).root
    if is_complete(root):
        report_existing(root, args.seed)
        return 0
    keep = ("Faces_easy",) if args.keep_faces_easy else ()
    info = prepare(args.name, root, source_root(args.name, args.source, args.download), args.download,
                   args.seed, args.shots, keep)
    for name, split in info["splits"].items():
        print(f"{name:6s} {split['images']:6d} images")
    print(f"wrote {root} ({info['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    run_cli(main)
